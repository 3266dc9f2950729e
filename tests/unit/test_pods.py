"""Stuck pods: the kubelet's waiting reason and message become a reason and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from trtllm_operator.pods import (
    PodContext,
    StuckContainer,
    StuckReason,
    diagnose,
    observe_pod,
    stuck_container,
)

BUILD = PodContext(kind="build", namespace="ml", image="nvcr.io/nvidia/tensorrt-llm/release:1.2.0",
                   image_field="spec.build.image",
                   pull_secrets_field="spec.build.imagePullSecrets", env_field="spec.build.env",
                   token_secret=("hf", "HF_TOKEN"))


def _waiting(reason: str, message: str = "", name: str = "build",
             restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "restartCount": restarts,
            "state": {"waiting": {"reason": reason, "message": message}}}


def test_normal_waits_and_running_containers_are_not_stuck() -> None:
    assert stuck_container({"phase": "Pending", "containerStatuses": [
        _waiting("ContainerCreating")]}) is None
    assert stuck_container({"phase": "Running", "containerStatuses": [
        {"name": "build", "state": {"running": {}}}]}) is None
    assert stuck_container({}) is None


@pytest.mark.parametrize(("kubelet", "ours"), [
    ("CreateContainerConfigError", StuckReason.CONTAINER_CONFIG_ERROR),
    ("ErrImagePull", StuckReason.IMAGE_PULL_FAILED),
    ("ImagePullBackOff", StuckReason.IMAGE_PULL_FAILED),
    ("CrashLoopBackOff", StuckReason.CRASH_LOOP),
])
def test_each_kubelet_reason_is_recognised(kubelet: str, ours: StuckReason) -> None:
    stuck = stuck_container({"containerStatuses": [_waiting(kubelet, "boom", restarts=4)]})
    assert stuck == StuckContainer("build", False, kubelet, "boom", 4)
    assert diagnose("p", stuck, BUILD).reason is ours


def test_init_containers_are_looked_at_first() -> None:
    status = {"initContainerStatuses": [_waiting("ImagePullBackOff", "no such image", "fetch")],
              "containerStatuses": [_waiting("PodInitializing")]}
    stuck = stuck_container(status)
    assert stuck is not None
    assert (stuck.container, stuck.init) == ("fetch", True)
    assert "init container fetch" in diagnose("p", stuck, BUILD).message


def test_missing_token_secret_names_the_secret_the_key_and_the_field() -> None:
    stuck = StuckContainer("build", False, "CreateContainerConfigError",
                           'secret "hf" not found')
    problem = diagnose("llama-build-x", stuck, BUILD)
    assert problem.reason is StuckReason.SECRET_NOT_FOUND
    assert 'secret "hf" not found' in problem.message  # the kubelet's own words
    assert "create Secret hf with key HF_TOKEN in namespace ml" in problem.message
    assert "spec.model.huggingFace.tokenSecretRef" in problem.message
    assert "llama-build-x" in problem.message


def test_missing_key_in_an_existing_secret() -> None:
    stuck = StuckContainer("build", False, "CreateContainerConfigError",
                           "couldn't find key HF_TOKEN in Secret ml/hf")
    problem = diagnose("p", stuck, BUILD)
    assert problem.reason is StuckReason.SECRET_KEY_NOT_FOUND
    assert "add key HF_TOKEN to Secret hf in namespace ml" in problem.message
    assert "spec.model.huggingFace.tokenSecretRef" in problem.message


def test_a_secret_named_elsewhere_points_at_the_env_field() -> None:
    stuck = StuckContainer("build", False, "CreateContainerConfigError",
                           'secret "wandb" not found')
    problem = diagnose("p", stuck, BUILD)
    assert problem.reason is StuckReason.SECRET_NOT_FOUND
    assert "create Secret wandb in namespace ml" in problem.message
    assert "spec.build.env" in problem.message
    assert "tokenSecretRef" not in problem.message


def test_other_config_errors_keep_the_kubelet_message() -> None:
    stuck = StuckContainer("build", False, "CreateContainerConfigError",
                           'configmap "opts" not found')
    problem = diagnose("p", stuck, BUILD)
    assert problem.reason is StuckReason.CONTAINER_CONFIG_ERROR
    assert 'configmap "opts" not found' in problem.message
    assert "spec.build.env" in problem.message


def test_image_pull_and_crash_loop_fixes_name_the_fields() -> None:
    pull = diagnose("p", StuckContainer("build", False, "ErrImagePull",
                                        "failed to resolve reference"), BUILD)
    assert "spec.build.image nvcr.io/nvidia/tensorrt-llm/release:1.2.0" in pull.message
    assert "spec.build.imagePullSecrets" in pull.message
    crash = diagnose("srv-1", StuckContainer("trtllm-serve", False, "CrashLoopBackOff",
                                             "back-off 40s restarting failed container", 3),
                     BUILD)
    assert "kubectl logs -n ml srv-1 -c trtllm-serve --previous" in crash.message
    assert "restarted 3 times" in crash.message


def test_observe_pod_keeps_unschedulable_and_stuck() -> None:
    fact = observe_pod("p", "2026-12-05T10:00:00Z", {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/4 nodes are available"}]})
    assert (fact.unschedulable, fact.stuck) == ("0/4 nodes are available", None)
    fact = observe_pod("p", None, {"phase": "Running", "containerStatuses": [
        _waiting("CrashLoopBackOff", "back-off", restarts=2)]})
    assert fact.unschedulable is None
    assert fact.stuck is not None
    assert fact.stuck.restarts == 2
