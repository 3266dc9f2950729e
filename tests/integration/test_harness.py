"""The local control plane is the real thing: scheduling, Jobs, GC, RBAC and CEL behave as in any
cluster. Each test proves one of the behaviours the operator relies on."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import ClusterUnderTest, Kubectl
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.localcluster import stages

GPU_TOLERATION = {"key": gpus.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def _gpu_deployment(name: str, product: str, pool: str, gpus_per_pod: int,
                    replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {gpus.PRODUCT_LABEL: product, "test-pool": pool},
                    "tolerations": [GPU_TOLERATION],
                    "containers": [{
                        "name": "server", "image": "example.com/server:1",
                        "resources": {"limits": {gpus.GPU_RESOURCE: str(gpus_per_pod)}},
                    }],
                },
            },
        },
    }


def _pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_nodes_carry_gfd_labels_and_gpu_capacity(cluster: ClusterUnderTest,
                                                 core: client.CoreV1Api) -> None:
    name = cluster.add_nodes("l40s", 1)[0]
    node = core.read_node(name)
    assert node.metadata.labels[gpus.PRODUCT_LABEL] == "NVIDIA-L40S"
    assert node.metadata.labels[gpus.FAMILY_LABEL] == "ada-lovelace"
    assert (node.metadata.labels[gpus.COMPUTE_MAJOR_LABEL],
            node.metadata.labels[gpus.COMPUTE_MINOR_LABEL]) == ("8", "9")
    assert node.status.allocatable[gpus.GPU_RESOURCE] == "4"
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    # The node-lifecycle controller lifted the not-ready taint; the GPU taint stays.
    assert [t.key for t in node.spec.taints] == [gpus.GPU_TAINT_KEY]
    cluster.remove_nodes([name])
    wait_for(lambda: name not in {n.metadata.name for n in core.list_node().items}, 30,
             f"node {name} removed")


def test_scheduler_places_gpu_pods_only_on_matching_nodes_with_room(
        cluster: ClusterUnderTest, core: client.CoreV1Api, api_client: client.ApiClient,
        namespace: str) -> None:
    pool = f"p{uuid.uuid4().hex[:8]}"
    # Two 4-GPU L40S nodes (room for four 2-GPU pods) and an H100 node in the same pool,
    # which the product selector must keep pods off.
    l40s = set(cluster.add_nodes("l40s", 2, labels={"test-pool": pool}))
    h100 = cluster.add_nodes("h100", 1, labels={"test-pool": pool})
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(
        namespace, _gpu_deployment("srv", "NVIDIA-L40S", pool, gpus_per_pod=2, replicas=5))

    def settled() -> list[client.V1Pod] | None:
        pods = _pods(core, namespace, "srv")
        placed = [p for p in pods if p.spec.node_name]
        pending_reasoned = [p for p in pods if not p.spec.node_name and any(
            c.type == "PodScheduled" and c.reason == "Unschedulable"
            for c in p.status.conditions or [])]
        return pods if len(placed) == 4 and len(pending_reasoned) == 1 else None

    pods = wait_for(settled, 60, "4 pods placed and 1 unschedulable")
    placed = [p for p in pods if p.spec.node_name]
    assert {p.spec.node_name for p in placed} == l40s
    per_node = {n: sum(p.spec.node_name == n for p in placed) for n in l40s}
    assert set(per_node.values()) == {2}, per_node
    assert not any(p.spec.node_name in h100 for p in pods)
    pending = next(p for p in pods if not p.spec.node_name)
    message = next(c.message for c in pending.status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message
    # Placed pods are Running and Ready (kwok plays the kubelet).
    wait_for(lambda: all(p.status.phase == "Running" for p in _pods(core, namespace, "srv")
                         if p.spec.node_name), 30, "placed pods Running")
    cluster.remove_nodes([*l40s, *h100])


def test_no_node_of_the_product_leaves_pods_pending_with_the_reason(
        cluster: ClusterUnderTest, core: client.CoreV1Api, api_client: client.ApiClient,
        namespace: str) -> None:
    # Nodes exist, just none of the product asked for.
    others = [*cluster.add_nodes("h100", 1), *cluster.add_nodes(None, 1)]
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(
        namespace, _gpu_deployment("nowhere", "NVIDIA-B200", "none", gpus_per_pod=1, replicas=1))

    def unschedulable() -> str | None:
        for p in _pods(core, namespace, "nowhere"):
            for c in p.status.conditions or []:
                if c.type == "PodScheduled" and c.reason == "Unschedulable":
                    return str(c.message)
        return None

    message = wait_for(unschedulable, 60, "an Unschedulable pod")
    assert "didn't match Pod's node affinity/selector" in message
    cluster.remove_nodes(others)


def _job(name: str, annotations: dict[str, str] | None = None,
         env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {gpus.PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"},
                    "tolerations": [GPU_TOLERATION],
                    "containers": [{
                        "name": "build", "image": "example.com/builder:1",
                        "resources": {"limits": {gpus.GPU_RESOURCE: "1"}},
                        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                    }],
                },
            },
        },
    }


def _job_condition(batch: client.BatchV1Api, namespace: str, name: str) -> str | None:
    job = batch.read_namespaced_job_status(name, namespace)
    for c in job.status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return str(c.type)
    return None


def test_job_pod_succeeds_and_job_completes_with_termination_message(
        cluster: ClusterUnderTest, core: client.CoreV1Api, api_client: client.ApiClient,
        namespace: str) -> None:
    nodes = cluster.add_nodes("h100", 1)
    batch = client.BatchV1Api(api_client)
    summary = '{"phase": "Built"}'
    batch.create_namespaced_job(namespace, _job("build", {stages.MESSAGE_ANNOTATION: summary}))
    assert wait_for(lambda: _job_condition(batch, namespace, "build"), 60,
                    "the Job to finish") == "Complete"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=build").items[0]
    assert pod.status.phase == "Succeeded"
    assert core.read_node(pod.spec.node_name).metadata.labels[gpus.PRODUCT_LABEL] == (
        "NVIDIA-H100-80GB-HBM3")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (0, summary)
    cluster.remove_nodes(nodes)


def test_job_pod_told_to_fail_fails_the_job(cluster: ClusterUnderTest, core: client.CoreV1Api,
                                            api_client: client.ApiClient,
                                            namespace: str) -> None:
    nodes = cluster.add_nodes("h100", 1)
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, _job("broken", {
        stages.EXIT_CODE_ANNOTATION: "3", stages.MESSAGE_ANNOTATION: "trtllm-build not found"}))
    assert wait_for(lambda: _job_condition(batch, namespace, "broken"), 60,
                    "the Job to finish") == "Failed"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=broken").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code, terminated.message) == (
        "Failed", 3, "trtllm-build not found")
    cluster.remove_nodes(nodes)


def test_job_pod_steered_by_env_fails_with_code_and_message(
        cluster: ClusterUnderTest, core: client.CoreV1Api, api_client: client.ApiClient,
        namespace: str) -> None:
    """The env-var form of the controls: how tests steer pods made by the operator."""
    nodes = cluster.add_nodes("h100", 1)
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, _job("viaenv", env={
        stages.EXIT_CODE_ENV: "4", stages.MESSAGE_ENV: '{"reason": "GpuMismatch"}',
        stages.DURATION_ENV: "2s"}))
    assert wait_for(lambda: _job_condition(batch, namespace, "viaenv"), 60,
                    "the Job to finish") == "Failed"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=viaenv").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (4, '{"reason": "GpuMismatch"}')
    # The simulated run lasted the SIM_DURATION asked for (kwok applies it as a lower bound).
    started = pod.status.start_time
    assert (terminated.finished_at - started).total_seconds() >= 1.5
    cluster.remove_nodes(nodes)


def test_deleting_an_owner_garbage_collects_its_children(core: client.CoreV1Api,
                                                         namespace: str) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner.metadata.uid, "controller": True, "blockOwnerDeletion": True}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(child_gone, 60, "the garbage collector to delete the child")
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def _client_as(cluster_client: client.ApiClient, token: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = cluster_client.configuration.host
    cfg.ssl_ca_cert = cluster_client.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


def test_service_account_without_binding_is_denied_until_bound(
        core: client.CoreV1Api, api_client: client.ApiClient, namespace: str) -> None:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    as_sa = client.CoreV1Api(_client_as(api_client, token))
    with pytest.raises(ApiException) as denied:
        as_sa.list_namespaced_config_map(namespace)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body

    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "read-cm"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "read-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})
    # Authorization caches nothing across RBAC changes for long: the same token now works.
    wait_for(lambda: as_sa.list_namespaced_config_map(namespace) is not None, 30,
             "the RoleBinding to take effect")
    with pytest.raises(ApiException) as still_denied:
        as_sa.list_namespaced_secret(namespace)
    assert still_denied.value.status == 403


def test_crd_with_cel_rule_rejects_a_violating_object(api_client: client.ApiClient,
                                                      kubectl: Kubectl, namespace: str) -> None:
    group = f"h{uuid.uuid4().hex[:6]}.harness.trtllm.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"ranges.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [{
                        "rule": "self.min <= self.max",
                        "message": "spec.min must not exceed spec.max"}],
                }}}},
            }],
        },
    }
    ext = client.ApiextensionsV1Api(api_client)
    ext.create_custom_resource_definition(crd)
    try:
        kubectl("wait", "--for=condition=Established", f"crd/ranges.{group}", "--timeout=60s")
        objects = client.CustomObjectsApi(api_client)

        def create(lo: int, hi: int, name: str) -> Any:
            return objects.create_namespaced_custom_object(
                group, "v1", namespace, "ranges",
                {"apiVersion": f"{group}/v1", "kind": "Range", "metadata": {"name": name},
                 "spec": {"min": lo, "max": hi}})

        # Discovery of a fresh CRD can lag Established by a moment.
        wait_for(lambda: create(1, 2, "ok"), 30, "the valid object to be accepted")
        with pytest.raises(ApiException) as rejected:
            create(5, 2, "bad")
        assert rejected.value.status == 422
        assert "spec.min must not exceed spec.max" in rejected.value.body
    finally:
        ext.delete_custom_resource_definition(f"ranges.{group}")
