"""Reconciling / Stalled: what GitOps tools (kstatus, Argo CD) read besides Ready."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.test_engine_controller import KEY, _setup
from trtllm_operator import conditions as cond
from trtllm_operator.api import EngineTargetStatus
from trtllm_operator.api.engine import SkippedTarget
from trtllm_operator.reconciling import (
    RECONCILING,
    STALLED,
    deployment_progress_conditions,
    deployment_stalled,
    engine_stalled,
    progress_conditions,
)

NOW = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)
LATER = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)
H100 = "NVIDIA-H100-80GB-HBM3"


def _ready(status: str, reason: str, message: str = "m") -> tuple[Any, ...]:
    return cond.set_condition((), "Ready", status, reason, message,  # type: ignore[arg-type]
                              observed_generation=3, now=NOW)


def _types(conds: tuple[Any, ...]) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in conds}


def test_ready_true_carries_neither_condition() -> None:
    waiting = progress_conditions(_ready("False", "Building"), stalled=False,
                                  observed_generation=3, now=NOW)
    assert RECONCILING in _types(waiting)
    done = progress_conditions(
        cond.set_condition(waiting, "Ready", "True", "AllTargetsBuilt", "1/1",
                           observed_generation=3, now=LATER),
        stalled=False, observed_generation=3, now=LATER)
    assert set(_types(done)) == {"Ready"}


def test_ready_false_is_copied_into_reconciling_or_stalled_never_both() -> None:
    waiting = progress_conditions(_ready("False", "Building", "building for H100"),
                                  stalled=False, observed_generation=3, now=NOW)
    assert _types(waiting)[RECONCILING] == ("True", "Building", "building for H100")
    assert STALLED not in _types(waiting)
    reconciling = cond.find_condition(waiting, RECONCILING)
    assert reconciling is not None
    assert reconciling.observed_generation == 3

    failed = cond.set_condition(waiting, "Ready", "False", "BuildFailed", "fix it",
                                observed_generation=4, now=LATER)
    stalled = progress_conditions(failed, stalled=True, observed_generation=4, now=LATER)
    assert _types(stalled)[STALLED] == ("True", "BuildFailed", "fix it")
    assert RECONCILING not in _types(stalled)
    s = cond.find_condition(stalled, STALLED)
    assert s is not None
    assert (s.observed_generation, s.last_transition_time) == (4, LATER)


def test_no_ready_condition_means_nothing_to_say() -> None:
    assert progress_conditions((), stalled=True, observed_generation=1, now=NOW) == ()


def _t(state: str, reason: str | None = None) -> EngineTargetStatus:
    return EngineTargetStatus(gpu=H100, state=state, reason=reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "reason", "stalled"), [
    ("Pending", "JobCreated", False),
    ("Pending", "WaitingForGPUs", False),
    ("Pending", "ModelDownloading", False),
    ("Pending", "ClaimNotFound", False),
    ("Building", "Building", False),
    ("Unschedulable", "NoNodeOfGPUType", False),
    ("Pending", "SecretNotFound", True),
    ("Pending", "ImagePullFailed", True),
    ("Failed", "TrtllmBuildMissing", True),
    ("Invalid", "QuantizationUnsupported", True),
])
def test_engine_stalled_by_target_state(state: str, reason: str, stalled: bool) -> None:
    assert engine_stalled([_t("Built", "Built"), _t(state, reason)]) is stalled


def test_an_engine_without_targets_is_stalled_only_when_auto_refused_every_gpu_type() -> None:
    assert engine_stalled([]) is False  # auto waits for GPU nodes to appear
    assert engine_stalled([], [SkippedTarget(gpu=H100, reason="ModelDoesNotFit",
                                             message="too big")]) is True


@pytest.mark.parametrize(("reason", "engine_is_stalled", "stalled"), [
    ("RollingOut", False, False),
    ("PodsUnschedulable", False, False),
    ("ClaimNotFound", False, False),
    ("ClaimNotBound", False, False),
    ("GroupNodesInsufficient", False, False),
    ("EngineNotFound", False, False),
    ("EngineBuilding", False, False),
    ("EngineNotBuilt", False, False),
    ("EngineNotBuilt", True, True),  # its engine needs a person: so does it
    ("EnginePending", True, True),
    ("EngineFailed", False, True),
    ("EngineInvalid", False, True),
    ("GPUNotATarget", False, True),
    ("ServeLimitExceedsEngine", False, True),
    ("PodFieldInvalid", False, True),
    ("LeaderWorkerSetRequired", False, True),
    ("ClaimNotShared", False, True),
    ("SecretNotFound", False, True),
    ("CrashLoop", False, True),
    ("SomethingNew", False, False),  # unknown: waiting (a timeout catches it), never Failed
])
def test_deployment_stalled_by_ready_reason(reason: str, engine_is_stalled: bool,
                                            stalled: bool) -> None:
    assert deployment_stalled(reason, engine_is_stalled) is stalled


def test_a_deployment_waiting_on_a_stalled_engine_is_stalled() -> None:
    engine = progress_conditions(_ready("False", "BuildFailed"), stalled=True,
                                 observed_generation=1, now=NOW)
    mine = _ready("False", "EngineNotBuilt", "no built target yet")
    assert STALLED in _types(deployment_progress_conditions(
        mine, engine, observed_generation=2, now=NOW))
    assert RECONCILING in _types(deployment_progress_conditions(
        mine, None, observed_generation=2, now=NOW))


def _conds(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


def test_engine_controller_writes_reconciling_then_stalled_then_neither() -> None:
    controller, view, writer, _events = _setup()
    asyncio.run(controller.reconcile(KEY))
    first = writer.status_patches[-1]
    assert _conds(first)[RECONCILING] == ("True", "BuildPending")
    assert STALLED not in _conds(first)
    assert all(c["observedGeneration"] == 1 for c in first["conditions"])
    assert first["observedGeneration"] == 1

    job = writer.applied[-1]["metadata"]["name"]
    view.jobs[job] = {"metadata": {"name": job}, "status": {"active": 1}}
    view.pods[job] = {"metadata": {"name": f"{job}-x"}, "status": {
        "phase": "Pending", "containerStatuses": [{"name": "build", "state": {"waiting": {
            "reason": "CreateContainerConfigError",
            "message": 'secret "hf-token" not found'}}}]}}
    view.body = view.body | {"status": first}
    asyncio.run(controller.reconcile(KEY))
    stuck = writer.status_patches[-1]
    assert _conds(stuck)[STALLED] == ("True", "SecretNotFound")
    assert RECONCILING not in _conds(stuck)

    view.jobs[job]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    view.pods[job]["status"] = {"phase": "Succeeded"}
    view.body = view.body | {"status": stuck}
    asyncio.run(controller.reconcile(KEY))
    done = writer.status_patches[-1]
    assert _conds(done)["Ready"] == ("True", "AllTargetsBuilt")
    # A merge patch replaces the whole list: both are gone from the object too.
    assert {RECONCILING, STALLED}.isdisjoint(_conds(done))
