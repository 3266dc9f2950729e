"""The quantize phase of a pytorch-backend LLMEngine: which GPU type runs the one quantize Job,
how every target follows it, and that it is created once (in-memory view and writer, as in
test_engine_controller)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from tests.unit.test_engine_controller import COMMIT, KEY, FakeView, FakeWriter, _setup
from trtllm_jobs.spec import parse_quantize_spec
from trtllm_operator import gpus
from trtllm_operator.engines import planning
from trtllm_operator.engines import quantize as qz
from trtllm_operator.validation import ClusterFacts, GPUPool

H100 = gpus.gpu_type("h100").product
L40S = gpus.gpu_type("l40s").product
A100 = gpus.gpu_type("a100").product
FLEET = ClusterFacts({H100: GPUPool((8, 8), (9, 0), 81559), L40S: GPUPool((4,), (8, 9), 46068),
                      A100: GPUPool((8,), (8, 0), 81920)})
GIB = 1 << 30


def _quantized_setup(targets: list[str]) -> tuple[Any, FakeView, FakeWriter,
                                                  list[tuple[str, str]]]:
    controller, view, writer, events = _setup()
    build = view.body["spec"]["build"]
    build["image"] = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"
    for key in ("limits", "plugins", "extraArgs"):
        build.pop(key, None)
    build["dtype"] = "auto"
    build["quantization"] = {"format": "fp8",
                             "calibration": {"datasetPath": "calibration/chat.jsonl"}}
    view.body["spec"]["targets"] = targets
    view.facts = FLEET
    # Cached, as the download recorded it: 16 GiB of weights at 16 bits.
    assert view.model_cached is not None
    view.model_cached = view.model_cached.model_copy(update={"checkpoint_bytes": 16 * GIB,
                                                             "total_bytes": 16 * GIB + 9})
    return controller, view, writer, events


def _status(writer: FakeWriter) -> dict[str, Any]:
    return writer.status_patches[-1]


def _targets(writer: FakeWriter) -> dict[str, dict[str, Any]]:
    return {t["gpu"]: t for t in _status(writer)["targets"]}


def _jobs(writer: FakeWriter, prefix: str) -> list[dict[str, Any]]:
    return [a for a in writer.applied if a["kind"] == "Job"
            and a["metadata"]["name"].startswith(prefix)]


def _again(controller: Any, view: FakeView, writer: FakeWriter) -> None:
    view.body = copy.deepcopy(view.body) | {"status": _status(writer)}
    asyncio.run(controller.reconcile(KEY))


def _pod(phase: str, message: dict[str, Any] | None = None,
         exit_code: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if message is not None:
        status["containerStatuses"] = [{"name": "build", "state": {"terminated": {
            "exitCode": exit_code, "message": json.dumps(message)}}}]
    return {"metadata": {"name": "p"}, "status": status}


def _job(condition: str | None = None, gpu: str = H100) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-11-23T10:00:00Z"}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True"}]
        status["completionTime"] = "2026-11-23T10:30:00Z"
    return {"metadata": {"name": "q", "labels": {"trtllm.dev/gpu-product": gpu}},
            "status": status}


def test_one_quantize_job_on_the_first_target_that_holds_the_model_and_none_for_a100() -> None:
    controller, _view, writer, events = _quantized_setup([L40S, H100, A100])

    asyncio.run(controller.reconcile(KEY))

    (job,) = _jobs(writer, "trtllm-quantize-")
    assert _jobs(writer, "trtllm-build-") == []
    pod = job["spec"]["template"]["spec"]
    # Both hold 16 GiB on one GPU: the first in spec order runs it.
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == L40S
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    spec = parse_quantize_spec(json.loads(env["TRTLLM_QUANTIZE_SPEC"] or ""))
    assert (spec.commit, spec.format) == (COMMIT, "fp8")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_DATASETS_OFFLINE"] == "1"
    targets = _targets(writer)
    for gpu in (L40S, H100):
        assert (targets[gpu]["state"], targets[gpu]["reason"]) == ("Pending", "JobCreated")
        assert targets[gpu]["job"] == job["metadata"]["name"]
        assert targets[gpu]["path"] == str(spec.output_dir.relative_to("/engines"))
        assert f"on 1 {L40S} GPU(s)" in targets[gpu]["message"]
        assert f"of the other targets, {H100} needs 1" in targets[gpu]["message"]
    assert (targets[A100]["state"], targets[A100]["reason"]) == (
        "Invalid", "QuantizationUnsupported")
    assert "fp8 needs compute capability >= 8.9" in targets[A100]["message"]
    assert targets[A100].get("job") is None
    assert ("Warning", "TargetInvalid") in events


def test_a_restarted_operator_creates_no_second_job_and_targets_follow_it_to_built() -> None:
    controller, view, writer, events = _quantized_setup([H100, L40S])
    asyncio.run(controller.reconcile(KEY))
    (job,) = _jobs(writer, "trtllm-quantize-")
    name = job["metadata"]["name"]

    _again(controller, view, writer)  # the view has not seen the Job yet: 409, nothing new
    assert len(_jobs(writer, "trtllm-quantize-")) == 1

    view.jobs[name] = _job()
    view.pods[name] = _pod("Running")
    _again(controller, view, writer)
    targets = _targets(writer)
    for gpu in (H100, L40S):
        assert (targets[gpu]["state"], targets[gpu]["reason"]) == ("Building", "Quantizing")
        assert name in targets[gpu]["message"]
        assert f"on {H100} ({H100} holds the 16.0 GiB model at 16 bits on 1 GPU(s)" in (
            targets[gpu]["message"])
    building = next(c for c in _status(writer)["conditions"] if c["type"] == "Building")
    assert building["status"] == "True"

    path = targets[H100]["path"]
    view.jobs[name] = _job("Complete")
    view.pods[name] = _pod("Succeeded", {"phase": "Quantized", "format": "fp8",
                                         "commit": COMMIT, "path": f"/engines/{path}",
                                         "totalBytes": 9 * GIB})
    _again(controller, view, writer)
    targets = _targets(writer)
    for gpu in (H100, L40S):
        t = targets[gpu]
        assert (t["state"], t["reason"]) == ("Built", "Quantized")
        assert (t["path"], t["job"], t["totalBytes"]) == (path, name, 9 * GIB)
        assert t["checkpointBytes"] == 16 * GIB
        assert t["modelRevision"] == COMMIT
        assert t["fingerprint"] == planning.plan_target(
            controller_engine(view), gpu).fingerprint
    ready = next(c for c in _status(writer)["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert {("Normal", "QuantizeStarted"), ("Normal", "Quantized")} <= set(events)

    # The finished Job is cleaned up: what the engine recorded stands, nothing is re-run.
    del view.jobs[name], view.pods[name]
    _again(controller, view, writer)
    assert len(_jobs(writer, "trtllm-quantize-")) == 1
    assert {t["state"] for t in _targets(writer).values()} == {"Built"}


def controller_engine(view: FakeView) -> Any:
    from trtllm_operator.api import LLMEngine
    return LLMEngine.model_validate(view.body)


def test_a_failed_quantize_fails_every_target_with_its_reason_and_the_retry() -> None:
    controller, view, writer, _events = _quantized_setup([H100, L40S])
    asyncio.run(controller.reconcile(KEY))
    (job,) = _jobs(writer, "trtllm-quantize-")
    name = job["metadata"]["name"]
    view.jobs[name] = _job("Failed")
    view.pods[name] = _pod("Failed", {"phase": "Failed", "reason": "CalibrationDataMissing",
                                      "message": "calibration.datasetPath is missing"}, 11)
    _again(controller, view, writer)
    for t in _targets(writer).values():
        assert (t["state"], t["reason"]) == ("Failed", "CalibrationDataMissing")
        assert f"kubectl delete job -n ml {name}" in t["message"]
    ready = next(c for c in _status(writer)["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "BuildFailed")


def test_nothing_is_quantized_before_the_checkpoint_is_cached() -> None:
    controller, view, writer, _events = _quantized_setup([H100])
    view.model_cached = None
    asyncio.run(controller.reconcile(KEY))
    assert [j["metadata"]["name"][:13] for j in writer.applied if j["kind"] == "Job"] == [
        "trtllm-model-"]
    target = _targets(writer)[H100]
    assert (target["state"], target["reason"]) == ("Pending", "ModelDownloading")


def test_no_target_holding_the_model_starts_nothing_and_says_why() -> None:
    controller, view, writer, _events = _quantized_setup([L40S])
    assert view.model_cached is not None
    # 200 GiB at 16 bits: as fp8 it fits 4 L40S (the fit check passes), but ModelOpt loads it
    # at 16 bits to calibrate, which no 4-GPU L40S node holds.
    view.model_cached = view.model_cached.model_copy(update={"checkpoint_bytes": 200 * GIB})
    view.body["spec"]["build"]["parallelism"] = {"tensor": 4}
    asyncio.run(controller.reconcile(KEY))
    assert _jobs(writer, "trtllm-quantize-") == []
    target = _targets(writer)[L40S]
    assert (target["state"], target["reason"]) == ("Unschedulable", "NoGPUHoldsModel")
    assert "200.0 GiB model at 16 bits for calibration" in target["message"]
    assert target.get("job") is None


@pytest.mark.parametrize(("size_gib", "expected"), [
    (16, (L40S, 1)),  # both hold it on one GPU: the first in order
    (70, (H100, 1)),  # one L40S (45 GiB) cannot; one H100 (80 GiB) can
    (140, (H100, 2)),  # H100 on 2 beats L40S on 4
    (2000, None),  # nothing holds 2 TB on one node
])
def test_the_gpu_type_that_holds_the_model_on_the_fewest_gpus_runs_it(
        size_gib: int, expected: tuple[str, int] | None) -> None:
    choice = qz.choose_gpu([L40S, H100], FLEET, size_gib * GIB)

    assert (None if choice is None else (choice.gpu, choice.gpus)) == expected


def test_a_gpu_type_without_nodes_is_never_chosen() -> None:
    assert qz.choose_gpu([gpus.gpu_type("b200").product], FLEET, GIB) is None


def test_the_simulated_kubelet_answers_a_quantize_pod_as_the_job_would() -> None:
    from trtllm_jobs.contract import EXIT_CODES, Reason
    from trtllm_operator.api import LLMEngine
    from trtllm_operator.engines import jobs
    from trtllm_operator.localcluster import kubelet, stages

    _controller, view, _writer, _events = _quantized_setup([H100])
    engine = LLMEngine.model_validate(view.body)
    pod = jobs.quantize_job(engine, COMMIT, H100, 1, "cm")["spec"]["template"]
    out = kubelet.quantize_pod_annotations(pod, {})
    summary = json.loads(out[stages.MESSAGE_ANNOTATION])
    assert summary["phase"] == "Quantized"
    assert summary["path"] == f"/engines/{planning.quantized_path(engine.spec, COMMIT)}"
    assert stages.EXIT_CODE_ANNOTATION not in out

    failed = kubelet.quantize_pod_annotations(pod, {
        kubelet.QUANTIZE_EXIT_CODE_ANNOTATION: "11", kubelet.QUANTIZE_DURATION_ANNOTATION: "5s"})
    assert failed[stages.EXIT_CODE_ANNOTATION] == str(EXIT_CODES[Reason.CALIBRATION_DATA_MISSING])
    assert json.loads(failed[stages.MESSAGE_ANNOTATION])["reason"] == "CalibrationDataMissing"
    assert failed[stages.DURATION_ANNOTATION] == "5s"
    assert kubelet.quantize_pod_annotations({"spec": {"containers": [{}]}}, {}) == {}


def test_a_calibration_dataset_is_fetched_by_a_cpu_download_job_before_the_quantize() -> None:
    controller, view, writer, events = _quantized_setup([H100])
    view.body["spec"]["build"]["quantization"]["calibration"] = {
        "dataset": "abisee/cnn_dailymail", "downloadDataset": True, "revision": "d" * 40,
        "files": ["3.0.0/validation-*.parquet"], "textField": "article"}
    # Only the checkpoint is known cached (by another engine); the dataset is not.
    model_only = view.model_cached_elsewhere
    setattr(view, "model_cached_elsewhere", lambda ns, job, but_not: (  # noqa: B010
        model_only(ns, job, but_not) if job.startswith("trtllm-model-") else None))
    asyncio.run(controller.reconcile(KEY))

    (download,) = _jobs(writer, "trtllm-data-")
    assert _jobs(writer, "trtllm-quantize-") == []  # not before the dataset is in
    pod = download["spec"]["template"]["spec"]
    assert gpus.GPU_RESOURCE not in json.dumps(pod["containers"][0]["resources"])
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    spec = json.loads(env["TRTLLM_DOWNLOAD_SPEC"] or "")
    assert (spec["repoType"], spec["files"]) == ("dataset", ["3.0.0/validation-*.parquet"])
    target = _targets(writer)[H100]
    assert (target["state"], target["reason"]) == ("Pending", "ModelDownloading")
    assert target["message"].startswith("waiting for the calibration dataset: ")
    assert _status(writer)["calibrationData"]["state"] == "Pending"
    assert ("Normal", "ModelDownloadPending") in events

    name = download["metadata"]["name"]
    entry = (f"/engines/datasets/abisee--cnn_dailymail/{'d' * 40}-"
             + __import__("trtllm_jobs.cache").cache.files_key(["3.0.0/validation-*.parquet"]))
    view.jobs[name] = _job("Complete")
    view.pods[name] = _pod("Succeeded", {"phase": "Downloaded", "commit": "d" * 40,
                                         "path": entry, "totalBytes": 1000})
    _again(controller, view, writer)
    (quantize,) = _jobs(writer, "trtllm-quantize-")
    env = {e["name"]: e.get("value")
           for e in quantize["spec"]["template"]["spec"]["containers"][0]["env"]}
    calibration = parse_quantize_spec(json.loads(env["TRTLLM_QUANTIZE_SPEC"] or "")).calibration
    assert calibration is not None
    assert str(calibration.dataset_path) == entry
    assert calibration.text_field == "article"
    assert _status(writer)["calibrationData"]["path"] == entry
    assert _targets(writer)[H100]["reason"] == "JobCreated"


def test_a_pytorch_engine_serves_a_volume_checkpoint_where_it_is() -> None:
    controller, view, writer, _events = _quantized_setup([H100, L40S])
    view.body["spec"]["build"].pop("quantization")
    view.body["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama-3-8b/"},
                                  "sizeHint": "16G"}
    view.claims["models"] = view.claims["trtllm-engines"]
    asyncio.run(controller.reconcile(KEY))

    assert [a for a in writer.applied if a["kind"] == "Job"] == []
    for t in _targets(writer).values():
        assert (t["state"], t["reason"], t["path"]) == ("Built", "CheckpointOnVolume",
                                                        "llama-3-8b")
        assert "PersistentVolumeClaim models" in t["message"]
        assert t.get("job") is None
    assert "modelCache" not in _status(writer)
    ready = next(c for c in _status(writer)["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_a_volume_checkpoint_is_not_quantized_and_says_how_to_serve_an_export() -> None:
    controller, view, writer, _events = _quantized_setup([H100])
    view.body["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama-3-8b"}}
    view.claims["models"] = view.claims["trtllm-engines"]
    asyncio.run(controller.reconcile(KEY))

    assert [a for a in writer.applied if a["kind"] == "Job"] == []
    target = _targets(writer)[H100]
    assert (target["state"], target["reason"]) == ("Invalid", "BackendFeatureUnavailable")
    assert "spec.build.quantization.format fp8 with spec.model.volume" in target["message"]
    assert "hf_quant_config.json" in target["message"]


def test_a_quantize_pod_that_cannot_pull_its_image_is_pending_with_the_reason() -> None:
    controller, view, writer, _events = _quantized_setup([H100])
    asyncio.run(controller.reconcile(KEY))
    (job,) = _jobs(writer, "trtllm-quantize-")
    name = job["metadata"]["name"]
    view.jobs[name] = _job()
    view.pods[name] = {"metadata": {"name": "p", "creationTimestamp": "2026-11-23T10:00:00Z"},
                       "status": {"phase": "Pending", "containerStatuses": [{
                           "name": "build", "state": {"waiting": {
                               "reason": "ImagePullBackOff",
                               "message": "Back-off pulling image"}}}]}}
    _again(controller, view, writer)
    target = _targets(writer)[H100]
    assert (target["state"], target["reason"]) == ("Pending", "ImagePullFailed")
    assert "spec.build.image" in target["message"]
    assert len(_jobs(writer, "trtllm-quantize-")) == 1
