"""Preflight at the real API server with the operator running: an FP8 KV cache on a GPU that
cannot run it, a multi-GPU engine for a MIG slice, and a credential written as plain text in
env. What cannot work gets no Job; a warning leaves the object working and says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, Kubectl
from tests.e2e.conftest import (
    A100,
    H100,
    Getter,
    apply,
    condition,
    small_engine,
    targets,
)
from tests.support import wait_for
from trtllm_operator import gpus

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage")

A100_MIG = f"{A100}-MIG-1g.10gb"
TOKEN = "hf_" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zQQ"  # shaped like a token, not a real one


@pytest.fixture
def hf_secret(core: client.CoreV1Api, namespace: str) -> str:
    """The Secret the sample engine's tokenSecretRef names, so build pods can start."""
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"},
                                              "stringData": {"HF_TOKEN": "x"}})
    return "hf-token"


@pytest.fixture
def mig_node(cluster: ClusterUnderTest) -> Iterator[str]:
    """One node whose A100s are split into 1g.10gb MIG slices (GFD single strategy); removed
    afterwards so that later tests' `auto` engines do not see a MIG pool."""
    cluster.require_local()
    [name] = cluster.add_nodes(A100_MIG, 1)
    yield name
    cluster.remove_nodes([name])


def _build_jobs(batch: client.BatchV1Api, namespace: str) -> set[str]:
    return {j.metadata.labels["trtllm.dev/gpu-product"] for j in batch.list_namespaced_job(
        namespace, label_selector="app.kubernetes.io/component=engine-build").items}


def _events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector",
                  f"involvedObject.name={name}", "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _target_in(get_engine: Getter, name: str, gpu: str, state: str) -> dict[str, Any] | None:
    t = targets(get_engine(name)).get(gpu)
    return t if t and t["state"] == state else None


def test_fp8_kv_cache_is_refused_for_a100_and_built_for_h100(
        kubectl: Kubectl, namespace: str, get_engine: Getter, hf_secret: str,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, small_engine("kvfp8", [H100, A100],
                                           quantization={"kvCacheDtype": "fp8"}))

    built = wait_for(lambda: _target_in(get_engine, "kvfp8", H100, "Built"), 90,
                     "the H100 target to build")
    assert built["state"] == "Built"
    a100 = targets(get_engine("kvfp8"))[A100]
    assert (a100["state"], a100["reason"]) == ("Invalid", "KvCacheDtypeUnsupported")
    assert "spec.build.quantization.kvCacheDtype fp8 needs compute capability >= 8.9" in (
        a100["message"])
    assert "set it to int8" in a100["message"]
    assert "job" not in a100
    assert _build_jobs(client.BatchV1Api(api_client), namespace) == {H100}


def test_a_multi_gpu_engine_for_a_mig_slice_is_refused_and_a_single_gpu_one_builds(
        kubectl: Kubectl, namespace: str, get_engine: Getter, hf_secret: str, mig_node: str,
        core: client.CoreV1Api, api_client: client.ApiClient) -> None:
    labels = core.read_node(mig_node).metadata.labels
    assert labels[gpus.PRODUCT_LABEL] == A100_MIG
    assert labels[gpus.MEMORY_LABEL] == "10240"  # per slice, from the profile
    apply(kubectl, namespace, small_engine("migtp2", [A100_MIG],
                                           parallelism={"tensor": 2}))
    # An 8B model's bf16 weights (16 GB, what the simulated hub's download reports by default)
    # cannot fit a 10 GB slice: the single-GPU engine is of a small model (about 3B).
    small = small_engine("migtp1", [A100_MIG])
    small["metadata"]["annotations"] = {"sim.trtllm.dev/download-checkpoint-bytes":
                                        str(6 * 10**9)}
    apply(kubectl, namespace, small)

    invalid = wait_for(lambda: _target_in(get_engine, "migtp2", A100_MIG, "Invalid"), 60,
                       "the tp=2 MIG target to be refused")
    assert invalid["reason"] == "ParallelismOnMIG"
    assert "spec.build.parallelism: tensor 2 x pipeline 1" in invalid["message"]
    assert "MIG slice (1g.10gb)" in invalid["message"]
    ready = condition(get_engine("migtp2"), "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "TargetInvalid")
    wait_for(lambda: _target_in(get_engine, "migtp1", A100_MIG, "Built"), 90,
             "the single-GPU MIG target to build")
    jobs = client.BatchV1Api(api_client).list_namespaced_job(
        namespace, label_selector="app.kubernetes.io/component=engine-build").items
    owners = {j.metadata.owner_references[0].name for j in jobs}
    assert "migtp2" not in owners  # no build for what cannot run
    assert "migtp1" in owners


def test_a_plain_text_token_is_a_warning_on_both_kinds_and_never_shown(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        hf_secret: str) -> None:
    apply(kubectl, namespace, small_engine(
        "leaky", [H100], env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                              {"name": "HF_TOKEN", "value": TOKEN}]))
    # A warning: the engine still builds.
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/leaky",
            "--timeout=90s", timeout=100)
    engine = get_engine("leaky")
    warning = condition(engine, "SpecWarning")
    assert warning is not None
    assert (warning["status"], warning["reason"]) == ("True", "PlainTextSecret")
    assert "spec.build.env[1].value: HF_TOKEN is set as plain text" in warning["message"]
    assert "valueFrom.secretKeyRef" in warning["message"]
    events = wait_for(lambda: [e for e in _events(kubectl, namespace, "leaky")
                               if e["reason"] == "PlainTextSecret"] or None, 30,
                      "a PlainTextSecret Event on the engine")
    assert events[0]["type"] == "Warning"

    apply(kubectl, namespace, {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "leaky-server"},
        "spec": {"engineRef": {"name": "leaky"}, "gpu": H100,
                 "env": [{"name": "OPENAI_API_KEY", "value": TOKEN}]}})

    def llmd_warning() -> dict[str, Any] | None:
        return condition(get_llmd("leaky-server"), "SpecWarning")

    dwarning = wait_for(llmd_warning, 60, "the deployment's SpecWarning")
    assert (dwarning["status"], dwarning["reason"]) == ("True", "PlainTextSecret")
    assert "spec.env[0].value: OPENAI_API_KEY" in dwarning["message"]
    wait_for(lambda: [e for e in _events(kubectl, namespace, "leaky-server")
                      if e["reason"] == "PlainTextSecret"] or None, 30,
             "a PlainTextSecret Event on the deployment")

    # The value appears in nothing the operator wrote: statuses and Events.
    shown = json.dumps([get_engine("leaky")["status"], get_llmd("leaky-server")["status"],
                        _events(kubectl, namespace, "leaky"),
                        _events(kubectl, namespace, "leaky-server")])
    assert TOKEN not in shown
