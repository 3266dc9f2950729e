"""The Helm chart installed into a real API server: objects, labels, effective RBAC, uninstall.

The operator pod itself is not expected to run (kwok nodes, an image nobody pulls); what is
checked is what the API server accepted and what the ServiceAccount may do. The CRDs are
cluster-scoped and already applied by the ``crds`` fixture, so the chart goes in with
``--skip-crds``.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_for
from trtllm_operator.localcluster.binaries import BinaryBuilder

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]

CHART = Path(__file__).resolve().parents[2] / "charts" / "trtllm-operator"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]
Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Run the pinned helm against the cluster under test."""
    binary = BinaryBuilder().ensure(["helm"])["helm"]
    home = tmp_path_factory.mktemp("helm")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(binary), f"--kubeconfig={cluster.kubeconfig}", *args],
                              capture_output=True, text=True, env=env, timeout=180,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr}{proc.stdout}")
        return proc

    return run


@pytest.fixture
def release(helm: Helm, namespace: str) -> Iterator[str]:
    """A unique release name; the release is uninstalled afterwards if the test left it."""
    name = f"op-{uuid.uuid4().hex[:6]}"
    yield name
    helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout=60s", check=False)


def get(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return loaded


def gone(kubectl: Kubectl, kind: str, name: str, namespace: str | None = None) -> bool:
    where = ["-n", namespace] if namespace else []
    return not kubectl("get", kind, name, *where, "--ignore-not-found", "-o", "name").stdout


def can(kubectl: Kubectl, account: str, verb: str, resource: str,
        namespace: str | None = None) -> bool:
    """What the API server's authorizer says the ServiceAccount may do.

    ``resource`` may name a subresource after a slash: ``llmengines.trtllm.dev/status``.
    """
    where = [f"--namespace={namespace}"] if namespace else []
    resource, _, sub = resource.partition("/")
    if sub:
        where.append(f"--subresource={sub}")
    proc = kubectl("auth", "can-i", verb, resource, f"--as={account}", *where, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def test_install_creates_the_operator_objects_and_uninstall_removes_them(
        helm: Helm, kubectl: Kubectl, namespace: str, release: str) -> None:
    fullname = f"{release}-trtllm-operator"
    out = helm("install", release, str(CHART), "--namespace", namespace, "--skip-crds",
               "--set", "image.repository=registry.example.com/trtllm-operator").stdout
    assert "kubectl get llm -A" in out  # NOTES.txt
    assert f"deployment/{fullname}" in out

    expected = {"app.kubernetes.io/name": "trtllm-operator",
                "app.kubernetes.io/instance": release,
                "app.kubernetes.io/managed-by": "Helm"}
    namespaced = [("serviceaccount", fullname), ("deployment", fullname),
                  ("service", f"{fullname}-metrics")]
    cluster_scoped = [("clusterrole", fullname), ("clusterrolebinding", fullname)]
    for kind, name in namespaced:
        obj = get(kubectl, kind, name, "-n", namespace)
        assert expected.items() <= obj["metadata"]["labels"].items(), (kind, name)
    for kind, name in cluster_scoped:
        obj = get(kubectl, kind, name)
        assert expected.items() <= obj["metadata"]["labels"].items(), (kind, name)

    deployment = get(kubectl, "deployment", fullname, "-n", namespace)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == fullname
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    service = get(kubectl, "service", f"{fullname}-metrics", "-n", namespace)
    assert service["spec"]["selector"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    binding = get(kubectl, "clusterrolebinding", fullname)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fullname,
                                    "namespace": namespace}]

    # What the API server's RBAC authorizer grants the operator's account, anywhere.
    account = f"system:serviceaccount:{namespace}:{fullname}"
    assert can(kubectl, account, "patch", "llmengines.trtllm.dev", "default")
    assert can(kubectl, account, "patch", "llmdeployments.trtllm.dev/status", "default")
    # Only the status and the finalizer are written: the spec of a deployment never is.
    assert not can(kubectl, account, "patch", "llmdeployments.trtllm.dev", "default")
    assert can(kubectl, account, "create", "jobs.batch", "default")
    assert can(kubectl, account, "watch", "nodes")
    assert not can(kubectl, account, "delete", "llmengines.trtllm.dev", "default")
    assert not can(kubectl, account, "update", "llmengines.trtllm.dev", "default")
    assert not can(kubectl, account, "get", "secrets", "default")
    assert not can(kubectl, account, "delete", "pods", "default")

    # An upgrade changes the Deployment in place (selector unchanged) and reminds of the CRDs.
    out = helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
               "--set", "workers=8").stdout
    assert "kubectl apply --server-side" in out
    env = {e["name"]: e.get("value") for e in get(kubectl, "deployment", fullname, "-n",
                                                   namespace)["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["TRTLLM_OPERATOR_WORKERS"] == "8"

    helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout=60s")
    for kind, name in namespaced:
        wait_for(partial(gone, kubectl, kind, name, namespace), 30,
                 f"{kind}/{name} to be deleted")
    for kind, name in cluster_scoped:
        wait_for(partial(gone, kubectl, kind, name), 30, f"{kind}/{name} to be deleted")
    # Helm never deletes CRDs (and with them every user's objects).
    for crd in ("llmengines.trtllm.dev", "llmdeployments.trtllm.dev"):
        kubectl("get", "crd", crd)


def test_namespaced_install_grants_only_the_watched_namespaces(
        helm: Helm, kubectl: Kubectl, namespace: str, release: str) -> None:
    fullname = f"{release}-trtllm-operator"
    # The release's own namespace is the watched one here: the fixture makes only one.
    helm("install", release, str(CHART), "--namespace", namespace, "--skip-crds",
         "--set", f"watchNamespaces={{{namespace}}}")

    role = get(kubectl, "role", fullname, "-n", namespace)
    assert role["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    cluster_role = get(kubectl, "clusterrole", fullname)
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == \
        {"nodes"}

    account = f"system:serviceaccount:{namespace}:{fullname}"
    assert can(kubectl, account, "patch", "llmengines.trtllm.dev", namespace)
    assert can(kubectl, account, "delete", "jobs.batch", namespace)
    # A GPU type taken off spec.slices (or a switch to groups) deletes its Deployment; the
    # operator still deletes no Services and no pods.
    assert can(kubectl, account, "delete", "deployments.apps", namespace)
    assert not can(kubectl, account, "delete", "services", namespace)
    assert not can(kubectl, account, "delete", "pods", namespace)
    assert can(kubectl, account, "list", "nodes")
    assert not can(kubectl, account, "patch", "llmengines.trtllm.dev", "default")
    assert not can(kubectl, account, "create", "jobs.batch", "default")

    helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout=60s")
    wait_for(lambda: gone(kubectl, "role", fullname, namespace), 30,
             f"role/{fullname} to be deleted")
    assert gone(kubectl, "clusterrole", fullname)
