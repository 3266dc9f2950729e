"""LeaderWorkerSet on the local control plane: the real manager and webhooks, kwok nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest
from tests.support import wait_for
from trtllm_operator import gpus

GROUP = "leaderworkerset.x-k8s.io"


@pytest.fixture
def h100_pool(cluster: ClusterUnderTest, namespace: str) -> Iterator[str]:
    """Four 8-GPU H100 nodes of this test alone (a label the pods select), removed after."""
    names = cluster.add_nodes("h100", 4, labels={"trtllm.dev/test-pool": namespace})
    yield namespace
    cluster.remove_nodes(names)


def _lws(name: str, pool: str, replicas: int, size: int, gpus_per_pod: int) -> dict[str, Any]:
    pod = {"spec": {
        "nodeSelector": {"trtllm.dev/test-pool": pool},
        "tolerations": [{"key": gpus.GPU_TAINT_KEY, "operator": "Exists"}],
        "containers": [{"name": "main", "image": "registry.local/sim:1", "resources": {
            "limits": {gpus.GPU_RESOURCE: str(gpus_per_pod)}}}],
    }}
    return {
        "apiVersion": f"{GROUP}/v1", "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "leaderWorkerTemplate": {
            "size": size, "leaderTemplate": pod, "workerTemplate": pod}},
    }


def test_lws_groups_run_on_kwok_gpu_nodes(lws: str, api_client: client.ApiClient,
                                          core: client.CoreV1Api, namespace: str,
                                          h100_pool: str) -> None:
    objects = client.CustomObjectsApi(api_client)
    objects.create_namespaced_custom_object(GROUP, "v1", namespace, "leaderworkersets",
                                            _lws("grp", h100_pool, 2, 2, 8))

    def pods() -> list[Any]:
        items: list[Any] = core.list_namespaced_pod(
            namespace, label_selector="leaderworkerset.sigs.k8s.io/name=grp").items
        return items

    wait_for(lambda: len([p for p in pods() if p.status.phase == "Running"]) == 4, 120,
             "two leader and two worker pods Running")

    def available() -> bool:
        obj = objects.get_namespaced_custom_object(GROUP, "v1", namespace,
                                                   "leaderworkersets", "grp")
        status = obj.get("status") or {}
        return status.get("readyReplicas") == 2 and any(
            c["type"] == "Available" and c["status"] == "True"
            for c in status.get("conditions") or [])

    wait_for(available, 120, "the LeaderWorkerSet Available with 2 ready groups")
    running = pods()
    # Each pod holds a whole 8-GPU node: four distinct nodes.
    assert len({p.spec.node_name for p in running}) == 4
    workers = [p for p in running
               if p.metadata.labels.get("leaderworkerset.sigs.k8s.io/worker-index") == "1"]
    assert len(workers) == 2
    # The pod webhook ran: workers know their leader by its stable name.
    for w in workers:
        env = {e.name: e.value for e in w.spec.containers[0].env or []}
        group = w.metadata.labels["leaderworkerset.sigs.k8s.io/group-index"]
        assert env["LWS_LEADER_ADDRESS"] == f"grp-{group}.grp.{namespace}"
        assert env["LWS_GROUP_SIZE"] == "2"
