"""Controller mechanics end to end: a reconcile that keeps failing says so in status (and stops
saying so once fixed), and the build-script ConfigMap comes back when it is deleted."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
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
from trtllm_operator.localcluster import stages

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage",
                                      "hf_token")

BUILD_SELECTOR = "app.kubernetes.io/component=engine-build"
# Each operator log record starts with its timestamp: "[2026-01-01 12:00:00,000] ...".
LOG_RECORD = re.compile(r"(?m)^(?=\[\d{4}-\d\d-\d\d )")


def _build_jobs(api_client: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.BatchV1Api(api_client).list_namespaced_job(
        namespace, label_selector=BUILD_SELECTOR).items)


def test_a_refused_build_job_shows_as_reconcile_error_until_the_refusal_is_lifted(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api,
        api_client: client.ApiClient) -> None:
    # A real refusal by the API server: a quota that allows no Job in the namespace.
    core.create_namespaced_resource_quota(namespace, {
        "metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})
    apply(kubectl, namespace, small_engine("refused", [H100]))

    def reconcile_error() -> dict[str, Any] | None:
        return condition(get_engine("refused"), "ReconcileError")

    error = wait_for(reconcile_error, 60, "a ReconcileError condition")
    assert error["status"] == "True"
    assert error["reason"] == "Forbidden"
    assert "exceeded quota" in error["message"] or "forbidden" in error["message"]
    assert _build_jobs(api_client, namespace) == []
    # Written on change only: further failed retries leave the condition as it is.
    first_written = get_engine("refused")["metadata"]["resourceVersion"]
    settle(4.0)  # several retries (backoff 0.5 s, 1 s, 2 s, ...)
    assert get_engine("refused")["metadata"]["resourceVersion"] == first_written

    core.delete_namespaced_resource_quota("no-jobs", namespace)
    wait_for(lambda: reconcile_error() is None and targets(get_engine("refused")), 90,
             "the condition to go once the Job could be created")
    # The model is downloaded first (its own Job), then the one build runs.
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/refused",
            "--timeout=90s")
    assert len(_build_jobs(api_client, namespace)) == 1


def test_a_deleted_build_script_configmap_is_recreated_for_the_next_build(
        kubectl: Kubectl, namespace: str, core: client.CoreV1Api,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, small_engine("first", [H100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/first",
            "--timeout=90s")

    def script_maps() -> list[str]:
        return [cm.metadata.name for cm in core.list_namespaced_config_map(
            namespace, label_selector=BUILD_SELECTOR).items
            if cm.metadata.deletion_timestamp is None]

    (name,) = script_maps()
    core.delete_namespaced_config_map(name, namespace)
    wait_for(lambda: not script_maps(), 30, "the ConfigMap to be gone")

    # A new build (another fingerprint) mounts the script: it must exist again.
    second = small_engine("second", [H100],
                          env=[{"name": stages.DURATION_ENV, "value": "600s"}])
    second["spec"]["build"]["limits"]["maxBatchSize"] = 7
    apply(kubectl, namespace, second)
    wait_for(lambda: [j for j in _build_jobs(api_client, namespace)
                      if j.metadata.labels.get("trtllm.dev/engine") == "second"], 60,
             "the second engine's build Job")
    assert wait_for(script_maps, 30, "the script ConfigMap to be recreated") == [name]

    # Deleted again while that build runs: recreated without any change to the engine.
    core.delete_namespaced_config_map(name, namespace)
    wait_for(lambda: script_maps() == [name], 30,
             "the script ConfigMap to be recreated for the running build")


def test_engines_sharing_a_fingerprint_share_one_created_job_without_conflicts(
        kubectl: Kubectl, namespace: str, api_client: client.ApiClient,
        running_operator: OperatorProcess) -> None:
    log_start = running_operator.log_path.stat().st_size
    twins = [small_engine(name, [H100], env=[{"name": stages.DURATION_ENV, "value": "3s"}])
             for name in ("twin-a", "twin-b")]
    for twin in twins:
        twin["spec"]["build"]["limits"]["maxBatchSize"] = 9
    kubectl("apply", "-n", namespace, "-f", "-",
            input=yaml.safe_dump_all(twins))
    for name in ("twin-a", "twin-b"):
        kubectl("wait", "-n", namespace, "--for=condition=Ready", f"llmengine/{name}",
                "--timeout=90s")
    (job,) = _build_jobs(api_client, namespace)
    # Created once by whichever engine came first; never re-applied by the other (its
    # template, which names the creating engine, is immutable).
    assert job.metadata.labels["trtllm.dev/engine"] in ("twin-a", "twin-b")
    with running_operator.log_path.open("rb") as log:
        log.seek(log_start)
        since = log.read().decode(errors="replace")
    # Only this namespace's log records: the operator is shared by the module, and an earlier
    # test's objects (a quota-refused build) may still be retried while their namespace goes.
    ours = "".join(r for r in LOG_RECORD.split(since) if namespace in r)
    assert "field is immutable" not in ours
    assert "Traceback" not in ours


def test_a_refused_service_shows_as_reconcile_error_on_the_llm_deployment(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("served", [H100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/served",
            "--timeout=90s")
    core.create_namespaced_resource_quota(namespace, {
        "metadata": {"name": "no-services"}, "spec": {"hard": {"count/services": "0"}}})
    apply(kubectl, namespace, {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "chat"},
        "spec": {"engineRef": {"name": "served"}, "gpu": H100, "replicas": 1}})

    # Three failed reconciles (backoff 0.5 s, 1 s, 2 s, jittered) after the Deployment is
    # written; generous for a loaded machine.
    error = wait_for(lambda: condition(get_llmd("chat"), "ReconcileError"), 120,
                     "a ReconcileError condition on the LLMDeployment")
    assert (error["status"], error["reason"]) == ("True", "Forbidden")
    assert "services" in error["message"]

    core.delete_namespaced_resource_quota("no-services", namespace)
    wait_for(lambda: condition(get_llmd("chat"), "ReconcileError") is None
             and condition(get_llmd("chat"), "Ready"), 90,
             "the condition to go once the Service could be created")
    assert core.read_namespaced_service("chat", namespace).metadata.name == "chat"
