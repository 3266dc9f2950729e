"""The model cache end to end: one CPU-only download Job per checkpoint, shared by every target
and every LLMEngine naming it; builds read the cached entry; a failed download fails the
targets with its reason; an operator restart mid-download starts no second download.

kwok runs no container: the kubelet simulator writes the download pod's termination message
as the real job would (commit, path, sizes), steered by ``sim.trtllm.dev/download-*``
annotations on the LLMEngine (see trtllm_operator/localcluster/kubelet.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import (
    A100,
    H100,
    L40S,
    Getter,
    OperatorProcess,
    apply,
    settle,
    small_engine,
    targets,
)
from tests.support import wait_for
from trtllm_operator import gpus

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

DOWNLOAD_SELECTOR = "app.kubernetes.io/component=model-download"
BUILD_SELECTOR = "app.kubernetes.io/component=engine-build"


def _jobs(api_client: client.ApiClient, namespace: str, selector: str) -> list[client.V1Job]:
    return list(client.BatchV1Api(api_client).list_namespaced_job(
        namespace, label_selector=selector).items)


def _steered(name: str, gpus_: list[str], **sim: str) -> dict[str, Any]:
    obj = small_engine(name, gpus_)
    obj["metadata"]["annotations"] = {f"sim.trtllm.dev/download-{k}": v for k, v in sim.items()}
    return obj


def _model(get_engine: Getter, name: str) -> dict[str, Any]:
    return (get_engine(name).get("status") or {}).get("modelCache") or {}


def _build_spec(job: client.V1Job) -> dict[str, Any]:
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    spec: dict[str, Any] = json.loads(env["TRTLLM_BUILD_SPEC"])
    return spec


def test_one_download_on_a_cpu_node_then_three_builds_that_read_the_cache(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api, gpu_fleet: dict[str, list[str]]) -> None:
    apply(kubectl, namespace, small_engine("llama", [H100, L40S, A100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/llama",
            "--timeout=120s")

    downloads = _jobs(api_client, namespace, DOWNLOAD_SELECTOR)
    assert len(downloads) == 1
    download = downloads[0]
    pod_spec = download.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    assert gpus.GPU_RESOURCE not in (pod_spec.containers[0].resources.limits or {})
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={download.metadata.name}")
    assert [p.spec.node_name in gpu_fleet["cpu"] for p in pods.items] == [True]

    model = _model(get_engine, "llama")
    assert model["state"] == "Cached"
    assert model["job"] == download.metadata.name
    assert model["commit"] == "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"
    assert model["path"] == ("/engines/models/meta-llama--Meta-Llama-3-8B-Instruct/"
                             + model["commit"])
    assert model["checkpointBytes"] > 0

    builds = _jobs(api_client, namespace, BUILD_SELECTOR)
    assert len(builds) == 3
    assert {_build_spec(b)["model"].get("cachedPath") for b in builds} == {model["path"]}
    # Each build was created after the download finished: none ever had to download.
    finished = download.status.completion_time
    assert all(b.metadata.creation_timestamp >= finished for b in builds)

    # A second engine of the same model and revision (another target, other settings)
    # downloads nothing and builds from the same entry.
    apply(kubectl, namespace, small_engine("again", [H100], dtype="float16"))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/again",
            "--timeout=90s")
    assert [j.metadata.name for j in _jobs(api_client, namespace, DOWNLOAD_SELECTOR)] == [
        download.metadata.name]
    assert _model(get_engine, "again")["path"] == model["path"]
    newest = max(_jobs(api_client, namespace, BUILD_SELECTOR),
                 key=lambda j: j.metadata.creation_timestamp)
    assert _build_spec(newest)["model"]["cachedPath"] == model["path"]


def test_a_failed_download_fails_every_target_with_its_reason_and_builds_nothing(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, _steered("gated", [H100, L40S], **{"exit-code": "8"}))

    def failed() -> dict[str, Any] | None:
        model = _model(get_engine, "gated")
        return model if model.get("state") == "Failed" else None

    model = wait_for(failed, 90, "the download to fail")
    assert model["reason"] == "ModelAccessDenied"
    assert f"kubectl delete job -n {namespace} {model['job']}" in model["message"]
    wait_for(lambda: {t["state"] for t in targets(get_engine("gated")).values()} == {"Failed"},
             30, "every target to fail")
    for t in targets(get_engine("gated")).values():
        assert t["reason"] == "ModelAccessDenied"
        assert "delete job" in t["message"]
    settle(2)
    assert _jobs(api_client, namespace, BUILD_SELECTOR) == []


def test_restarting_the_operator_mid_download_starts_no_second_download(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        running_operator: OperatorProcess) -> None:
    apply(kubectl, namespace, _steered("slow", [H100], duration="10s"))
    wait_for(lambda: _model(get_engine, "slow").get("state") == "Downloading", 60,
             "the download to run")
    before = [(j.metadata.name, j.metadata.uid)
              for j in _jobs(api_client, namespace, DOWNLOAD_SELECTOR)]
    assert len(before) == 1
    assert targets(get_engine("slow"))[H100]["reason"] == "ModelDownloading"
    running_operator.kill()
    running_operator.start()
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/slow",
            "--timeout=120s")
    after = [(j.metadata.name, j.metadata.uid)
             for j in _jobs(api_client, namespace, DOWNLOAD_SELECTOR)]
    assert after == before  # the same Job, picked up again
    assert len(_jobs(api_client, namespace, BUILD_SELECTOR)) == 1
