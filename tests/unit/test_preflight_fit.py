"""Memory fit before a build: GPU memory from node labels, the checkpoint size's sources, the
ModelDoesNotFit check, auto leaving GPU types out (and saying so), and a build Job's own fit
failure (exit 7) in status."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest

from tests.unit.test_build_job import job as entrypoint
from tests.unit.test_engine_controller import KEY, FakeView, FakeWriter, _setup
from tests.unit.test_engine_planning import _body, _engine, _job, _pod
from trtllm_jobs import contract, reporting
from trtllm_operator import gpus
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api import LLMEngineSpec
from trtllm_operator.api.engine import ModelSource, SkippedTarget, size_hint_bytes
from trtllm_operator.engines import planning
from trtllm_operator.engines.controller import EngineController
from trtllm_operator.engines.status import (
    Observed,
    decide_target,
    no_targets_reason,
    skipped_targets,
)
from trtllm_operator.handlers import IndexView, node_fact
from trtllm_operator.validation import (
    CheckpointSize,
    ClusterFacts,
    Finding,
    GPUPool,
    Reason,
    Severity,
    check_memory_fit,
    checkpoint_size,
    validate_engine,
)

H100 = gpus.gpu_type("h100").product
L40S = gpus.gpu_type("l40s").product
A100 = gpus.gpu_type("a100").product
L40S_MIB = gpus.gpu_type("l40s").memory_mib  # 46068 MiB = 45.0 GiB
GiB = 1 << 30

FLEET = ClusterFacts({
    H100: GPUPool((8, 8), (9, 0), gpus.gpu_type("h100").memory_mib),
    L40S: GPUPool((4,), (8, 9), L40S_MIB),
    A100: GPUPool((8,), (8, 0), gpus.gpu_type("a100").memory_mib),
})


def spec(targets: tuple[str, ...] = (L40S,), *, dtype: str = "bfloat16", fmt: str | None = None,
         tp: int = 1, pp: int = 1, hint: int | str | None = None) -> LLMEngineSpec:
    build: dict[str, Any] = {"dtype": dtype, "parallelism": {"tensor": tp, "pipeline": pp}}
    if fmt:
        build["quantization"] = {"format": fmt}
    model: dict[str, Any] = {"huggingFace": {"repo": "org/model", "revision": "a" * 40}}
    if hint is not None:
        model["sizeHint"] = hint
    return LLMEngineSpec.model_validate({"model": model, "build": build,
                                         "targets": list(targets),
                                         "storage": {"claimName": "engines"}})


def fit(s: LLMEngineSpec, target: str, size_bytes: int,
        cluster: ClusterFacts = FLEET) -> list[Finding]:
    return check_memory_fit(s, target, cluster, CheckpointSize(size_bytes, "a test"))


# --------------------------------------------------------------------------- sizeHint


@pytest.mark.parametrize(("hint", "expected"), [
    ("16Gi", 16 * GiB), ("1.5Ti", 3 * (1 << 40) // 2), ("16G", 16_000_000_000),
    ("17179869184", 16 * GiB), (17179869184, 16 * GiB), (".5Ki", 512),
])
def test_size_hint_is_a_quantity_of_bytes(hint: int | str, expected: int) -> None:
    model = ModelSource.model_validate({"volume": {"claimName": "c", "path": "m"},
                                        "sizeHint": hint})
    assert model.size_hint is not None
    assert size_hint_bytes(model.size_hint) == expected


@pytest.mark.parametrize("hint", ["0", "0Gi", "-1Gi", "16GB", "16 Gi", "1e9", "500m", 0, -5])
def test_size_hint_that_is_no_positive_byte_count_is_refused(hint: int | str) -> None:
    with pytest.raises(ValueError, match="sizeHint"):
        ModelSource.model_validate({"volume": {"claimName": "c", "path": "m"}, "sizeHint": hint})


def test_size_hint_is_not_a_fingerprint_input() -> None:
    # A hint changes what is checked, never the engine's bytes: no rebuild.
    body = _body()
    hinted = copy.deepcopy(body)
    hinted["spec"]["model"]["sizeHint"] = "16Gi"
    assert planning.fingerprint(_engine(body).spec, H100) == planning.fingerprint(
        _engine(hinted).spec, H100)


# --------------------------------------------------------------------------- GPU memory facts


def test_node_fact_reads_the_memory_label_and_tolerates_a_bad_one() -> None:
    labels = gpus.gpu_type("l40s").labels(4)
    assert node_fact("n", labels, {"allocatable": {"nvidia.com/gpu": "4"}}) == (
        L40S, 4, (8, 9), L40S_MIB)
    assert node_fact("n", labels | {gpus.MEMORY_LABEL: "lots"}, {})[3] is None  # type: ignore[index]
    no_label = {k: v for k, v in labels.items() if k != gpus.MEMORY_LABEL}
    assert node_fact("n", no_label, {})[3] is None  # type: ignore[index]


def test_a_pool_has_the_smallest_memory_of_its_nodes() -> None:
    view = IndexView()
    view.indexes["gpu_nodes"] = {L40S: [(L40S, 4, (8, 9), 46068), (L40S, 4, (8, 9), 20000),
                                        (L40S, 2, (8, 9), None)]}
    pool = view.cluster_facts().pools[L40S]
    assert pool.memory_mib == 20000
    assert pool.node_gpus == (2, 4, 4)


def test_memory_comes_from_the_label_else_from_the_catalog() -> None:
    labelled = ClusterFacts({H100: GPUPool((8,), (9, 0), 20000)})
    assert labelled.memory_mib(H100) == 20000
    assert ClusterFacts({H100: GPUPool((8,), (9, 0))}).memory_mib(H100) == 81559
    assert ClusterFacts().memory_mib(H100) == 81559  # no node yet: the catalog still knows
    assert ClusterFacts().memory_mib("NVIDIA-Unknown-GPU") is None


# --------------------------------------------------------------------------- the check


@pytest.mark.parametrize(("dtype", "fmt", "tp", "pp"), [
    ("bfloat16", None, 1, 1), ("float32", None, 1, 1), ("auto", "fp8", 1, 1),
    ("bfloat16", "int4_awq", 2, 1), ("float16", "nvfp4", 1, 2), ("bfloat16", None, 4, 2),
])
def test_the_check_refuses_exactly_when_the_shared_formula_says_it_cannot_fit(
        dtype: str, fmt: str | None, tp: int, pp: int) -> None:
    s = spec(dtype=dtype, fmt=fmt, tp=tp, pp=pp)
    have = L40S_MIB << 20
    weights = fmt or dtype
    # The largest size that fits, found on the formula itself; one byte more does not fit.
    lo, hi = 0, 1 << 45
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if facts.fit_need_bytes(mid, weights, tp * pp) <= have else (
            lo, mid - 1)
    assert lo > 0
    assert fit(s, L40S, lo) == []
    (finding,) = fit(s, L40S, lo + 64)
    assert (finding.reason, finding.severity, finding.gpu) == (
        Reason.MODEL_DOES_NOT_FIT, Severity.ERROR, L40S)


def test_the_message_gives_need_and_have_in_gib_and_every_fix() -> None:
    (finding,) = fit(spec(), L40S, 60 * GiB)
    assert finding.field == "spec.build.parallelism"
    message = finding.message
    assert "needs about 68.0 GiB per GPU" in message  # 60 x 1.1 + 2
    assert "one NVIDIA-L40S GPU has 45.0 GiB" in message
    assert "60.0 GiB of weights at 16 bits, from a test" in message
    assert "raise spec.build.parallelism.tensor to 2" in message  # 60 x 1.1 / 2 + 2 = 35
    assert "spec.build.quantization.format: fp8 or w4a8_awq" in message  # L40S runs fp8
    assert "a GPU type with at least 68.0 GiB per GPU" in message
    assert "remove NVIDIA-L40S from spec.targets" in message


def test_fixes_respect_the_node_size_and_the_gpus_compute_capability() -> None:
    # 700 GiB at bf16 needs tp 16 on A100 (80 GiB): more than the 8 GPUs of its nodes.
    (finding,) = fit(spec((A100,)), A100, 700 * GiB)
    assert finding.field == "spec.targets"
    assert "parallelism.tensor" not in finding.message
    # 100 GiB: tp 2 would do, and the formats an A100 (8.0) runs, nearest first; not fp8.
    (finding,) = fit(spec((A100,)), A100, 100 * GiB)
    assert "raise spec.build.parallelism.tensor to 2" in finding.message
    assert "spec.build.quantization.format: int4_awq or int8_sq)" in finding.message
    assert "fp8" not in finding.message
    # The node sizes observed count, not the catalog's typical node.
    small_nodes = ClusterFacts({L40S: GPUPool((1,), (8, 9), L40S_MIB)})
    (finding,) = fit(spec(), L40S, 60 * GiB, small_nodes)
    assert "parallelism.tensor" not in finding.message


def test_quantized_weights_fit_where_16_bit_ones_do_not() -> None:
    assert fit(spec(), L40S, 60 * GiB) != []
    assert fit(spec(fmt="fp8"), L40S, 60 * GiB) == []  # 30 x 1.1 + 2 = 35 GiB


def test_unknown_size_or_unknown_memory_gives_no_verdict() -> None:
    assert check_memory_fit(spec(), L40S, FLEET, None) == []
    odd = "NVIDIA-Unknown-GPU"
    assert fit(spec((odd,)), odd, 1 << 50, ClusterFacts({odd: GPUPool((8,))})) == []


def test_validate_engine_runs_the_check_per_target_when_given_a_size() -> None:
    s = spec((H100, L40S), hint="60Gi")
    found = validate_engine(s, FLEET, checkpoint_size(s, None))
    assert [(f.reason, f.gpu) for f in found] == [(Reason.MODEL_DOES_NOT_FIT, L40S)]
    assert validate_engine(s, FLEET) == ()  # no size given: nothing to say


# --------------------------------------------------------------------------- size sources


def test_size_sources_in_order_a_measured_build_then_the_hint_then_nothing() -> None:
    hinted, bare = spec(hint="16Gi"), spec()
    measured = checkpoint_size(hinted, 15 * GiB)
    assert measured is not None
    assert measured.bytes == 15 * GiB
    assert "build of an engine of the same model" in measured.source
    from_hint = checkpoint_size(hinted, None)
    assert from_hint == CheckpointSize(16 * GiB, "spec.model.sizeHint 16Gi")
    assert checkpoint_size(bare, None) is None
    measured_only = checkpoint_size(bare, 3 * GiB)
    assert measured_only is not None
    assert measured_only.bytes == 3 * GiB


def test_checkpoint_key_names_the_model_not_the_engine() -> None:
    hf = {"huggingFace": {"repo": "org/m", "revision": "abc"}, "sizeHint": "1Gi"}
    assert planning.checkpoint_key("a", hf) == planning.checkpoint_key("b", hf) == (
        "huggingFace", "org/m", "abc")
    assert planning.checkpoint_key("a", {"huggingFace": {"repo": "org/m"}}) == (
        "huggingFace", "org/m", "main")
    vol = {"volume": {"claimName": "models", "path": "llama/"}}
    # Claims are namespaced: the same claim name elsewhere is another checkpoint.
    assert planning.checkpoint_key("a", vol) == ("volume", "a", "models", "llama")
    assert planning.checkpoint_key("a", vol) != planning.checkpoint_key("b", vol)


def test_the_index_view_gives_the_smallest_size_recorded_for_a_model() -> None:
    view = IndexView()
    key = ("huggingFace", "org/m", "main")
    assert view.checkpoint_bytes(key) is None
    view.indexes["checkpoint_sizes"] = {key: [16 * GiB, 15 * GiB]}
    assert view.checkpoint_bytes(key) == 15 * GiB
    assert view.checkpoint_bytes(None) is None


def test_the_checkpoint_sizes_index_keeps_every_measured_size() -> None:
    from trtllm_operator.handlers import checkpoint_sizes

    spec_ = {"model": {"huggingFace": {"repo": "org/m", "revision": "r"}}}
    status = {"targets": [
        {"gpu": H100, "state": "Built", "checkpointBytes": 10},
        {"gpu": L40S, "state": "Failed", "checkpointBytes": 12},  # refused as too big
        {"gpu": A100, "state": "Built"},
    ]}
    assert asyncio.run(checkpoint_sizes(namespace="ml", spec=spec_, status=status)) == {
        ("huggingFace", "org/m", "r"): 10}
    assert asyncio.run(checkpoint_sizes(namespace="ml", spec=spec_,
                                        status={"targets": []})) is None


def test_a_built_target_records_the_checkpoint_size_the_build_measured() -> None:
    summary = json.dumps({"phase": "Built", "checkpointBytes": 16_060_522_496})
    engine = _engine()
    plan = planning.plan_target(engine, H100)
    decision = decide_target(plan, "img", "ml", [], Observed(
        job=_job("Complete"), pod=_pod("Succeeded", summary)), FLEET)
    assert decision.status.checkpoint_bytes == 16_060_522_496
    odd = json.dumps({"phase": "Built", "checkpointBytes": "big"})
    decision = decide_target(plan, "img", "ml", [], Observed(
        job=_job("Complete"), pod=_pod("Succeeded", odd)), FLEET)
    assert decision.status.checkpoint_bytes is None


# --------------------------------------------------------------------------- the controller


def _controller(targets: list[str], hint: str | None = None,
                cluster: ClusterFacts = FLEET) -> tuple[EngineController, FakeView, FakeWriter,
                                                        list[tuple[str, str]]]:
    controller, view, writer, events = _setup()
    view.body["spec"]["targets"] = targets
    if hint:
        view.body["spec"]["model"]["sizeHint"] = hint
    view.facts = cluster
    return controller, view, writer, events


def _status(writer: FakeWriter) -> dict[str, Any]:
    status: dict[str, Any] = writer.status_patches[-1]
    return status


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    ready: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "Ready")
    return ready


def _build_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    (entry,) = [e for e in container["env"] if e["name"] == "TRTLLM_BUILD_SPEC"]
    value: dict[str, Any] = json.loads(entry["value"])
    return value


def test_the_build_job_gets_its_gpu_types_memory_from_the_label() -> None:
    small_h100 = ClusterFacts({H100: GPUPool((8,), (9, 0), 40000)})
    controller, _view, writer, _events = _controller([H100], cluster=small_h100)
    asyncio.run(controller.reconcile(KEY))
    (job_manifest,) = [a for a in writer.applied if a["kind"] == "Job"]
    assert _build_spec(job_manifest)["gpuMemoryMiB"] == 40000
    # The entrypoint reads it as the memory to check against.
    assert entrypoint.parse_spec(_build_spec(job_manifest)).gpu_memory_mib == 40000


def test_an_explicit_target_that_cannot_fit_is_invalid_and_gets_no_job() -> None:
    controller, _view, writer, events = _controller([H100, L40S], hint="60Gi")
    asyncio.run(controller.reconcile(KEY))
    targets = {t["gpu"]: t for t in _status(writer)["targets"]}
    assert (targets[L40S]["state"], targets[L40S]["reason"]) == ("Invalid", "ModelDoesNotFit")
    assert "job" not in targets[L40S]
    assert "needs about 68.0 GiB per GPU" in targets[L40S]["message"]
    assert targets[H100]["state"] == "Pending"
    jobs_made = [a["metadata"]["labels"]["trtllm.dev/gpu-product"] for a in writer.applied
                 if a["kind"] == "Job"]
    assert jobs_made == [H100]
    assert ("Warning", "TargetInvalid") in events


def test_a_size_measured_by_another_engines_build_beats_the_hint() -> None:
    # The hint says it fits the L40S; a build of the same model measured more: refused.
    controller, view, writer, _events = _controller([L40S], hint="16Gi")
    key = planning.checkpoint_key("ml", view.body["spec"]["model"])
    assert key is not None
    view.sizes[key] = 60 * GiB
    asyncio.run(controller.reconcile(KEY))
    (target,) = _status(writer)["targets"]
    assert target["reason"] == "ModelDoesNotFit"
    assert "from the build of an engine of the same model and revision" in target["message"]
    assert not [a for a in writer.applied if a["kind"] == "Job"]


def test_auto_skips_gpu_types_the_model_cannot_fit_and_says_so_once() -> None:
    controller, view, writer, events = _controller(["auto"], hint="60Gi")
    asyncio.run(controller.reconcile(KEY))
    status = _status(writer)
    assert sorted(t["gpu"] for t in status["targets"]) == [A100, H100]
    (skipped,) = status["skippedTargets"]
    assert (skipped["gpu"], skipped["reason"]) == (L40S, "ModelDoesNotFit")
    assert "one NVIDIA-L40S GPU has 45.0 GiB" in skipped["message"]
    assert sorted(a["metadata"]["labels"]["trtllm.dev/gpu-product"] for a in writer.applied
                  if a["kind"] == "Job") == [A100, H100]
    assert events.count(("Normal", "TargetSkipped")) == 1
    # Reconciled again before the view shows our write, with something else changed (the
    # Jobs are seen now): status is written again, the skipped type not announced again.
    for j in writer.applied:
        if j["kind"] == "Job":
            view.jobs[j["metadata"]["name"]] = {"metadata": j["metadata"], "status": {}}
    patches = len(writer.status_patches)
    asyncio.run(controller.reconcile(KEY))
    assert len(writer.status_patches) == patches + 1
    assert events.count(("Normal", "TargetSkipped")) == 1
    # Reconciled again with the status stored: nothing new to say.
    status = _status(writer)
    view.body = copy.deepcopy(view.body) | {"status": status}
    asyncio.run(controller.reconcile(KEY))
    assert events.count(("Normal", "TargetSkipped")) == 1


def test_auto_reports_gpu_types_left_out_for_other_errors_too() -> None:
    controller, view, writer, _events = _controller(["auto"])
    view.body["spec"]["build"]["quantization"] = {"format": "fp8"}
    asyncio.run(controller.reconcile(KEY))
    status = _status(writer)
    assert [(s["gpu"], s["reason"]) for s in status["skippedTargets"]] == [
        (A100, "QuantizationUnsupported")]


def test_nothing_skipped_means_no_skipped_targets_field() -> None:
    controller, _view, writer, _events = _controller(["auto"])
    asyncio.run(controller.reconcile(KEY))
    assert "skippedTargets" not in _status(writer)


def test_auto_with_every_gpu_type_too_small_is_not_ready_with_model_does_not_fit() -> None:
    controller, _view, writer, _events = _controller(["auto"], hint="400Gi")
    asyncio.run(controller.reconcile(KEY))
    status = _status(writer)
    assert status["targets"] == []
    assert {s["gpu"] for s in status["skippedTargets"]} == {A100, H100, L40S}
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "ModelDoesNotFit")
    assert "status.skippedTargets" in ready["message"]
    assert not [a for a in writer.applied if a["kind"] == "Job"]


def test_skipped_targets_consider_only_pools_with_gpus_and_no_targets_reason() -> None:
    error = Finding(Reason.MODEL_DOES_NOT_FIT, Severity.ERROR, "spec.targets", "too big", L40S)
    warning = Finding(Reason.GPU_NOT_IN_CLUSTER, Severity.WARNING, "spec.targets", "w", H100)
    cluster = ClusterFacts({L40S: GPUPool((4,)), H100: GPUPool((8,)), A100: GPUPool(())})
    found = skipped_targets({L40S: [error], H100: [warning], A100: [error]}, cluster)
    assert found == (SkippedTarget(gpu=L40S, reason="ModelDoesNotFit", message="too big"),)
    assert no_targets_reason(())[0] == "NoTargets"
    mixed = (*found, SkippedTarget(gpu=A100, reason="QuantizationUnsupported", message="m"))
    assert no_targets_reason(found)[0] == "ModelDoesNotFit"
    assert no_targets_reason(mixed)[0] == "NoTargets"


# --------------------------------------------------------------------------- exit 7


def _failed_by_policy() -> dict[str, Any]:
    """A Job the podFailurePolicy failed, with the condition the Job controller writes."""
    failed = _job()
    failed["status"]["conditions"] = [{
        "type": "Failed", "status": "True", "reason": "PodFailurePolicy",
        "message": "Container build for pod ml/p failed with exit code 7 matching FailJob rule "
                   "at index 0"}]
    return failed


def _terminated(message: str, code: int) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"exitCode": code, "message": message}}}]}}


def test_the_build_jobs_own_fit_refusal_becomes_a_failed_target_with_its_message() -> None:
    # The entrypoint's own code writes the termination message, from the operator's spec.
    engine = _engine()
    plan = planning.plan_target(engine, L40S)
    build_spec = entrypoint.parse_spec(planning.build_job_spec(engine, plan, L40S_MIB))
    report = entrypoint.BuildReport(started_at="2026-11-23T10:00:00Z", started=time.monotonic())
    report.checkpoint_bytes = 60 * GiB  # what its resolve step records before the fit step
    with pytest.raises(entrypoint.JobFailure) as failure:
        entrypoint.check_fit(build_spec, 60 * GiB, [], report)
    report.fail(failure.value)
    assert contract.exit_code(report.reason) == 7
    message = reporting.fit_summary(report.summary())

    decision = decide_target(plan, "img", "ml", [], Observed(
        job=_failed_by_policy(), pod=_terminated(message, 7)), FLEET)
    s = decision.status
    assert (s.state, s.reason) == ("Failed", "ModelDoesNotFit")
    assert s.message is not None
    assert s.message.startswith(failure.value.message[:100])
    assert "does not fit NVIDIA-L40S" in s.message
    assert s.checkpoint_bytes == 60 * GiB  # measured before the refusal: others can use it
    assert not decision.create_job


def test_exit_7_without_the_summary_still_names_model_does_not_fit() -> None:
    # FallbackToLogsOnError: a log tail instead of the JSON summary.
    decision = decide_target(planning.plan_target(_engine(), H100), "img", "ml", [], Observed(
        job=_failed_by_policy(), pod=_terminated("Traceback ...\nout of memory", 7)), FLEET)
    assert (decision.status.state, decision.status.reason) == ("Failed", "ModelDoesNotFit")
    assert "out of memory" in (decision.status.message or "")
    other = decide_target(planning.plan_target(_engine(), H100), "img", "ml", [], Observed(
        job=_failed_by_policy(), pod=_terminated("boom", 1)), FLEET)
    assert other.status.reason == "PodFailurePolicy"

