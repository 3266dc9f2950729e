"""spec.inferencePool: the InferencePool built from it, the labels on serving pods the pool and
its endpoint picker read, and the reconcile where the CRD is served, missing, or refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx2
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from tests.unit.test_deployment_controller import KEY, FakeView, FakeWriter
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.deployments import builders, inference_pool, multinode
from trtllm_operator.deployments.controller import DeploymentController, serving_for

PICKER = {"name": "llama-epp", "port": 9002}


def _with_pool(view: FakeView, **picker: Any) -> FakeView:
    view.body["spec"]["inferencePool"] = {"endpointPickerRef": PICKER | picker}
    return view


def test_the_pool_selects_the_http_pods_on_the_serving_port_through_the_named_picker() -> None:
    view = _with_pool(FakeView(), failureMode="FailOpen")
    view.body["spec"]["serve"] = {"port": 8080}
    d = LLMDeployment.model_validate(view.body)
    pool = inference_pool.inference_pool(d, "llama-3-8b")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert (pool["kind"], pool["metadata"]["name"]) == ("InferencePool", "server")
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "d"
    assert pool["spec"] == {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "trtllm-serve",
                                     "app.kubernetes.io/instance": "server",
                                     "trtllm.dev/endpoint": "http"}},
        "targetPorts": [{"number": 8080}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": "llama-epp",
                              "port": {"number": 9002}, "failureMode": "FailOpen"}}


def test_serving_pods_carry_the_engine_type_and_only_http_pods_the_endpoint_label() -> None:
    view = FakeView()
    d = LLMDeployment.model_validate(view.body)
    engine = LLMEngine.model_validate(view.engine_body)
    serving = serving_for(engine, engine.status.targets[0])
    single = builders.pod_template(d, engine, serving, "claim")["metadata"]["labels"]
    assert single[builders.ENGINE_TYPE_LABEL] == "trtllm-serve"
    assert single[builders.ENDPOINT_LABEL] == "http"
    lws = multinode.leaderworkerset(d, engine, serving, "claim",
                                    multinode.GroupShape(size=2, gpus_per_pod=4))
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    assert leader[builders.ENDPOINT_LABEL] == "http"
    assert builders.ENDPOINT_LABEL not in worker  # a worker's port serves nothing
    assert worker[builders.ENGINE_TYPE_LABEL] == "trtllm-serve"
    # The pool's selector matches the leader and the single pod, never the worker.
    selector = builders.endpoint_selector(d).items()
    assert selector <= single.items()
    assert selector <= leader.items()
    assert not selector <= worker.items()


def _reconcile(view: FakeView, support: str, writer: FakeWriter | None = None,
               controller: DeploymentController | None = None,
               ) -> tuple[FakeWriter, dict[str, Any], DeploymentController]:
    writer = writer or FakeWriter()
    asked: list[str] = []

    async def pools(namespace: str) -> str:
        asked.append(namespace)
        return support

    if controller is None:
        controller = DeploymentController(
            view=view, writer=writer, events=lambda *_: None, inference_pools=pools,
            clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    else:
        controller.writer, controller.inference_pools = writer, pools
    asyncio.run(controller.reconcile(KEY))
    return writer, writer.status_patches[-1] if writer.status_patches else {}, controller


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = next(
        (c for c in status.get("conditions", []) if c["type"] == type_), None)
    return found


def test_a_missing_crd_is_a_condition_and_nothing_is_written_of_the_pool() -> None:
    writer, status, _ = _reconcile(_with_pool(FakeView()), "missing")
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]
    pool = _cond(status, "InferencePoolReady")
    assert pool is not None
    assert (pool["status"], pool["reason"]) == ("False", "InferencePoolCRDMissing")
    assert pool["message"].startswith("spec.inferencePool: the cluster does not serve "
                                      "inferencepools.inference.networking.k8s.io/v1")
    assert "remove spec.inferencePool" in pool["message"]


def test_the_pool_is_applied_once_per_change_and_deleted_when_the_field_goes() -> None:
    view = _with_pool(FakeView())
    writer, status, controller = _reconcile(view, "installed")
    assert [m["kind"] for m in writer.applied] == [
        "ConfigMap", "Deployment", "Service", "InferencePool"]
    assert _cond(status, "InferencePoolReady")["status"] == "True"  # type: ignore[index]

    view.body["status"] = status
    writer, _, controller = _reconcile(view, "installed", controller=controller)
    assert "InferencePool" not in [m["kind"] for m in writer.applied]  # unchanged: no write

    view.body["spec"]["inferencePool"]["endpointPickerRef"]["port"] = 9003
    writer, _, controller = _reconcile(view, "installed", controller=controller)
    pools = [m for m in writer.applied if m["kind"] == "InferencePool"]
    assert pools[0]["spec"]["endpointPickerRef"]["port"] == {"number": 9003}

    del view.body["spec"]["inferencePool"]
    writer, status, _ = _reconcile(view, "installed", controller=controller)
    assert writer.deleted == [("InferencePool", "server")]
    assert _cond(status, "InferencePoolReady") is None


def test_without_the_field_and_no_pool_made_nothing_is_asked_or_deleted() -> None:
    writer, status, _ = _reconcile(FakeView(), "installed")
    assert writer.deleted == []
    assert _cond(status, "InferencePoolReady") is None


class Refusing(FakeWriter):
    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code, self.message = code, message

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "InferencePool":
            request = httpx2.Request("PATCH", "https://127.0.0.1/apis/inference/x")
            body = {"kind": "Status", "code": self.code, "message": self.message}
            raise ApiError(request=request, response=httpx2.Response(
                self.code, request=request, json=body), status=Status(
                code=self.code, message=self.message))
        return await super().apply(manifest)


def test_a_refused_write_names_the_missing_right_and_ready_is_false() -> None:
    denial = ('inferencepools.inference.networking.k8s.io "server" is forbidden: User '
              '"system:serviceaccount:ml:op" cannot patch resource "inferencepools" in API '
              'group "inference.networking.k8s.io" in the namespace "ml"')
    view = _with_pool(FakeView())
    # The serving Deployment is ready: only the pool is missing.
    view.dep = {"metadata": {"generation": 1}, "spec": {}, "status": {
        "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "updatedReplicas": 1}}
    _writer, status, _ = _reconcile(view, "forbidden", writer=_ReadyRefusing(view, 403, denial))
    pool = _cond(status, "InferencePoolReady")
    assert pool is not None
    assert pool["reason"] == "InferencePoolForbidden"
    assert denial in pool["message"]
    ready = _cond(status, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "InferencePoolForbidden")


class _ReadyRefusing(Refusing):
    def __init__(self, view: FakeView, code: int, message: str) -> None:
        super().__init__(code, message)
        self.view = view

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        out = await super().apply(manifest)
        return dict(self.view.dep or {}) if manifest["kind"] == "Deployment" else out


def test_a_crd_gone_between_the_check_and_the_write_is_the_missing_condition() -> None:
    _writer, status, _ = _reconcile(_with_pool(FakeView()), "installed",
                                   writer=Refusing(404, "the server could not find it"))
    pool = _cond(status, "InferencePoolReady")
    assert pool is not None
    assert pool["reason"] == "InferencePoolCRDMissing"


def test_the_pool_is_applied_again_after_a_while_since_no_watch_sees_it_deleted() -> None:
    view = _with_pool(FakeView())
    now = [1000.0]
    writer = FakeWriter()

    async def pools(namespace: str) -> str:
        return "installed"

    controller = DeploymentController(
        view=view, writer=writer, events=lambda *_: None, inference_pools=pools,
        monotonic=lambda: now[0], clock=lambda: datetime(2026, 11, 23, tzinfo=UTC))
    asyncio.run(controller.reconcile(KEY))
    now[0] += controller.pool_reapply_seconds - 1
    asyncio.run(controller.reconcile(KEY))
    now[0] += 1
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in writer.applied].count("InferencePool") == 2
