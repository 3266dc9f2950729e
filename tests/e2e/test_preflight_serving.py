"""Preflight of LLMDeployments against their engine, end to end: a missing engine, a serving
image that cannot serve engines or is of another release than the build, and runtime limits
above the engine's are each refused with their reason naming the field, and no serving
Deployment is written; a moving Hugging Face revision is warned about on the engine."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import Kubectl
from tests.e2e.conftest import H100, Getter, apply, condition, settle, small_engine
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

RELEASE = "nvcr.io/nvidia/tensorrt-llm/release"


def _llmd(name: str, engine: str, **spec: Any) -> dict[str, Any]:
    # replicas 0: a valid spec still gets its Deployment, and no GPU is needed.
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"engineRef": {"name": engine}, "gpu": H100, "replicas": 0, **spec}}


def _has_deployment(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    try:
        apps.read_namespaced_deployment(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _refused(get_llmd: Getter, name: str, reason: str) -> dict[str, Any] | None:
    c = condition(get_llmd(name), "Ready")
    return c if c is not None and c["status"] == "False" and c["reason"] == reason else None


@pytest.mark.parametrize(("name", "spec", "reason", "texts"), [
    ("no-engine", {"engineRef": {"name": "missing"}}, "EngineNotFound",
     ("LLMEngine missing does not exist", "correct spec.engineRef.name")),
    ("too-old", {"image": f"{RELEASE}:0.21.0"}, "ServingImageUnsupported",
     ("spec.image", "older than 1.0")),
    ("other-release", {"image": f"{RELEASE}:1.2.1"}, "ImageReleaseMismatch",
     ("spec.image", "1.2.1", "1.2.0", "an engine only loads in the release that built it")),
    ("too-many", {"serve": {"maxBatchSize": 4096}}, "ServeLimitExceedsEngine",
     ("spec.serve.maxBatchSize 4096 exceeds", "lower spec.serve.maxBatchSize")),
])
def test_a_deployment_its_engine_cannot_serve_rolls_out_nothing(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, api_client: client.ApiClient,
        name: str, spec: dict[str, Any], reason: str, texts: tuple[str, ...]) -> None:
    apply(kubectl, namespace, small_engine("served", [H100],
                                           image=f"{RELEASE}:1.2.0"))
    apply(kubectl, namespace, _llmd("control", "served"))
    obj = _llmd(name, "served")
    obj["spec"].update(spec)
    apply(kubectl, namespace, obj)

    ready = wait_for(lambda: _refused(get_llmd, name, reason), 60, f"Ready=False {reason}")
    for text in texts:
        assert text in ready["message"]
    apps = client.AppsV1Api(api_client)
    # The control shows the operator does write Deployments for a servable spec here.
    wait_for(lambda: _has_deployment(apps, namespace, "control"), 120,
             "the control's Deployment once its engine is built")
    settle()
    assert not _has_deployment(apps, namespace, name)


def test_an_unpinned_revision_is_a_spec_warning_and_the_build_goes_on(
        kubectl: Kubectl, namespace: str, get_engine: Getter) -> None:
    engine = small_engine("moving", [H100])
    engine["spec"]["model"]["huggingFace"]["revision"] = "main"
    apply(kubectl, namespace, engine)

    def warned() -> dict[str, Any] | None:
        return condition(get_engine("moving"), "SpecWarning")

    warning = wait_for(warned, 60, "the SpecWarning condition")
    assert (warning["status"], warning["reason"]) == ("True", "UnpinnedRevision")
    assert "spec.model.huggingFace.revision is main, which can move" in warning["message"]
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/moving",
            "--timeout=120s")
