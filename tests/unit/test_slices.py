"""One fleet across GPU types: the weighted split of spec.replicas, the per-slice workloads
built from slice views, status per slice, and what goes when a slice is taken off the list."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from tests.unit.test_deployment_controller import H100, KEY, FakeView, FakeWriter
from trtllm_operator.api import LLMDeployment, LLMDeploymentSpec
from trtllm_operator.deployments import builders, multinode, slices
from trtllm_operator.deployments.controller import DeploymentController
from trtllm_operator.pods import PodFact
from trtllm_operator.validation import ClusterFacts, GPUPool

L40S = "NVIDIA-L40S"
H100_NAME = "server-nvidia-h100-80gb-hbm3"
L40S_NAME = "server-nvidia-l40s"


@pytest.mark.parametrize(("total", "weights", "parts"), [
    (3, [2, 1], [2, 1]),
    (4, [2, 1], [3, 1]),
    (6, [2, 1], [4, 2]),
    (1, [1, 1], [1, 0]),
    (0, [1, 1], [0, 0]),
    (5, [1, 1, 1], [2, 2, 1]),
    (7, [1, 3], [2, 5]),
])
def test_replicas_split_by_weight(total: int, weights: list[int], parts: list[int]) -> None:
    assert slices.split_replicas(total, weights) == parts


def test_the_split_always_adds_up_and_follows_the_weights() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        weights = [rng.randint(1, 1000) for _ in range(rng.randint(1, 8))]
        total = rng.randint(0, 500)
        parts = slices.split_replicas(total, weights)
        assert sum(parts) == total
        for part, w in zip(parts, weights, strict=True):
            # Largest remainder: never a whole replica off the exact share.
            assert abs(part - total * w / sum(weights)) < 1


def test_workload_names_are_dns_labels_per_gpu_type() -> None:
    d = _llmd("server")
    assert slices.workload_name(d, H100) == H100_NAME
    long = _llmd("a" * 60)
    one, two = (slices.workload_name(long, g) for g in (H100, L40S))
    assert one != two
    assert all(len(n) <= 63 and not n.endswith("-") for n in (one, two))


def test_spec_refuses_gpu_with_slices_and_a_type_twice() -> None:
    base = {"engineRef": {"name": "e"}}
    with pytest.raises(ValidationError, match=r"spec\.gpu and spec\.slices"):
        LLMDeploymentSpec.model_validate(base | {"gpu": H100, "slices": [{"gpu": L40S}]})
    with pytest.raises(ValidationError, match="twice"):
        LLMDeploymentSpec.model_validate(base | {"slices": [{"gpu": L40S}, {"gpu": L40S}]})
    spec = LLMDeploymentSpec.model_validate(base | {"slices": [{"gpu": L40S}]})
    assert spec.slices[0].weight == 1


def _llmd(name: str) -> LLMDeployment:
    return LLMDeployment.model_validate({
        "metadata": {"name": name, "namespace": "ml", "uid": "d", "generation": 1},
        "spec": {"engineRef": {"name": "e"}, "slices": [{"gpu": H100}, {"gpu": L40S}]}})


def test_a_slice_workload_claims_only_its_own_pods() -> None:
    d = _llmd("server")
    manifest = {"kind": "Deployment", "metadata": {"name": "server", "labels": {"x": "y"}},
                "spec": {"selector": {"matchLabels": builders.selector(d)},
                         "template": {"metadata": {"labels": {"x": "y"}}, "spec": {}}}}
    out = slices.as_slice(manifest, d, L40S)
    assert out["metadata"]["name"] == L40S_NAME
    assert out["spec"]["selector"]["matchLabels"] == builders.selector(d) | {
        slices.SLICE_LABEL: "nvidia-l40s"}
    assert out["spec"]["template"]["metadata"]["labels"][slices.SLICE_LABEL] == "nvidia-l40s"
    assert manifest["metadata"]["name"] == "server"  # the input is left alone


class SliceView(FakeView):
    """The fake view with children per name, and an engine built for H100 and L40S."""

    def __init__(self) -> None:
        super().__init__()
        self.body["spec"].pop("gpu")
        self.body["spec"] |= {"replicas": 3, "slices": [{"gpu": H100, "weight": 2},
                                                         {"gpu": L40S, "weight": 1}]}
        self.engine_body["spec"]["targets"] = [H100, L40S]
        self.engine_body["status"]["targets"].append(
            {**self.engine_body["status"]["targets"][0], "gpu": L40S,
             "fingerprint": "e" * 64, "path": "engines/llama/l40s"})
        self.deps: dict[str, dict[str, Any]] = {}

    def cluster_facts(self) -> ClusterFacts:
        return ClusterFacts({H100: GPUPool((8, 8), (9, 0)), L40S: GPUPool((4,), (8, 9))})

    def serving_deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.deps.get(name)


class SliceWriter(FakeWriter):
    """Applies answer with the object as the view shows it (its status included)."""

    def __init__(self, view: FakeView) -> None:
        super().__init__()
        self.view = view

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        out = await super().apply(manifest)
        if isinstance(self.view, SliceView):
            return self.view.deps.get(manifest["metadata"]["name"], out)
        return self.view.dep if manifest["kind"] == "Deployment" and self.view.dep else out


def _observed(manifest: dict[str, Any], ready: int) -> dict[str, Any]:
    """A Deployment as the watch shows it once ``ready`` pods of it are ready."""
    n = manifest["spec"]["replicas"]
    return manifest | {"metadata": manifest["metadata"] | {"generation": 1}, "status": {
        "observedGeneration": 1, "replicas": n, "readyReplicas": ready,
        "availableReplicas": ready, "updatedReplicas": n,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicas"}]}}


def _reconcile(view: FakeView, writer: FakeWriter | None = None,
               **kw: Any) -> tuple[FakeWriter, dict[str, Any]]:
    writer = writer or SliceWriter(view)
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC), **kw)
    asyncio.run(controller.reconcile(KEY))
    return writer, writer.status_patches[-1]


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "Ready")
    return found


def test_each_slice_is_placed_and_sized_by_its_own_engine_behind_one_service() -> None:
    view = SliceView()
    writer, status = _reconcile(view)

    deps = {m["metadata"]["name"]: m for m in writer.applied if m["kind"] == "Deployment"}
    assert sorted(deps) == [H100_NAME, L40S_NAME]
    for name, gpu, replicas, path in ((H100_NAME, H100, 2, "engines/llama/h100"),
                                      (L40S_NAME, L40S, 1, "engines/llama/l40s")):
        dep = deps[name]
        assert dep["spec"]["replicas"] == replicas
        pod = dep["spec"]["template"]
        assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == gpu
        assert pod["spec"]["containers"][0]["volumeMounts"][0]["subPath"] == path
        assert pod["metadata"]["labels"][builders.ENDPOINT_LABEL] == "http"
        assert dep["spec"]["selector"]["matchLabels"][slices.SLICE_LABEL] == slices.slug(gpu)
    services = [m for m in writer.applied if m["kind"] == "Service"]
    assert len(services) == 1
    assert services[0]["metadata"]["name"] == "server"
    # Every slice's HTTP pods, not one slice's.
    assert services[0]["spec"]["selector"] == {
        "app.kubernetes.io/name": "trtllm-serve", "app.kubernetes.io/instance": "server",
        builders.ENDPOINT_LABEL: "http"}
    assert [(s["gpu"], s["desiredReplicas"], s["ready"]) for s in status["slices"]] == [
        (H100, 2, False), (L40S, 1, False)]
    assert _ready(status)["status"] == "False"
    assert status["replicaSummary"] == "0/3"
    assert status["selector"] == builders.selector_string(
        LLMDeployment.model_validate(view.body))


def test_ready_only_when_every_slice_is_ready() -> None:
    view = SliceView()
    writer, _ = _reconcile(view)
    deps = {m["metadata"]["name"]: m for m in writer.applied if m["kind"] == "Deployment"}
    view.deps = {H100_NAME: _observed(deps[H100_NAME], 2),
                 L40S_NAME: _observed(deps[L40S_NAME], 0)}
    _, status = _reconcile(view)
    assert _ready(status)["status"] == "False"
    assert _ready(status)["message"].startswith(f"spec.slices[1] ({L40S}): 0/1 ready")
    assert [s["ready"] for s in status["slices"]] == [True, False]
    assert status["slices"][0]["engineFingerprint"] == "f" * 64

    view.deps[L40S_NAME] = _observed(deps[L40S_NAME], 1)
    _, status = _reconcile(view)
    assert _ready(status)["status"] == "True"
    assert (status["readyReplicas"], status["replicaSummary"]) == (3, "3/3")
    assert [s["readyReplicas"] for s in status["slices"]] == [2, 1]


def test_a_gpu_type_the_engine_is_not_built_for_is_named_by_its_index() -> None:
    view = SliceView()
    view.engine_body["spec"]["targets"] = [H100]
    view.engine_body["status"]["targets"] = view.engine_body["status"]["targets"][:1]
    writer, status = _reconcile(view)

    assert [m["metadata"]["name"] for m in writer.applied if m["kind"] == "Deployment"] == [
        H100_NAME]
    l40s = status["slices"][1]
    assert (l40s["ready"], l40s["reason"]) == (False, "GPUNotATarget")
    assert l40s["message"].startswith(f"spec.slices[1].gpu {L40S} is not a target")
    engine_ready = next(c for c in status["conditions"] if c["type"] == "EngineReady")
    assert engine_ready["reason"] == "GPUNotATarget"
    assert engine_ready["message"].startswith(f"spec.slices[1] ({L40S}): spec.slices[1].gpu")


def test_a_pod_problem_is_told_in_its_own_slice() -> None:
    view = SliceView()
    view.pods = [PodFact("server-nvidia-l40s-1-a", phase="Pending",
                         unschedulable="0/3 nodes are available", gpu=L40S)]
    _, status = _reconcile(view)
    assert [s["reason"] for s in status["slices"]] == ["RollingOut", "PodsUnschedulable"]


def test_taking_a_slice_off_the_list_deletes_its_workload_only() -> None:
    view = SliceView()
    view.body["spec"]["slices"] = [{"gpu": H100}]
    view.workloads = [("Deployment", H100_NAME), ("Deployment", L40S_NAME)]
    writer, status = _reconcile(view)
    assert writer.deleted == [("Deployment", L40S_NAME)]
    assert [s["gpu"] for s in status["slices"]] == [H100]
    # All replicas on what is left.
    dep = next(m for m in writer.applied if m["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3


def test_a_single_type_deployment_keeps_serving_until_its_slices_do() -> None:
    view = SliceView()
    view.workloads = [("Deployment", "server")]
    writer, _ = _reconcile(view)
    assert writer.deleted == []

    deps = {m["metadata"]["name"]: m for m in writer.applied if m["kind"] == "Deployment"}
    view.deps = {n: _observed(m, m["spec"]["replicas"]) for n, m in deps.items()}
    writer, status = _reconcile(view)
    assert _ready(status)["status"] == "True"
    assert writer.deleted == [("Deployment", "server")]


def test_back_to_one_gpu_type_deletes_the_slices_once_it_serves() -> None:
    view = FakeView()  # spec.gpu H100
    view.workloads = [("Deployment", H100_NAME), ("Deployment", "server")]
    writer, status = _reconcile(view)
    assert _ready(status)["status"] == "False"
    assert writer.deleted == []
    dep = next(m for m in writer.applied if m["kind"] == "Deployment")
    view.dep = _observed(dep, 1)
    writer, status = _reconcile(view)
    assert _ready(status)["status"] == "True"
    assert writer.deleted == [("Deployment", H100_NAME)]


def test_multi_node_slice_groups_keep_off_each_others_nodes_by_their_own_name() -> None:
    d = _llmd("server")
    anti = {"labelSelector": {"matchExpressions": [
        {"key": multinode.LWS_NAME_LABEL, "operator": "In", "values": ["server"]}]},
        "topologyKey": "kubernetes.io/hostname"}

    def template(extra: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"labels": dict(extra)}, "spec": {"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [anti]}}}}

    lws = {"kind": "LeaderWorkerSet", "metadata": {"name": "server", "labels": {}},
           "spec": {"leaderWorkerTemplate": {
               "leaderTemplate": template({builders.ENDPOINT_LABEL: "http"}),
               "workerTemplate": template({})}}}
    out = slices.as_slice(lws, d, H100)
    assert out["metadata"]["name"] == H100_NAME
    for role in ("leaderTemplate", "workerTemplate"):
        t = out["spec"]["leaderWorkerTemplate"][role]
        assert t["metadata"]["labels"][slices.SLICE_LABEL] == "nvidia-h100-80gb-hbm3"
        expr = t["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"][
            "matchExpressions"][0]
        assert expr["values"] == [H100_NAME]


def test_a_slice_wider_than_a_node_runs_as_groups_beside_a_single_node_slice() -> None:
    view = SliceView()
    view.engine_body["spec"]["build"]["parallelism"] = {"tensor": 8}
    view.engine_body["spec"]["build"]["gpus"] = 4  # builds on one 4-GPU L40S node, in turn
    view.cluster_facts = lambda: ClusterFacts(  # type: ignore[method-assign]
        {H100: GPUPool((8,), (9, 0)), L40S: GPUPool((4, 4), (8, 9))})
    writer, status = _reconcile(view, lws="installed")

    by_name = {m["metadata"]["name"]: m for m in writer.applied}
    assert by_name[H100_NAME]["kind"] == "Deployment"
    lws = by_name[L40S_NAME]
    assert lws["kind"] == "LeaderWorkerSet"
    assert lws["spec"]["replicas"] == 1
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    assert leader[slices.SLICE_LABEL] == worker[slices.SLICE_LABEL] == "nvidia-l40s"
    assert builders.ENDPOINT_LABEL in leader
    assert builders.ENDPOINT_LABEL not in worker
    # One Service for both shapes: single-node pods and leaders, never workers.
    service = by_name["server"]
    assert service["spec"]["selector"][builders.ENDPOINT_LABEL] == "http"
    assert [m["kind"] for m in writer.created] == ["Secret"]
    assert [s["gpu"] for s in status["slices"]] == [H100, L40S]


def test_a_workload_name_another_llmdeployment_holds_is_refused_not_fought_over() -> None:
    view = SliceView()
    # An LLMDeployment named "server-nvidia-l40s" already has that Deployment.
    view.deps[L40S_NAME] = {"metadata": {"name": L40S_NAME, "generation": 1, "labels": {
        "trtllm.dev/deployment": L40S_NAME}}, "spec": {}, "status": {"replicas": 1}}
    writer, status = _reconcile(view)
    assert [m["metadata"]["name"] for m in writer.applied if m["kind"] == "Deployment"] == [
        H100_NAME]
    l40s = status["slices"][1]
    assert (l40s["reason"], l40s["replicas"]) == ("WorkloadNameTaken", 0)
    assert f"already serves LLMDeployment {L40S_NAME}" in l40s["message"]


def test_a_fleet_autoscales_as_a_whole_through_the_llmdeployments_scale_subresource() -> None:
    """The autoscaler sizes spec.replicas through the LLMDeployment's scale subresource; the
    operator keeps splitting it by weight, so every slice keeps its replicas field."""
    view = SliceView()
    view.body["spec"]["autoscaling"] = {"provider": "hpa", "minReplicas": 3, "maxReplicas": 6}

    async def supports(kind: str, namespace: str | None) -> Any:
        return "missing"

    writer, status = _reconcile(view, supports=supports)
    hpas = [m for m in writer.applied if m["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1
    assert hpas[0]["spec"]["scaleTargetRef"] == {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment", "name": "server"}
    deps = {m["metadata"]["name"]: m["spec"]["replicas"] for m in writer.applied
            if m["kind"] == "Deployment"}
    assert deps == {H100_NAME: 2, L40S_NAME: 1}
    assert status["replicasOwner"] == "HorizontalPodAutoscaler/server"
    auto = next(c for c in status["conditions"] if c["type"] == "Autoscaling")
    assert auto["reason"] == "AutoscalerPending"
