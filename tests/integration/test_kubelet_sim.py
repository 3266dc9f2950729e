"""kwok runs no container; the kubelet simulator makes pods fail to start as on a real node."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest
from tests.support import wait_for


@pytest.fixture(autouse=True)
def _node(cluster: ClusterUnderTest) -> Iterator[None]:
    local = cluster.require_local()
    names = cluster.add_nodes(None, 1)
    local.wait_nodes_ready(names)
    yield
    cluster.remove_nodes(names)


def _pod(name: str, image: str = "example.com/server:1", env: list[dict[str, Any]] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"containers": [{"name": "c", "image": image, "env": env or []}]}}


def _waiting(core: client.CoreV1Api, ns: str, name: str) -> tuple[str, str, int] | None:
    pod = core.read_namespaced_pod(name, ns)
    for s in pod.status.container_statuses or []:
        if s.state and s.state.waiting:
            return s.state.waiting.reason, s.state.waiting.message or "", s.restart_count
    return None


def test_missing_secret_then_created(core: client.CoreV1Api, namespace: str) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}]
    core.create_namespaced_pod(namespace, _pod(name, env=env))
    wait_for(lambda: (_waiting(core, namespace, name) or ("",))[0] == "CreateContainerConfigError",
             timeout=30)
    _reason, message, _ = _waiting(core, namespace, name) or ("", "", 0)
    assert message == 'secret "hf" not found'
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.status.phase == "Pending"
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf"},
                                              "stringData": {"HF_TOKEN": "x"}})
    wait_for(lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running",
             timeout=30)


def test_unpullable_image(core: client.CoreV1Api, namespace: str) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, _pod(name, image="registry.invalid/x:1"))
    wait_for(lambda: (_waiting(core, namespace, name) or ("",))[0] == "ImagePullBackOff",
             timeout=30)
    _, message, _ = _waiting(core, namespace, name) or ("", "", 0)
    assert message == 'Back-off pulling image "registry.invalid/x:1"'


def test_crash_knob(core: client.CoreV1Api, namespace: str) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, _pod(name, annotations={"sim.trtllm.dev/crash": "1"}))
    wait_for(lambda: (_waiting(core, namespace, name) or ("", "", 0))[2] >= 2, timeout=40)
    reason, message, _ = _waiting(core, namespace, name) or ("", "", 0)
    assert reason == "CrashLoopBackOff"
    assert message.startswith("back-off ")
    assert f"container=c pod={name}_{namespace}(" in message


def test_ordinary_pod_runs(core: client.CoreV1Api, namespace: str) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, _pod(name))
    wait_for(lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running",
             timeout=30)
