"""LLMDeployment end to end: placement derived from the engine, honest readiness, boring
rollouts, in-use protection, drift repair and garbage collection."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import ClusterUnderTest, Kubectl
from tests.e2e.conftest import (
    H100,
    L40S,
    Getter,
    apply,
    condition,
    own_nodes,
    small_engine,
    targets,
)
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.localcluster import stages

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage",
                                      "hf_token")


def _llmd(name: str, engine: str, gpu: str | None = None, replicas: int = 1,
          pool: str | None = None, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": name, "labels": {"argocd.argoproj.io/instance": "team-llm"}},
        "spec": {"engineRef": {"name": engine}, "replicas": replicas, **spec},
    }
    if gpu:
        obj["spec"]["gpu"] = gpu
    if pool:
        obj["spec"]["nodeSelector"] = {"test-pool": pool}
    return obj


def _pods(core: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={name}").items)


def _wait_ready(kubectl: Kubectl, namespace: str, kind: str, name: str,
                timeout: int = 120) -> None:
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"{kind}/{name}",
            f"--timeout={timeout}s", timeout=timeout + 10)


def test_two_deployments_of_one_engine_land_on_their_gpu_types(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient) -> None:
    pool = own_nodes(cluster, h100=1, l40s=1)
    apply(kubectl, namespace, small_engine("llama", [H100, L40S], parallelism={"tensor": 2}))
    apply(kubectl, namespace, _llmd("on-h100", "llama", H100, replicas=2, pool=pool))
    apply(kubectl, namespace, _llmd("on-l40s", "llama", L40S, replicas=2, pool=pool))
    _wait_ready(kubectl, namespace, "llmdeployment", "on-h100")
    _wait_ready(kubectl, namespace, "llmdeployment", "on-l40s")

    for name, product in (("on-h100", H100), ("on-l40s", L40S)):
        pods = _pods(core, namespace, name)
        assert len(pods) == 2
        for pod in pods:
            assert core.read_node(pod.spec.node_name).metadata.labels[
                gpus.PRODUCT_LABEL] == product
            c = pod.spec.containers[0]
            assert c.resources.limits[gpus.GPU_RESOURCE] == "2"  # tp=2
            assert c.command[:4] == ["trtllm-serve", "/engine", "--backend", "tensorrt"]
            assert c.command[c.command.index("--tp_size"):][:2] == ["--tp_size", "2"]
            mount = next(m for m in c.volume_mounts if m.name == "engine")
            assert mount.read_only
            assert product in mount.sub_path
        status = get_llmd(name)["status"]
        assert status["gpu"] == product
        assert status["readyReplicas"] == 2
        assert status["endpoint"] == (
            f"http://{name}.{namespace}.svc.cluster.local:8000/v1")
        assert condition(get_llmd(name), "EngineReady")["status"] == "True"

    # Children carry the operator's labels, never the owner's (GitOps tracking labels).
    apps = client.AppsV1Api(api_client)
    dep = apps.read_namespaced_deployment("on-h100", namespace)
    assert "argocd.argoproj.io/instance" not in (dep.metadata.labels or {})
    assert dep.spec.strategy.rolling_update.max_surge == 0
    assert dep.spec.strategy.rolling_update.max_unavailable == 1
    svc = core.read_namespaced_service("on-h100", namespace)
    assert svc.spec.type == "ClusterIP"
    assert svc.spec.selector == {"app.kubernetes.io/name": "trtllm-serve",
                                 "app.kubernetes.io/instance": "on-h100"}
    columns = kubectl("get", "llmd", "on-h100", "-n", namespace).stdout
    assert "2/2" in columns


def test_deployment_waits_for_its_engine_then_becomes_ready(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, small_engine("slow", [H100],
                                      env=[{"name": stages.DURATION_ENV, "value": "6s"}]))
    apply(kubectl, namespace, _llmd("waiting", "slow"))
    wait_for(lambda: (condition(get_llmd("waiting"), "EngineReady") or {}).get("status")
             == "False", 30, "EngineReady=False while building")
    apps = client.AppsV1Api(api_client)
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("waiting", namespace)
    assert missing.value.status == 404  # nothing created before the engine is built
    ready = condition(get_llmd("waiting"), "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    _wait_ready(kubectl, namespace, "llmdeployment", "waiting")
    assert condition(get_llmd("waiting"), "EngineReady")["status"] == "True"


def test_rebuild_rolls_pods_keeping_all_but_one_ready(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_engine: Getter,
        get_llmd: Getter, api_client: client.ApiClient) -> None:
    pool = own_nodes(cluster, h100=1)
    engine = small_engine("rolling", [H100])
    apply(kubectl, namespace, engine)
    apply(kubectl, namespace, _llmd("fleet", "rolling", H100, replicas=3, pool=pool))
    _wait_ready(kubectl, namespace, "llmdeployment", "fleet")
    old_fp = get_llmd("fleet")["status"]["engineFingerprint"]

    apps = client.AppsV1Api(api_client)
    lowest: list[int] = []
    stop = threading.Event()

    def watch_ready() -> None:
        while not stop.is_set():
            status = apps.read_namespaced_deployment_status("fleet", namespace).status
            lowest.append(status.ready_replicas or 0)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    try:
        rebuilt = copy.deepcopy(engine)
        rebuilt["spec"]["build"]["limits"]["maxBatchSize"] = 32
        apply(kubectl, namespace, rebuilt)
        wait_for(lambda: get_llmd("fleet")["status"].get("engineFingerprint") not in (
            None, old_fp), 120, "the fleet to move to the rebuilt engine")
        _wait_ready(kubectl, namespace, "llmdeployment", "fleet")
    finally:
        stop.set()
        watcher.join(5)
    new_fp = targets(get_engine("rolling"))[H100]["fingerprint"]
    assert get_llmd("fleet")["status"]["engineFingerprint"] == new_fp
    assert len(lowest) > 10
    assert min(lowest) >= 2  # never fewer than replicas - 1 ready


def test_parallelism_beyond_the_gpu_types_nodes_is_reported(
        kubectl: Kubectl, namespace: str, get_llmd: Getter) -> None:
    apply(kubectl, namespace, small_engine("wide", [L40S], parallelism={"tensor": 8}))
    apply(kubectl, namespace, _llmd("wide", "wide", L40S))

    def mismatch() -> dict[str, Any] | None:
        c = condition(get_llmd("wide"), "Ready")
        return c if c and c["reason"] == "ParallelismExceedsNode" else None

    c = wait_for(mismatch, 60, "a parallelism mismatch condition")
    assert c["status"] == "False"
    assert L40S in c["message"]
    assert "8" in c["message"]
    assert "4" in c["message"]


def test_pending_pods_surface_the_schedulers_reason(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_llmd: Getter) -> None:
    pool = own_nodes(cluster, h100=1)
    apply(kubectl, namespace, small_engine("big", [H100], parallelism={"tensor": 8}))
    apply(kubectl, namespace, _llmd("two-of-eight", "big", H100, replicas=2, pool=pool))

    # The pod that fits becomes Ready a moment after the other is found unschedulable, so
    # wait for the settled state: one serving, the other's scheduler reason in status.
    def one_ready_one_unschedulable() -> dict[str, Any] | None:
        obj = get_llmd("two-of-eight")
        c = condition(obj, "Ready")
        if not c or c["reason"] != "PodsUnschedulable":
            return None
        return obj if obj["status"].get("replicaSummary") == "1/2" else None

    obj = wait_for(one_ready_one_unschedulable, 90, "1/2 ready and the scheduler's reason")
    c = condition(obj, "Ready")
    assert c is not None
    assert c["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in c["message"]


def test_engine_in_use_cannot_be_deleted_until_its_user_goes(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("precious", [H100]))
    apply(kubectl, namespace, _llmd("user", "precious", H100))
    _wait_ready(kubectl, namespace, "llmdeployment", "user")
    kubectl("delete", "llmengine", "precious", "-n", namespace, "--wait=false")

    def blocked() -> dict[str, Any] | None:
        c = condition(get_engine("precious"), "Ready")
        return c if c and c["reason"] == "InUse" else None

    c = wait_for(blocked, 60, "deletion to be held back")
    assert "user" in c["message"]
    assert get_engine("precious")["metadata"]["deletionTimestamp"]
    events = kubectl("get", "events", "-n", namespace, "--field-selector",
                     "involvedObject.name=precious,reason=DeletionBlocked").stdout
    assert "user" in events

    # Deleting the LLMDeployment garbage-collects what it made, and releases the engine.
    kubectl("delete", "llmdeployment", "user", "-n", namespace)
    apps = client.AppsV1Api(api_client)

    def gone() -> bool:
        try:
            apps.read_namespaced_deployment("user", namespace)
            return False
        except ApiException as exc:
            if exc.status != 404:
                raise
        try:
            core.read_namespaced_service("user", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, 60, "the Deployment and Service to be garbage-collected")
    kubectl("wait", "-n", namespace, "--for=delete", "llmengine/precious", "--timeout=60s")


def test_hand_edits_are_put_back_and_deleted_children_recreated(
        kubectl: Kubectl, namespace: str, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("steady", [H100]))
    apply(kubectl, namespace, _llmd("steady", "steady", H100))
    _wait_ready(kubectl, namespace, "llmdeployment", "steady")
    apps = client.AppsV1Api(api_client)
    # Someone "fixes" the GPU type by hand: the operator puts the engine's type back.
    apps.patch_namespaced_deployment("steady", namespace, {"spec": {"template": {"spec": {
        "nodeSelector": {gpus.PRODUCT_LABEL: L40S}}}}})
    wait_for(lambda: apps.read_namespaced_deployment("steady", namespace).spec.template.spec
             .node_selector[gpus.PRODUCT_LABEL] == H100, 60, "the node selector put back")
    core.delete_namespaced_service("steady", namespace)
    wait_for(lambda: core.read_namespaced_service("steady", namespace), 60,
             "the Service recreated")


def test_kubectl_scale_reaches_the_fleet(kubectl: Kubectl, namespace: str, get_llmd: Getter,
                                         api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, small_engine("scaled", [H100]))
    apply(kubectl, namespace, _llmd("scaled", "scaled", H100))
    _wait_ready(kubectl, namespace, "llmdeployment", "scaled")
    kubectl("scale", "llmdeployment", "scaled", "-n", namespace, "--replicas=2")
    apps = client.AppsV1Api(api_client)
    wait_for(lambda: apps.read_namespaced_deployment("scaled", namespace).spec.replicas == 2,
             60, "the Deployment to scale")
    wait_for(lambda: get_llmd("scaled")["status"].get("readyReplicas") == 2, 60,
             "status to show 2 ready")
    scale = kubectl("get", "--raw", f"/apis/trtllm.dev/v1alpha1/namespaces/{namespace}/"
                    "llmdeployments/scaled/scale").stdout
    assert '"replicas":2' in scale.replace(" ", "")
