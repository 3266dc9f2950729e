"""Which GPU type an LLMDeployment serves on, end to end: spec.gpu against what an ``auto``
engine resolved to, and the documented rule (sticky, room, most memory) when spec.gpu is unset,
with its reason in status."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, Kubectl
from tests.e2e.conftest import A100, H100, L40S, Getter, apply, condition, small_engine, targets
from tests.support import wait_for
from trtllm_operator import gpus

H200 = gpus.gpu_type("h200").product

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")


def _llmd(name: str, engine: str, gpu: str | None = None, replicas: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"engineRef": {"name": engine}, "replicas": replicas}
    if gpu:
        spec["gpu"] = gpu
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name}, "spec": spec}


def _wait_ready(kubectl: Kubectl, namespace: str, kind: str, name: str) -> None:
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"{kind}/{name}", "--timeout=120s",
            timeout=130)


def _pod_gpu_types(core: client.CoreV1Api, namespace: str, name: str) -> set[str]:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={name}").items
    assert pods, f"no serving pods of {name}"
    return {core.read_node(p.spec.node_name).metadata.labels[gpus.PRODUCT_LABEL] for p in pods}


def _fp8_auto_engine(kubectl: Kubectl, namespace: str, get_engine: Getter, *, tensor: int = 1,
                     expect: frozenset[str] = frozenset({H100, L40S})) -> None:
    # FP8 needs compute capability >= 8.9: auto resolves to the H100 and L40S pools of the
    # shared fleet (and an H200 pool if a test adds one) and leaves the A100 out.
    apply(kubectl, namespace, small_engine("anywhere", ["auto"], parallelism={"tensor": tensor},
                                           quantization={"format": "fp8"}))
    _wait_ready(kubectl, namespace, "llmengine", "anywhere")
    built = {gpu for gpu, t in targets(get_engine("anywhere")).items() if t["state"] == "Built"}
    assert built == expect, f"the shared fleet changed: auto built {built}"


def test_without_spec_gpu_the_built_type_with_most_memory_and_room_serves_and_says_why(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_engine: Getter,
        get_llmd: Getter, core: client.CoreV1Api) -> None:
    cluster.require_local()
    # Auto lists its GPU types by name (H100, H200, L40S): the first built is not the largest.
    h200 = cluster.add_nodes("h200", 1)  # one node of 8 GPUs
    try:
        # tensor 4: the H200 pool holds 2 replicas, the two H100 nodes at least 4, L40S 1.
        _fp8_auto_engine(kubectl, namespace, get_engine, tensor=4,
                         expect=frozenset({H100, H200, L40S}))
        apply(kubectl, namespace, _llmd("chooser", "anywhere", replicas=2))
        apply(kubectl, namespace, _llmd("roomy", "anywhere", replicas=3))
        _wait_ready(kubectl, namespace, "llmdeployment", "chooser")
        _wait_ready(kubectl, namespace, "llmdeployment", "roomy")

        obj = get_llmd("chooser")
        why = (f"chose {H200}: the most GPU memory (140 GiB) among built targets with room "
               f"for 2 replicas (also built: {H100}, {L40S})")
        assert obj["status"]["gpu"] == H200
        assert obj["status"]["gpuReason"] == why
        engine_ready = condition(obj, "EngineReady")
        assert engine_ready is not None
        assert (engine_ready["status"], engine_ready["reason"]) == ("True", "EngineChosen")
        assert engine_ready["message"].startswith(why)
        assert _pod_gpu_types(core, namespace, "chooser") == {H200}
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=chooser").items
        assert any(e.reason == "EngineChosen" and why in e.message for e in events)

        # Three replicas do not fit the one H200 node: the H100 pools have room for them.
        roomy = get_llmd("roomy")["status"]
        assert (roomy["gpu"], roomy["gpuReason"]) == (
            H100, f"chose {H100}: the most GPU memory (80 GiB) among built targets with room "
                  f"for 3 replicas (also built: {H200}, {L40S})")
        assert _pod_gpu_types(core, namespace, "roomy") == {H100}
    finally:
        cluster.remove_nodes(h200)


def test_spec_gpu_naming_a_type_auto_resolved_to_is_served(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        core: client.CoreV1Api) -> None:
    _fp8_auto_engine(kubectl, namespace, get_engine)
    apply(kubectl, namespace, _llmd("named", "anywhere", gpu=L40S))
    apply(kubectl, namespace, _llmd("not-built", "anywhere", gpu=A100))
    _wait_ready(kubectl, namespace, "llmdeployment", "named")

    obj = get_llmd("named")
    assert (obj["status"]["gpu"], obj["status"]["gpuReason"]) == (L40S, "named by spec.gpu")
    assert condition(obj, "EngineReady")["reason"] == "EngineBuilt"  # type: ignore[index]
    assert _pod_gpu_types(core, namespace, "named") == {L40S}

    # A type auto left out is still refused, with what auto did resolve to.
    refused = wait_for(lambda: (c := condition(get_llmd("not-built"), "Ready")) and
                       c["reason"] == "GPUNotATarget" and c, 60, "GPUNotATarget for A100")
    assert refused["status"] == "False"
    assert f"spec.gpu {A100} is not a target of LLMEngine anywhere" in refused["message"]
    assert f"auto resolved to {H100}, {L40S}" in refused["message"]


def test_a_running_fleet_stays_on_its_gpu_type_when_a_bigger_target_is_built(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        core: client.CoreV1Api) -> None:
    engine = small_engine("growing", [L40S])
    apply(kubectl, namespace, engine)
    apply(kubectl, namespace, _llmd("steady", "growing"))
    _wait_ready(kubectl, namespace, "llmdeployment", "steady")
    assert get_llmd("steady")["status"]["gpu"] == L40S

    engine["spec"]["targets"] = [L40S, H100]
    apply(kubectl, namespace, engine)
    wait_for(lambda: targets(get_engine("growing")).get(H100, {}).get("state") == "Built", 90,
             "the H100 target to be built")
    # The deployment is looked at again once H100 is built: its reason then names H100 too.
    status = wait_for(lambda: (s := get_llmd("steady")["status"]) and
                      f"also built: {H100}" in (s.get("gpuReason") or "") and s, 60,
                      "the deployment to weigh the new H100 target")
    assert status["gpu"] == L40S
    assert status["gpuReason"].startswith(f"kept {L40S}, where it already serves")
    assert condition(get_llmd("steady"), "Ready")["status"] == "True"  # type: ignore[index]
    assert _pod_gpu_types(core, namespace, "steady") == {L40S}
