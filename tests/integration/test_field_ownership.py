"""Children made by a plain create, then server-side applied, on a real API server: the first
apply folds the create's "Update" entry into the operator's "Apply" entry, so a field a later
spec drops is removed, as if the child had been applied from the start; fields another manager
set are left alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from trtllm_operator import metrics
from trtllm_operator.kube import FIELD_MANAGER, Kube, invalid_refusal, make_client
from trtllm_operator.workqueue import TokenBucket

from ..conftest import ClusterUnderTest

pytestmark = pytest.mark.cluster


def _deployment(namespace: str, labels: dict[str, str], env: list[dict[str, str]],
                image: str = "registry.local/sim:1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "child", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "child"}},
            "template": {
                "metadata": {"labels": {"app": "child"}},
                "spec": {"containers": [{"name": "main", "image": image, "env": env}]},
            },
        },
    }


def _ours(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["operation"], e.get("subresource") or "")
            for e in obj["metadata"]["managedFields"] if e["manager"] == FIELD_MANAGER]


def _folds() -> float:
    value = metrics.REGISTRY.get_sample_value("trtllm_operator_field_ownership_folds_total")
    return value or 0.0


def _run(cluster: ClusterUnderTest, steps: Any) -> Any:
    async def go() -> Any:
        api = make_client(str(cluster.kubeconfig))
        try:
            return await steps(Kube(api, TokenBucket(100.0, 100)))
        finally:
            await api.close()
    return asyncio.run(go())


def test_a_created_child_loses_a_dropped_field_at_its_first_apply(
        cluster: ClusterUnderTest, namespace: str, api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    first = _deployment(namespace, {"app": "child", "tier": "serving"},
                        [{"name": "KEEP", "value": "1"}, {"name": "DROP", "value": "2"}])
    folds = _folds()

    async def create(kube: Kube) -> dict[str, Any]:
        return await kube.create_child(first)
    created = _run(cluster, create)
    assert _ours(created) == [("Update", "")]

    # Someone else labels the Deployment; their field is theirs to keep.
    apps.patch_namespaced_deployment("child", namespace,
                                     {"metadata": {"labels": {"team": "ml"}}},
                                     field_manager="someone-else")

    second = _deployment(namespace, {"app": "child"}, [{"name": "KEEP", "value": "1"}],
                         image="registry.local/sim:2")

    async def apply(kube: Kube) -> dict[str, Any]:
        return await kube.apply(second)
    applied = _run(cluster, apply)

    stored = apps.read_namespaced_deployment("child", namespace)
    assert stored.metadata.labels == {"app": "child", "team": "ml"}  # "tier" dropped
    container = stored.spec.template.spec.containers[0]
    assert [(e.name, e.value) for e in container.env] == [("KEEP", "1")]
    assert container.image == "registry.local/sim:2"
    assert _ours(applied) == [("Apply", "")]
    assert _folds() == folds + 1

    # Later applies are plain applies: nothing left to fold.
    third = _deployment(namespace, {"app": "child"}, [])
    _run(cluster, lambda kube: kube.apply(third))
    stored = apps.read_namespaced_deployment("child", namespace)
    assert stored.spec.template.spec.containers[0].env is None
    assert stored.metadata.labels == {"app": "child", "team": "ml"}
    assert _folds() == folds + 1


def test_creating_a_child_that_exists_applies_it_instead(
        cluster: ClusterUnderTest, namespace: str, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "options"}, "data": {"a": "old", "stale": "x"}},
        field_manager="someone-else")
    manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "options", "namespace": namespace}, "data": {"a": "new"}}

    made = _run(cluster, lambda kube: kube.create_child(manifest))

    assert made["data"] == {"a": "new", "stale": "x"}  # another manager's key stays
    assert _ours(made) == [("Apply", "")]


@pytest.mark.parametrize("scaled", ["before the first apply", "after the first apply"])
def test_a_size_a_scaler_set_survives_the_fold_of_a_child_made_without_replicas(
        scaled: str, cluster: ClusterUnderTest, namespace: str,
        api_client: client.ApiClient) -> None:
    """While an autoscaler owns replicas the operator leaves them out of the Deployment; the
    create's entry then holds the defaulted replicas, and folding it must not reset a size an
    autoscaler sets through the scale subresource."""
    apps = client.AppsV1Api(api_client)

    def manifest(tier: str) -> dict[str, Any]:
        m = _deployment(namespace, {"app": "child", "tier": tier}, [])
        del m["spec"]["replicas"]
        return m

    def scale() -> None:
        apps.patch_namespaced_deployment_scale("child", namespace, {"spec": {"replicas": 3}},
                                               field_manager="an-autoscaler")

    _run(cluster, lambda kube: kube.create_child(manifest("a")))
    if scaled == "before the first apply":
        scale()
    _run(cluster, lambda kube: kube.apply(manifest("b")))
    if scaled == "after the first apply":
        scale()
    _run(cluster, lambda kube: kube.apply(manifest("c")))

    stored = apps.read_namespaced_deployment("child", namespace)
    assert stored.metadata.labels["tier"] == "c"
    assert stored.spec.replicas == 3


def test_a_child_the_api_server_cannot_decode_is_a_refusal_by_create_and_by_apply(
        cluster: ClusterUnderTest, namespace: str) -> None:
    """A value the CRD accepts but the child's Go type cannot hold (an affinity weight past
    int32, found by the e2e fuzz test) is refused on both paths, and recognised as a refusal
    of the spec (a status reason), not a failure to retry."""
    bad = _deployment(namespace, {"app": "child"}, [])
    bad["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": -9223372036854775808,
            "preference": {"matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["a"]}]}}]}}

    async def both(kube: Kube) -> list[str | None]:
        refusals: list[str | None] = []
        for write in (kube.create_child, kube.apply):
            try:
                await write(bad)
            except Exception as exc:  # what the API server answered is the point
                refusals.append(invalid_refusal(exc))
            else:
                refusals.append("written")
        return refusals
    create, apply = _run(cluster, both)
    assert create is not None
    assert "cannot be handled as a Deployment" in create
    assert apply is not None
    assert apply != "written"
