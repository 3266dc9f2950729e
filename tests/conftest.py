"""Fixtures: one cluster per test session, a fresh namespace per test.

The cluster is the project's local control plane (real etcd, kube-apiserver, controller-manager
and scheduler, kwok nodes) unless ``KUBECONFIG`` is set, in which case the same tests run
against that cluster (kind, or a real GPU cluster); tests that must add simulated nodes skip
there.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.support import wait_for
from trtllm_operator.localcluster.binaries import BinaryBuilder
from trtllm_operator.localcluster.cluster import ClusterOptions, LocalCluster
from trtllm_operator.localcluster.extcrds import CRDSource

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIRS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration or tests/e2e needs a cluster. Tests marked
    ``before_lws`` run first: LeaderWorkerSet, once installed in the session's cluster, stays,
    and they show what happens without it."""
    for item in items:
        if any(f"{os.sep}{d}{os.sep}" in str(item.path) for d in CLUSTER_DIRS):
            item.add_marker(pytest.mark.cluster)
    items.sort(key=lambda item: item.get_closest_marker("before_lws") is None)


def pytest_report_header(config: pytest.Config) -> str:
    ext = os.environ.get("KUBECONFIG")
    return f"cluster: {'KUBECONFIG=' + ext if ext else 'local control plane (kwok nodes)'}"


@dataclass
class ClusterUnderTest:
    """The cluster under test, and what the tests may do with it."""

    kubeconfig: Path
    kubectl_bin: Path
    local: LocalCluster | None

    def require_local(self) -> LocalCluster:
        if self.local is None:
            pytest.skip("needs the local simulated cluster (KUBECONFIG points elsewhere)")
        return self.local

    def add_nodes(self, gpu: str | None, count: int = 1, **kwargs: Any) -> list[str]:
        return self.require_local().add_nodes(gpu, count, **kwargs)

    def remove_nodes(self, names: list[str]) -> None:
        self.require_local().remove_nodes(names)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterUnderTest]:
    external = os.environ.get("KUBECONFIG")
    builder = BinaryBuilder()
    if external:
        yield ClusterUnderTest(Path(external), builder.ensure(["kubectl"])["kubectl"], None)
        return
    tools = builder.ensure()
    # Simulated build pods run 2 s (unless a test asks otherwise): long enough to be seen
    # Building, short enough to keep the suite fast.
    with LocalCluster(tools, ClusterOptions(job_duration_seconds=2)) as local:
        assert local.kubeconfig
        yield ClusterUnderTest(local.kubeconfig, tools["kubectl"], local)


@pytest.fixture(autouse=True)
def _cluster_alive(request: pytest.FixtureRequest) -> None:
    """Fail fast, with the component's last words, if the local control plane died."""
    if request.node.get_closest_marker("cluster") is None:
        return
    tc: ClusterUnderTest = request.getfixturevalue("cluster")
    if tc.local is not None:
        tc.local.check()


@pytest.fixture(scope="session")
def api_client(cluster: ClusterUnderTest) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (in the background) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"trtllm.dev/test": "true"}}})
    # Pods are refused until the controller-manager has made the namespace's default account.
    wait_for(lambda: core.read_namespaced_service_account("default", name), 30,
             f"the default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name)


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterUnderTest) -> Kubectl:
    """Run kubectl against the cluster under test: ``kubectl("get", "nodes")``."""

    def run(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(cluster.kubectl_bin), f"--kubeconfig={cluster.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr}{proc.stdout}")
        return proc

    return run


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> list[str]:
    """The project's CRDs, applied from crds/ and Established."""
    files = sorted((ROOT / "crds").glob("*.yaml"))
    if not files:
        pytest.skip("crds/ is empty")
    kubectl("apply", "--server-side", "--force-conflicts", *[f"-f={f}" for f in files])
    names = kubectl("get", "crd", "-o", "name").stdout.split()
    ours = [n for n in names if n.endswith(".trtllm.dev")]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *ours)
    return ours


@pytest.fixture(scope="session")
def lws(cluster: ClusterUnderTest, kubectl: Kubectl) -> str:
    """LeaderWorkerSet installed in the cluster under test; returns its CRD name.

    On the local control plane this builds the pinned manager on first use (minutes of Go
    build, cached after) and starts it beside the other components; on an external cluster
    LWS must already be installed.
    """
    crd = "leaderworkersets.leaderworkerset.x-k8s.io"
    if cluster.local is None:
        if kubectl("get", "crd", crd, check=False).returncode != 0:
            pytest.skip("LeaderWorkerSet is not installed in the cluster under test")
        return crd
    cluster.local.start_lws()
    return crd


InstallCRDs = Callable[[CRDSource], list[str]]


@pytest.fixture
def third_party_crds(cluster: ClusterUnderTest) -> Iterator[InstallCRDs]:
    """Install pinned third-party CRDs (no controller) for one test; removed after it.

    Only the local control plane supports this: on an external cluster the test is skipped,
    since deleting someone's CRDs would delete their objects.
    """
    if cluster.local is None:
        pytest.skip("third-party CRDs are installed only on the local control plane")
    local = cluster.local
    installed: list[CRDSource] = []

    def install(source: CRDSource) -> list[str]:
        installed.append(source)
        return local.install_crds(source)

    yield install
    for source in reversed(installed):
        local.remove_crds(source)
