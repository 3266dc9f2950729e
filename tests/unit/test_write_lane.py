"""Service writes off the reconcile worker: the reconcile does not wait for them, the
LLMDeployment is not Ready while one is in flight, and a failed one is made again in the
worker so its error is the reconcile's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.test_deployment_controller import KEY, FakeView, FakeWriter, _as_observed
from trtllm_operator.deployments.controller import DeploymentController
from trtllm_operator.pods import PodFact
from trtllm_operator.write_lane import WriteLane


def test_the_lane_runs_the_write_apart_then_queues_the_key() -> None:
    requeued: list[object] = []

    async def scenario() -> None:
        lane = WriteLane(requeued.append)
        go = asyncio.Event()

        async def write() -> None:
            await go.wait()

        child = ("Service", "ml", "a")
        lane.submit(child, KEY, write())
        assert lane.busy(child)
        assert not lane.busy(("Service", "ml", "b"))
        second = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already in flight"):
            lane.submit(child, KEY, second)
        second.close()
        await asyncio.sleep(0)
        assert requeued == []  # still writing
        go.set()
        await lane.drain()
        assert not lane.busy(child)
        assert lane.failure(child) is None

    asyncio.run(scenario())
    assert requeued == [KEY]


def test_a_failed_write_is_kept_for_the_next_reconcile_and_the_key_queued() -> None:
    requeued: list[object] = []

    async def scenario() -> None:
        lane = WriteLane(requeued.append)

        async def write() -> None:
            raise RuntimeError("denied")

        lane.submit(("Service", "ml", "a"), KEY, write())
        await lane.drain()
        failure = lane.failure(("Service", "ml", "a"))
        assert isinstance(failure, RuntimeError)
        assert lane.failure(("Service", "ml", "a")) is failure  # until a write succeeds
        lane.clear(("Service", "ml", "a"))
        assert lane.failure(("Service", "ml", "a")) is None

    asyncio.run(scenario())
    assert requeued == [KEY]


class SlowServices(FakeWriter):
    """Service applies wait until ``go`` is set (or fail while ``refuse`` is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.refuse = False

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "Service":
            if self.refuse:
                raise RuntimeError("services is forbidden")
            await self.go.wait()
        return await super().apply(manifest)


ROLLED_OUT = {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
              "availableReplicas": 1, "updatedReplicas": 1,
              "conditions": [{"type": "Available", "status": "True",
                              "reason": "MinimumReplicasAvailable"}]}


class RolledOut(SlowServices):
    """The Deployment, once applied, has every replica ready."""

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        applied = await super().apply(manifest)
        if manifest["kind"] == "Deployment":
            return {**manifest, "metadata": {**manifest["metadata"], "generation": 1},
                    "status": ROLLED_OUT}
        return applied


def _ready(writer: FakeWriter) -> dict[str, Any]:
    return next(c for c in writer.status_patches[-1]["conditions"] if c["type"] == "Ready")


def test_the_reconcile_goes_on_while_its_service_is_written_and_is_not_ready_until_done() -> None:
    view = FakeView()
    writer = RolledOut()
    requeued: list[object] = []

    async def scenario() -> None:
        controller = DeploymentController(
            view=view, writer=writer, events=lambda *_: None,
            clock=lambda: datetime(2026, 11, 23, tzinfo=UTC),
            service_lane=WriteLane(requeued.append))
        await controller.reconcile(KEY)  # returns with the Service write still waiting
        assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment"]
        assert _ready(writer)["status"] == "False"
        assert _ready(writer)["reason"] == "ServicePending"
        await controller.reconcile(KEY)  # a second reconcile starts no second write
        assert controller.service_lane is not None
        assert len(controller.service_lane) == 1
        writer.go.set()
        await controller.service_lane.drain()
        assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
        assert requeued == [KEY]
        # The requeue, once the watch shows the children: nothing written, Ready.
        view.children = {m["kind"]: _as_observed(m) for m in writer.applied}
        view.dep = view.children["Deployment"] | {"status": ROLLED_OUT}
        await controller.reconcile(KEY)
        assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
        assert _ready(writer)["status"] == "True"

    asyncio.run(scenario())


def test_a_failed_service_write_becomes_the_next_reconciles_error() -> None:
    view = FakeView()
    writer = SlowServices()
    writer.refuse = True
    requeued: list[object] = []

    async def scenario() -> None:
        lane = WriteLane(requeued.append)
        controller = DeploymentController(
            view=view, writer=writer, events=lambda *_: None,
            clock=lambda: datetime(2026, 11, 23, tzinfo=UTC), service_lane=lane)
        await controller.reconcile(KEY)
        await lane.drain()
        assert requeued == [KEY]
        # Made in the worker this time: the reconcile fails with the API server's words
        # (the work queue retries it with back-off and puts ReconcileError in status).
        with pytest.raises(RuntimeError, match="services is forbidden"):
            await controller.reconcile(KEY)
        # And again, in the worker each time, until one succeeds: the work queue counts the
        # failures in a row (ReconcileError after a few), the lane does not reset them.
        with pytest.raises(RuntimeError, match="services is forbidden"):
            await controller.reconcile(KEY)
        assert len(lane) == 0
        writer.refuse = False
        writer.go.set()
        await controller.reconcile(KEY)  # made in the worker, and it succeeds
        assert len(lane) == 0
        assert [m["kind"] for m in writer.applied][-1] == "Service"
        assert lane.failure(("Service", "ml", "server")) is None  # the lane may write it again

    asyncio.run(scenario())


def _holding(view: FakeView, writer: FakeWriter, now: list[float]) -> DeploymentController:
    """A controller holding status details 2 s, on a clock the test moves."""
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    controller.status_writes.min_interval = 2.0
    controller.status_writes.monotonic = lambda: now[0]
    return controller


def _fleet_of_one() -> tuple[FakeView, SlowServices, list[float]]:
    """A view of one LLMDeployment, a writer whose Service writes succeed at once, and the
    clock the test moves."""
    writer = SlowServices()
    writer.go.set()
    return FakeView(), writer, [0.0]


async def _written_then_rolling_on(controller: DeploymentController, view: FakeView,
                                   writer: FakeWriter) -> None:
    """The first reconcile writes Ready False, RollingOut; the view then shows that status, the
    children, and the Deployment one step further (a new replica, not yet ready)."""
    await controller.reconcile(KEY)
    assert len(writer.status_patches) == 1
    assert _ready(writer)["reason"] == "RollingOut"
    view.body["status"] = writer.status_patches[-1]
    view.children = {m["kind"]: _as_observed(m) for m in writer.applied}
    view.dep = view.children["Deployment"] | {"status": {
        "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}}


def test_a_detail_right_after_a_write_is_held_and_requeued_while_ready_is_written_at_once(
        ) -> None:
    view, writer, now = _fleet_of_one()

    async def scenario() -> None:
        controller = _holding(view, writer, now)
        # The Deployment's rollout moves on (a detail): held, the reconcile comes back then.
        await _written_then_rolling_on(controller, view, writer)
        now[0] = 0.5
        result = await controller.reconcile(KEY)
        assert len(writer.status_patches) == 1
        assert result is not None
        assert result.requeue_after == 1.5
        # Every replica ready: Ready's status changes, written at once.
        view.dep = view.children["Deployment"] | {"status": ROLLED_OUT}
        now[0] = 0.6
        result = await controller.reconcile(KEY)
        assert len(writer.status_patches) == 2
        assert _ready(writer)["status"] == "True"
        assert result is None

    asyncio.run(scenario())


def test_a_problem_right_after_a_write_is_written_at_once() -> None:
    """A reason that names a problem is no detail: pods the scheduler cannot place show at
    once (with its message), even though Ready stays False and Reconciling True, and the last
    write was a moment ago."""
    view, writer, now = _fleet_of_one()

    async def scenario() -> None:
        controller = _holding(view, writer, now)
        await _written_then_rolling_on(controller, view, writer)
        view.pods = [PodFact("server-abc", phase="Pending", unschedulable=(
            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."))]
        now[0] = 0.5
        await controller.reconcile(KEY)
        assert len(writer.status_patches) == 2
        ready = _ready(writer)
        assert ready["status"] == "False"
        assert ready["reason"] not in ("RollingOut", "ServicePending")
        assert "Insufficient nvidia.com/gpu" in ready["message"]

    asyncio.run(scenario())


def test_a_detail_is_held_even_while_the_view_still_shows_the_status_before_the_write(
        ) -> None:
    view = FakeView()  # its status stays empty: the echo of the first write has not arrived
    writer = SlowServices()
    writer.go.set()
    now = [0.0]

    async def scenario() -> None:
        controller = _holding(view, writer, now)
        await controller.reconcile(KEY)
        view.children = {m["kind"]: _as_observed(m) for m in writer.applied}
        view.dep = view.children["Deployment"] | {"status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}}
        now[0] = 1.0
        result = await controller.reconcile(KEY)
        assert len(writer.status_patches) == 1
        assert result is not None
        assert result.requeue_after == 1.0
        now[0] = 2.0
        await controller.reconcile(KEY)  # the requeue: the detail is written now
        assert len(writer.status_patches) == 2

    asyncio.run(scenario())


def test_a_second_write_before_the_view_shows_the_first_announces_nothing_again() -> None:
    view = FakeView()  # its status stays empty: the echo of the first write has not arrived
    writer = SlowServices()
    writer.go.set()
    events: list[str] = []

    async def scenario() -> None:
        controller = DeploymentController(
            view=view, writer=writer, events=lambda _b, _k, reason, _m: events.append(reason),
            clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
        view.body["status"] = {"conditions": [{
            "type": "EngineReady", "status": "False", "reason": "EngineBuilding",
            "message": "building", "lastTransitionTime": "2026-11-23T00:00:00Z"}]}
        await controller.reconcile(KEY)  # the engine it waited for is built
        assert events == ["EngineBuilt"]
        view.children = {m["kind"]: _as_observed(m) for m in writer.applied}
        view.dep = view.children["Deployment"] | {"status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}}
        await controller.reconcile(KEY)  # a detail, written (no interval set)
        assert len(writer.status_patches) == 2
        assert events == ["EngineBuilt"]

    asyncio.run(scenario())
