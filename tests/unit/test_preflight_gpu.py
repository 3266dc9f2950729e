"""Preflight checks about the GPU and the spec's own text: KV-cache dtype against compute
capability, MIG products (recognised, memory per slice, no multi-GPU engines), and credentials
written as plain text in env (a warning that never repeats the value)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.unit import test_deployment_controller as dep_ctl
from tests.unit import test_engine_controller as eng_ctl
from trtllm_operator import gpus
from trtllm_operator.api import LLMDeploymentSpec, LLMEngineSpec
from trtllm_operator.deployments.controller import DeploymentController
from trtllm_operator.engines.controller import EngineController
from trtllm_operator.validation import (
    ClusterFacts,
    Finding,
    GPUPool,
    Reason,
    Severity,
    validate_deployment,
    validate_engine,
)

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L40S = "NVIDIA-L40S"
A100_MIG = "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"
H100_MIG = "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"
SHA = "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"
TOKEN = "hf_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zQQ"  # shaped like a real token, not one

CLUSTER = ClusterFacts(pools={
    H100: GPUPool(node_gpus=(8,), compute_capability=(9, 0)),
    A100: GPUPool(node_gpus=(8,), compute_capability=(8, 0)),
    L40S: GPUPool(node_gpus=(4,), compute_capability=(8, 9)),
    A100_MIG: GPUPool(node_gpus=(56,), compute_capability=(8, 0)),
})


def engine(targets: tuple[str, ...], *, kv: str | None = None, fmt: str | None = None,
           tp: int = 1, pp: int = 1, env: list[dict[str, Any]] | None = None,
           hugging_face: bool = True) -> LLMEngineSpec:
    build: dict[str, Any] = {"parallelism": {"tensor": tp, "pipeline": pp}}
    quant = {k: v for k, v in (("format", fmt), ("kvCacheDtype", kv)) if v}
    if quant:
        build["quantization"] = quant
    if env is not None:
        build["env"] = env
    model = ({"huggingFace": {"repo": "meta-llama/Meta-Llama-3-8B-Instruct", "revision": SHA}}
             if hugging_face else {"volume": {"claimName": "models", "path": "llama"}})
    return LLMEngineSpec.model_validate({"model": model, "build": build,
                                         "targets": list(targets),
                                         "storage": {"claimName": "engines"}})


def of(findings: tuple[Finding, ...], reason: Reason) -> list[Finding]:
    return [f for f in findings if f.reason == reason]


# --------------------------------------------------------------------------- KV-cache dtype


def test_fp8_kv_cache_on_a100_is_an_error_for_that_target_naming_int8() -> None:
    found = validate_engine(engine((H100, A100), kv="fp8"), CLUSTER)

    [finding] = of(found, Reason.KV_CACHE_DTYPE_UNSUPPORTED)
    assert finding.reason == "KvCacheDtypeUnsupported"
    assert finding.severity is Severity.ERROR
    assert finding.field == "spec.build.quantization.kvCacheDtype"
    assert finding.gpu == A100
    assert finding.message == (
        "spec.build.quantization.kvCacheDtype fp8 needs compute capability >= 8.9; target "
        "NVIDIA-A100-SXM4-80GB is 8.0: set it to int8, remove it, or remove "
        "NVIDIA-A100-SXM4-80GB from spec.targets")


@pytest.mark.parametrize(("kv", "gpu"), [("fp8", H100), ("fp8", L40S), ("int8", A100),
                                         ("int8", H100)])
def test_kv_cache_dtypes_on_gpus_that_run_them_pass(kv: str, gpu: str) -> None:
    assert of(validate_engine(engine((gpu,), kv=kv), CLUSTER),
              Reason.KV_CACHE_DTYPE_UNSUPPORTED) == []


def test_kv_cache_dtype_is_judged_from_the_catalog_before_nodes_join() -> None:
    found = validate_engine(engine((A100,), kv="fp8"), ClusterFacts())
    assert [f.gpu for f in of(found, Reason.KV_CACHE_DTYPE_UNSUPPORTED)] == [A100]


def test_kv_cache_and_weight_format_are_judged_separately() -> None:
    # int4_awq runs on 8.0, the fp8 KV cache does not: only the KV cache is refused.
    found = validate_engine(engine((A100,), fmt="int4_awq", kv="fp8"), CLUSTER)
    assert [f.reason for f in found] == [Reason.KV_CACHE_DTYPE_UNSUPPORTED]


# --------------------------------------------------------------------------- MIG products


def test_a_mig_product_of_a_catalog_gpu_has_its_compute_capability_and_slice_memory() -> None:
    slice_ = gpus.by_product(A100_MIG)

    assert slice_ is not None
    assert slice_.is_mig
    assert slice_.mig_profile == "1g.10gb"
    assert slice_.compute_capability == (8, 0)
    assert slice_.memory_mib == 10 * 1024
    assert slice_.labels()[gpus.PRODUCT_LABEL] == A100_MIG
    assert slice_.labels()[gpus.MIG_STRATEGY_LABEL] == "single"
    assert slice_.labels()[gpus.MEMORY_LABEL] == "10240"
    whole = gpus.by_product(A100)
    assert whole is not None
    assert not whole.is_mig
    assert gpus.MIG_STRATEGY_LABEL not in whole.labels()


@pytest.mark.parametrize(("product", "mib"), [
    (H100, 81559),                                  # a whole catalog GPU: per GPU
    (A100_MIG, 10240),                              # a slice of a catalog GPU: per slice
    (H100_MIG, 40960),
    ("NVIDIA-A30-MIG-2g.12gb", 12288),              # GPU not in the catalog: the profile says
    ("NVIDIA-H100-80GB-HBM3-MIG-1g.10gb+me", 10240),  # media-extension profile
    ("NVIDIA-A30", None),                           # unknown whole GPU
    ("NVIDIA-H100-80GB-HBM3-MIG-", None),           # not a profile
])
def test_memory_mib_is_per_gpu_or_per_slice(product: str, mib: int | None) -> None:
    assert gpus.memory_mib(product) == mib


def test_names_that_are_not_mig_products_are_not_mistaken_for_them() -> None:
    for product in (H100, "NVIDIA-A100-SXM4-80GB-MIG", "MIG-1g.10gb", "NVIDIA-MIGHTY-1g.10gb"):
        assert gpus.mig_profile(product) is None


def test_the_local_cluster_can_make_nodes_of_a_mig_product() -> None:
    slice_type = gpus.gpu_type(A100_MIG)
    assert slice_type.product == A100_MIG
    assert slice_type.gpus_per_node == 8 * 7  # 1g profile: 7 slices per A100


def test_a_multi_gpu_engine_for_a_mig_target_is_an_error_for_that_target() -> None:
    found = validate_engine(engine((H100, A100_MIG), tp=2), CLUSTER)

    [finding] = of(found, Reason.MIG_PARALLELISM)
    assert finding.reason == "ParallelismOnMIG"
    assert finding.severity is Severity.ERROR
    assert finding.field == "spec.build.parallelism"
    assert finding.gpu == A100_MIG
    assert "tensor 2 x pipeline 1 needs 2 GPUs" in finding.message
    assert "MIG slice (1g.10gb)" in finding.message
    assert f"set tensor and pipeline to 1, or remove {A100_MIG} from spec.targets" in (
        finding.message)


def test_pipeline_parallelism_on_a_mig_slice_is_refused_too() -> None:
    found = validate_engine(engine((H100_MIG,), pp=2), ClusterFacts())
    assert [f.gpu for f in of(found, Reason.MIG_PARALLELISM)] == [H100_MIG]


def test_single_gpu_engines_on_mig_and_multi_gpu_engines_on_whole_gpus_pass() -> None:
    assert of(validate_engine(engine((A100_MIG,)), CLUSTER), Reason.MIG_PARALLELISM) == []
    assert of(validate_engine(engine((H100,), tp=4), CLUSTER), Reason.MIG_PARALLELISM) == []


def test_a_mig_slice_keeps_its_gpus_compute_limits() -> None:
    found = validate_engine(engine((A100_MIG,), kv="fp8"), ClusterFacts())
    assert [f.gpu for f in of(found, Reason.KV_CACHE_DTYPE_UNSUPPORTED)] == [A100_MIG]


# --------------------------------------------------------------------------- plain-text secrets


@pytest.mark.parametrize("name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY",
                                  "GITHUB_TOKEN", "CLIENT_SECRET", "DB_PASSWORD",
                                  "AWS_SECRET_ACCESS_KEY", "hf_token"])
def test_a_credential_name_with_a_literal_value_is_a_warning(name: str) -> None:
    env = [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
           {"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"},
           {"name": name, "value": "s3cr3t-value"}]
    [finding] = validate_engine(engine((H100,), env=env), CLUSTER)

    assert finding.reason == "PlainTextSecret"
    assert finding.severity is Severity.WARNING
    assert finding.gpu is None
    assert finding.field == "spec.build.env[2].value"
    assert finding.message.startswith(f"spec.build.env[2].value: {name} is set as plain text")
    assert "spec.build.env[2].valueFrom.secretKeyRef" in finding.message
    assert "spec.model.huggingFace.tokenSecretRef" in finding.message
    assert "s3cr3t-value" not in finding.message


def test_a_hugging_face_token_value_under_any_name_is_a_warning() -> None:
    env = [{"name": "MY_SETTING", "value": f"Bearer {TOKEN}"}]
    [finding] = validate_engine(engine((H100,), env=env, hugging_face=False), CLUSTER)

    assert finding.reason == Reason.PLAIN_TEXT_SECRET
    assert "looks like a Hugging Face access token" in finding.message
    assert "tokenSecretRef" not in finding.message  # a volume checkpoint has no token field
    assert TOKEN not in finding.message
    assert "hf_" not in finding.message


@pytest.mark.parametrize("entry", [
    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}},
    {"name": "HF_TOKEN", "value": ""},
    {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
    {"name": "HF_HOME", "value": "/cache/hf"},
    {"name": "NOTE", "value": "hf_short"},
])
def test_env_without_a_literal_credential_passes(entry: dict[str, Any]) -> None:
    assert validate_engine(engine((H100,), env=[entry]), CLUSTER) == ()


def test_a_deployment_with_a_literal_token_warns_on_spec_env() -> None:
    spec = LLMDeploymentSpec.model_validate({
        "engineRef": {"name": "llama"},
        "env": [{"name": "OPENAI_API_KEY", "value": "sk-not-real"}]})
    [finding] = validate_deployment(spec, engine((H100,)), CLUSTER)

    assert (finding.reason, finding.severity) == (Reason.PLAIN_TEXT_SECRET, Severity.WARNING)
    assert finding.field == "spec.env[0].value"
    assert "use spec.env[0].valueFrom.secretKeyRef" in finding.message
    assert "sk-not-real" not in finding.message


Event = tuple[str, str, str]


def _events_sink(events: list[Event]) -> Any:
    def sink(_body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        events.append((kind, reason, message))
    return sink


def test_the_engine_builds_and_shows_the_warning_in_spec_warning_and_an_event() -> None:
    body = yaml.safe_load((ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u", "generation": 1,
                         "finalizers": ["trtllm.dev/in-use-protection"]}
    body["spec"]["targets"] = [H100]
    body["spec"]["build"]["env"] = [{"name": "HF_TOKEN", "value": TOKEN}]
    view, writer = eng_ctl.FakeView(body), eng_ctl.FakeWriter()
    events: list[Event] = []
    controller = EngineController(view=view, writer=writer, job_resource=None,
                                  script={"build.py": "print()"}, events=_events_sink(events),
                                  clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))

    asyncio.run(controller.reconcile(eng_ctl.KEY))

    assert [a["kind"] for a in writer.applied] == ["Job"]  # a warning: the build still starts
    status = writer.status_patches[-1]
    warning = next(c for c in status["conditions"] if c["type"] == "SpecWarning")
    assert (warning["status"], warning["reason"]) == ("True", "PlainTextSecret")
    assert "spec.build.env[0].value: HF_TOKEN" in warning["message"]
    assert ("Warning", "PlainTextSecret") in [(k, r) for k, r, _ in events]
    # The value is nowhere the operator writes: status, Events.
    assert TOKEN not in json.dumps(status)
    assert all(TOKEN not in m for _, _, m in events)

    # Seen again unchanged: no second Event.
    view.body = view.body | {"status": status}
    asyncio.run(controller.reconcile(eng_ctl.KEY))
    assert [r for _, r, _ in events].count("PlainTextSecret") == 1

    # Moved into a Secret: the condition goes away.
    view.body["spec"]["build"]["env"] = [{"name": "HF_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}]
    asyncio.run(controller.reconcile(eng_ctl.KEY))
    assert "SpecWarning" not in [c["type"] for c in writer.status_patches[-1]["conditions"]]


def test_the_deployment_rolls_out_and_shows_the_warning_in_spec_warning_and_an_event() -> None:
    view = dep_ctl.FakeView()
    view.body["spec"]["env"] = [{"name": "HF_TOKEN", "value": TOKEN}]
    writer = dep_ctl.FakeWriter()
    events: list[Event] = []
    controller = DeploymentController(view=view, writer=writer, events=_events_sink(events),
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))

    asyncio.run(controller.reconcile(dep_ctl.KEY))

    assert "Deployment" in [a["kind"] for a in writer.applied]
    status = writer.status_patches[-1]
    warning = next(c for c in status["conditions"] if c["type"] == "SpecWarning")
    assert (warning["status"], warning["reason"]) == ("True", "PlainTextSecret")
    assert "spec.env[0].value: HF_TOKEN" in warning["message"]
    assert ("Warning", "PlainTextSecret") in [(k, r) for k, r, _ in events]
    assert TOKEN not in json.dumps(status)
    assert all(TOKEN not in m for _, _, m in events)


def test_the_warning_is_given_even_while_the_engine_is_missing() -> None:
    spec = LLMDeploymentSpec.model_validate({
        "engineRef": {"name": "llama"}, "env": [{"name": "HF_TOKEN", "value": "x"}]})
    reasons = [f.reason for f in validate_deployment(spec, None, CLUSTER)]
    assert reasons == [Reason.ENGINE_NOT_FOUND, Reason.PLAIN_TEXT_SECRET]
