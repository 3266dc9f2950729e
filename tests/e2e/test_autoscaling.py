"""spec.autoscaling and the PodMonitor end to end, with the real CRDs and no third-party
controller: KEDA's ScaledObject and the Prometheus Operator's PodMonitor CRDs are installed
for a test and removed after it (``third_party_crds``); the built-in HorizontalPodAutoscaler
controller runs in the local controller-manager, so what it reports is real (it finds no
metrics API here, and says so).

Proven: the objects are created and accepted by the API server's schema, follow spec changes,
go when autoscaling or metrics are turned off and when the LLMDeployment is deleted; nothing is
made when the CRD is absent (a condition only when the spec asked for it); and the operator
does not fight whoever scales the workload.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, InstallCRDs, Kubectl
from tests.e2e.conftest import (
    H100,
    Getter,
    apply,
    condition,
    read_or_none,
    settle,
    small_engine,
)
from tests.support import wait_for
from trtllm_operator.localcluster.extcrds import KEDA, PROMETHEUS_OPERATOR
from trtllm_operator.localcluster.operator_process import OperatorProcess

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

PROM = "http://prometheus.monitoring.svc:9090"
FIELD_MANAGER = "trtllm-operator"


@pytest.fixture(scope="module")
def running_operator(cluster: ClusterUnderTest, crds: list[str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """This module's operator asks again every 2 s whether KEDA and the Prometheus Operator
    are served (30 s by default), so CRDs installed by a test are seen quickly."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster.kubeconfig, log,
                         extra_env={"TRTLLM_OPERATOR_OPTIONAL_API_TTL_SECONDS": "2"})
    op.start()
    yield op
    op.stop()


def _llmd(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"engineRef": {"name": "llama"}, "gpu": H100, "replicas": 1, **spec}}


def _engine_ready(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, namespace, small_engine("llama", [H100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/llama",
            "--timeout=120s")


def _custom(api_client: client.ApiClient, group: str, version: str, plural: str,
            namespace: str, name: str) -> dict[str, Any] | None:
    obj: dict[str, Any] | None = read_or_none(
        lambda: client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            group, version, namespace, plural, name))
    return obj


def _scaled_object(api_client: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    return _custom(api_client, "keda.sh", "v1alpha1", "scaledobjects", ns, name)


def _pod_monitor(api_client: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    return _custom(api_client, "monitoring.coreos.com", "v1", "podmonitors", ns, name)


def _read_hpa(api_client: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    obj = read_or_none(lambda: client.AutoscalingV2Api(
        api_client).read_namespaced_horizontal_pod_autoscaler(name, ns))
    if obj is None:
        return None
    out: dict[str, Any] = api_client.sanitize_for_serialization(obj)
    return out


def _operator_owns_replicas(apps: client.AppsV1Api, ns: str, name: str) -> bool:
    dep = apps.read_namespaced_deployment(name, ns)
    for entry in dep.metadata.managed_fields or []:
        if entry.manager == FIELD_MANAGER and entry.operation == "Apply":
            return "f:replicas" in (entry.fields_v1 or {}).get("f:spec", {})
    return False


def _status(get_llmd: Getter, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get_llmd(name).get("status") or {}
    return status


def test_without_keda_an_hpa_scales_the_deployment_and_the_operator_never_fights_it(
        kubectl: Kubectl, namespace: str, get_llmd: Getter,
        api_client: client.ApiClient) -> None:
    _engine_ready(kubectl, namespace)
    apps = client.AppsV1Api(api_client)
    apply(kubectl, namespace, _llmd("chat", autoscaling={"minReplicas": 1, "maxReplicas": 3}))

    hpa = wait_for(lambda: _read_hpa(api_client, namespace, "chat"), 60,
                   "the HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "chat"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    # The engine line's default: the mean time to first token, for a metrics adapter.
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == (
        "trtllm_time_to_first_token_seconds_mean")
    wait_for(lambda: _status(get_llmd, "chat").get("replicasOwner")
             == "HorizontalPodAutoscaler/chat", 60, "status.replicasOwner naming the HPA")
    assert not _operator_owns_replicas(apps, namespace, "chat")

    # The real HPA controller reports that it cannot read metrics (no adapter here): the
    # Autoscaling condition carries its words.
    def hpa_reported() -> dict[str, Any] | None:
        c = condition(get_llmd("chat"), "Autoscaling")
        return c if c is not None and c["status"] == "False" else None

    reported = wait_for(hpa_reported, 90, "the HPA controller's report in status")
    assert reported["reason"].startswith("FailedGet"), reported
    assert "HorizontalPodAutoscaler chat" in reported["message"]

    # Someone (an autoscaler, a person) scales the workload: the operator leaves it.
    kubectl("scale", "-n", namespace, "deployment/chat", "--replicas=2")
    kubectl("annotate", "-n", namespace, "llmdeployment/chat", "touch=1")  # a reconcile
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=merge",
            "-p", '{"spec": {"autoscaling": {"maxReplicas": 4}}}')  # and a spec change
    wait_for(lambda: (_read_hpa(api_client, namespace, "chat") or {}).get(
        "spec", {}).get("maxReplicas") == 4, 60, "the HPA to follow maxReplicas 4")
    settle(3)
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2

    # Autoscaling off: the HPA goes and spec.replicas owns the Deployment again.
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/autoscaling"}]')
    wait_for(lambda: _read_hpa(api_client, namespace, "chat") is None, 60, "the HPA deleted")
    wait_for(lambda: apps.read_namespaced_deployment("chat", namespace).spec.replicas == 1,
             60, "spec.replicas (1) back on the Deployment")
    assert _status(get_llmd, "chat").get("replicasOwner") == "spec.replicas"
    assert condition(get_llmd("chat"), "Autoscaling") is None

    # On again over a running fleet of 2: the size is handed over, not reset to the default 1.
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=merge",
            "-p", '{"spec": {"replicas": 2}}')
    wait_for(lambda: apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2,
             60, "the Deployment at spec.replicas 2")
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=merge",
            "-p", '{"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}}')
    wait_for(lambda: _status(get_llmd, "chat").get("replicasOwner")
             == "HorizontalPodAutoscaler/chat", 60, "the HPA owning replicas again")
    settle(3)
    assert not _operator_owns_replicas(apps, namespace, "chat")
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2


def test_keda_asked_for_where_it_is_absent_is_a_condition_and_nothing_is_made(
        kubectl: Kubectl, namespace: str, get_llmd: Getter,
        api_client: client.ApiClient) -> None:
    _engine_ready(kubectl, namespace)
    apply(kubectl, namespace, _llmd("chat", replicas=2, autoscaling={
        "provider": "keda", "maxReplicas": 3, "prometheusAddress": PROM}))

    def refused() -> dict[str, Any] | None:
        c = condition(get_llmd("chat"), "Autoscaling")
        return c if c is not None and c["reason"] == "KEDANotAvailable" else None

    refused_condition = wait_for(refused, 60, "the KEDANotAvailable condition")
    assert refused_condition["status"] == "False"
    assert "set provider hpa" in refused_condition["message"]
    assert _read_hpa(api_client, namespace, "chat") is None
    apps = client.AppsV1Api(api_client)
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2
    assert _status(get_llmd, "chat")["replicasOwner"] == "spec.replicas"
    # No PodMonitor CRD and none asked for in the spec: no condition about it.
    assert "podMonitor" not in _status(get_llmd, "chat")
    assert [c["type"] for c in _status(get_llmd, "chat")["conditions"]
            if "Monitor" in c["type"]] == []


def test_a_scaled_object_and_pod_monitor_follow_the_spec_and_go_with_the_deployment(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, api_client: client.ApiClient,
        third_party_crds: InstallCRDs) -> None:
    third_party_crds(KEDA)
    third_party_crds(PROMETHEUS_OPERATOR)
    _engine_ready(kubectl, namespace)
    apps = client.AppsV1Api(api_client)
    apply(kubectl, namespace, _llmd("chat", autoscaling={
        "minReplicas": 0, "maxReplicas": 2, "prometheusAddress": PROM}))

    so = wait_for(lambda: _scaled_object(api_client, namespace, "chat"), 60,
                  "the ScaledObject")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "chat"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 2)
    trigger = so["spec"]["triggers"][0]
    assert (trigger["type"], trigger["metadata"]["serverAddress"]) == ("prometheus", PROM)
    assert 'llmdeployment="chat"' in trigger["metadata"]["query"]
    pm = wait_for(lambda: _pod_monitor(api_client, namespace, "chat"), 60, "the PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/prometheus/metrics"
    assert pm["spec"]["selector"]["matchLabels"]["trtllm.dev/metrics"] == "prometheus"
    # The selected pods really carry the label (the serving pods of this deployment).
    selector = ",".join(f"{k}={v}" for k, v in pm["spec"]["selector"]["matchLabels"].items())
    pods = wait_for(lambda: client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=selector).items, 60, "serving pods the PodMonitor selects")
    assert all(p.metadata.labels["trtllm.dev/deployment"] == "chat" for p in pods)
    status = wait_for(lambda: _status(get_llmd, "chat") if _status(get_llmd, "chat").get(
        "replicasOwner") == "ScaledObject/chat" else None, 60, "status naming the ScaledObject")
    assert status["podMonitor"] == "chat"
    pending = condition(get_llmd("chat"), "Autoscaling")
    assert pending is not None
    assert (pending["status"], pending["reason"]) == ("Unknown", "AutoscalerPending")
    assert "KEDA has not reported" in pending["message"]
    assert not _operator_owns_replicas(apps, namespace, "chat")

    # A spec change reaches the ScaledObject.
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=merge",
            "-p", '{"spec": {"autoscaling": {"maxReplicas": 5}}}')
    wait_for(lambda: (_scaled_object(api_client, namespace, "chat") or {}).get(
        "spec", {}).get("maxReplicaCount") == 5, 60, "maxReplicaCount 5")

    # Autoscaling off: the ScaledObject goes; metrics off: the PodMonitor goes.
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=json",
            "-p", '[{"op": "remove", "path": "/spec/autoscaling"}]')
    wait_for(lambda: _scaled_object(api_client, namespace, "chat") is None, 60,
             "the ScaledObject deleted")
    assert _pod_monitor(api_client, namespace, "chat") is not None
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=merge",
            "-p", '{"spec": {"serve": {"metrics": false}}}')
    wait_for(lambda: _pod_monitor(api_client, namespace, "chat") is None, 60,
             "the PodMonitor deleted")

    # Both back, then the LLMDeployment deleted: garbage collection takes them.
    kubectl("patch", "-n", namespace, "llmdeployment/chat", "--type=merge", "-p",
            '{"spec": {"serve": {"metrics": true}, "autoscaling": {"maxReplicas": 2, '
            f'"prometheusAddress": "{PROM}"}}}}}}')
    wait_for(lambda: _scaled_object(api_client, namespace, "chat"), 60, "the ScaledObject")
    wait_for(lambda: _pod_monitor(api_client, namespace, "chat"), 60, "the PodMonitor")
    kubectl("delete", "-n", namespace, "llmdeployment/chat", "--wait=true")
    wait_for(lambda: _scaled_object(api_client, namespace, "chat") is None
             and _pod_monitor(api_client, namespace, "chat") is None, 60,
             "the ScaledObject and PodMonitor garbage-collected")
