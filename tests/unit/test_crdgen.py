"""The generated CRDs: current, structural, documented, and saying what users rely on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from trtllm_operator import crdgen, trtllm_facts
from trtllm_operator.api import (
    DEPLOYMENT_KIND,
    ENGINE_KIND,
    KINDS,
    LLMDeploymentSpec,
    LLMEngineSpec,
)

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"

Schema = dict[str, Any]


def crd_of(kind: Any) -> Schema:
    loaded: Schema = yaml.safe_load(crdgen.render(kind))
    return loaded


def version_of(kind: Any) -> Schema:
    version: Schema = crd_of(kind)["spec"]["versions"][0]
    return version


def schema_of(kind: Any) -> Schema:
    schema: Schema = version_of(kind)["schema"]["openAPIV3Schema"]
    return schema


def walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path in the object (``spec.targets[]``)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def all_nodes() -> Iterator[tuple[str, str, Schema]]:
    for kind in KINDS:
        for path, node in walk(schema_of(kind)):
            yield kind.kind, path, node


def open_node(node: Schema) -> bool:
    return bool(node.get("x-kubernetes-int-or-string")
                or node.get("x-kubernetes-preserve-unknown-fields"))


# --------------------------------------------------------------------------- current


def test_crds_folder_matches_the_models() -> None:
    stale = crdgen.stale_files(CRDS)
    assert stale == {}, "crds/ is stale; run make crds\n" + "".join(stale.values())


def test_check_mode_fails_with_a_diff_when_a_crd_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    engine_file = tmp_path / crdgen.file_name(ENGINE_KIND)
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    engine_file.write_text(engine_file.read_text().replace("shortNames:\n    - llme",
                                                           "shortNames:\n    - engine"))
    capsys.readouterr()

    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1

    captured = capsys.readouterr()
    assert "-    - engine" in captured.out
    assert "+    - llme" in captured.out
    assert "run make crds" in captured.err


def test_files_are_named_like_controller_gen_output() -> None:
    assert sorted(crdgen.generate()) == ["trtllm.dev_llmdeployments.yaml",
                                         "trtllm.dev_llmengines.yaml"]


# --------------------------------------------------------------------------- structural

FORBIDDEN_KEYS = {"$ref", "$defs", "definitions", "title", "const", "allOf", "oneOf", "not",
                  "nullable", "examples", "uniqueItems"}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    for path, node in walk(schema_of(kind)):
        assert not FORBIDDEN_KEYS & node.keys(), (path, FORBIDDEN_KEYS & node.keys())
        if open_node(node):
            if "anyOf" in node:
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "anyOf" not in node, path
        assert node.get("type") in {"object", "array", "string", "integer", "number",
                                    "boolean"}, path
        if "properties" in node:
            assert node["type"] == "object", path
            assert "additionalProperties" not in node, path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        for required in node.get("required", []):
            assert required in node["properties"], (path, required)


def test_no_ref_anywhere_in_the_rendered_files() -> None:
    for text in crdgen.generate().values():
        assert "$ref" not in text
        assert "$defs" not in text


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_is_documented_for_kubectl_explain(kind: Any) -> None:
    schema = schema_of(kind)
    for top in ("spec", "status"):
        for path, node in walk(schema["properties"][top], top):
            if path.endswith(("[]", "{}")):
                continue
            assert node.get("description", "").strip(), f"{kind.kind} {path} has no description"


def test_every_string_list_and_map_in_specs_is_bounded_for_the_cel_cost_budget() -> None:
    for kind, path, node in all_nodes():
        if not path.startswith("spec") or open_node(node):
            continue
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, f"{kind} {path}"
        if node["type"] == "array":
            assert "maxItems" in node, f"{kind} {path}"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{kind} {path}"


def test_optional_fields_carry_no_null_defaults() -> None:
    for kind, path, node in all_nodes():
        assert node.get("default", "absent") not in (None, []), f"{kind} {path}"


def test_numeric_exclusive_bounds_use_openapi_3_0_booleans() -> None:
    node = dict(walk(schema_of(DEPLOYMENT_KIND)))["spec.serve.kvCacheFreeGpuMemoryFraction"]

    assert node["type"] == "number"
    assert (node["minimum"], node["exclusiveMinimum"], node["maximum"]) == (0, True, 1)


# --------------------------------------------------------------------------- CEL rules


def rules() -> Iterator[tuple[str, str, dict[str, str]]]:
    for kind, path, node in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            yield kind, path, rule


def test_every_rule_message_starts_with_the_field_it_is_about() -> None:
    seen = 0
    for kind, path, rule in rules():
        field = path + rule.get("fieldPath", "")
        assert rule["message"].startswith(field), (kind, field, rule["message"])
        assert ": " in rule["message"], f"{kind} {field}: the message should say the fix"
        seen += 1
    assert seen >= 15


def test_status_has_no_rules_only_the_operator_writes_it() -> None:
    for _kind, path, _rule in rules():
        assert not path.startswith("status"), path


def test_only_storage_is_immutable() -> None:
    transition_rules = [(kind, path) for kind, path, rule in rules() if "oldSelf" in rule["rule"]]

    assert transition_rules == [("LLMEngine", "spec.storage")]


def test_model_needs_exactly_one_source() -> None:
    model = dict(walk(schema_of(ENGINE_KIND)))["spec.model"]

    assert [r["rule"] for r in model["x-kubernetes-validations"]] == [
        "has(self.huggingFace) != has(self.volume)"]


def test_names_that_become_service_names_are_checked() -> None:
    name = schema_of(DEPLOYMENT_KIND)["properties"]["metadata"]["properties"]["name"]

    (rule,) = name["x-kubernetes-validations"]
    pattern = re.search(r"matches\('(.+?)'\)", rule["rule"])
    assert pattern is not None
    assert re.match(pattern.group(1), "llama-3-8b")
    assert not re.match(pattern.group(1), "8b-llama")


# --------------------------------------------------------------------------- enums, defaults


def node_at(kind: Any, path: str) -> Schema:
    node: Schema = dict(walk(schema_of(kind)))[path]
    return node


def test_enums_come_from_the_trtllm_flag_table() -> None:
    assert node_at(ENGINE_KIND, "spec.build.quantization.format")["enum"] == list(
        get_args(trtllm_facts.QuantFormat))
    assert node_at(ENGINE_KIND, "spec.build.dtype")["enum"] == list(
        get_args(trtllm_facts.Dtype))
    assert node_at(ENGINE_KIND, "spec.build.quantization.kvCacheDtype")["enum"] == ["fp8", "int8"]


def test_defaults_users_see_in_stored_objects() -> None:
    assert node_at(ENGINE_KIND, "spec.build.image")["default"] == (
        trtllm_facts.DEFAULT_TRTLLM_IMAGE)
    assert node_at(ENGINE_KIND, "spec.build")["default"] == {}
    assert node_at(ENGINE_KIND, "spec.build.parallelism.tensor")["default"] == 1
    assert node_at(DEPLOYMENT_KIND, "spec.replicas")["default"] == 1
    assert "required" not in node_at(DEPLOYMENT_KIND, "spec") or "replicas" not in node_at(
        DEPLOYMENT_KIND, "spec")["required"]


def apply_defaults(schema: Schema, value: Any) -> Any:
    """What the API server does to a stored object: fill in schema defaults, recursively."""
    if not isinstance(value, dict) or "properties" not in schema:
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [apply_defaults(schema["items"], v) for v in value]
        return value
    filled = dict(value)
    for name, child in schema["properties"].items():
        if name not in filled and "default" in child:
            filled[name] = child["default"]
        if name in filled:
            filled[name] = apply_defaults(child, filled[name])
    return filled


@pytest.mark.parametrize(("kind", "model", "minimal"), [
    (ENGINE_KIND, LLMEngineSpec, {"model": {"volume": {"claimName": "m", "path": "x"}},
                                  "targets": ["NVIDIA-L40S"], "storage": {"claimName": "e"}}),
    (DEPLOYMENT_KIND, LLMDeploymentSpec, {"engineRef": {"name": "llama"}}),
])
def test_model_defaults_equal_crd_defaults(kind: Any, model: Any, minimal: Schema) -> None:
    """A handler sees the same spec whether or not the API server filled the defaults in."""
    defaulted = apply_defaults(schema_of(kind)["properties"]["spec"], minimal)

    assert defaulted != minimal
    assert model.model_validate(defaulted) == model.model_validate(minimal)


# --------------------------------------------------------------------------- kubectl


def test_names_short_names_and_category() -> None:
    engine, deployment = crd_of(ENGINE_KIND)["spec"], crd_of(DEPLOYMENT_KIND)["spec"]

    assert engine["group"] == deployment["group"] == "trtllm.dev"
    assert engine["scope"] == deployment["scope"] == "Namespaced"
    assert engine["names"]["shortNames"] == ["llme"]
    assert deployment["names"]["shortNames"] == ["llmd"]
    assert engine["names"]["categories"] == deployment["names"]["categories"] == ["llm"]
    assert [v["name"] for v in engine["versions"]] == ["v1alpha1"]


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    for kind in KINDS:
        conditions = node_at(kind, "status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) >= {"type", "status", "lastTransitionTime"}


def test_subresources() -> None:
    assert version_of(ENGINE_KIND)["subresources"] == {"status": {}}
    assert version_of(DEPLOYMENT_KIND)["subresources"] == {
        "status": {},
        "scale": {"specReplicasPath": ".spec.replicas",
                  "statusReplicasPath": ".status.replicas",
                  "labelSelectorPath": ".status.selector"},
    }
    assert node_at(DEPLOYMENT_KIND, "status.selector")["type"] == "string"


def columns(kind: Any, priority: int) -> list[str]:
    return [c["name"] for c in version_of(kind)["additionalPrinterColumns"]
            if c.get("priority", 0) == priority]


def test_printer_columns() -> None:
    assert columns(ENGINE_KIND, 0) == ["Ready", "Built", "Model", "Backend", "Age"]
    assert columns(DEPLOYMENT_KIND, 0) == ["Ready", "Replicas", "Engine", "GPU", "Age"]
    assert columns(ENGINE_KIND, 1) == ["Cache", "Reason", "Message"]
    assert columns(DEPLOYMENT_KIND, 1) == ["Endpoint", "Reason", "Message"]


def test_every_column_reads_a_field_the_schema_declares() -> None:
    for kind in KINDS:
        paths = {f".{p}" for p, _ in walk(schema_of(kind))}
        for column in version_of(kind)["additionalPrinterColumns"]:
            json_path = re.sub(r"\[\?\(@\.type==\"\w+\"\)\]", "[]", column["jsonPath"])
            assert json_path in paths or json_path == ".metadata.creationTimestamp", json_path
