"""One fleet across GPU types: an LLMDeployment with spec.slices serves from H100 and L40S
nodes behind one Service (and one InferencePool), each slice placed and sized by its own
engine, Ready only when every slice is; a slice taken off the list takes its workload along."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, InstallCRDs, Kubectl
from tests.e2e.conftest import (
    H100,
    L40S,
    Getter,
    apply,
    condition,
    own_nodes,
    small_engine,
)
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.localcluster.extcrds import INFERENCE_EXTENSION

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

H100_WORKLOAD = "fleet-nvidia-h100-80gb-hbm3"
L40S_WORKLOAD = "fleet-nvidia-l40s"


def _fleet(pool: str, slices: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "fleet"},
            "spec": {"engineRef": {"name": "llama"}, "replicas": replicas, "slices": slices,
                     "nodeSelector": {"test-pool": pool},
                     "inferencePool": {"endpointPickerRef": {"name": "llama-epp",
                                                             "port": 9002}}}}


def _ready_endpoints(discovery: client.DiscoveryV1Api, namespace: str, service: str) -> set[str]:
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}").items
    return {ep.target_ref.name for s in slices for ep in s.endpoints or []
            if ep.conditions and ep.conditions.ready and ep.target_ref is not None}


def test_two_gpu_types_serve_behind_one_service_ready_when_both_slices_are(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient,
        third_party_crds: InstallCRDs) -> None:
    third_party_crds(INFERENCE_EXTENSION)
    pool = own_nodes(cluster, h100=1, l40s=1)
    apps = client.AppsV1Api(api_client)
    apply(kubectl, namespace, small_engine("llama", [H100, L40S], parallelism={"tensor": 2}))
    apply(kubectl, namespace, _fleet(pool, [{"gpu": H100, "weight": 2}, {"gpu": L40S}], 3))

    def ready() -> dict[str, Any] | None:
        obj = get_llmd("fleet")
        c = condition(obj, "Ready")
        return obj if c is not None and c["status"] == "True" else None

    obj = wait_for(ready, 180, "the fleet to be Ready")
    status = obj["status"]
    assert [(s["gpu"], s["desiredReplicas"], s["readyReplicas"], s["ready"])
            for s in status["slices"]] == [(H100, 2, 2, True), (L40S, 1, 1, True)]
    assert all(len(s["engineFingerprint"]) == 64 for s in status["slices"])
    assert status["slices"][0]["engineFingerprint"] != status["slices"][1]["engineFingerprint"]
    assert (status["readyReplicas"], status["replicaSummary"]) == (3, "3/3")
    assert status["endpoint"] == f"http://fleet.{namespace}.svc.cluster.local:8000/v1"

    # One workload per GPU type, each on its own nodes with its own engine's parallelism.
    pods = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/instance=fleet").items
    on = sorted(core.read_node(p.spec.node_name).metadata.labels[gpus.PRODUCT_LABEL]
                for p in pods)
    assert on == [H100, H100, L40S]
    for p in pods:
        c = p.spec.containers[0]
        assert c.resources.limits[gpus.GPU_RESOURCE] == "2"
        mount = next(m for m in c.volume_mounts if m.name == "engine")
        assert p.spec.node_selector[gpus.PRODUCT_LABEL] in mount.sub_path
        assert p.metadata.labels["inference.networking.k8s.io/engine-type"] == "trtllm-serve"
    assert {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items} == {
        H100_WORKLOAD, L40S_WORKLOAD}

    # One Service whose endpoints are the pods of both types.
    names = {p.metadata.name for p in pods}
    discovery = client.DiscoveryV1Api(api_client)
    wait_for(lambda: _ready_endpoints(discovery, namespace, "fleet") == names, 60,
             "the Service's endpoints to be every pod of both slices")

    # One InferencePool over both slices, accepted by the API server.
    objects = client.CustomObjectsApi(api_client)
    ip = objects.get_namespaced_custom_object(
        "inference.networking.k8s.io", "v1", namespace, "inferencepools", "fleet")
    selector = ",".join(f"{k}={v}" for k, v in ip["spec"]["selector"]["matchLabels"].items())
    assert {p.metadata.name for p in core.list_namespaced_pod(
        namespace, label_selector=selector).items} == names

    # The L40S slice taken off the list: its Deployment goes, the H100 one takes every replica.
    apply(kubectl, namespace, _fleet(pool, [{"gpu": H100, "weight": 2}], 2))
    wait_for(lambda: {d.metadata.name for d in apps.list_namespaced_deployment(
        namespace).items} == {H100_WORKLOAD}, 60, "the L40S slice's Deployment to go")
    obj = wait_for(lambda: (o := ready()) and len(o["status"]["slices"]) == 1 and o, 120,
                   "the fleet Ready on H100 alone")
    assert obj["status"]["slices"][0]["readyReplicas"] == 2


def test_a_slice_not_built_for_its_gpu_type_is_named_and_the_other_still_serves(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        api_client: client.ApiClient) -> None:
    pool = own_nodes(cluster, h100=1)
    apply(kubectl, namespace, small_engine("llama", [H100]))
    fleet = _fleet(pool, [{"gpu": H100}, {"gpu": L40S}], 2)
    del fleet["spec"]["inferencePool"]
    apply(kubectl, namespace, fleet)

    def told() -> dict[str, Any] | None:
        obj = get_llmd("fleet")
        shown = (obj.get("status") or {}).get("slices") or []
        return obj if len(shown) == 2 and shown[1]["reason"] == "GPUNotATarget" else None

    obj = wait_for(told, 120, "the L40S slice to say its GPU type is not a target")
    assert obj["status"]["slices"][1]["message"].startswith(
        f"spec.slices[1].gpu {L40S} is not a target of LLMEngine llama")
    ready = condition(obj, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    apps = client.AppsV1Api(api_client)
    wait_for(lambda: [d.metadata.name for d in apps.list_namespaced_deployment(
        namespace).items] == [H100_WORKLOAD], 60, "the H100 slice alone to get a Deployment")
    wait_for(lambda: (get_llmd("fleet")["status"]["slices"][0]["ready"]), 120,
             "the H100 slice to be ready")
