"""GitOps health of real objects: what Flux's kstatus (sigs.k8s.io/cli-utils, run as the pinned
tools/kstatus binary) and the chart's Argo CD health check (Lua) conclude from the status the
operator writes, through work in progress, Ready, failures and an unobserved spec change.

Set GITOPS_RECORD=<file> to save every object checked here (the unit tests' recorded objects
come from such a run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import (
    A100,
    H100,
    Getter,
    OperatorProcess,
    apply,
    condition,
    small_engine,
    targets,
)
from tests.gitops import argocd_health, kstatus
from tests.support import wait_for
from trtllm_operator.localcluster import stages

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

_recorded: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def _record() -> Iterator[None]:
    yield
    path = os.environ.get("GITOPS_RECORD")
    if path:
        Path(path).write_text(json.dumps(_recorded, indent=1, sort_keys=True) + "\n")


def _health(obj: dict[str, Any], label: str) -> tuple[str, str, str]:
    """(kstatus status, Argo CD status, both messages) of ``obj``, recorded under ``label``."""
    k_status, k_message = kstatus(obj)
    a_status, a_message = argocd_health(obj)
    _recorded.append({"label": label, "kstatus": k_status, "argocd": a_status,
                      "object": {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec",
                                                      "status") if k in obj}})
    return k_status, a_status, f"kstatus: {k_message} | argocd: {a_message}"


def _conds(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"])
            for c in (obj.get("status") or {}).get("conditions") or []}


def _when(get: Getter, name: str, test: Callable[[dict[str, Any]], bool], what: str,
          timeout: float = 90) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(name)
        return obj if test(obj) else None
    return wait_for(probe, timeout, what)


def stalled(obj: dict[str, Any]) -> bool:
    return _conds(obj).get("Stalled", ("", ""))[0] == "True"


def _ready(obj: dict[str, Any]) -> bool:
    c = condition(obj, "Ready")
    return bool(c and c["status"] == "True"
                and obj["status"].get("observedGeneration") == obj["metadata"]["generation"])


def _llmd(name: str, engine: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"engineRef": {"name": engine}, "replicas": 1, **spec}}


def _assert_current(obj: dict[str, Any], label: str) -> None:
    k, a, why = _health(obj, label)
    assert (k, a) == ("Current", "Healthy"), why
    assert {"Reconciling", "Stalled"}.isdisjoint(_conds(obj))


def _assert_failed(obj: dict[str, Any], label: str, reason: str) -> None:
    k, a, why = _health(obj, label)
    assert (k, a) == ("Failed", "Degraded"), why
    assert _conds(obj)["Stalled"] == ("True", reason)
    assert "Reconciling" not in _conds(obj)
    assert reason in why  # both tools pass the reason and the fix on


def test_engine_in_progress_while_building_current_when_built_and_again_on_a_spec_change(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        running_operator: OperatorProcess) -> None:
    apply(kubectl, namespace, small_engine(
        "flux", [H100], env=[{"name": stages.DURATION_ENV, "value": "6s"}]))
    building = _when(get_engine, "flux",
                     lambda o: targets(o).get(H100, {}).get("state") == "Building",
                     "the build to run")
    k, a, why = _health(building, "engine building")
    assert (k, a) == ("InProgress", "Progressing"), why
    assert _conds(building)["Reconciling"] == ("True", "Building")
    assert "Stalled" not in _conds(building)
    # Every condition says which spec it describes.
    gen = building["metadata"]["generation"]
    assert building["status"]["observedGeneration"] == gen
    assert {c["observedGeneration"] for c in building["status"]["conditions"]} == {gen}

    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/flux",
            "--timeout=90s")
    _assert_current(get_engine("flux"), "engine built")

    # A spec change nobody has observed yet: the operator is down while it is made.
    running_operator.stop()
    try:
        kubectl("patch", "llmengine", "flux", "-n", namespace, "--type=merge", "-p", json.dumps(
            {"spec": {"build": {"env": [{"name": stages.DURATION_ENV, "value": "2s"}]}}}))
        changed = get_engine("flux")
        assert changed["metadata"]["generation"] == gen + 1
        assert changed["status"]["observedGeneration"] == gen
        assert condition(changed, "Ready")["status"] == "True"  # still the old spec's word
        k, a, why = _health(changed, "engine spec changed, not observed")
        assert (k, a) == ("InProgress", "Progressing"), why
        assert f"latest observed generation is {gen}" in why
    finally:
        running_operator.start()
    _assert_current(_when(get_engine, "flux", _ready, "the new spec built"),
                    "engine rebuilt")


def test_a_failed_build_and_an_invalid_spec_read_failed_and_degraded(
        kubectl: Kubectl, namespace: str, get_engine: Getter) -> None:
    summary = json.dumps({"phase": "Failed", "reason": "TrtllmBuildMissing",
                          "message": "this image's TensorRT-LLM release has no trtllm-build"})
    apply(kubectl, namespace, small_engine("broken", [H100], env=[
        {"name": stages.EXIT_CODE_ENV, "value": "3"}, {"name": stages.MESSAGE_ENV,
                                                      "value": summary}]))
    apply(kubectl, namespace, small_engine("fp8-a100", [A100], quantization={
        "format": "fp8", "kvCacheDtype": "fp8"}))

    _assert_failed(_when(get_engine, "broken", stalled, "the build to fail"),
                   "engine build failed", "BuildFailed")
    _assert_failed(_when(get_engine, "fp8-a100", stalled, "the spec to be refused"),
                   "engine spec invalid", "TargetInvalid")


def test_engine_waiting_on_a_missing_secret_is_failed_until_the_secret_comes(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api) -> None:
    # A namespace of its own: engines of one model share its download Job.
    gated = small_engine("gated", [H100])
    gated["spec"]["model"]["huggingFace"]["tokenSecretRef"] = {"name": "hf-later"}
    apply(kubectl, namespace, gated)

    _assert_failed(_when(get_engine, "gated", stalled, "the pod to wait on the Secret"),
                   "engine token Secret missing", "SecretNotFound")

    # Stalled is not final: the fix it names makes the object Current again.
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-later"},
                                              "stringData": {"HF_TOKEN": "hf_placeholder"}})
    _assert_current(_when(get_engine, "gated", _ready, "the build to resume"),
                    "engine built after the Secret came")


def test_deployment_in_progress_current_failed_and_unobserved_spec_change(
        kubectl: Kubectl, namespace: str, get_llmd: Getter,
        running_operator: OperatorProcess) -> None:
    apply(kubectl, namespace, small_engine(
        "served", [H100], env=[{"name": stages.DURATION_ENV, "value": "6s"}]))
    apply(kubectl, namespace, _llmd("chat", "served"))
    waiting = _when(get_llmd, "chat",
                    lambda o: _conds(o).get("Ready", ("", ""))[0] == "False",
                    "the deployment to wait for its engine")
    k, a, why = _health(waiting, "deployment waiting for its engine")
    assert (k, a) == ("InProgress", "Progressing"), why
    assert _conds(waiting)["Reconciling"][0] == "True"

    ready = _when(get_llmd, "chat", _ready, "the deployment to be Ready", timeout=150)
    _assert_current(ready, "deployment ready")

    env = [{"name": "API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "serve-keys", "key": "API_KEY"}}}]
    apply(kubectl, namespace, _llmd("keyed", "served", env=env))
    _assert_failed(_when(get_llmd, "keyed", stalled, "the serving pod to wait on the Secret"),
                   "deployment Secret missing", "SecretNotFound")

    gen = ready["metadata"]["generation"]
    running_operator.stop()
    try:
        kubectl("scale", "llmdeployment/chat", "-n", namespace, "--replicas=2")
        changed = get_llmd("chat")
        assert (changed["metadata"]["generation"], changed["status"]["observedGeneration"]) \
            == (gen + 1, gen)
        k, a, why = _health(changed, "deployment spec changed, not observed")
        assert (k, a) == ("InProgress", "Progressing"), why
    finally:
        running_operator.start()
    _assert_current(_when(get_llmd, "chat", _ready, "two replicas Ready", timeout=150),
                    "deployment scaled")


def test_a_new_object_is_in_progress_before_the_operator_has_written_any_status(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        running_operator: OperatorProcess) -> None:
    running_operator.stop()
    try:
        apply(kubectl, namespace, small_engine("fresh", [H100]))
        apply(kubectl, namespace, _llmd("fresh", "fresh"))
        for obj, label in ((get_engine("fresh"), "engine never reconciled"),
                           (get_llmd("fresh"), "deployment never reconciled")):
            # The CRD's status default: without it kstatus finds no status and says Current.
            assert obj["status"] == {"observedGeneration": 0}
            k, a, why = _health(obj, label)
            assert (k, a) == ("InProgress", "Progressing"), why
    finally:
        running_operator.start()
    _when(get_engine, "fresh", lambda o: o["status"].get("observedGeneration") == 1,
          "the operator to report on the engine")
