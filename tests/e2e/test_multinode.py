"""Multi-node serving end to end: an engine of world size 16 on 8-GPU H100 nodes served as
LeaderWorkerSet groups of two nodes, on the real LWS manager and webhooks; without LWS, the
LLMDeployment says what is missing and creates nothing.

Each test runs its own operator: whether LeaderWorkerSet is there is checked once at operator
start, so the operator must start after (or without) the LWS install.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.conftest import ClusterUnderTest, Kubectl
from tests.e2e.conftest import H100, Getter, apply, condition, exists, small_engine, targets
from tests.support import wait_for
from trtllm_operator import gpus, labels
from trtllm_operator.deployments import builders, multinode
from trtllm_operator.localcluster.kubelet import CRASH_ANNOTATION
from trtllm_operator.localcluster.operator_process import OperatorProcess

pytestmark = pytest.mark.usefixtures("storage", "hf_token")

LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
LWS = "wide-lws"  # the LeaderWorkerSet of LLMDeployment "wide" (multinode.lws_name)


@pytest.fixture
def operator_now(cluster: ClusterUnderTest, crds: list[str],
                 tmp_path: Path) -> Iterator[Callable[[], OperatorProcess]]:
    """Start an operator on demand (after the test has set up, or not, LWS)."""
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        op = OperatorProcess(cluster.kubeconfig, tmp_path / f"operator-{len(started)}.log")
        op.start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def _wide_engine(name: str) -> dict[str, Any]:
    # tensor 8 x pipeline 2 = 16 ranks; built on one 8-GPU node, ranks in turn.
    return small_engine(name, [H100], parallelism={"tensor": 8, "pipeline": 2}, gpus=8)


def _llmd(name: str, engine: str, replicas: int, pool: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"engineRef": {"name": engine}, "gpu": H100, "replicas": replicas}
    if pool:
        spec["nodeSelector"] = {"test-pool": pool}
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name}, "spec": spec}


def _wait_ready(kubectl: Kubectl, namespace: str, get_llmd: Getter, core: client.CoreV1Api,
                op: OperatorProcess) -> None:
    """Wait for Ready; on timeout, fail with the status, the pods and the operator's log."""
    try:
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmdeployment/wide",
                "--timeout=240s", timeout=250)
    except AssertionError:
        pods = [(p.metadata.name, p.status.phase, p.spec.node_name,
                 [(c.type, c.status, c.message) for c in p.status.conditions or []])
                for p in core.list_namespaced_pod(namespace).items]
        raise AssertionError(f"status: {get_llmd('wide').get('status')}\npods: {pods}\n"
                             f"{op.tail(40)}") from None


@pytest.mark.before_lws
def test_without_lws_a_multi_node_spec_says_lws_is_required(
        kubectl: Kubectl, namespace: str, get_llmd: Getter, api_client: client.ApiClient,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    if kubectl("get", "crd", LWS_CRD, check=False).returncode == 0:
        pytest.skip("LeaderWorkerSet was installed earlier in this session")
    operator_now()
    apply(kubectl, namespace, _wide_engine("wide"))
    apply(kubectl, namespace, _llmd("wide", "wide", 1))
    # A one-node deployment beside it still serves.
    apply(kubectl, namespace, small_engine("narrow", [H100]))
    apply(kubectl, namespace, _llmd("narrow", "narrow", 1))

    def required() -> dict[str, Any] | None:
        c = condition(get_llmd("wide"), "Ready")
        return c if c and c["reason"] == "LeaderWorkerSetRequired" else None

    ready = wait_for(required, 120, "Ready=False LeaderWorkerSetRequired")
    assert ready["status"] == "False"
    assert "span 2 NVIDIA-H100-80GB-HBM3 nodes of 8 GPUs" in ready["message"]
    assert "install LeaderWorkerSet" in ready["message"]
    with pytest.raises(ApiException) as missing:
        client.AppsV1Api(api_client).read_namespaced_deployment("wide", namespace)
    assert missing.value.status == 404
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmdeployment/narrow",
            "--timeout=120s", timeout=130)


@pytest.fixture
def h100_pool(cluster: ClusterUnderTest) -> Iterator[str]:
    """Four 8-GPU H100 nodes only this test's serving pods select; removed after."""
    pool = f"p{uuid.uuid4().hex[:8]}"  # a letter first: "02923046" would read as a number
    names = cluster.add_nodes("h100", 4, labels={"test-pool": pool})
    yield pool
    cluster.remove_nodes(names)


def test_tp16_on_8_gpu_nodes_serves_as_two_node_groups(
        lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient, h100_pool: str,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    op = operator_now()
    apply(kubectl, namespace, _wide_engine("wide"))
    apply(kubectl, namespace, _llmd("wide", "wide", 2, h100_pool))
    _wait_ready(kubectl, namespace, get_llmd, core, op)

    status = get_llmd("wide")["status"]
    assert status["readyReplicas"] == 2  # groups
    assert status["replicaSummary"] == "2/2"
    assert status["gpu"] == H100

    objects = client.CustomObjectsApi(api_client)
    lws_obj = objects.get_namespaced_custom_object(
        multinode.LWS_GROUP, multinode.LWS_VERSION, namespace, multinode.LWS_PLURAL, LWS)
    assert lws_obj["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws_obj["status"]["readyReplicas"] == 2

    pods = core.list_namespaced_pod(
        namespace, label_selector=f"{multinode.LWS_NAME_LABEL}={LWS}").items
    assert len(pods) == 4  # 2 groups x (leader + worker)
    assert len({p.spec.node_name for p in pods}) == 4  # every pod on its own node
    for pod in pods:
        assert pod.status.phase == "Running"
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels[gpus.PRODUCT_LABEL] == H100
        assert node.metadata.labels["test-pool"] == h100_pool
        assert pod.spec.containers[0].resources.limits[gpus.GPU_RESOURCE] == "8"
    leaders = [p for p in pods if p.metadata.labels[multinode.LWS_WORKER_INDEX_LABEL] == "0"]
    assert len(leaders) == 2
    script = leaders[0].spec.containers[0].command[2]
    assert "trtllm-llmapi-launch trtllm-serve /engine" in script
    assert "-np 16" in script
    # The LWS webhook gave every pod its group's leader address.
    env = {e.name: e.value for e in leaders[0].spec.containers[0].env or []}
    group = leaders[0].metadata.labels["leaderworkerset.sigs.k8s.io/group-index"]
    assert env["LWS_LEADER_ADDRESS"] == f"{LWS}-{group}.{LWS}.{namespace}"

    svc = core.read_namespaced_service("wide", namespace)
    assert svc.spec.selector[multinode.LWS_WORKER_INDEX_LABEL] == "0"
    assert svc.spec.cluster_ip != "None"  # the endpoint: leaders behind one virtual IP
    assert [o.kind for o in svc.metadata.owner_references] == ["LLMDeployment"]
    # LWS's own headless Service (the pods' stable DNS names) beside it, not in its place.
    headless = core.read_namespaced_service(LWS, namespace)
    assert headless.spec.cluster_ip == "None"
    assert [o.kind for o in headless.metadata.owner_references] == ["LeaderWorkerSet"]
    secret_names = [s.metadata.name for s in core.list_namespaced_secret(namespace).items]
    assert "wide-mpi-ssh" in secret_names


def _group_pods(core: client.CoreV1Api, namespace: str) -> dict[str, Any]:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"{multinode.LWS_NAME_LABEL}={LWS}").items
    return {p.metadata.labels[multinode.LWS_WORKER_INDEX_LABEL]: p for p in pods
            if p.metadata.deletion_timestamp is None}


@pytest.mark.parametrize("loss", ["deleted", "crashed"])
def test_a_lost_worker_restarts_its_whole_group(
        loss: str, lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient, h100_pool: str,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    op = operator_now()
    apply(kubectl, namespace, _wide_engine("wide"))
    apply(kubectl, namespace, _llmd("wide", "wide", 1, h100_pool))
    _wait_ready(kubectl, namespace, get_llmd, core, op)

    before = _group_pods(core, namespace)
    leader_uid = before["0"].metadata.uid
    worker = before["1"].metadata.name
    with StatusWatch(api_client, namespace, "wide") as statuses:
        if loss == "deleted":  # evicted, drained, or removed by hand
            core.delete_namespaced_pod(worker, namespace)
        else:  # its rank's process dies: the container restarts in the same pod
            core.patch_namespaced_pod(
                worker, namespace, {"metadata": {"annotations": {CRASH_ANNOTATION: "1"}}})

        # RecreateGroupOnPodRestart: the leader goes too, and the group comes back whole.
        wait_for(lambda: (p := _group_pods(core, namespace).get("0")) is not None
                 and p.metadata.uid != leader_uid, 120, "the group's leader to be recreated")
        _wait_ready(kubectl, namespace, get_llmd, core, op)
    # Status said so while it happened: no group ready, Ready=False.
    down = [s for s in statuses.seen if s.get("readyReplicas", 0) == 0]
    assert down, f"no status showed the group down: {statuses.seen}"
    ready = condition({"status": down[0]}, "Ready")
    assert ready is not None, down[0]
    assert ready["status"] == "False", down[0]
    wait_for(lambda: len(pods := _group_pods(core, namespace)) == 2
             and all(p.status.phase == "Running" and p.metadata.uid != before[i].metadata.uid
                     for i, p in pods.items()),
             120, "the recreated group Running, both pods new")
    wait_for(lambda: get_llmd("wide")["status"].get("readyReplicas") == 1, 120,
             "the LLMDeployment to count the recreated group ready")


def _filler(name: str, node: str, gpus_held: int) -> dict[str, Any]:
    """Someone else's pod holding ``gpus_held`` GPUs of ``node``."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "nodeName": node,
        "tolerations": [{"key": gpus.GPU_TAINT_KEY, "operator": "Exists"}],
        "containers": [{"name": "c", "image": "example.com/other:1", "resources": {
            "limits": {gpus.GPU_RESOURCE: str(gpus_held)}}}]}}


def test_a_group_the_fleet_cannot_hold_waits_as_group_pending_while_the_others_serve(
        lws: str, cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str,
        get_llmd: Getter, core: client.CoreV1Api, h100_pool: str,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    # Two more pool nodes, half of each held by someone else: 8 free GPUs in all, but no whole
    # free node for a pod of the group.
    extra = cluster.add_nodes("h100", 2, labels={"test-pool": h100_pool})
    try:
        for i, node in enumerate(extra):
            apply(kubectl, namespace, _filler(f"other-{i}", node, 4))
        op = operator_now()
        apply(kubectl, namespace, _wide_engine("wide"))
        apply(kubectl, namespace, _llmd("wide", "wide", 2, h100_pool))
        _wait_ready(kubectl, namespace, get_llmd, core, op)
        _group_pending_then_placed(kubectl, namespace, get_llmd, core, op)
    finally:
        cluster.remove_nodes(extra)


def _group_pending_then_placed(kubectl: Kubectl, namespace: str, get_llmd: Getter,
                               core: client.CoreV1Api, op: OperatorProcess) -> None:
    kubectl("patch", "-n", namespace, "llmdeployment/wide", "--type=merge",
            "-p", '{"spec": {"replicas": 3}}')

    def reason(expected: str, then: Callable[[dict[str, Any]], bool] = lambda _: True,
               ) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            c = condition(get_llmd("wide"), "Ready")
            return c if c and c["reason"] == expected and then(c) else None
        return check

    ready = wait_for(reason("GroupPending"), 120, "Ready=False GroupPending")
    assert ready["status"] == "False"
    assert ready["message"].startswith("group 2 cannot be placed whole: 0/")
    assert "nodes are available" in ready["message"]  # the scheduler's own words
    # 4 + 4 free GPUs are no whole free node of 8.
    assert f"the operator sees 0 {H100} node(s) with 8 free GPUs" in ready["message"]
    assert "2/3 groups ready and serving" in ready["message"]
    status = get_llmd("wide")["status"]
    assert status["readyReplicas"] == 2
    assert status["replicaSummary"] == "2/3"

    def group_pods(g: str) -> list[Any]:
        return [p for p in core.list_namespaced_pod(
            namespace, label_selector=f"{multinode.LWS_NAME_LABEL}={LWS}").items
            if p.metadata.labels[multinode.LWS_GROUP_INDEX_LABEL] == g]

    # The two whole groups still serve: their leaders stay Ready behind the Service.
    for g in ("0", "1"):
        assert all(p.status.phase == "Running" for p in group_pods(g))
    endpoints = core.read_namespaced_endpoints("wide", namespace)
    addresses = [a for s in endpoints.subsets or [] for a in s.addresses or []]
    assert len(addresses) == 2

    # One node freed: one pod of group 2 is placed, the other still cannot be. A half-placed
    # group is not progress: still GroupPending, still 2 groups ready.
    core.delete_namespaced_pod("other-0", namespace, grace_period_seconds=0)
    wait_for(lambda: sorted(bool(p.spec.node_name) for p in group_pods("2")) == [False, True],
             120, "group 2 half placed")
    wait_for(reason("GroupPending", lambda c: "the operator sees 0" in c["message"]), 120,
             "GroupPending with the half-placed group")
    assert get_llmd("wide")["status"]["readyReplicas"] == 2

    # The second node freed: the group is whole, and counted.
    core.delete_namespaced_pod("other-1", namespace, grace_period_seconds=0)
    _wait_ready(kubectl, namespace, get_llmd, core, op)
    status = get_llmd("wide")["status"]
    assert (status["readyReplicas"], status["replicaSummary"]) == (3, "3/3")


class _Watch:
    """``list_fn`` watched on a thread from a resource version on, until stopped: ``take``
    gets each event and returns its resource version, where the next stream resumes (no
    event is missed between streams)."""

    def __init__(self, take: Callable[[dict[str, Any]], str], list_fn: Callable[..., Any],
                 *args: Any, **kwargs: Any) -> None:
        self._take, self._list, self._args, self._kwargs = take, list_fn, args, kwargs
        self._version = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, version: str) -> None:
        self._version = version
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        w = watch.Watch()
        while not self._stop.is_set():
            for ev in w.stream(self._list, *self._args, resource_version=self._version,
                               timeout_seconds=2, **self._kwargs):
                self._version = self._take(ev)
                if self._stop.is_set():
                    break


class StatusWatch:
    """Every status an LLMDeployment had, from a watch (a brief dip is not missed)."""

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str) -> None:
        self.objects = client.CustomObjectsApi(api_client)
        self.namespace, self.name = namespace, name
        self.seen: list[dict[str, Any]] = []
        self._watch = _Watch(self._take, self.objects.list_namespaced_custom_object,
                             "trtllm.dev", "v1alpha1", namespace, "llmdeployments",
                             field_selector=f"metadata.name={name}")

    def __enter__(self) -> StatusWatch:
        self._watch.start(self.objects.get_namespaced_custom_object(
            "trtllm.dev", "v1alpha1", self.namespace, "llmdeployments",
            self.name)["metadata"]["resourceVersion"])
        return self

    def __exit__(self, *_: object) -> None:
        self._watch.stop()

    def _take(self, event: dict[str, Any]) -> str:
        self.seen.append(event["object"].get("status") or {})
        return str(event["object"]["metadata"]["resourceVersion"])


class PodWatch:
    """Every change to the pods a selector matches, from a watch (no sampling gaps):
    ``record`` sees the live pods (terminating ones included: they hold GPUs) after each."""

    def __init__(self, core: client.CoreV1Api, namespace: str, selector: str) -> None:
        self.core, self.namespace, self.selector = core, namespace, selector
        self.pods: dict[str, Any] = {}
        self.events = 0
        self._watch = _Watch(self._take, core.list_namespaced_pod, namespace,
                             label_selector=selector)

    def record(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> PodWatch:
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        self.pods = {p.metadata.name: p for p in listed.items}
        self.record()
        self._watch.start(listed.metadata.resource_version)
        return self

    def __exit__(self, *_: object) -> None:
        self._watch.stop()

    def _take(self, event: dict[str, Any]) -> str:
        pod = event["object"]
        if event["type"] == "DELETED":
            self.pods.pop(pod.metadata.name, None)
        else:
            self.pods[pod.metadata.name] = pod
        self.events += 1
        self.record()
        return str(pod.metadata.resource_version)


def _shapes(pods: Iterable[Any]) -> frozenset[str]:
    """The shapes with pods: "group" (LWS) and "single" (Deployment)."""
    return frozenset("group" if multinode.LWS_GROUP_INDEX_LABEL in p.metadata.labels
                     else "single" for p in pods)


def _ready_pod(p: Any) -> bool:
    return p.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


class GroupWatch(PodWatch):
    """After each pod event of one LWS: how many of the ``groups`` are whole (every pod
    present, Ready, not terminating) and on which engine fingerprints."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str, groups: int,
                 size: int) -> None:
        self.groups, self.size = groups, size
        self.most_down = 0
        self.whole_on: list[set[str]] = []
        """After each event: the fingerprints of the whole groups."""
        super().__init__(core, namespace, f"{multinode.LWS_NAME_LABEL}={name}")

    def record(self) -> None:
        by_group: dict[str, list[Any]] = {}
        for p in self.pods.values():
            by_group.setdefault(p.metadata.labels[multinode.LWS_GROUP_INDEX_LABEL], []).append(p)
        whole = {g: ps for g, ps in by_group.items()
                 if len(ps) == self.size and all(_ready_pod(p) for p in ps)}
        self.most_down = max(self.most_down, self.groups - len(whole))
        self.whole_on.append({ps[0].metadata.annotations[builders.FINGERPRINT_ANNOTATION]
                              for ps in whole.values()})


def test_a_rebuild_rolls_group_by_group_once_the_new_engine_is_built(
        lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter, get_engine: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient, h100_pool: str,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    op = operator_now()
    engine = _wide_engine("wide")
    apply(kubectl, namespace, engine)
    apply(kubectl, namespace, _llmd("wide", "wide", 2, h100_pool))
    _wait_ready(kubectl, namespace, get_llmd, core, op)
    old_fp = get_llmd("wide")["status"]["engineFingerprint"]
    objects = client.CustomObjectsApi(api_client)

    def lws_fingerprint() -> str:
        obj = objects.get_namespaced_custom_object(
            multinode.LWS_GROUP, multinode.LWS_VERSION, namespace, multinode.LWS_PLURAL, LWS)
        leader = obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        return str(leader["metadata"]["annotations"][builders.FINGERPRINT_ANNOTATION])

    rebuilt = copy.deepcopy(engine)
    rebuilt["spec"]["build"]["limits"]["maxBatchSize"] = 32
    groups = GroupWatch(core, namespace, LWS, groups=2, size=2)
    with groups:
        apply(kubectl, namespace, rebuilt)
        polls = 0

        def built_and_lws_kept_until_then() -> str | None:
            nonlocal polls
            # The LWS read first: if the engine is not Built after it, it was not before.
            served = lws_fingerprint()
            t = targets(get_engine("wide")).get(H100) or {}
            if t.get("state") == "Built" and t.get("fingerprint") not in (None, old_fp):
                return str(t["fingerprint"])
            assert served == old_fp, f"LWS changed before the engine was Built: {t}"
            polls += 1
            return None

        new_fp = wait_for(built_and_lws_kept_until_then, 240, "the rebuilt engine Built")
        wait_for(lambda: get_llmd("wide")["status"].get("engineFingerprint") == new_fp, 120,
                 "the groups to move to the rebuilt engine")
        _wait_ready(kubectl, namespace, get_llmd, core, op)
        wait_for(lambda: groups.whole_on[-1] == {new_fp}, 60,
                 "both groups whole on the new engine in the pod watch")
    assert lws_fingerprint() == new_fp
    assert polls >= 1  # the engine was seen not Built yet, with the LWS on the old one
    assert groups.events > 8  # the roll was watched: two groups of two pods replaced
    # Never more than one group down (maxUnavailable 1, maxSurge 0), at any event.
    assert groups.most_down == 1
    # Group by group: a moment with one whole group on each engine.
    assert any(fps == {old_fp, new_fp} for fps in groups.whole_on)
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"{multinode.LWS_NAME_LABEL}={LWS}").items
    assert {p.metadata.annotations[builders.FINGERPRINT_ANNOTATION] for p in pods} == {new_fp}


class ShapeWatch(PodWatch):
    """After each pod event of one LLMDeployment: which shapes have pods (terminating ones
    included, as they still hold GPUs): "group" (LWS) and "single" (Deployment)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str) -> None:
        self.seen: list[frozenset[str]] = []
        super().__init__(core, namespace, f"{labels.DEPLOYMENT}={name}")

    def record(self) -> None:
        self.seen.append(_shapes(self.pods.values()))


def _rebuilt(engine: dict[str, Any], pipeline: int) -> dict[str, Any]:
    out = copy.deepcopy(engine)
    out["spec"]["build"]["parallelism"] = {"tensor": 8, "pipeline": pipeline}
    return out


def test_an_engine_rebuilt_wider_moves_from_a_deployment_to_groups_and_back(
        lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient, h100_pool: str,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    op = operator_now()
    apps = client.AppsV1Api(api_client)
    objects = client.CustomObjectsApi(api_client)

    def workloads() -> tuple[bool, bool]:
        """(Deployment exists, LWS exists)."""
        return (exists(lambda: apps.read_namespaced_deployment("wide", namespace)),
                exists(lambda: objects.get_namespaced_custom_object(
                    multinode.LWS_GROUP, multinode.LWS_VERSION, namespace,
                    multinode.LWS_PLURAL, LWS)))

    engine = small_engine("wide", [H100], parallelism={"tensor": 8, "pipeline": 1}, gpus=8)
    apply(kubectl, namespace, engine)
    apply(kubectl, namespace, _llmd("wide", "wide", 2, h100_pool))
    _wait_ready(kubectl, namespace, get_llmd, core, op)
    assert workloads() == (True, False)
    one_node_fp = get_llmd("wide")["status"]["engineFingerprint"]

    def switch_to(pipeline: int, shape: str, expected: tuple[bool, bool]) -> None:
        before = get_llmd("wide")["status"]["engineFingerprint"]
        shapes = ShapeWatch(core, namespace, "wide")
        with shapes:
            apply(kubectl, namespace, _rebuilt(engine, pipeline))
            wait_for(lambda: get_llmd("wide")["status"].get("engineFingerprint")
                     not in (None, before), 240, f"the deployment on the {shape} shape")
            _wait_ready(kubectl, namespace, get_llmd, core, op)
            wait_for(lambda: workloads() == expected, 60, f"only the {shape} workload left")
            wait_for(lambda: shapes.seen[-1] == {shape}, 60, f"only {shape} pods left")
        # Default strategy (maxSurge 0): the two shapes never held pods at the same time.
        assert not [s for s in shapes.seen if len(s) > 1], shapes.seen
        assert shapes.seen[0] == {"single" if shape == "group" else "group"}
        status = get_llmd("wide")["status"]
        assert (status["readyReplicas"], status["replicaSummary"]) == (2, "2/2")
        pods = core.list_namespaced_pod(namespace, label_selector=f"{labels.DEPLOYMENT}=wide")
        assert len(pods.items) == (4 if shape == "group" else 2)

    switch_to(2, "group", (False, True))
    switch_to(1, "single", (True, False))
    reasons = [(e.type, e.message) for e in core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=wide,reason=ShapeSwitching").items]
    # Status said so each way, as a Normal Event (a planned change, not a fault).
    for old_kind in ("Deployment", "LeaderWorkerSet"):
        assert any(t == "Normal" and f"replacing the {old_kind}" in m for t, m in reasons), \
            reasons
    # Back on the one-node shape: the same engine settings give the same fingerprint.
    assert get_llmd("wide")["status"]["engineFingerprint"] == one_node_fp


class ServingWatch(PodWatch):
    """After each pod event of one LLMDeployment: the shapes with pods, and whether a replica
    serves (a Ready one-node pod, or a group whose two pods are both Ready)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str) -> None:
        self.seen: list[tuple[frozenset[str], bool]] = []
        self.detail: list[Any] = []
        super().__init__(core, namespace, f"{labels.DEPLOYMENT}={name}")

    def record(self) -> None:
        pods = list(self.pods.values())
        shapes = _shapes(pods)
        single = any(_ready_pod(p) for p in pods
                     if multinode.LWS_GROUP_INDEX_LABEL not in p.metadata.labels)
        leaders = [p for p in pods if p.metadata.labels.get(
            multinode.LWS_WORKER_INDEX_LABEL) == "0" and _ready_pod(p)]
        workers = [p for p in pods if p.metadata.labels.get(
            multinode.LWS_WORKER_INDEX_LABEL) == "1" and _ready_pod(p)]
        whole = {p.metadata.labels[multinode.LWS_GROUP_INDEX_LABEL] for p in leaders} & {
            p.metadata.labels[multinode.LWS_GROUP_INDEX_LABEL] for p in workers}
        self.seen.append((shapes, single or bool(whole)))
        self.detail.append(sorted((p.metadata.name, p.metadata.uid[:4], _ready_pod(p))
                                  for p in pods))


def test_with_max_surge_the_groups_start_beside_the_deployment_with_no_outage(
        lws: str, kubectl: Kubectl, namespace: str, get_llmd: Getter,
        core: client.CoreV1Api, api_client: client.ApiClient, h100_pool: str,
        gpu_fleet: dict[str, list[str]], operator_now: Callable[[], OperatorProcess]) -> None:
    op = operator_now()
    engine = small_engine("wide", [H100], parallelism={"tensor": 8, "pipeline": 1}, gpus=8)
    apply(kubectl, namespace, engine)
    llmd = _llmd("wide", "wide", 1, h100_pool)
    llmd["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
    apply(kubectl, namespace, llmd)
    _wait_ready(kubectl, namespace, get_llmd, core, op)
    before = get_llmd("wide")["status"]["engineFingerprint"]

    watch_pods = ServingWatch(core, namespace, "wide")
    with watch_pods:
        apply(kubectl, namespace, _rebuilt(engine, 2))

        wait_for(lambda: get_llmd("wide")["status"].get("engineFingerprint")
                 not in (None, before), 240, "the deployment on the groups")
        _wait_ready(kubectl, namespace, get_llmd, core, op)
        wait_for(lambda: watch_pods.seen[-1][0] == {"group"}, 120, "only group pods left")
    # Status said so (an Event: the switch can be over in seconds on simulated nodes).
    messages = [e.message for e in core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=wide,reason=ShapeSwitching").items]
    assert any("the LeaderWorkerSet starts beside it (spec.strategy maxSurge)" in m
               for m in messages), messages
    # Surge: both shapes had pods at once, and at no event was nothing serving.
    assert any(shapes == {"single", "group"} for shapes, _ in watch_pods.seen)
    outages = [i for i, (_, serving) in enumerate(watch_pods.seen) if not serving]
    assert not outages, f"nothing served at events {outages}: " + str(
        watch_pods.detail[8:])
    svc = core.read_namespaced_service("wide", namespace)
    assert svc.spec.selector[multinode.LWS_WORKER_INDEX_LABEL] == "0"
    with pytest.raises(ApiException) as gone:
        client.AppsV1Api(api_client).read_namespaced_deployment("wide", namespace)
    assert gone.value.status == 404
