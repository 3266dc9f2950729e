"""A fleet across GPU types whose engine fits one H100 node but spans two L40S nodes: one slice
runs a Deployment, the other LeaderWorkerSet groups (the real LWS manager), and the one Service
and the InferencePool take single-node pods and group leaders, never workers.

Its own module: the operator must start after LWS is installed (checked once at startup), and
e2e modules run one operator each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, InstallCRDs, Kubectl
from tests.e2e.conftest import H100, L40S, Getter, apply, condition, small_engine
from tests.e2e.test_multinode import operator_now  # noqa: F401 (a fixture)
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.deployments import multinode
from trtllm_operator.localcluster.extcrds import INFERENCE_EXTENSION

pytestmark = pytest.mark.usefixtures("storage", "hf_token", "gpu_fleet")


@pytest.fixture
def mixed_pool(cluster: ClusterUnderTest) -> Iterator[str]:
    """One 8-GPU H100 node and two 4-GPU L40S nodes only this test's pods select."""
    pool = f"p{uuid.uuid4().hex[:8]}"
    names = [*cluster.add_nodes("h100", 1, labels={"test-pool": pool}),
             *cluster.add_nodes("l40s", 2, labels={"test-pool": pool})]
    yield pool
    cluster.remove_nodes(names)


def test_a_single_node_slice_and_a_multi_node_slice_behind_one_service_and_pool(
        lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter, core: client.CoreV1Api,
        api_client: client.ApiClient, mixed_pool: str, third_party_crds: InstallCRDs,
        operator_now: Any) -> None:  # noqa: F811
    third_party_crds(INFERENCE_EXTENSION)
    operator_now()
    # tensor 8: one H100 node, two L40S nodes; built on 4 GPUs (ranks in turn) to fit an L40S.
    apply(kubectl, namespace, small_engine("wide", [H100, L40S], parallelism={"tensor": 8},
                                           gpus=4))
    apply(kubectl, namespace, {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "mixed"},
        "spec": {"engineRef": {"name": "wide"}, "replicas": 2,
                 "slices": [{"gpu": H100}, {"gpu": L40S}],
                 "nodeSelector": {"test-pool": mixed_pool},
                 "inferencePool": {"endpointPickerRef": {"name": "epp", "port": 9002}}}})

    def ready() -> dict[str, Any] | None:
        obj = get_llmd("mixed")
        c = condition(obj, "Ready")
        return obj if c is not None and c["status"] == "True" else None

    obj = wait_for(ready, 240, "the mixed fleet to be Ready")
    assert [(s["gpu"], s["readyReplicas"]) for s in obj["status"]["slices"]] == [
        (H100, 1), (L40S, 1)]

    objects = client.CustomObjectsApi(api_client)
    group_set = objects.get_namespaced_custom_object(
        multinode.LWS_GROUP, multinode.LWS_VERSION, namespace, multinode.LWS_PLURAL,
        "mixed-nvidia-l40s")
    assert group_set["spec"]["leaderWorkerTemplate"]["size"] == 2
    pods = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/instance=mixed").items
    by_role: dict[str, list[Any]] = {"single": [], "leader": [], "worker": []}
    for p in pods:
        index = p.metadata.labels.get(multinode.LWS_WORKER_INDEX_LABEL)
        by_role["single" if index is None else "leader" if index == "0" else "worker"].append(p)
        product = core.read_node(p.spec.node_name).metadata.labels[gpus.PRODUCT_LABEL]
        assert product == (H100 if index is None else L40S)
        assert p.spec.containers[0].resources.limits[gpus.GPU_RESOURCE] == (
            "8" if index is None else "4")
    assert [len(by_role[r]) for r in ("single", "leader", "worker")] == [1, 1, 1]
    http = {p.metadata.name for p in by_role["single"] + by_role["leader"]}

    discovery = client.DiscoveryV1Api(api_client)

    def endpoints() -> set[str]:
        found = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=mixed").items
        return {e.target_ref.name for s in found for e in s.endpoints or []
                if e.conditions and e.conditions.ready and e.target_ref is not None}

    wait_for(lambda: endpoints() == http, 60,
             "the Service's endpoints to be the H100 pod and the L40S leader")
    pool = objects.get_namespaced_custom_object(
        "inference.networking.k8s.io", "v1", namespace, "inferencepools", "mixed")
    selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["selector"]["matchLabels"].items())
    assert {p.metadata.name for p in core.list_namespaced_pod(
        namespace, label_selector=selector).items} == http
