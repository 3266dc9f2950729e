"""An LLMDeployment's watch event that only shows the status the operator just wrote is
recognised (and not reconciled again); any other change to what a reconcile reads is not."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import kopf

from tests.unit.test_deployment_controller import KEY, FakeView, FakeWriter
from trtllm_operator.deployments.controller import DeploymentController


def _after_write() -> tuple[DeploymentController, dict[str, Any]]:
    view, writer = FakeView(), FakeWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    echo = copy.deepcopy(view.body) | {"status": writer.status_patches[-1]}
    echo["metadata"] |= {"resourceVersion": "8", "managedFields": [{"manager": "x"}]}
    return controller, echo


def test_the_echo_of_its_own_status_write_is_recognised_also_through_kopfs_views() -> None:
    controller, echo = _after_write()
    assert controller.is_status_echo(KEY, echo)
    assert controller.is_status_echo(KEY, kopf.Body(echo))


def test_any_other_change_is_not_an_echo() -> None:
    controller, echo = _after_write()
    changes = [
        lambda b: b["metadata"].__setitem__("labels", {"team": "b"}),
        lambda b: b["metadata"].__setitem__("annotations", {"note": "x"}),
        lambda b: b["metadata"].__setitem__("generation", 2),
        lambda b: b["metadata"].__setitem__("deletionTimestamp", "2026-11-23T00:00:00Z"),
        lambda b: b["metadata"].__setitem__("uid", "another"),
        lambda b: b["status"].__setitem__("replicas", 7),
    ]
    for change in changes:
        body = copy.deepcopy(echo)
        change(body)
        assert not controller.is_status_echo(KEY, body)
    assert not controller.is_status_echo(("ml", "other"), echo)


def test_status_changes_name_the_fields_and_condition_types_that_differ() -> None:
    from trtllm_operator.deployments.controller import status_changes

    old = {"replicas": 1, "gpu": "H100", "conditions": [
        {"type": "Ready", "status": "False", "reason": "RollingOut"},
        {"type": "Available", "status": "False"}]}
    new = {"replicas": 1, "readyReplicas": 1, "gpu": "H100", "conditions": [
        {"type": "Ready", "status": "True", "reason": "Ready"},
        {"type": "Available", "status": "False"}, {"type": "Reconciling", "status": "False"}]}
    assert status_changes(old, new) == {"readyReplicas", "condition/Ready",
                                        "condition/Reconciling"}
    assert status_changes(new, new) == set()


class _VersionedWriter(FakeWriter):
    """Answers each write with the object at a new resourceVersion, as the API server does."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, str] = {}

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        made = await super().apply(manifest)
        version = str(100 + len(self.applied))
        self.versions[manifest["kind"]] = version
        return made | {"metadata": made["metadata"] | {"resourceVersion": version}}


def test_a_childs_event_is_an_echo_only_at_the_version_its_own_write_answered() -> None:
    view, writer = FakeView(), _VersionedWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    assert set(writer.versions) == {"ConfigMap", "Deployment", "Service"}

    def event(kind: str, version: str) -> dict[str, Any]:
        return {"kind": kind, "metadata": {"name": "server", "resourceVersion": version}}

    made = writer.versions["Deployment"]
    # A later version (the Deployment controller's status write) is news; so is another
    # child's version, or a child of another LLMDeployment.
    assert not controller.is_child_echo("Deployment", "ml", "server", event("Deployment", "999"))
    assert not controller.is_child_echo("Service", "ml", "server", event("Service", made))
    assert not controller.is_child_echo("Deployment", "ml", "other", event("Deployment", made))
    assert not controller.is_child_echo("Deployment", "ml", "server", {"metadata": {}})
    # The creation itself is the echo, once.
    assert controller.is_child_echo("Deployment", "ml", "server", event("Deployment", made))
    assert not controller.is_child_echo("Deployment", "ml", "server", event("Deployment", made))
    # Deleted before its echo arrived: whatever comes next is news.
    service = writer.versions["Service"]
    controller.forget_child("Service", "ml", "server")
    assert not controller.is_child_echo("Service", "ml", "server", event("Service", service))
