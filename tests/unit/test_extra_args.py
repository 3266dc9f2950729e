"""spec.build.extraArgs and spec.serve.extraArgs, checked flag by flag against the flag table of
the image's release line (UnknownFlag, FlagNotAllowed, FlagValueInvalid)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_validation import CLUSTER, deployment, engine, only
from trtllm_operator import flag_tables
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.validation import (
    BUILD_FLAGS_NOT_ALLOWED,
    SERVE_FLAGS_NOT_ALLOWED,
    Finding,
    Reason,
    Severity,
    validate_deployment,
    validate_engine,
)

REPO = Path(__file__).resolve().parents[2]
FLAG_TABLE = REPO / "build-jobs" / "trtllm_flags_1_2.json"
REFERENCE = Path(os.environ.get("TRTLLM_CLI_REFERENCE")
                 or REPO.parent / "shared" / "reference" / "trtllm-cli-1.2.json")


def build_findings(*args: str, image: str | None = None) -> tuple[Finding, ...]:
    return validate_engine(engine(image=image, extra_args=args), CLUSTER)


def serve_findings(*args: str, **spec: Any) -> tuple[Finding, ...]:
    return validate_deployment(deployment(serve={"extraArgs": list(args)}, **spec), engine(),
                               CLUSTER)


# --------------------------------------------------------------------------- the table


def test_the_operator_reads_the_table_the_build_job_is_tested_against() -> None:
    shipped = json.loads(FLAG_TABLE.read_text())
    build = flag_tables.table("trtllm-build")

    assert {n for n in build.flags if build.flags[n].name == n} == set(shipped["trtllm_build"])
    assert build.flags["--max_decoder_seq_len"].name == "--max_seq_len"  # an alias
    serve = flag_tables.table("trtllm-serve")
    assert set(serve.flags) == set(shipped["trtllm_serve"]) - {"MODEL"}


@pytest.mark.parametrize(("tool", "flag", "arity"), [
    ("trtllm-build", "--strip_plan", "none"),
    ("trtllm-build", "--logits_dtype", "one"),
    ("trtllm-build", "--lora_dir", "many"),
    ("trtllm-serve", "--trust_remote_code", "none"),
    ("trtllm-serve", "--num_postprocess_workers", "one"),
])
def test_the_table_says_how_many_values_a_flag_takes(tool: flag_tables.Tool, flag: str,
                                                     arity: str) -> None:
    spec = flag_tables.table(tool).get(flag)

    assert spec is not None
    assert spec.arity == arity


@pytest.mark.parametrize(("release", "has_table"), [
    ("1.0.0", True), ("1.2.0", True), ("1.3.0rc20", True), ("1.3.0rc21", False),
    ("0.21.0", False),
])
def test_the_1_2_table_stands_for_the_engine_releases(release: str, has_table: bool) -> None:
    parsed = facts.parse_release(release)
    assert parsed is not None

    table = flag_tables.for_release("trtllm-build", parsed)

    assert (table is not None) is has_table
    if table is not None:
        assert table.line == "1.2"


needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(),
    reason=f"TensorRT-LLM flag reference not found at {REFERENCE} (set TRTLLM_CLI_REFERENCE)")


@needs_reference
def test_the_serve_table_is_the_1_2_flag_set_of_the_reference() -> None:
    """Every trtllm-serve flag the reference finds both before and after the 1.2 branch (so in
    1.2.x), with its type and choices; none that is only in later releases."""
    reference = {a["flag"]: a for a in json.loads(REFERENCE.read_text())["trtllm_serve"]["args"]}
    serve = json.loads(FLAG_TABLE.read_text())["trtllm_serve"]

    assert set(serve) == {name for name, arg in reference.items() if arg["in_both"]}
    for name, entry in serve.items():
        assert (entry["type"], entry["choices"]) == (reference[name]["type"],
                                                      reference[name]["choices"]), name


# --------------------------------------------------------------------------- trtllm-build


def test_an_unknown_build_flag_names_the_closest_real_one() -> None:
    finding = only(build_findings("--weight_streeming"))

    assert finding.reason == Reason.UNKNOWN_FLAG == "UnknownFlag"
    assert finding.severity == Severity.ERROR
    assert finding.gpu is None  # wrong for every target
    assert finding.field == "spec.build.extraArgs"
    assert finding.message == ("spec.build.extraArgs --weight_streeming is not a trtllm-build "
                               "1.2 flag; did you mean --weight_streaming?")


def test_a_typo_of_a_typed_flag_points_at_the_typed_field() -> None:
    finding = only(build_findings("--max_batchsize", "8"))

    assert finding.message.startswith("spec.build.extraArgs --max_batchsize is not a "
                                      "trtllm-build 1.2 flag; did you mean --max_batch_size?")
    assert "spec.build.limits" in finding.message


def test_a_flag_of_another_tool_is_unknown_without_a_guess() -> None:
    finding = only(build_findings("--qformat", "fp8"))

    assert finding.reason == Reason.UNKNOWN_FLAG
    assert "--qformat is not a trtllm-build 1.2 flag; remove it" in finding.message


@pytest.mark.parametrize("args", [
    ("--strip_plan",),
    ("--logits_dtype", "float32"),
    ("--logits_dtype=float32",),
    ("--lora_dir", "a", "b", "--max_lora_rank", "64"),
    ("--max_draft_len", "-1"),
    ("--max_prompt_embedding_table_size", "16"),
    ("--max_multimodal_len=16",),  # an alias
])
def test_real_build_flags_pass(args: tuple[str, ...]) -> None:
    assert build_findings(*args) == ()


def test_the_flag_is_found_in_the_equals_form_too() -> None:
    finding = only(build_findings("--strip_pln=1"))

    assert finding.reason == Reason.UNKNOWN_FLAG
    assert "--strip_pln is not a trtllm-build 1.2 flag; did you mean --strip_plan?" in \
        finding.message


@pytest.mark.parametrize(("args", "problem"), [
    (("--strip_plan", "yes"), "--strip_plan is a switch and takes no value, but yes follows it"),
    (("--strip_plan=true",), "--strip_plan is a switch and takes no value"),
    (("--logits_dtype",), "--logits_dtype needs a value (str) after it"),
    (("--logits_dtype", "--strip_plan"), "--logits_dtype needs a value"),
    (("--logits_dtype", "float64"), "value float64 is not one of float16, float32"),
    (("--opt_num_tokens", "1", "2"), "--opt_num_tokens takes one value, but 2 follow it"),
    (("--max_lora_rank", "many"), "--max_lora_rank needs an integer, not many"),
])
def test_a_build_flag_with_wrong_values_is_an_error(args: tuple[str, ...], problem: str) -> None:
    finding = only(build_findings(*args))

    assert finding.reason == Reason.FLAG_VALUE_INVALID == "FlagValueInvalid"
    assert finding.field == "spec.build.extraArgs"
    assert problem in finding.message


@pytest.mark.parametrize(("flag", "why"), [
    ("--dry_run", "it makes trtllm-build write no engine; remove it"),
    ("--max_batch_size", "use spec.build.limits"),
    ("--gemm_plugin", "spec.build.plugins"),
])
def test_real_build_flags_the_operator_does_not_pass_on(flag: str, why: str) -> None:
    finding = only(build_findings(flag, "auto"))

    assert finding.reason == Reason.FLAG_NOT_ALLOWED == "FlagNotAllowed"
    assert f"spec.build.extraArgs {flag} is not allowed here" in finding.message
    assert why in finding.message


def test_every_flag_not_allowed_in_build_args_is_a_real_one() -> None:
    known = set(flag_tables.table("trtllm-build").flags)
    real_elsewhere = {"--model_config", "--build_config", *facts.BUILD_FLAGS_REFUSED}

    assert set(BUILD_FLAGS_NOT_ALLOWED) <= known | real_elsewhere


def test_every_problem_is_reported_not_only_the_first() -> None:
    findings = build_findings("--strip_plan", "x", "--bogus_flag", "--logits_dtype")

    assert [f.reason for f in findings] == [Reason.FLAG_VALUE_INVALID, Reason.UNKNOWN_FLAG,
                                            Reason.FLAG_VALUE_INVALID]


def test_a_1_3_rc20_builder_is_checked_against_the_1_2_table() -> None:
    findings = build_findings("--bogus", image="nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc20")

    assert [f.reason for f in findings] == [Reason.UNKNOWN_FLAG]


def test_flags_are_not_judged_by_a_table_of_another_release() -> None:
    findings = build_findings("--bogus", image="nvcr.io/nvidia/tensorrt-llm/release:latest")

    assert [f.field for f in findings] == ["spec.build.image"]


def test_build_flags_of_a_pytorch_engine_are_refused_whatever_they_are() -> None:
    findings = build_findings("--bogus", image="nvcr.io/nvidia/tensorrt-llm/release:1.4.0")

    assert [(f.reason, f.field) for f in findings] == [
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.extraArgs")]


# --------------------------------------------------------------------------- trtllm-serve


def test_an_unknown_serve_flag_names_the_closest_real_one() -> None:
    finding = only(serve_findings("--num_postproces_workers", "2"))

    assert finding.reason == Reason.UNKNOWN_FLAG
    assert finding.field == "spec.serve.extraArgs"
    assert finding.message == ("spec.serve.extraArgs --num_postproces_workers is not a "
                               "trtllm-serve 1.2 flag; did you mean --num_postprocess_workers?")


@pytest.mark.parametrize("args", [
    ("--num_postprocess_workers", "2"),
    ("--trust_remote_code",),
    ("--enable_chunked_prefill", "--ep_size=2"),
    ("--reasoning_parser", "deepseek-r1"),  # choices the table does not enumerate
])
def test_real_serve_flags_pass(args: tuple[str, ...]) -> None:
    assert serve_findings(*args) == ()


def test_a_serve_flag_only_newer_releases_have_is_unknown() -> None:
    finding = only(serve_findings("--chat_template", "t.jinja"))

    assert finding.reason == Reason.UNKNOWN_FLAG
    assert "--chat_template is not a trtllm-serve 1.2 flag" in finding.message


@pytest.mark.parametrize(("args", "reason", "text"), [
    (("stray",), Reason.FLAG_VALUE_INVALID, "stray follows no flag"),
    (("--trust_remote_code", "yes"), Reason.FLAG_VALUE_INVALID, "takes no value"),
    (("--num_postprocess_workers",), Reason.FLAG_VALUE_INVALID, "needs a value (int)"),
    (("--port", "9000"), Reason.FLAG_NOT_ALLOWED, "the fields of spec.serve"),
])
def test_serve_flag_problems(args: tuple[str, ...], reason: Reason, text: str) -> None:
    finding = only(serve_findings(*args))

    assert finding.reason == reason
    assert finding.field == "spec.serve.extraArgs"
    assert text in finding.message


def test_serve_flags_follow_the_serving_image_release() -> None:
    # The serving image's release is unknown: only that is reported.
    findings = serve_findings("--bogus", image="mirror.local/trtllm:latest")
    assert [f.reason for f in findings] == [Reason.IMAGE_RELEASE_UNKNOWN]

    # Stated, it is judged, and the flags with it.
    findings = serve_findings("--bogus", image="mirror.local/trtllm:latest",
                              imageRelease="1.2.0")
    assert [f.reason for f in findings] == [Reason.UNKNOWN_FLAG]


def test_every_flag_not_allowed_in_serve_args_is_written_by_the_operator() -> None:
    assert set(SERVE_FLAGS_NOT_ALLOWED) == set(facts.SERVE_FLAGS_SET_BY_OPERATOR)
