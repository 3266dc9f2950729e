"""Cluster-state preflight end to end: real Secrets, claims and pods in the failing states (the
simulated kubelet refuses what a real one would), the running operator turning each into the
reason and message on the target or the LLMDeployment -- and the work resuming by itself once
the cluster is fixed, without a spec edit.

Secrets hold a sentinel value that must appear nowhere the operator writes (status, Events,
its log): the operator reads pods, never Secrets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import (
    H100,
    Getter,
    OperatorProcess,
    apply,
    condition,
    settle,
    small_engine,
    targets,
)
from tests.support import wait_for
from trtllm_operator.localcluster.cluster import static_rwx_claim

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet")

# The model download's pod meets a missing Secret or an unpullable image first (same image,
# same token): the job pods of an engine, download and builds alike.
BUILD_SELECTOR = "app.kubernetes.io/component in (engine-build,model-download)"
# An image that can never be pulled (RFC 2606 reserves .invalid), with a release tag so the
# image-release checks pass and only the pull fails.
UNPULLABLE_BUILDER = "registry.invalid/nvidia/tensorrt-llm/release:1.2.0"


def _sentinel() -> str:
    return f"hf_e2e_secret_{uuid.uuid4().hex}"


def _jobs(batch: client.BatchV1Api, namespace: str) -> list[client.V1Job]:
    return list(batch.list_namespaced_job(namespace, label_selector=BUILD_SELECTOR).items)


def _target(get_engine: Getter, name: str, state: str, reason: str | None = None
            ) -> dict[str, Any] | None:
    t = targets(get_engine(name)).get(H100)
    if t and t["state"] == state and (reason is None or t.get("reason") == reason):
        return t
    return None


def _waiting(core: client.CoreV1Api, namespace: str, selector: str) -> tuple[str, str] | None:
    """(reason, message) the kubelet reports for the first waiting container of these pods."""
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        for s in (pod.status.container_statuses or []):
            if s.state and s.state.waiting and s.state.waiting.reason != "ContainerCreating":
                return s.state.waiting.reason, s.state.waiting.message or ""
    return None


def _warning_events(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},type=Warning").items
    return {e.reason: e.message or "" for e in events}


def _everything_written(kubectl: Kubectl, namespace: str, op: OperatorProcess) -> str:
    """All the operator wrote that a user can read: our objects, Events, its own log."""
    return "\n".join((
        kubectl("get", "llmengines,llmdeployments,jobs,deployments,configmaps", "-n", namespace,
                "-o", "yaml").stdout,
        kubectl("get", "events", "-n", namespace, "-o", "yaml").stdout,
        op.log_path.read_text(errors="replace")))


@pytest.fixture
def claims(core: client.CoreV1Api) -> Iterator[list[str]]:
    """PersistentVolumes a test creates (cluster-scoped: removed after the test)."""
    made: list[str] = []
    yield made
    for pv in made:
        core.delete_persistent_volume(pv)


def _bound_claim(core: client.CoreV1Api, namespace: str, claim: str, pvs: list[str],
                 mode: str = "ReadWriteMany") -> None:
    pv, pvc = static_rwx_claim(namespace, claim, f"{claim}-{namespace}"[:63])
    pv["spec"]["accessModes"] = pvc["spec"]["accessModes"] = [mode]
    core.create_persistent_volume(pv)
    pvs.append(pv["metadata"]["name"])
    core.create_namespaced_persistent_volume_claim(namespace, pvc)
    wait_for(lambda: core.read_namespaced_persistent_volume_claim(
        claim, namespace).status.phase == "Bound", 60, f"claim {claim} to bind")


# --------------------------------------------------------------------------- token Secret


@pytest.mark.usefixtures("storage")
def test_missing_token_secret_is_named_on_the_target_and_creating_it_resumes_the_build(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api,
        running_operator: OperatorProcess) -> None:
    engine = small_engine("gated", [H100])
    engine["spec"]["model"]["huggingFace"]["tokenSecretRef"] = {"name": "hf-later"}
    apply(kubectl, namespace, engine)

    t = wait_for(lambda: _target(get_engine, "gated", "Pending", "SecretNotFound"), 60,
                 "the target to wait on the missing Secret")
    kubelet = wait_for(lambda: _waiting(core, namespace, BUILD_SELECTOR), 10,
                       "the build pod's waiting state")
    assert kubelet == ("CreateContainerConfigError", 'secret "hf-later" not found')
    assert kubelet[1] in t["message"]  # the kubelet's own words, then the fix
    assert f"create Secret hf-later with key HF_TOKEN in namespace {namespace}" in t["message"]
    assert "spec.model.huggingFace.tokenSecretRef" in t["message"]
    ready = condition(get_engine("gated"), "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert "SecretNotFound" in _warning_events(core, namespace, "gated")

    value = _sentinel()
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-later"},
                                              "stringData": {"HF_TOKEN": value}})
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/gated",
            "--timeout=90s")
    assert _target(get_engine, "gated", "Built")
    assert value not in _everything_written(kubectl, namespace, running_operator)


@pytest.mark.usefixtures("storage")
def test_token_secret_without_the_key_is_named_and_adding_the_key_resumes_the_build(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api,
        running_operator: OperatorProcess) -> None:
    value = _sentinel()
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"},
                                              "stringData": {"TOKEN": value}})
    apply(kubectl, namespace, small_engine("keyless", [H100]))

    t = wait_for(lambda: _target(get_engine, "keyless", "Pending", "SecretKeyNotFound"), 60,
                 "the target to wait on the missing key")
    kubelet = _waiting(core, namespace, BUILD_SELECTOR)
    assert kubelet == ("CreateContainerConfigError",
                       f"couldn't find key HF_TOKEN in Secret {namespace}/hf-token")
    assert kubelet[1] in t["message"]
    assert f"add key HF_TOKEN to Secret hf-token in namespace {namespace}" in t["message"]
    assert "SecretKeyNotFound" in _warning_events(core, namespace, "keyless")

    core.patch_namespaced_secret("hf-token", namespace, {"stringData": {"HF_TOKEN": value}})
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/keyless",
            "--timeout=90s")
    assert value not in _everything_written(kubectl, namespace, running_operator)


# --------------------------------------------------------------------------- images


@pytest.mark.usefixtures("storage", "hf_token")
def test_unpullable_builder_image_shows_as_image_pull_failed(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("unpullable", [H100], image=UNPULLABLE_BUILDER))

    t = wait_for(lambda: _target(get_engine, "unpullable", "Pending", "ImagePullFailed"), 60,
                 "the target to report the failed pull")
    reason, message = wait_for(lambda: _waiting(core, namespace, BUILD_SELECTOR), 10,
                               "the build pod's waiting state")
    assert reason in ("ErrImagePull", "ImagePullBackOff")
    assert UNPULLABLE_BUILDER in message
    assert UNPULLABLE_BUILDER in t["message"]
    assert f"check that spec.build.image {UNPULLABLE_BUILDER} exists" in t["message"]
    assert "spec.build.imagePullSecrets" in t["message"]
    assert "ImagePullFailed" in _warning_events(core, namespace, "unpullable")
    # The kubelet moves on to backing off; the target keeps the same reason.
    wait_for(lambda: (_waiting(core, namespace, BUILD_SELECTOR) or ("",))[0]
             == "ImagePullBackOff", 30, "the kubelet to back off")
    assert _target(get_engine, "unpullable", "Pending", "ImagePullFailed")


# --------------------------------------------------------------------------- storage claims


@pytest.mark.usefixtures("hf_token")
def test_missing_then_unbound_claim_starts_nothing_and_binding_it_starts_the_build(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api,
        api_client: client.ApiClient, claims: list[str]) -> None:
    batch = client.BatchV1Api(api_client)
    engine = small_engine("homeless", [H100])
    engine["spec"]["storage"] = {"claimName": "late-engines"}
    apply(kubectl, namespace, engine)

    t = wait_for(lambda: _target(get_engine, "homeless", "Pending", "ClaimNotFound"), 60,
                 "the target to wait for the claim")
    assert f"no PersistentVolumeClaim late-engines in namespace {namespace}" in t["message"]
    assert "spec.storage.claimName" in t["message"]
    assert "ClaimNotFound" in _warning_events(core, namespace, "homeless")
    settle(2)
    assert _jobs(batch, namespace) == []

    # The claim appears, naming a volume that does not exist yet: Pending, still no Job.
    pv, pvc = static_rwx_claim(namespace, "late-engines", f"late-{namespace}"[:63])
    core.create_namespaced_persistent_volume_claim(namespace, pvc)
    t = wait_for(lambda: _target(get_engine, "homeless", "Pending", "ClaimNotBound"), 60,
                 "the target to wait for the claim to bind")
    assert "late-engines is Pending, not Bound" in t["message"]
    assert _jobs(batch, namespace) == []

    # The volume arrives and the PV controller binds the pair: the build starts by itself.
    core.create_persistent_volume(pv)
    claims.append(pv["metadata"]["name"])
    wait_for(lambda: _jobs(batch, namespace), 90, "a build Job once the claim is Bound")
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/homeless",
            "--timeout=90s")
    assert get_engine("homeless")["metadata"]["generation"] == 1  # no spec edit


@pytest.mark.usefixtures("hf_token")
def test_read_write_once_claim_is_not_shared_and_the_target_is_invalid(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api,
        api_client: client.ApiClient, claims: list[str]) -> None:
    _bound_claim(core, namespace, "single-node", claims, mode="ReadWriteOnce")
    engine = small_engine("cramped", [H100])
    engine["spec"]["storage"] = {"claimName": "single-node"}
    apply(kubectl, namespace, engine)

    t = wait_for(lambda: _target(get_engine, "cramped", "Invalid", "ClaimNotShared"), 60,
                 "the target to refuse the single-node claim")
    assert "spec.storage.claimName single-node grants ReadWriteOnce" in t["message"]
    assert "ReadWriteMany" in t["message"]
    assert "job" not in t
    settle(2)
    assert _jobs(client.BatchV1Api(api_client), namespace) == []


# --------------------------------------------------------------------------- serving pods


def _served_engine(kubectl: Kubectl, namespace: str, name: str) -> None:
    apply(kubectl, namespace, small_engine(name, [H100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"llmengine/{name}",
            "--timeout=90s")


def _llmd(name: str, engine: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"engineRef": {"name": engine}, "gpu": H100, "replicas": 1, "env": env}}


def _not_ready(get_llmd: Getter, name: str, reason: str) -> dict[str, Any] | None:
    c = condition(get_llmd(name), "Ready")
    return c if c and (c["status"], c["reason"]) == ("False", reason) else None


@pytest.mark.usefixtures("storage", "hf_token")
def test_crash_looping_serving_pods_make_the_deployment_not_ready_with_crash_loop(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, core: client.CoreV1Api) -> None:
    _served_engine(kubectl, namespace, "served")
    # The simulated kubelet's crash knob, reaching the pod through spec.env.
    apply(kubectl, namespace, _llmd("crashy", "served", [{"name": "SIM_CRASH", "value": "1"}]))

    ready = wait_for(lambda: _not_ready(get_llmd, "crashy", "CrashLoop"), 90,
                     "Ready False with CrashLoop")
    selector = "app.kubernetes.io/instance=crashy"
    reason, _ = wait_for(lambda: _waiting(core, namespace, selector), 10,
                         "the serving pod's waiting state")
    assert reason == "CrashLoopBackOff"
    assert "container trtllm-serve is in CrashLoopBackOff: back-off" in ready["message"]
    assert "restarting failed container=trtllm-serve" in ready["message"]
    assert f"kubectl logs -n {namespace}" in ready["message"]
    assert "--previous" in ready["message"]
    # The restarts go on (the kubelet keeps trying); the reason stays.
    pod = core.list_namespaced_pod(namespace, label_selector=selector).items[0]
    first = pod.status.container_statuses[0].restart_count
    wait_for(lambda: core.read_namespaced_pod(pod.metadata.name, namespace)
             .status.container_statuses[0].restart_count > first, 30, "another restart")
    assert _not_ready(get_llmd, "crashy", "CrashLoop")


@pytest.mark.usefixtures("storage", "hf_token")
def test_serving_env_from_a_missing_secret_is_named_and_creating_it_makes_it_ready(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, core: client.CoreV1Api,
        running_operator: OperatorProcess) -> None:
    _served_engine(kubectl, namespace, "served")
    env = [{"name": "API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "serve-keys", "key": "API_KEY"}}}]
    apply(kubectl, namespace, _llmd("keyed", "served", env))

    ready = wait_for(lambda: _not_ready(get_llmd, "keyed", "SecretNotFound"), 90,
                     "Ready False with SecretNotFound")
    assert 'container trtllm-serve is in CreateContainerConfigError: secret "serve-keys" ' \
           'not found' in ready["message"]
    assert f"create Secret serve-keys in namespace {namespace}" in ready["message"]
    assert "fix the reference in spec.env" in ready["message"]

    value = _sentinel()
    core.create_namespaced_secret(namespace, {"metadata": {"name": "serve-keys"},
                                              "stringData": {"API_KEY": value}})
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmdeployment/keyed",
            "--timeout=90s")
    assert value not in _everything_written(kubectl, namespace, running_operator)


@pytest.mark.usefixtures("storage", "hf_token")
def test_affinity_the_kubernetes_types_refuse_is_a_reason_and_no_deployment(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, api_client: client.ApiClient,
        running_operator: OperatorProcess) -> None:
    _served_engine(kubectl, namespace, "served")
    log_start = running_operator.log_path.stat().st_size
    term = {"matchExpressions": [{"key": "zone", "operator": "In"}]}  # In without values
    wrong_type = _llmd("typed", "served", [])
    wrong_type["spec"]["affinity"] = {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 2.5, "preference": term}]}}
    broken_rule = _llmd("ruled", "served", [])
    broken_rule["spec"]["affinity"] = {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "preference": term}]}}
    apply(kubectl, namespace, wrong_type)
    apply(kubectl, namespace, broken_rule)

    # A wrong type is found before anything is built; a rule of Kubernetes by the API server.
    typed = wait_for(lambda: _not_ready(get_llmd, "typed", "PodFieldInvalid"), 60,
                     "Ready False with PodFieldInvalid (type)")
    assert ("spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
            ".weight: Expected `int`, got `float`") in typed["message"]
    ruled = wait_for(lambda: _not_ready(get_llmd, "ruled", "PodFieldInvalid"), 60,
                     "Ready False with PodFieldInvalid (API server)")
    assert "matchExpressions[0].values: Required value" in ruled["message"]
    settle(2)
    apps = client.AppsV1Api(api_client)
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == []
    with running_operator.log_path.open("rb") as log:
        log.seek(log_start)
        assert "Traceback" not in log.read().decode(errors="replace")
