"""spec.inferencePool against the real API server with the Gateway API Inference Extension's
CRDs installed (no controller, no endpoint picker: only the objects are checked): the pool is
created valid, selects the serving pods, follows spec changes, goes when the field goes and
with the LLMDeployment; without the CRD a condition says so, and the pool comes once the CRD
is installed."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, InstallCRDs, Kubectl
from tests.e2e.conftest import (
    H100,
    Getter,
    apply,
    condition,
    own_nodes,
    read_or_none,
    small_engine,
)
from tests.support import wait_for
from trtllm_operator.localcluster.extcrds import INFERENCE_EXTENSION

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

GROUP, VERSION, PLURAL = "inference.networking.k8s.io", "v1", "inferencepools"


def _llmd(pool: str, picker: dict[str, Any] | None, replicas: int = 2) -> dict[str, Any]:
    spec: dict[str, Any] = {"engineRef": {"name": "llama"}, "gpu": H100, "replicas": replicas,
                            "nodeSelector": {"test-pool": pool}}
    if picker is not None:
        spec["inferencePool"] = {"endpointPickerRef": picker}
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "server"}, "spec": spec}


def _pool(objects: client.CustomObjectsApi, namespace: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = read_or_none(lambda: objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "server"))
    return found


def _condition_is(get_llmd: Getter, type_: str, status: str,
                  reason: str | None = None) -> dict[str, Any] | None:
    c = condition(get_llmd("server"), type_)
    if c is None or c["status"] != status or (reason is not None and c["reason"] != reason):
        return None
    return c


def test_the_pool_is_made_valid_follows_the_spec_and_goes_with_the_field_and_the_owner(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient,
        third_party_crds: InstallCRDs) -> None:
    third_party_crds(INFERENCE_EXTENSION)
    pool = own_nodes(cluster, h100=1)
    objects = client.CustomObjectsApi(api_client)
    apply(kubectl, namespace, small_engine("llama", [H100]))
    apply(kubectl, namespace, _llmd(pool, {"name": "llama-epp", "port": 9002}))

    wait_for(lambda: _condition_is(get_llmd, "Ready", "True"), 120, "the deployment Ready")
    ip = wait_for(lambda: _pool(objects, namespace), 30, "the InferencePool")
    assert _condition_is(get_llmd, "InferencePoolReady", "True", "Applied")
    assert ip["spec"]["targetPorts"] == [{"number": 8000}]
    assert ip["spec"]["endpointPickerRef"] == {
        "group": "", "kind": "Service", "name": "llama-epp", "port": {"number": 9002},
        "failureMode": "FailClose"}  # the CRD's default, filled in by the API server
    assert ip["metadata"]["ownerReferences"][0]["kind"] == "LLMDeployment"
    selector = ",".join(f"{k}={v}" for k, v in ip["spec"]["selector"]["matchLabels"].items())
    members = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert len(members) == 2
    for pod in members:
        assert pod.metadata.labels["inference.networking.k8s.io/engine-type"] == "trtllm-serve"
        assert pod.spec.containers[0].ports[0].container_port == 8000

    # A spec change reaches the pool.
    apply(kubectl, namespace, _llmd(pool, {"name": "other-epp", "port": 9003,
                                           "failureMode": "FailOpen"}))
    wait_for(lambda: ((_pool(objects, namespace) or {}).get("spec", {})
                      .get("endpointPickerRef", {}).get("name") == "other-epp"),
             60, "the pool to name the new picker")
    ref = (_pool(objects, namespace) or {})["spec"]["endpointPickerRef"]
    assert (ref["port"], ref["failureMode"]) == ({"number": 9003}, "FailOpen")

    # The field removed: the pool goes, and so does its condition; serving stays.
    apply(kubectl, namespace, _llmd(pool, None))
    wait_for(lambda: _pool(objects, namespace) is None, 60, "the pool to be deleted")
    wait_for(lambda: condition(get_llmd("server"), "InferencePoolReady") is None, 30,
             "the InferencePoolReady condition to go")
    assert _condition_is(get_llmd, "Ready", "True")

    # Back, then the LLMDeployment deleted: garbage collection takes the pool.
    apply(kubectl, namespace, _llmd(pool, {"name": "llama-epp", "port": 9002}))
    wait_for(lambda: _pool(objects, namespace), 60, "the pool again")
    kubectl("delete", "llmdeployment", "server", "-n", namespace)
    wait_for(lambda: _pool(objects, namespace) is None, 60,
             "the pool to go with its LLMDeployment")


def test_without_the_crd_a_condition_says_so_and_the_pool_comes_once_it_is_installed(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        api_client: client.ApiClient, third_party_crds: InstallCRDs) -> None:
    pool = own_nodes(cluster, h100=1)
    apply(kubectl, namespace, small_engine("llama", [H100]))
    apply(kubectl, namespace, _llmd(pool, {"name": "llama-epp", "port": 9002}, replicas=1))

    missing = wait_for(lambda: _condition_is(get_llmd, "InferencePoolReady", "False",
                                             "InferencePoolCRDMissing"), 120,
                       "the condition saying the CRD is missing")
    assert "install the Gateway API Inference Extension CRDs" in missing["message"]
    # Serving itself runs; Ready says what is missing.
    ready = wait_for(lambda: _condition_is(get_llmd, "Ready", "False",
                                           "InferencePoolCRDMissing"), 120,
                     "Ready False for the missing CRD once the pods are up")
    assert ready["message"] == missing["message"]
    apps = client.AppsV1Api(api_client)
    assert apps.read_namespaced_deployment("server", namespace).status.ready_replicas == 1

    # Installed while the operator runs: seen within its check's TTL and the resync.
    third_party_crds(INFERENCE_EXTENSION)
    objects = client.CustomObjectsApi(api_client)
    wait_for(lambda: _condition_is(get_llmd, "Ready", "True"), 180,
             "Ready once the CRD is installed")
    assert _pool(objects, namespace) is not None
