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
from trtllm_operator.engines.controller import EngineController, Key
from trtllm_operator.validation import ClusterFacts, GPUPool

H100 = "NVIDIA-H100-80GB-HBM3"
KEY = ("ml", "llama-3-8b")


class FakeView:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.jobs: dict[str, dict[str, Any]] = {}

    def engine(self, key: Key) -> Mapping[str, Any] | None:
        return self.body

    def cluster_facts(self) -> ClusterFacts:
        return ClusterFacts({H100: GPUPool((8, 8), (9, 0))})

    def job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.jobs.get(name)

    def newest_pod(self, namespace: str, job_name: str) -> Mapping[str, Any] | None:
        return None

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
        return True

    def note_configmap(self, namespace: str, name: str) -> None:
        pass


class FakeWriter:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.finalizers: list[list[str]] = []

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        return manifest

    async def create_if_absent(self, manifest: dict[str, Any]) -> None:
        self.applied.append(manifest)

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
        view=view, writer=writer, job_resource=None, script="print()",
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
                             script="print()", events=controller.events, clock=controller.clock)
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


def test_an_error_naming_no_gpu_makes_every_target_invalid_and_starts_no_job() -> None:
    """A builder image without trtllm-build is wrong for every target (a finding with no GPU):
    no Job, each target Invalid, Ready False saying why, and an Event for it."""
    controller, view, writer, events = _setup()
    view.body["spec"]["build"]["image"] = "nvcr.io/nvidia/tensorrt-llm/release:1.4.0"
    asyncio.run(controller.reconcile(KEY))
    assert [a["kind"] for a in writer.applied] == []
    status = writer.status_patches[-1]
    assert [(t["gpu"], t["state"]) for t in status["targets"]] == [(H100, "Invalid")]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert "BuilderImageUnsupported" in ready["message"]
    assert ("Warning", "TargetInvalid") in events
