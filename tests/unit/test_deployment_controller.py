"""The LLMDeployment reconcile with an in-memory view: the engine claim and stuck serving pods
decide Ready, and no Deployment is written for a claim serving pods cannot mount."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx2
import yaml
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from tests.conftest import ROOT
from trtllm_operator.claims import ClaimFact
from trtllm_operator.deployments.autoscaling import HPAFact
from trtllm_operator.deployments.controller import DeploymentController, Key
from trtllm_operator.pods import PodFact, StuckContainer
from trtllm_operator.validation import ClusterFacts, GPUPool

H100 = "NVIDIA-H100-80GB-HBM3"
KEY = ("ml", "server")
IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"


def _engine() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(
        (ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u", "generation": 1}
    body["spec"]["targets"] = [H100]
    body["status"] = {"targets": [{"gpu": H100, "state": "Built", "reason": "Built",
                                   "fingerprint": "f" * 64, "path": "engines/llama/h100",
                                   "job": "j", "image": IMAGE}]}
    return body


class FakeView:
    def __init__(self) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "server", "namespace": "ml", "generation": 1, "uid": "d"},
            "spec": {"engineRef": {"name": "llama-3-8b"}, "gpu": H100, "replicas": 1}}
        self.engine_body = _engine()
        self.claims = {"trtllm-engines": ClaimFact("Bound", ("ReadWriteMany",))}
        self.pods: list[PodFact] = []
        self.dep: dict[str, Any] | None = None
        self.children: dict[str, dict[str, Any]] = {}
        self.group_set: dict[str, Any] | None = None
        self.workloads: list[tuple[str, str]] = []
        self.autoscalers: dict[str, HPAFact] = {}
        self.free: dict[str, int] = {}

    def deployment_body(self, key: Key) -> Mapping[str, Any] | None:
        return self.body

    def engine(self, key: Key) -> Mapping[str, Any] | None:
        return self.engine_body

    def cluster_facts(self) -> ClusterFacts:
        return ClusterFacts({H100: GPUPool((8, 8), (9, 0))})

    def serving_deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.dep

    def serving_child(self, kind: str, namespace: str,
                      name: str) -> Mapping[str, Any] | None:
        return self.children.get(kind)
    def serving_group_set(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.group_set

    def serving_pods(self, namespace: str, name: str) -> list[PodFact]:
        return self.pods

    def serving_workloads(self, namespace: str, name: str) -> list[tuple[str, str]]:
        return self.workloads

    def claim(self, namespace: str, name: str) -> ClaimFact | None:
        return self.claims.get(name)

    def serving_autoscaler(self, namespace: str, name: str) -> HPAFact | None:
        return self.autoscalers.get(name)
    def free_gpus(self, product: str, selector: Mapping[str, str]) -> dict[str, int]:
        return self.free


class FakeWriter:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.handed_over: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[tuple[str, str]] = []
        self.child_creates: list[str] = []

    async def delete(self, resource: Any, namespace: str, name: str) -> bool:
        self.deleted.append((resource.__name__, name))
        return True

    async def create_if_absent(self, manifest: dict[str, Any]) -> bool:
        self.created.append(manifest)
        return True

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        return {"metadata": {"generation": 1}, "status": {"replicas": 1}, "spec": manifest.get(
            "spec", {})}

    async def create_child(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """A child the view does not show yet: noted, then answered as an apply would be (so
        a writer that refuses or delays applies does the same to creates)."""
        self.child_creates.append(manifest["kind"])
        return await self.apply(manifest)

    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.status_patches.append(status)

    async def apply_as(self, manifest: dict[str, Any], field_manager: str) -> None:
        self.handed_over.append((field_manager, manifest))

    async def delete_child(self, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append((kind, name))
        return True


def _run(view: FakeView) -> tuple[FakeWriter, list[tuple[str, str]], dict[str, Any]]:
    writer = FakeWriter()
    events: list[tuple[str, str]] = []
    controller = DeploymentController(
        view=view, writer=writer,
        events=lambda _b, kind, reason, _m: events.append((kind, reason)),
        clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    ready = next(c for c in writer.status_patches[-1]["conditions"] if c["type"] == "Ready")
    return writer, events, ready


def test_a_crash_looping_serving_pod_makes_ready_false_with_crash_loop() -> None:
    view = FakeView()
    view.pods = [PodFact("server-abc", phase="Running", stuck=StuckContainer(
        "trtllm-serve", False, "CrashLoopBackOff", "back-off 20s restarting failed container",
        3))]
    writer, events, ready = _run(view)
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
    assert (ready["status"], ready["reason"]) == ("False", "CrashLoop")
    assert "back-off 20s restarting failed container" in ready["message"]
    assert "kubectl logs -n ml server-abc -c trtllm-serve --previous" in ready["message"]
    assert ("Warning", "CrashLoop") in events


def test_an_unpullable_serving_image_names_the_engine_image() -> None:
    view = FakeView()
    view.pods = [PodFact("server-abc", phase="Pending", stuck=StuckContainer(
        "trtllm-serve", False, "ImagePullBackOff", "Back-off pulling image"))]
    _writer, _events, ready = _run(view)
    assert ready["reason"] == "ImagePullFailed"
    assert f"spec.image (unset: the engine's spec.build.image) {IMAGE}" in ready["message"]


def test_a_missing_engine_claim_writes_no_deployment() -> None:
    view = FakeView()
    view.claims = {}
    writer, events, ready = _run(view)
    assert writer.applied == []
    assert (ready["status"], ready["reason"]) == ("False", "ClaimNotFound")
    assert "LLMEngine llama-3-8b spec.storage.claimName trtllm-engines" in ready["message"]
    assert ("Warning", "ClaimNotFound") in events


L40S = "NVIDIA-L40S"


def _two_built_targets(view: FakeView, serving_on: str | None) -> None:
    view.body["spec"].pop("gpu")
    view.engine_body["spec"]["targets"] = [L40S, H100]
    view.engine_body["status"]["targets"].append(
        {**view.engine_body["status"]["targets"][0], "gpu": L40S, "path": "engines/llama/l40s"})
    if serving_on is not None:
        view.body["status"] = {"gpu": serving_on, "gpuReason": "chose it earlier"}
        view.dep = {"metadata": {"generation": 1}, "spec": {"template": {"spec": {
            "nodeSelector": {"nvidia.com/gpu.product": serving_on}}}}}


def test_the_choice_and_its_reason_are_in_status_and_the_fleet_stays_put() -> None:
    view = FakeView()
    _two_built_targets(view, serving_on=L40S)
    view.cluster_facts = lambda: ClusterFacts(  # type: ignore[method-assign]
        {H100: GPUPool((8, 8), (9, 0)), L40S: GPUPool((4,), (8, 9))})

    writer, events, _ready = _run(view)

    status = writer.status_patches[-1]
    assert status["gpu"] == L40S
    assert status["gpuReason"].startswith(f"kept {L40S}, where it already serves")
    dep = next(m for m in writer.applied if m["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == L40S
    assert not any(reason == "GPUChosen" for _kind, reason in events)


def test_a_move_to_another_gpu_type_is_an_event_with_the_reason() -> None:
    view = FakeView()
    _two_built_targets(view, serving_on=L40S)
    # The L40S nodes are gone: nothing can hold a replica there any more.
    writer, events, _ready = _run(view)

    status = writer.status_patches[-1]
    assert status["gpu"] == H100
    assert status["gpuReason"] == (f"chose {H100}: the most GPU memory (80 GiB) among built "
                                   f"targets with room for 1 replica (also built: {L40S})")
    assert ("Normal", "GPUChosen") in events
    dep = next(m for m in writer.applied if m["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == H100


def test_an_affinity_of_the_wrong_shape_writes_no_deployment_and_names_the_field() -> None:
    # Admitted (the CRD keeps affinity open), but no Kubernetes Affinity: found before any
    # Deployment is built, not as a failure of every reconcile.
    view = FakeView()
    view.body["spec"]["affinity"] = {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 2.5, "preference": {}}]}}
    writer, _events, ready = _run(view)
    assert writer.applied == []
    assert (ready["status"], ready["reason"]) == ("False", "PodFieldInvalid")
    assert ("spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
            ".weight: Expected `int`, got `float`") in ready["message"]


class RefusingWriter(FakeWriter):
    """The API server refuses the Deployment as invalid (a rule of Kubernetes itself)."""

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "Deployment":
            request = httpx2.Request("PATCH", "https://127.0.0.1/apis/apps/v1/x")
            message = ('Deployment.apps "server" is invalid: spec.template.spec.affinity.'
                       'nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].'
                       'preference.matchExpressions[0].values: Required value')
            body = {"kind": "Status", "code": 422, "reason": "Invalid", "message": message}
            raise ApiError(request=request, response=httpx2.Response(422, request=request,
                                                                     json=body),
                           status=Status(code=422, reason="Invalid", message=message))
        return await super().apply(manifest)


def test_a_deployment_the_api_server_refuses_as_invalid_is_a_reason_not_a_retry() -> None:
    writer = RefusingWriter()
    controller = DeploymentController(
        view=FakeView(), writer=writer, events=lambda *_: None,
        clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    result = asyncio.run(controller.reconcile(KEY))  # no exception: nothing to retry
    ready = next(c for c in writer.status_patches[-1]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodFieldInvalid")
    assert "matchExpressions[0].values: Required value" in ready["message"]
    # No Service for a refused Deployment (the options ConfigMap comes first).
    assert [m["kind"] for m in writer.applied] == ["ConfigMap"]
    assert result is not None  # looked at again later, at the slow not-ready pace


def test_a_pytorch_engine_is_served_from_its_folder_with_the_options_file() -> None:
    view = FakeView()
    view.engine_body["spec"]["build"] = {"image": "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"}
    view.engine_body["status"]["targets"][0]["path"] = "models/meta-llama--x/" + "a" * 40
    writer, _events, _ready = _run(view)

    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
    options = yaml.safe_load(next(iter(writer.applied[0]["data"].values())))
    assert options["return_perf_metrics"] is True
    container = writer.applied[1]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["trtllm-serve", "/model", "--backend", "pytorch"]
    assert "--config" in container["command"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]


def _as_observed(manifest: dict[str, Any]) -> dict[str, Any]:
    """A child as the watch shows it after the operator's apply: server defaults added."""
    observed = copy.deepcopy(manifest)
    observed["metadata"] |= {"generation": 1, "uid": "x"}
    if manifest["kind"] == "Deployment":
        observed["spec"]["revisionHistoryLimit"] = 10
        container = observed["spec"]["template"]["spec"]["containers"][0]
        if container.get("env") == []:
            del container["env"]  # the API server stores an empty list as absent
        observed["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = (
            "/dev/termination-log")
        observed["status"] = {"replicas": 1}
    elif manifest["kind"] == "Service":
        observed["spec"]["clusterIP"] = "10.96.0.10"
    return observed


def test_children_that_already_match_are_not_written_again() -> None:
    view = FakeView()
    first, _events, _ready = _run(view)
    assert [m["kind"] for m in first.applied] == ["ConfigMap", "Deployment", "Service"]
    view.children = {m["kind"]: _as_observed(m) for m in first.applied}
    again, _events, _ready = _run(view)
    assert again.applied == []


def test_a_hand_edit_or_a_deleted_child_is_written_again() -> None:
    view = FakeView()
    first, _events, _ready = _run(view)
    view.children = {m["kind"]: _as_observed(m) for m in first.applied}
    view.children["Deployment"]["spec"]["template"]["spec"]["nodeSelector"][
        "nvidia.com/gpu.product"] = L40S
    del view.children["Service"]
    again, _events, _ready = _run(view)
    assert [m["kind"] for m in again.applied] == ["Deployment", "Service"]
    assert again.applied == first.applied[1:]  # the options ConfigMap is unchanged
    # New children are created (cheaper for the API server); the hand-edited Deployment is
    # applied, the deleted Service created again.
    assert first.child_creates == ["ConfigMap", "Deployment", "Service"]
    assert again.child_creates == ["Service"]


def test_a_spec_change_is_written_even_if_it_only_drops_a_field() -> None:
    view = FakeView()
    view.body["spec"]["nodeSelector"] = {"pool": "a"}
    first, _events, _ready = _run(view)
    view.children = {m["kind"]: _as_observed(m) for m in first.applied}
    del view.body["spec"]["nodeSelector"]  # desired is now a subset of what is observed
    again, _events, _ready = _run(view)
    assert [m["kind"] for m in again.applied] == ["Deployment"]
    assert "pool" not in again.applied[0]["spec"]["template"]["spec"]["nodeSelector"]
    assert again.child_creates == []  # an apply: only it removes the dropped field


def test_a_pytorch_engine_with_a_volume_model_is_served_from_the_model_claim() -> None:
    view = FakeView()
    view.engine_body["spec"]["build"] = {"image": "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"}
    view.engine_body["spec"]["model"] = {"volume": {"claimName": "models",
                                                    "path": "llama-3-8b"}}
    view.engine_body["status"]["targets"][0]["path"] = "llama-3-8b"

    # The model's claim missing: nothing is written, and the reason names that field.
    writer, _events, ready = _run(view)
    assert (ready["status"], ready["reason"]) == ("False", "ClaimNotFound")
    assert "spec.model.volume.claimName" in ready["message"]
    assert [m["kind"] for m in writer.applied if m["kind"] == "Deployment"] == []

    view.claims["models"] = ClaimFact("Bound", ("ReadOnlyMany",))
    writer, _events, _ready = _run(view)
    pod = next(m for m in writer.applied if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    model = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim"))
    assert model["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/model")
    assert mount["subPath"] == "llama-3-8b"


def test_a_child_created_but_not_yet_seen_by_the_watch_is_not_created_twice() -> None:
    """A reconcile that runs before the watch shows the children the previous one created
    (a Service's ClusterIP allocation can take seconds under load) writes nothing again; once
    the watch reports one deleted, it is created again."""
    view = FakeView()
    writer = FakeWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
    asyncio.run(controller.reconcile(KEY))  # the view still shows neither child
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
    view.children = {m["kind"]: _as_observed(m) for m in writer.applied}
    asyncio.run(controller.reconcile(KEY))  # seen: nothing to do
    del view.children["Service"]
    controller.forget_child("Service", "ml", "server")  # the watch's DELETED event
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service",
                                                       "Service"]


def test_a_child_seen_and_then_gone_is_created_again_even_without_its_deleted_event() -> None:
    view = FakeView()
    writer = FakeWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    view.children = {m["kind"]: _as_observed(m) for m in writer.applied}
    asyncio.run(controller.reconcile(KEY))  # the watch caught up: the record is dropped
    view.children = {}
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"] * 2


def test_a_created_child_the_watch_never_shows_is_created_again_after_the_grace() -> None:
    """Deleted before the record of its creation was made (its DELETED event came first): the
    record is trusted for a while only."""
    from trtllm_operator.deployments.controller import CREATED_GRACE_SECONDS

    view = FakeView()
    writer = FakeWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    controller.created = {k: (h, t - CREATED_GRACE_SECONDS - 1)
                          for k, (h, t) in controller.created.items()}
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"] * 2


def test_a_new_deployment_of_a_built_engine_announces_only_ready_not_its_rollout() -> None:
    view = FakeView()
    _writer, events, ready = _run(view)
    assert ready["reason"] == "RollingOut"
    assert events == []  # its engine was built already: nothing to announce yet
    # Once it has a Ready condition, a move back to rolling out is announced.
    view.body["status"] = {"conditions": [{
        "type": "Ready", "status": "True", "reason": "Ready", "message": "1/1 replicas ready",
        "lastTransitionTime": "2026-11-23T00:00:00Z"}]}
    _writer, events, ready = _run(view)
    assert ready["reason"] == "RollingOut"
    assert ("Normal", "RollingOut") in events
