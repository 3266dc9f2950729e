"""Autoscaling a multi-node deployment: the LeaderWorkerSet (its scale subresource counts
groups) is the scale target, on the real LWS manager; scaling it is not reverted, and Ready
follows the autoscaler's size, not spec.replicas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import Getter, apply, settle
from tests.e2e.test_multinode import (  # noqa: F401 -- fixtures used by name
    _llmd,
    _wait_ready,
    _wide_engine,
    h100_pool,
    operator_now,
)
from tests.support import wait_for
from trtllm_operator.deployments import multinode
from trtllm_operator.localcluster.operator_process import OperatorProcess

pytestmark = pytest.mark.usefixtures("storage", "hf_token")


def _lws(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        multinode.LWS_GROUP, multinode.LWS_VERSION, namespace, multinode.LWS_PLURAL, "wide-lws")
    return obj


def test_an_hpa_scales_the_group_set_and_the_operator_leaves_its_size(
        lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient, h100_pool: str,  # noqa: F811
        gpu_fleet: dict[str, list[str]],
        operator_now: Callable[[], OperatorProcess]) -> None:  # noqa: F811
    op = operator_now()
    apply(kubectl, namespace, _wide_engine("wide"))
    llmd = _llmd("wide", "wide", 1, h100_pool)
    llmd["spec"]["autoscaling"] = {"provider": "hpa", "minReplicas": 1, "maxReplicas": 2}
    apply(kubectl, namespace, llmd)
    _wait_ready(kubectl, namespace, get_llmd, core, op)

    hpa = client.AutoscalingV2Api(api_client).read_namespaced_horizontal_pod_autoscaler(
        "wide", namespace)
    assert (hpa.spec.scale_target_ref.api_version, hpa.spec.scale_target_ref.kind,
            hpa.spec.scale_target_ref.name) == ("leaderworkerset.x-k8s.io/v1",
                                                 "LeaderWorkerSet", "wide-lws")
    assert get_llmd("wide")["status"]["replicasOwner"] == "HorizontalPodAutoscaler/wide"
    applied = [e for e in _lws(api_client, namespace)["metadata"]["managedFields"]
               if e["manager"] == "trtllm-operator" and e["operation"] == "Apply"]
    assert applied
    assert "f:replicas" not in applied[0]["fieldsV1"]["f:spec"]

    # Two groups through the scale subresource (what an autoscaler does): kept, and Ready
    # waits for both groups.
    kubectl("scale", "-n", namespace, "leaderworkerset/wide-lws", "--replicas=2")
    kubectl("annotate", "-n", namespace, "llmdeployment/wide", "touch=1")  # a reconcile
    wait_for(lambda: get_llmd("wide")["status"].get("replicaSummary") == "2/2", 240,
             "both groups ready, counted against the autoscaler's size")
    settle(2)
    assert _lws(api_client, namespace)["spec"]["replicas"] == 2
    assert get_llmd("wide")["spec"]["replicas"] == 1  # the operator never writes spec
