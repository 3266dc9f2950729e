"""The LLMEngine reconcile with an in-memory view and writer: idempotence and no duplicate
announcements when the view lags behind the operator's own writes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from tests.conftest import ROOT
from trtllm_operator.api import EngineTargetStatus
from trtllm_operator.api.engine import ModelCacheStatus
from trtllm_operator.claims import ClaimFact
from trtllm_operator.engines.controller import EngineController, Key
from trtllm_operator.engines.planning import CheckpointKey
from trtllm_operator.validation import ClusterFacts, GPUPool

H100 = "NVIDIA-H100-80GB-HBM3"
KEY = ("ml", "llama-3-8b")
COMMIT = "a" * 40
CACHED_PATH = f"/engines/models/meta-llama--Meta-Llama-3-8B-Instruct/{COMMIT}"


class FakeView:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.jobs: dict[str, dict[str, Any]] = {}
        self.configmap_present = True
        self.pods: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, ClaimFact] = {"trtllm-engines": ClaimFact("Bound",
                                                                         ("ReadWriteMany",))}
        self.facts = ClusterFacts({H100: GPUPool((8, 8), (9, 0))})
        self.sizes: dict[CheckpointKey, int] = {}
        # Most tests are about builds: their checkpoint is already in the model cache, as
        # another LLMEngine recorded it. Model-phase tests set this to None.
        self.model_cached: ModelCacheStatus | None = ModelCacheStatus(
            state="Cached", reason="Downloaded", commit=COMMIT, path=CACHED_PATH)

    def engine(self, key: Key) -> Mapping[str, Any] | None:
        return self.body

    def cluster_facts(self) -> ClusterFacts:
        return self.facts

    def job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.jobs.get(name)

    def newest_pod(self, namespace: str, job_name: str) -> Mapping[str, Any] | None:
        return self.pods.get(job_name)

    def built_elsewhere(self, namespace: str, job_name: str,
                        but_not: str) -> EngineTargetStatus | None:
        return None

    def jobs_of_engine(self, namespace: str, engine: str) -> list[str]:
        return list(self.jobs)

    def deployments_using(self, namespace: str, engine: str) -> list[str]:
        return []

    def job_wanted_by_others(self, namespace: str, job_name: str, but_not: str) -> bool:
        return False

    def has_configmap(self, namespace: str, name: str) -> bool:
        return self.configmap_present

    def claim(self, namespace: str, name: str) -> ClaimFact | None:
        return self.claims.get(name)

    def checkpoint_bytes(self, key: CheckpointKey | None) -> int | None:
        return self.sizes.get(key) if key is not None else None

    def model_cached_elsewhere(self, namespace: str, job_name: str,
                               but_not: str) -> ModelCacheStatus | None:
        if self.model_cached is None:
            return None
        return self.model_cached.model_copy(update={"job": job_name})


class FakeWriter:
    """Writes into memory; create answers like the API server (False = 409 AlreadyExists)."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []  # every create that made an object
        self.existing: set[tuple[str, str]] = set()
        self.status_patches: list[dict[str, Any]] = []
        self.finalizers: list[list[str]] = []

    async def create_if_absent(self, manifest: dict[str, Any]) -> bool:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key in self.existing:
            return False
        self.existing.add(key)
        self.applied.append(manifest)
        return True

    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.status_patches.append(status)

    async def set_finalizers(self, kind: str, namespace: str, name: str,
                             finalizers: list[str], resource_version: str | None) -> None:
        self.finalizers.append(finalizers)

    async def delete(self, resource: Any, namespace: str, name: str) -> bool:
        return True


def _setup() -> tuple[EngineController, FakeView, FakeWriter, list[tuple[str, str]]]:
    body = yaml.safe_load((ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u", "generation": 1,
                         "finalizers": ["trtllm.dev/in-use-protection"]}
    body["spec"]["targets"] = [H100]
    view, writer = FakeView(body), FakeWriter()
    events: list[tuple[str, str]] = []
    controller = EngineController(
        view=view, writer=writer, job_resource=None, script={"build.py": "print()"},
        events=lambda _b, kind, reason, _m: events.append((kind, reason)),
        clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    return controller, view, writer, events


def test_a_stale_view_of_our_own_write_changes_nothing_and_announces_nothing() -> None:
    controller, _view, writer, events = _setup()
    asyncio.run(controller.reconcile(KEY))
    assert len(writer.status_patches) == 1
    assert [a["kind"] for a in writer.applied] == ["Job"]
    assert events == [("Normal", "BuildPending")]
    # The view still shows the old status (our patch not seen yet): same result, no repeat.
    asyncio.run(controller.reconcile(KEY))
    assert len(writer.status_patches) == 1
    assert events == [("Normal", "BuildPending")]
    assert [a["kind"] for a in writer.applied] == ["Job"]  # not applied (nor counted) twice


def test_reconciling_an_up_to_date_object_writes_nothing() -> None:
    controller, view, writer, _events = _setup()
    asyncio.run(controller.reconcile(KEY))
    job_name = writer.applied[0]["metadata"]["name"]
    view.jobs[job_name] = {"metadata": {"name": job_name}, "status": {}}
    view.body = copy.deepcopy(view.body) | {"status": writer.status_patches[-1]}
    fresh = EngineController(view=controller.view, writer=writer, job_resource=None,
                             script={"build.py": "print()"}, events=controller.events,
                             clock=controller.clock)
    before = (len(writer.applied), len(writer.status_patches))
    asyncio.run(fresh.reconcile(KEY))  # a restarted operator: nothing cached
    # The Job exists now, so no Job is applied; the status only moves if the facts did.
    assert len(writer.applied) == before[0]
    patches = writer.status_patches[before[1]:]
    assert all(p["targets"][0]["reason"] != "JobCreated" for p in patches)
    view.body = view.body | {"status": writer.status_patches[-1]}
    settled = (len(writer.applied), len(writer.status_patches))
    asyncio.run(fresh.reconcile(KEY))
    assert (len(writer.applied), len(writer.status_patches)) == settled


def test_engines_sharing_a_fingerprint_create_one_job_and_count_one_build() -> None:
    from trtllm_operator import metrics

    controller, view, writer, _events = _setup()
    twin_body = copy.deepcopy(view.body)
    twin_body["metadata"] |= {"name": "llama-twin", "uid": "u2"}
    twin = EngineController(view=FakeView(twin_body), writer=writer, job_resource=None,
                            script={"build.py": "print()"}, events=controller.events,
                            clock=controller.clock)
    started = metrics.BUILDS_STARTED.labels(H100)
    before = started._value.get()
    asyncio.run(controller.reconcile(KEY))
    asyncio.run(twin.reconcile(("ml", "llama-twin")))
    asyncio.run(controller.reconcile(KEY))  # the watch has not shown the Job yet: 409 again
    jobs = [a for a in writer.applied if a["kind"] == "Job"]
    assert len(jobs) == 1
    assert started._value.get() - before == 1


def test_a_deleted_script_configmap_is_recreated_while_a_build_runs() -> None:
    controller, view, writer, _events = _setup()
    asyncio.run(controller.reconcile(KEY))
    job_name = next(a for a in writer.applied if a["kind"] == "Job")["metadata"]["name"]
    view.jobs[job_name] = {"metadata": {"name": job_name},
                           "status": {"active": 1, "startTime": "2026-11-23T00:00:00Z"}}
    view.body = copy.deepcopy(view.body) | {"status": writer.status_patches[-1]}
    asyncio.run(controller.reconcile(KEY))
    assert writer.status_patches[-1]["targets"][0]["state"] in ("Pending", "Building")
    # The watch shows the ConfigMap gone (deleted by hand, or with its namespace before).
    view.configmap_present = False
    writer.existing.discard(("ConfigMap", controller_script_name(controller)))
    asyncio.run(controller.reconcile(KEY))
    assert ("ConfigMap", controller_script_name(controller)) in writer.existing


def controller_script_name(controller: EngineController) -> str:
    from trtllm_operator.engines import jobs

    return jobs.script_configmap_name(controller.script)
# --------------------------------------------------------------------------- cluster state


def _target(writer: FakeWriter) -> dict[str, Any]:
    target: dict[str, Any] = writer.status_patches[-1]["targets"][0]
    return target


def _ready(writer: FakeWriter) -> dict[str, Any]:
    return next(c for c in writer.status_patches[-1]["conditions"] if c["type"] == "Ready")


def test_a_missing_claim_starts_no_job_and_its_creation_resumes_the_build() -> None:
    controller, view, writer, events = _setup()
    del view.claims["trtllm-engines"]
    asyncio.run(controller.reconcile(KEY))
    assert writer.applied == []  # neither the Job nor the entrypoint ConfigMap
    target = _target(writer)
    assert (target["state"], target["reason"]) == ("Pending", "ClaimNotFound")
    assert target.get("job") is None
    assert "spec.storage.claimName trtllm-engines" in target["message"]
    assert _ready(writer)["reason"] == "ClaimNotFound"
    assert events == [("Warning", "ClaimNotFound")]

    view.body = view.body | {"status": writer.status_patches[-1]}
    view.claims["trtllm-engines"] = ClaimFact("Bound", ("ReadWriteMany",))
    asyncio.run(controller.reconcile(KEY))
    assert [a["kind"] for a in writer.applied] == ["Job"]
    assert _target(writer)["reason"] == "JobCreated"


def test_an_unbound_claim_waits_and_a_single_node_claim_is_invalid() -> None:
    controller, view, writer, events = _setup()
    view.claims["trtllm-engines"] = ClaimFact("Pending", ("ReadWriteMany",))
    asyncio.run(controller.reconcile(KEY))
    assert (_target(writer)["state"], _target(writer)["reason"]) == ("Pending", "ClaimNotBound")
    view.body = view.body | {"status": writer.status_patches[-1]}
    view.claims["trtllm-engines"] = ClaimFact("Bound", ("ReadWriteOnce",))
    asyncio.run(controller.reconcile(KEY))
    assert (_target(writer)["state"], _target(writer)["reason"]) == ("Invalid",
                                                                     "ClaimNotShared")
    assert writer.applied == []
    assert events == [("Warning", "ClaimNotBound"), ("Warning", "ClaimNotShared")]


def test_a_build_pod_that_cannot_start_is_pending_with_the_kubelets_message() -> None:
    controller, view, writer, events = _setup()
    asyncio.run(controller.reconcile(KEY))
    job_name = writer.applied[-1]["metadata"]["name"]
    view.jobs[job_name] = {"metadata": {"name": job_name},
                           "status": {"active": 1, "startTime": "2026-11-23T10:00:00Z"}}
    view.pods[job_name] = {"metadata": {"name": f"{job_name}-abcde"}, "status": {
        "phase": "Pending",
        "containerStatuses": [{"name": "build", "restartCount": 0, "state": {"waiting": {
            "reason": "CreateContainerConfigError",
            "message": 'secret "hf-token" not found'}}}]}}
    view.body = view.body | {"status": writer.status_patches[-1]}
    asyncio.run(controller.reconcile(KEY))
    target = _target(writer)
    assert (target["state"], target["reason"]) == ("Pending", "SecretNotFound")
    assert 'secret "hf-token" not found' in target["message"]
    assert "create Secret hf-token with key HF_TOKEN in namespace ml" in target["message"]
    assert _ready(writer)["reason"] == "SecretNotFound"
    building = next(c for c in writer.status_patches[-1]["conditions"]
                    if c["type"] == "Building")
    assert building["status"] == "False"
    assert events[-1] == ("Warning", "SecretNotFound")

    # The Secret is created: the same pod runs, the target is Building, announced once.
    view.body = view.body | {"status": writer.status_patches[-1]}
    view.pods[job_name]["status"] = {"phase": "Running", "containerStatuses": [
        {"name": "build", "state": {"running": {}}}]}
    asyncio.run(controller.reconcile(KEY))
    assert _target(writer)["state"] == "Building"
    assert events[-1] == ("Normal", "BuildStarted")


def test_an_error_naming_no_gpu_makes_every_target_invalid_and_starts_no_job() -> None:
    """A builder image without trtllm-build is wrong for every target (a finding with no GPU):
    no Job, each target Invalid, Ready False saying why, and an Event for it."""
    controller, view, writer, events = _setup()
    view.body["spec"]["build"]["image"] = "nvcr.io/nvidia/tensorrt-llm/release:1.4.0"
    view.body["spec"]["backend"] = "tensorrt"
    asyncio.run(controller.reconcile(KEY))
    assert [a["kind"] for a in writer.applied] == []
    status = writer.status_patches[-1]
    assert [(t["gpu"], t["state"]) for t in status["targets"]] == [(H100, "Invalid")]
    assert status["backend"] == "tensorrt"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert "BackendUnsupportedByImage" in ready["message"]
    assert ("Warning", "TargetInvalid") in events
