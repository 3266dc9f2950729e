"""End-to-end fixtures: the operator running as its own process against the cluster under test
(:class:`OperatorProcess`). Its log is kept in a file and attached to a failing test's report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import ROOT, ClusterUnderTest, Kubectl
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.localcluster.cluster import static_rwx_claim
from trtllm_operator.localcluster.operator_process import OperatorProcess

ENGINES_CLAIM = "trtllm-engines"

# nvidia.com/gpu.product values of the simulated fleet, from the node catalog.
H100 = gpus.gpu_type("h100").product
L40S = gpus.gpu_type("l40s").product
A100 = gpus.gpu_type("a100").product
B200 = gpus.gpu_type("b200").product


@pytest.fixture(scope="module")
def running_operator(cluster: ClusterUnderTest, crds: list[str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # One operator per test module: it never outlives the module that asked for it, so it
    # cannot act on objects of later tests (integration tests set status by hand), and the
    # RBAC tests run their own operators alone.
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster.kubeconfig, log)
    op.start()
    yield op
    op.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """On failure, attach the operator's last log lines to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        op = item.funcargs.get("running_operator") if hasattr(item, "funcargs") else None
        if isinstance(op, OperatorProcess):
            report.sections.append(("operator log (tail)", op.tail(80)))


@pytest.fixture(scope="session")
def gpu_fleet(cluster: ClusterUnderTest) -> dict[str, list[str]]:
    """The simulated nodes e2e tests share: 2 H100 (8 GPUs), 1 L40S (4), 1 A100 (8), and 2
    CPU-only nodes (where model downloads run)."""
    return {
        "h100": cluster.add_nodes("h100", 2),
        "l40s": cluster.add_nodes("l40s", 1),
        "a100": cluster.add_nodes("a100", 1),
        "cpu": cluster.add_nodes(None, 2),
    }


@pytest.fixture
def storage(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    """A ReadWriteMany claim named trtllm-engines, bound to a static NFS PersistentVolume.

    Nothing ever mounts it (kwok runs no container), so its server is never contacted.
    """
    pv_name = f"engines-{namespace}"[:63]
    pv, pvc = static_rwx_claim(namespace, ENGINES_CLAIM, pv_name)
    core.create_persistent_volume(pv)
    core.create_namespaced_persistent_volume_claim(namespace, pvc)
    wait_for(lambda: core.read_namespaced_persistent_volume_claim(
        ENGINES_CLAIM, namespace).status.phase == "Bound", 60, "the engines claim to bind")
    yield ENGINES_CLAIM
    core.delete_persistent_volume(pv_name)


HF_TOKEN_SECRET = "hf-token"


@pytest.fixture
def hf_token(core: client.CoreV1Api, namespace: str) -> str:
    """The Secret the sample engines name in ``tokenSecretRef`` (key HF_TOKEN), as a user makes it.

    The simulated kubelet refuses to start a build pod whose token Secret is missing, as a real
    one does. The value is a placeholder: nothing ever calls Hugging Face.
    """
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": HF_TOKEN_SECRET}, "stringData": {"HF_TOKEN": "hf_placeholder"}})
    return HF_TOKEN_SECRET


def load_sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "samples" / name).read_text())
    return doc


def small_engine(name: str, targets: list[str], **build: Any) -> dict[str, Any]:
    """The 8B sample engine under another name, with the given targets and build overrides."""
    obj = load_sample("llmengine-llama-3-8b.yaml")
    obj["metadata"] = {"name": name}
    obj["spec"]["targets"] = targets
    obj["spec"]["build"].update(build)
    return obj


def own_nodes(cluster: ClusterUnderTest, **counts: int) -> str:
    """Add simulated nodes (``h100=1, l40s=1``) labelled ``test-pool`` with a fresh value, for
    this test's workloads alone to select; returns the value."""
    pool = f"p{uuid.uuid4().hex[:8]}"  # a letter first: "123e4567" would read as a number
    for gpu, count in counts.items():
        cluster.add_nodes(gpu, count, labels={"test-pool": pool})
    return pool


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


Getter = Callable[[str], dict[str, Any]]


def _getter(api_client: client.ApiClient, namespace: str, plural: str) -> Getter:
    objects = client.CustomObjectsApi(api_client)

    def get(name: str) -> dict[str, Any]:
        obj: dict[str, Any] = objects.get_namespaced_custom_object(
            "trtllm.dev", "v1alpha1", namespace, plural, name)
        return obj

    return get


@pytest.fixture
def get_engine(api_client: client.ApiClient, namespace: str) -> Getter:
    return _getter(api_client, namespace, "llmengines")


@pytest.fixture
def get_llmd(api_client: client.ApiClient, namespace: str) -> Getter:
    return _getter(api_client, namespace, "llmdeployments")


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            found: dict[str, Any] = c
            return found
    return None


def targets(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["gpu"]: t for t in (obj.get("status") or {}).get("targets") or []}


DOWNLOAD_JOBS = "app.kubernetes.io/component=model-download"
QUANTIZE_JOBS = "app.kubernetes.io/component=model-quantize"
BUILD_JOBS = "app.kubernetes.io/component=engine-build"


def jobs(api_client: client.ApiClient, namespace: str, selector: str) -> list[client.V1Job]:
    return list(client.BatchV1Api(api_client).list_namespaced_job(
        namespace, label_selector=selector).items)


PYTORCH_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"


def pytorch_engine(name: str, targets: list[str]) -> dict[str, Any]:
    """:func:`small_engine` on the PyTorch line (a 1.3.0rc21+ image), unquantized."""
    obj = small_engine(name, targets, image=PYTORCH_IMAGE)
    build = obj["spec"]["build"]
    for key in ("limits", "plugins", "extraArgs", "quantization"):
        build.pop(key, None)  # trtllm-build settings: refused on this backend
    build["dtype"] = "auto"
    return obj


CHAT_DEPLOYMENTS = {H100: "chat-h100", L40S: "chat-l40s"}


def serve_on_h100_and_l40s(kubectl: Kubectl, namespace: str, api_client: client.ApiClient,
                           get_llmd: Getter, engine: str,
                           model_paths: dict[str, str]) -> dict[str, client.V1Container]:
    """Serve ``engine`` with one LLMDeployment per GPU type (:data:`CHAT_DEPLOYMENTS`) and
    check that each is Ready on its GPU type, serving the folder ``model_paths[gpu]`` of the
    claim read-only at /model, offline. Returns each server's container, by GPU type."""
    for gpu, name in CHAT_DEPLOYMENTS.items():
        apply(kubectl, namespace, {
            "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"engineRef": {"name": engine}, "gpu": gpu, "replicas": 1}})
    containers = {}
    apps = client.AppsV1Api(api_client)
    for gpu, name in CHAT_DEPLOYMENTS.items():
        kubectl("wait", "-n", namespace, "--for=condition=Ready", f"llmdeployment/{name}",
                "--timeout=120s")
        pod = apps.read_namespaced_deployment(name, namespace).spec.template.spec
        assert pod.node_selector["nvidia.com/gpu.product"] == gpu
        container = pod.containers[0]
        assert {e.name: e.value for e in container.env or []}["HF_HUB_OFFLINE"] == "1"
        model_mount = next(m for m in container.volume_mounts if m.mount_path == "/model")
        assert model_mount.sub_path == model_paths[gpu]
        assert model_mount.read_only
        ready = condition(get_llmd(name), "Ready")
        assert ready is not None
        assert ready["status"] == "True"
        containers[gpu] = container
    return containers


T = TypeVar("T")


def read_or_none(read: Callable[[], T]) -> T | None:
    """``read()``, or None when its object is not there (404); other errors are raised."""
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def exists(read: Callable[[], object]) -> bool:
    return read_or_none(read) is not None


def settle(seconds: float = 1.0) -> None:
    """Give the operator a moment to (not) act, for assertions that something did not happen."""
    time.sleep(seconds)
