"""What the indexes hold of each custom resource: everything the reconcilers read, without
managedFields and kubectl's last-applied copy (held for every object, read by nothing)."""

from __future__ import annotations

import asyncio
import copy
import json

import kopf

from trtllm_operator.handlers import deployment_bodies, engine_bodies

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _body() -> dict[str, object]:
    spec = {"engineRef": {"name": "llama"}, "gpu": "auto", "replicas": 2}
    return {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {
            "name": "d", "namespace": "ml", "uid": "u", "generation": 3,
            "resourceVersion": "7", "labels": {"team": "a"},
            "annotations": {LAST_APPLIED: json.dumps({"spec": spec}), "team.example/x": "y"},
            "finalizers": ["trtllm.dev/finalizer"],
            "managedFields": [{"manager": "kubectl", "operation": "Apply",
                               "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": spec,
        "status": {"observedGeneration": 3, "conditions": [{"type": "Ready"}]}}


def test_bodies_keep_what_is_read_and_drop_managed_fields_and_last_applied() -> None:
    raw = _body()
    for index in (deployment_bodies, engine_bodies):
        held = asyncio.run(index(namespace="ml", name="d", body=kopf.Body(raw)))[("ml", "d")]
        meta = held["metadata"]
        assert "managedFields" not in meta
        assert meta["annotations"] == {"team.example/x": "y"}
        assert {k: meta[k] for k in ("name", "namespace", "uid", "generation", "labels",
                                     "finalizers", "resourceVersion")} == {
            k: raw["metadata"][k] for k in ("name", "namespace", "uid",  # type: ignore[index]
                                            "generation", "labels", "finalizers",
                                            "resourceVersion")}
        assert held["spec"] == raw["spec"]
        assert held["status"] == raw["status"]
        held["spec"]["replicas"] = 9  # a copy: the watch's body is not changed through it
        assert raw["spec"]["replicas"] == 2  # type: ignore[index]


def test_children_are_held_compact_and_read_back_as_the_compared_parts() -> None:
    from trtllm_operator.handlers import IndexView, serving_deployments

    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "d", "namespace": "ml", "generation": 2, "uid": "u",
                        "labels": {"a": "b"}, "annotations": {"trtllm.dev/spec-hash": "h"},
                        "managedFields": [{"manager": "x"}], "resourceVersion": "9"},
           "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}},
           "status": {"readyReplicas": 1}}
    packed = asyncio.run(serving_deployments(namespace="ml", name="d",
                                             body=kopf.Body(dep)))[("ml", "d")]
    assert isinstance(packed, bytes)
    view = IndexView()
    view.indexes["serving_deployments"] = {("ml", "d"): [packed]}
    seen = view.serving_deployment("ml", "d")
    assert seen == {"metadata": {k: dep["metadata"][k] for k in (  # type: ignore[index]
        "name", "namespace", "labels", "annotations", "generation")},
        "spec": dep["spec"], "status": dep["status"]}
    assert view.serving_child("Deployment", "ml", "d") == seen
    assert view.serving_child("Service", "ml", "d") is None
    # Decoded once per watched version, and shared (read-only) by the reads of that version.
    assert view.serving_deployment("ml", "d") is seen
    newer = copy.deepcopy(dep)
    newer["status"]["readyReplicas"] = 2  # type: ignore[index]
    view.indexes["serving_deployments"] = {("ml", "d"): [asyncio.run(serving_deployments(
        namespace="ml", name="d", body=kopf.Body(newer)))[("ml", "d")]]}
    assert view.serving_deployment("ml", "d")["status"] == {  # type: ignore[index]
        "readyReplicas": 2}
