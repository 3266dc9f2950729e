"""The model phase: planning the download Job, its status, and the controller gating builds on
it (in-memory view and writer, as in test_engine_controller)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.unit.test_engine_controller import COMMIT, KEY, _setup
from trtllm_jobs import contract
from trtllm_jobs.spec import parse_download_spec, parse_spec
from trtllm_operator import gpus
from trtllm_operator.api import EngineTargetStatus, LLMEngine
from trtllm_operator.api.engine import ModelCacheStatus
from trtllm_operator.engines import model_cache as mc
from trtllm_operator.engines.jobs import job_command
from trtllm_operator.engines.planning import plan_target
from trtllm_operator.engines.status import Decision
from trtllm_operator.localcluster import stages
from trtllm_operator.localcluster.kubelet import download_pod_annotations
from trtllm_operator.validation import checkpoint_size

H100 = "NVIDIA-H100-80GB-HBM3"
REPO = "meta-llama/Meta-Llama-3-8B-Instruct"


def _engine(name: str = "llama", **model: Any) -> LLMEngine:
    body = yaml.safe_load((ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"name": name, "namespace": "ml", "uid": f"uid-{name}"}
    body["spec"]["model"]["huggingFace"] |= model
    return LLMEngine.model_validate(body)


def _plan(engine: LLMEngine) -> mc.ModelPlan:
    plan = mc.plan_model(engine.spec)
    assert plan is not None
    return plan


# --------------------------------------------------------------------------- planning


def test_one_job_name_per_claim_repo_and_revision_whatever_the_engine() -> None:
    a, b = _engine("a"), _engine("b")
    b = b.model_copy(update={"spec": b.spec.model_copy(update={"targets": ("NVIDIA-L40S",)})})
    assert _plan(a).job_name == _plan(b).job_name
    assert _plan(a).job_name.startswith("trtllm-model-")
    assert _plan(_engine(revision="main")).job_name != _plan(a).job_name
    spec = a.spec.model_copy(update={"storage": a.spec.storage.model_copy(
        update={"claim_name": "other"})})
    other = mc.plan_model(spec)
    assert other is not None
    assert other.job_name != _plan(a).job_name


def test_a_volume_model_needs_no_download() -> None:
    body = yaml.safe_load((ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u"}
    body["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama"}}
    assert mc.plan_model(LLMEngine.model_validate(body).spec) is None


def test_the_download_job_is_cpu_only_without_api_access_and_resumable() -> None:
    engine = _engine()
    job = mc.download_job(engine, _plan(engine), "trtllm-jobs-abc", 3600)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["name"] == _plan(engine).job_name
    assert gpus.GPU_RESOURCE not in json.dumps(container["resources"])
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    pref = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref[0]["preference"]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]
    assert pod["automountServiceAccountToken"] is False
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == list(
        contract.PERMANENT_EXIT_CODES)
    assert container["command"] == job_command("download")
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["engines"]["mountPath"] == "/engines"
    assert not mounts["engines"].get("readOnly")
    claim = next(v for v in pod["volumes"] if v["name"] == "engines")
    assert claim["persistentVolumeClaim"] == {"claimName": engine.spec.storage.claim_name}
    # The job package reads exactly what the operator writes.
    parsed = parse_download_spec(json.loads(env["TRTLLM_DOWNLOAD_SPEC"]["value"]))
    assert (parsed.repo, parsed.revision) == (REPO, engine.spec.model.hugging_face.revision)  # type: ignore[union-attr]


def test_a_cached_build_spec_names_the_entry_and_the_job_package_accepts_it() -> None:
    from trtllm_operator.engines.planning import build_job_spec
    engine = _engine()
    path = _plan(engine).entry_path(COMMIT)
    assert path == f"/engines/models/meta-llama--Meta-Llama-3-8B-Instruct/{COMMIT}"
    spec = build_job_spec(engine, plan_target(engine, H100), 81559, cached_path=path)
    assert spec["model"]["cachedPath"] == path
    parse_spec(spec)


# --------------------------------------------------------------------------- status


def _job(condition: str | None = None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-11-23T10:00:00Z", **extra}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": "X",
                                 "message": "job says"}]
    return {"metadata": {"name": "j"}, "status": status}


def _pod(phase: str, message: dict[str, Any] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}}
    if message is not None:
        state = {"terminated": {"exitCode": 0, "message": json.dumps(message)}}
    return {"metadata": {"name": "j-abc"},
            "status": {"phase": phase, "containerStatuses": [{"name": "download",
                                                              "state": state}]}}


def test_no_job_creates_one_unless_the_entry_is_known_cached() -> None:
    plan = _plan(_engine())
    d = mc.decide_model(plan, "ml", mc.ModelObserved())
    assert d.create_job
    assert d.status.state == "Pending"
    known = ModelCacheStatus(state="Cached", job=plan.job_name, commit=COMMIT,
                             path=plan.entry_path(COMMIT), checkpoint_bytes=5)
    for observed in (mc.ModelObserved(cached_elsewhere=known), mc.ModelObserved(previous=known)):
        d = mc.decide_model(plan, "ml", observed)
        assert not d.create_job
        assert d.cached
        assert d.status.path == known.path


def test_a_completed_download_is_cached_with_what_the_job_reported() -> None:
    plan = _plan(_engine(revision="main"))
    summary = {"phase": "Downloaded", "commit": COMMIT, "totalBytes": 20, "checkpointBytes": 16}
    d = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job("Complete"),
                                                     pod=_pod("Succeeded", summary)))
    assert (d.status.state, d.status.reason, d.status.commit) == ("Cached", "Downloaded", COMMIT)
    assert d.status.path == plan.entry_path(COMMIT)
    assert (d.status.total_bytes, d.status.checkpoint_bytes) == (20, 16)
    hit = mc.decide_model(plan, "ml", mc.ModelObserved(
        job=_job("Complete"), pod=_pod("Succeeded", summary | {"phase": "CacheHit"})))
    assert hit.status.reason == "CacheHit"


def test_a_completed_download_without_its_pod_cannot_invent_a_commit() -> None:
    plan = _plan(_engine(revision="main"))
    d = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job("Complete")))
    assert (d.status.state, d.status.reason) == ("Failed", "DownloadSummaryMissing")
    assert f"kubectl delete job -n ml {plan.job_name}" in (d.status.message or "")
    # What another engine recorded stands in for the lost message.
    known = ModelCacheStatus(state="Cached", job=plan.job_name, commit=COMMIT,
                             path=plan.entry_path(COMMIT))
    d = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job("Complete"),
                                                     cached_elsewhere=known))
    assert d.cached
    assert d.status.commit == COMMIT
    # A pinned commit is its own answer.
    pinned = _plan(_engine(revision=COMMIT))
    assert mc.decide_model(pinned, "ml", mc.ModelObserved(job=_job("Complete"))).cached


def test_a_failed_download_carries_the_jobs_reason_and_how_to_retry() -> None:
    plan = _plan(_engine())
    summary = {"phase": "Failed", "reason": "ModelAccessDenied",
               "message": "the token's account has not accepted the license"}
    d = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job("Failed"),
                                                     pod=_pod("Failed", summary)))
    assert (d.status.state, d.status.reason) == ("Failed", "ModelAccessDenied")
    assert "accepted the license" in (d.status.message or "")
    assert f"kubectl delete job -n ml {plan.job_name}" in (d.status.message or "")
    bare = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job("Failed")))
    assert bare.status.reason == "X"  # the Job's own reason when the pod said nothing


def test_a_running_download_shows_progress_when_read_and_keeps_the_last_one() -> None:
    plan = _plan(_engine())
    d = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job(active=1), pod=_pod("Running"),
                                                     progress=(2 * 2**30, 8 * 2**30)))
    assert d.status.state == "Downloading"
    assert d.status.progress is not None
    assert d.status.progress.done_bytes == 2 * 2**30
    assert "(2.0 of 8.0 GiB, 25%)" in (d.status.message or "")
    again = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job(active=1),
                                                         pod=_pod("Running"),
                                                         previous=d.status))
    assert again.status.progress == d.status.progress
    unknown = mc.decide_model(plan, "ml", mc.ModelObserved(job=_job(active=1),
                                                           pod=_pod("Running")))
    assert unknown.status.progress is None
    assert "GiB" not in (unknown.status.message or "")


def test_targets_wait_for_the_model_or_fail_with_its_reason() -> None:
    target = EngineTargetStatus(gpu=H100, state="Pending", reason="JobCreated", job="b")
    downloading = mc.ModelDecision(ModelCacheStatus(state="Downloading", message="dl"))
    gated = mc.gate_target(Decision(target, create_job=True), downloading)
    assert not gated.create_job
    assert (gated.status.state, gated.status.reason, gated.status.job) == (
        "Pending", "ModelDownloading", None)
    failed = mc.ModelDecision(ModelCacheStatus(state="Failed", reason="ModelNotFound",
                                               message="no such repo"))
    gated = mc.gate_target(Decision(target, create_job=True), failed)
    assert (gated.status.state, gated.status.reason) == ("Failed", "ModelNotFound")
    stuck = mc.ModelDecision(ModelCacheStatus(state="Pending", reason="SecretNotFound",
                                              message='secret "hf" not found; create it'))
    gated = mc.gate_target(Decision(target, create_job=True), stuck)
    assert (gated.status.state, gated.status.reason) == ("Pending", "SecretNotFound")
    assert 'secret "hf" not found; create it' in (gated.status.message or "")
    # A target already building (its Job exists) is not disturbed.
    running = Decision(target.model_copy(update={"state": "Building"}))
    assert mc.gate_target(running, downloading) is running


def test_the_cache_manifest_is_the_best_size_source() -> None:
    spec = _engine().spec
    size = checkpoint_size(spec, 99, cached_bytes=16)
    assert size is not None
    assert size.bytes == 16
    assert "model cache" in size.source
    assert checkpoint_size(spec, 99) is not None


# --------------------------------------------------------------------------- controller


def _downloading_setup(**kwargs: Any) -> tuple[Any, Any, Any, Any]:
    controller, view, writer, events = _setup()
    view.model_cached = None
    for k, v in kwargs.items():
        setattr(controller, k, v)
    return controller, view, writer, events


def _status(writer: Any) -> dict[str, Any]:
    return writer.status_patches[-1]  # type: ignore[no-any-return]


def test_the_first_reconcile_starts_the_download_and_no_build() -> None:
    controller, _view, writer, events = _downloading_setup()
    asyncio.run(controller.reconcile(KEY))
    jobs = [a for a in writer.applied if a["kind"] == "Job"]
    assert [j["metadata"]["name"][:13] for j in jobs] == ["trtllm-model-"]
    status = _status(writer)
    assert status["modelCache"]["state"] == "Pending"
    assert status["targets"][0]["reason"] == "ModelDownloading"
    assert ("Normal", "ModelDownloadPending") in events
    cached = next(c for c in status["conditions"] if c["type"] == "ModelCached")
    assert cached["status"] == "False"


def test_builds_start_with_the_cached_path_once_the_download_completes() -> None:
    controller, view, writer, events = _downloading_setup()
    asyncio.run(controller.reconcile(KEY))
    download = writer.applied[-1]["metadata"]["name"]
    view.jobs[download] = _job("Complete")
    view.pods[download] = _pod("Succeeded", {"phase": "Downloaded", "commit": COMMIT,
                                             "totalBytes": 20, "checkpointBytes": 16})
    view.body = copy.deepcopy(view.body) | {"status": _status(writer)}
    asyncio.run(controller.reconcile(KEY))
    build = writer.applied[-1]
    assert build["metadata"]["name"].startswith("trtllm-build-")
    env = {e["name"]: e.get("value") for e in build["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    spec = json.loads(env["TRTLLM_BUILD_SPEC"])
    assert spec["model"]["cachedPath"] == \
        f"/engines/models/meta-llama--Meta-Llama-3-8B-Instruct/{COMMIT}"
    status = _status(writer)
    assert status["modelCache"]["state"] == "Cached"
    assert status["modelCache"]["checkpointBytes"] == 16
    assert ("Normal", "ModelCached") in events
    # The download Job is planned: never stopped as unplanned by this engine.
    assert download in {j for j in view.jobs}


def test_a_failed_download_fails_every_target_with_its_reason() -> None:
    controller, view, writer, events = _downloading_setup()
    asyncio.run(controller.reconcile(KEY))
    download = writer.applied[-1]["metadata"]["name"]
    view.jobs[download] = _job("Failed")
    view.pods[download] = _pod("Failed", {"phase": "Failed", "reason": "ModelNotFound",
                                          "message": "no such repo"})
    view.body = copy.deepcopy(view.body) | {"status": _status(writer)}
    asyncio.run(controller.reconcile(KEY))
    status = _status(writer)
    assert (status["modelCache"]["state"], status["modelCache"]["reason"]) == (
        "Failed", "ModelNotFound")
    target = status["targets"][0]
    assert (target["state"], target["reason"]) == ("Failed", "ModelNotFound")
    assert "delete job" in target["message"]
    assert not any(a["metadata"]["name"].startswith("trtllm-build-") for a in writer.applied)
    assert ("Warning", "ModelDownloadFailed") in events


def test_progress_is_read_from_the_log_at_most_every_ten_seconds() -> None:
    reads: list[tuple[str, str, str, int]] = []
    log = {"text": '{"progress": {"doneBytes": 1, "totalBytes": 4}}\n'}
    now = [100.0]

    async def reader(ns: str, pod: str, container: str, lines: int) -> str | None:
        reads.append((ns, pod, container, lines))
        return log["text"]

    controller, view, writer, _ = _downloading_setup(log_reader=reader,
                                                     monotonic=lambda: now[0])
    asyncio.run(controller.reconcile(KEY))
    download = writer.applied[-1]["metadata"]["name"]
    view.jobs[download] = _job(active=1)
    view.pods[download] = _pod("Running")
    result = asyncio.run(controller.reconcile(KEY))
    assert reads == [("ml", "j-abc", "download", mc.PROGRESS_TAIL_LINES)]
    assert _status(writer)["modelCache"]["progress"] == {"doneBytes": 1, "totalBytes": 4}
    assert result is not None
    assert result.requeue_after == mc.PROGRESS_READ_SECONDS
    log["text"] = '{"progress": {"doneBytes": 3, "totalBytes": 4}}\n'
    now[0] += 5
    asyncio.run(controller.reconcile(KEY))
    assert len(reads) == 1  # too soon: the last figures stand
    now[0] += 6
    asyncio.run(controller.reconcile(KEY))
    assert len(reads) == 2
    assert _status(writer)["modelCache"]["progress"] == {"doneBytes": 3, "totalBytes": 4}
    # An unreadable log (no logs on this node) keeps the last figures, never invents new ones.
    log["text"] = ""
    now[0] += 11
    asyncio.run(controller.reconcile(KEY))
    assert _status(writer)["modelCache"]["progress"] == {"doneBytes": 3, "totalBytes": 4}


def test_an_existing_download_job_is_not_created_again() -> None:
    """A restarted operator (or a second engine) finds the Job by its name."""
    controller, view, writer, _ = _downloading_setup()
    asyncio.run(controller.reconcile(KEY))
    download = writer.applied[-1]["metadata"]["name"]
    view.jobs[download] = _job(active=1)
    fresh, _v, _w, _e = _setup()
    fresh.view, fresh.writer = view, writer
    before = len(writer.applied)
    asyncio.run(fresh.reconcile(KEY))
    assert len(writer.applied) == before


# --------------------------------------------------------------------------- simulation


def test_the_simulated_hub_writes_the_real_jobs_summary_shape() -> None:
    engine = _engine(revision="main")
    job = mc.download_job(engine, _plan(engine), "cm", 60)
    pod = {"metadata": {"annotations": {}}, "spec": job["spec"]["template"]["spec"]}
    out = download_pod_annotations(pod, {})
    assert set(out) == {stages.MESSAGE_ANNOTATION}
    summary = json.loads(out[stages.MESSAGE_ANNOTATION])
    assert summary["phase"] == "Downloaded"
    assert len(summary["commit"]) == 40
    assert summary["path"] == _plan(engine).entry_path(summary["commit"])
    steered = download_pod_annotations(pod, {
        "sim.trtllm.dev/download-exit-code": "8", "sim.trtllm.dev/download-duration": "30s"})
    assert steered[stages.EXIT_CODE_ANNOTATION] == "8"
    assert steered[stages.DURATION_ANNOTATION] == "30s"
    failed = json.loads(steered[stages.MESSAGE_ANNOTATION])
    assert (failed["phase"], failed["reason"]) == ("Failed", "ModelAccessDenied")
    build_pod = {"metadata": {}, "spec": {"containers": [{"env": []}]}}
    assert download_pod_annotations(build_pod, {"sim.trtllm.dev/download-exit-code": "8"}) == {}


def test_nothing_is_downloaded_for_an_engine_that_cannot_build() -> None:
    controller, view, writer, _ = _downloading_setup()
    view.claims.clear()  # the engines claim is missing: no target can build
    asyncio.run(controller.reconcile(KEY))
    assert writer.applied == []
    assert "modelCache" not in _status(writer)


def _pytorch(view: Any) -> None:
    """The engine on the PyTorch line: a 1.3.0rc21+ image and none of trtllm-build's fields."""
    build = view.body["spec"]["build"]
    build["image"] = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"
    for key in ("limits", "plugins", "extraArgs", "quantization"):
        build.pop(key, None)
    build["dtype"] = "auto"


def test_a_pytorch_target_builds_nothing_and_serves_the_cached_checkpoint() -> None:
    controller, view, writer, _events = _downloading_setup()
    _pytorch(view)
    asyncio.run(controller.reconcile(KEY))
    download = writer.applied[-1]["metadata"]["name"]
    assert [a["metadata"]["name"][:13] for a in writer.applied if a["kind"] == "Job"] == \
        ["trtllm-model-"]
    target = _status(writer)["targets"][0]
    assert (target["state"], target["reason"]) == ("Pending", "ModelDownloading")
    assert target.get("job") is None

    view.jobs[download] = _job("Complete")
    view.pods[download] = _pod("Succeeded", {"phase": "Downloaded", "commit": COMMIT,
                                             "totalBytes": 20, "checkpointBytes": 16})
    view.body = copy.deepcopy(view.body) | {"status": _status(writer)}
    asyncio.run(controller.reconcile(KEY))
    assert [a for a in writer.applied if a["metadata"]["name"].startswith("trtllm-build-")] == []
    target = _status(writer)["targets"][0]
    assert (target["state"], target["reason"]) == ("Built", "CheckpointCached")
    assert target["path"] == f"models/meta-llama--Meta-Llama-3-8B-Instruct/{COMMIT}"
    assert target["checkpointBytes"] == 16
    assert target.get("job") is None
    assert _status(writer)["backend"] == "pytorch"
    ready = next(c for c in _status(writer)["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
