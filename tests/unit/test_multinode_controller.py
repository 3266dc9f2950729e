"""The deployment controller's multi-node path: LeaderWorkerSet required, applied, observed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.unit.test_deployment_controller import H100, KEY, FakeView, FakeWriter
from trtllm_operator.deployments import multinode
from trtllm_operator.deployments.controller import DeploymentController, ssh_key_pair
from trtllm_operator.pods import PodFact


def _wide(view: FakeView, tensor: int = 8, pipeline: int = 2) -> FakeView:
    view.engine_body["spec"]["build"]["parallelism"] = {"tensor": tensor, "pipeline": pipeline}
    view.engine_body["spec"]["build"]["gpus"] = 8
    return view


def _reconcile(view: FakeView, lws: str) -> tuple[FakeWriter, dict[str, Any]]:
    writer = FakeWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      clock=lambda: datetime(2026, 12, 5, tzinfo=UTC), lws=lws)
    asyncio.run(controller.reconcile(KEY))
    return writer, writer.status_patches[-1]


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_without_lws_a_multi_node_engine_is_refused_and_nothing_is_written() -> None:
    writer, status = _reconcile(_wide(FakeView()), "missing")
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "LeaderWorkerSetRequired")
    assert "span 2 NVIDIA-H100-80GB-HBM3 nodes of 8 GPUs" in ready["message"]
    assert "install LeaderWorkerSet" in ready["message"]
    assert writer.applied == []
    assert writer.created == []


def test_lws_forbidden_by_rbac_says_how_to_enable_it() -> None:
    _, status = _reconcile(_wide(FakeView()), "forbidden")
    assert "leaderWorkerSet.enabled=true" in _ready(status)["message"]


def test_a_forbidden_lws_check_quotes_the_api_servers_refusal() -> None:
    refusal = ('leaderworkersets.leaderworkerset.x-k8s.io is forbidden: User '
               '"system:serviceaccount:ops:op" cannot list resource "leaderworkersets"')
    writer = FakeWriter()
    controller = DeploymentController(view=_wide(FakeView()), writer=writer,
                                      events=lambda *_: None, lws="forbidden",
                                      lws_refusal=refusal)
    asyncio.run(controller.reconcile(KEY))
    message = _ready(writer.status_patches[-1])["message"]
    assert message.endswith(f"restart the operator (the API server said: {refusal})")


def test_single_node_serving_is_unaffected_without_lws() -> None:
    writer, _ = _reconcile(FakeView(), "missing")
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "Deployment", "Service"]


def test_with_lws_a_group_set_a_leaders_service_and_one_ssh_secret() -> None:
    writer, status = _reconcile(_wide(FakeView()), "installed")
    assert [m["kind"] for m in writer.applied] == ["ConfigMap", "LeaderWorkerSet", "Service"]
    assert [m["kind"] for m in writer.created] == ["Secret"]
    lws = writer.applied[1]
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert writer.applied[2]["spec"]["selector"][multinode.LWS_WORKER_INDEX_LABEL] == "0"
    assert _ready(status)["reason"] == "RollingOut"


def test_an_existing_group_set_gets_no_new_secret_and_its_groups_make_ready() -> None:
    view = _wide(FakeView())
    view.group_set = multinode.group_status({"metadata": {"generation": 1}, "status": {
        "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "AllGroupsReady",
                        "message": "All replicas are ready"}]}})

    class GroupWriter(FakeWriter):
        async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
            self.applied.append(manifest)
            return {**manifest, "metadata": {"generation": 1}, "status": {
                "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                "observedGeneration": 1}}

    writer = GroupWriter()
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      lws="installed")
    asyncio.run(controller.reconcile(KEY))
    assert writer.created == []
    ready = _ready(writer.status_patches[-1])
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True", "Ready", "1/1 replicas ready")


def test_an_uneven_world_is_refused_before_lws_is_asked_for() -> None:
    _, status = _reconcile(_wide(FakeView(), tensor=9, pipeline=1), "missing")
    assert _ready(status)["reason"] == "MultiNodeShapeUneven"


def test_too_few_nodes_for_one_group_is_a_preflight_error() -> None:
    _, status = _reconcile(_wide(FakeView(), tensor=8, pipeline=3), "installed")
    ready = _ready(status)
    # 24 GPUs = 3 nodes of 8; the fake cluster has two 8-GPU H100 nodes.
    assert (ready["status"], ready["reason"]) == ("False", "GroupNodesInsufficient")
    assert "has 2 NVIDIA-H100-80GB-HBM3 node(s) with 8 GPUs" in ready["message"]


def test_ssh_key_pair_is_openssh() -> None:
    private, public = ssh_key_pair()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 ")


SCHEDULER_SAYS = ("0/6 nodes are available: 4 Insufficient nvidia.com/gpu, 2 node(s) didn't "
                  "match pod anti-affinity rules.")


class GroupsWriter(FakeWriter):
    """Answers the LWS apply as LWS would report ``ready`` of ``replicas`` groups."""

    def __init__(self, replicas: int, ready: int) -> None:
        super().__init__()
        self.replicas, self.ready = replicas, ready

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        return {**manifest, "metadata": {"generation": 2}, "status": {
            "replicas": self.replicas, "readyReplicas": self.ready,
            "updatedReplicas": self.replicas, "observedGeneration": 2}}


def _scaled_to_three(pods: list[PodFact]) -> dict[str, Any]:
    view = _wide(FakeView())
    view.body["spec"]["replicas"] = 3
    view.pods = pods
    view.group_set = {"kind": "LeaderWorkerSet"}
    # Four nodes hold the two groups; of the other two, one has 4 GPUs taken by someone else.
    view.free = {"n0": 0, "n1": 0, "n2": 0, "n3": 0, "n4": 4, "n5": 8}
    writer = GroupsWriter(replicas=3, ready=2)
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      lws="installed")
    asyncio.run(controller.reconcile(KEY))
    return writer.status_patches[-1]


def _group_pods(*, worker_pending: bool) -> list[PodFact]:
    pods = [PodFact(f"server-{g}", phase="Running", group=str(g)) for g in (0, 1)]
    pods += [PodFact(f"server-{g}-1", phase="Running", group=str(g)) for g in (0, 1)]
    if worker_pending:  # half placed: the leader runs, its worker does not fit
        pods += [PodFact("server-2", phase="Running", group="2"),
                 PodFact("server-2-1", phase="Pending", unschedulable=SCHEDULER_SAYS,
                         group="2")]
    else:
        pods += [PodFact("server-2", phase="Pending", unschedulable=SCHEDULER_SAYS,
                         group="2")]
    return pods


def test_a_group_the_fleet_cannot_hold_is_group_pending_with_the_schedulers_message() -> None:
    status = _scaled_to_three(_group_pods(worker_pending=False))
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "GroupPending")
    assert ready["message"].startswith("group 2 cannot be placed whole: " + SCHEDULER_SAYS)
    assert "2/3 groups ready and serving" in ready["message"]
    # Whole free nodes, not free GPUs: 12 GPUs are free, but on one whole node of 8.
    assert (f"the operator sees 1 {H100} node(s) with 8 free GPUs that the pods may use, a "
            f"group needs 2" in ready["message"])
    assert (status["readyReplicas"], status["replicaSummary"]) == (2, "2/3")


def test_a_half_placed_group_is_not_counted_and_still_pending() -> None:
    status = _scaled_to_three(_group_pods(worker_pending=True))
    ready = _ready(status)
    assert ready["reason"] == "GroupPending"
    assert "its placed pods keep their nodes until the rest fit" in ready["message"]
    assert status["readyReplicas"] == 2


def test_pending_groups_names_each_group_once_in_order() -> None:
    pods = [PodFact("w-10", unschedulable="a", group="10"),
            PodFact("w-2-1", unschedulable="b", group="2"),
            PodFact("w-2", unschedulable="c", group="2"),
            PodFact("w-1", phase="Running", group="1")]
    pending = multinode.pending_groups(pods)
    assert pending == {"2": "c", "10": "a"}
    msg = multinode.group_pending_message(pending, 1, 3, "H100")
    assert msg.startswith("groups 2, 10 cannot be placed whole: c;")
    assert "free or add H100 nodes" in msg


class SwitchWriter(GroupsWriter):
    def __init__(self, replicas: int, ready: int) -> None:
        super().__init__(replicas, ready)
        self.deleted: list[tuple[str, str]] = []

    async def delete(self, resource: Any, namespace: str, name: str) -> bool:
        self.deleted.append((resource.__name__, name))
        return True


def _switch(view: FakeView, ready: int = 0) -> tuple[SwitchWriter, dict[str, Any]]:
    writer = SwitchWriter(replicas=1, ready=ready)
    controller = DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                      lws="installed")
    asyncio.run(controller.reconcile(KEY))
    return writer, writer.status_patches[-1]


def _serving_one_node(view: FakeView) -> FakeView:
    """A fleet served by a one-node Deployment, its engine now rebuilt 16 wide."""
    view.dep = {"kind": "Deployment", "metadata": {"generation": 1},
                "status": {"replicas": 1, "readyReplicas": 1}}
    view.pods = [PodFact("server-7c9-abcde", phase="Running")]
    return _wide(view)


def test_without_surge_the_old_deployment_goes_first_and_its_pods_are_awaited() -> None:
    writer, status = _switch(_serving_one_node(FakeView()))
    assert writer.deleted == [("Deployment", "server")]
    assert _kinds(writer) == []  # no LWS while old pods hold GPUs
    assert writer.created == []
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "ShapeSwitching")
    assert "replacing the Deployment" in ready["message"]
    assert "its 1 pod(s) stop first" in ready["message"]


def test_pods_outliving_their_deleted_deployment_still_hold_the_switch() -> None:
    view = _serving_one_node(FakeView())
    view.dep = None  # deleted; its pod terminates
    writer, status = _switch(view)
    assert writer.deleted == []
    assert _kinds(writer) == []
    assert _ready(status)["reason"] == "ShapeSwitching"


def test_without_surge_the_group_set_starts_once_the_old_pods_are_gone() -> None:
    view = _serving_one_node(FakeView())
    view.pods = []
    writer, status = _switch(view)
    assert _kinds(writer) == ["LeaderWorkerSet", "Service"]
    service = next(m for m in writer.applied if m["kind"] == "Service")
    assert service["spec"]["selector"][multinode.LWS_WORKER_INDEX_LABEL] == "0"
    assert _ready(status)["reason"] == "RollingOut"


def test_with_surge_the_group_set_starts_beside_the_deployment_which_serves_until_ready(
        ) -> None:
    view = _serving_one_node(FakeView())
    view.body["spec"]["strategy"] = {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": 1}}
    writer, status = _switch(view)
    assert writer.deleted == []
    assert _kinds(writer) == ["LeaderWorkerSet"]  # Service kept as is
    assert "serves until 1 new replica(s) are ready (0 now)" in _ready(status)["message"]

    view.group_set = multinode.group_status({"metadata": {"generation": 2}, "status": {
        "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 2}})
    writer, status = _switch(view, ready=1)
    assert writer.deleted == [("Deployment", "server")]
    assert _kinds(writer) == ["LeaderWorkerSet", "Service"]


def test_back_to_one_node_the_group_set_goes_first() -> None:
    view = FakeView()  # a one-node engine again
    view.group_set = multinode.group_status({"metadata": {"generation": 1}, "status": {
        "replicas": 1, "readyReplicas": 1}})
    view.pods = [PodFact("server-0", phase="Running", group="0"),
                 PodFact("server-0-1", phase="Running", group="0")]
    writer, status = _switch(view)
    assert writer.deleted == [("LeaderWorkerSet", "server-lws")]
    assert _kinds(writer) == []
    assert "its 2 pod(s) stop first" in _ready(status)["message"]
    view.pods = []
    writer, _ = _switch(view)
    assert _kinds(writer) == ["Deployment", "Service"]


def test_an_engine_status_older_than_its_spec_changes_nothing_yet() -> None:
    # The spec was just rebuilt 16 wide; the status still lists the one-node engine as Built.
    view = _serving_one_node(FakeView())
    view.engine_body["metadata"]["generation"] = 2
    view.engine_body["status"]["observedGeneration"] = 1
    writer, _ = _switch(view)
    assert writer.applied == []
    assert writer.deleted == []
    assert writer.created == []


def _kinds(writer: Any) -> list[str]:
    """Kinds applied, the options ConfigMap aside (written before any workload decision)."""
    return [m["kind"] for m in writer.applied if m["kind"] != "ConfigMap"]
