"""Pure builders for multi-node serving: an engine whose world size (tensor x pipeline) is more
than one node of its GPU type has runs as LeaderWorkerSet groups, one group per replica.

Shape: a group has ``size`` pods, one per node, each with ``world / size`` GPUs, where ``size``
is the fewest nodes that hold the world. Every rank gets one GPU and every node the same number
of ranks, so a world that does not divide evenly is refused (a :class:`Finding` with the fix).

Launch (TensorRT-LLM's documented multi-node path): one MPI world of ``world`` ranks, started
by ``mpirun`` on the leader, with every rank wrapped in ``trtllm-llmapi-launch``; rank 0 runs
trtllm-serve (the only HTTP server), the other ranks serve it over MPI. The hostfile is made at
start from the names LWS gives a group (``LWS_LEADER_ADDRESS`` = ``<lws>-<g>.<lws>.<ns>``,
workers ``<lws>-<g>-<i>.<lws>.<ns>``). mpirun reaches the workers over SSH: each worker runs
sshd on :data:`SSH_PORT` and trusts the key pair of the deployment's Secret
(:func:`ssh_secret`), which the leader uses.

Health: the leader's /health answers only once rank 0 serves, which needs every rank of the
world loaded, so a Ready leader means a whole group. A rank that dies ends mpirun; with
``RecreateGroupOnPodRestart`` LWS then recreates the whole group, so a wedged MPI world is
never left looking alive.
"""

from __future__ import annotations

import copy
import hashlib
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from trtllm_operator import gpu_usage
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.api.engine import Parallelism
from trtllm_operator.deployments import builders
from trtllm_operator.pods import PodFact
from trtllm_operator.validation import Finding, Reason, Severity

LWS_GROUP: Final = "leaderworkerset.x-k8s.io"
LWS_VERSION: Final = "v1"
LWS_PLURAL: Final = "leaderworkersets"
LWS_NAME_LABEL: Final = "leaderworkerset.sigs.k8s.io/name"
LWS_WORKER_INDEX_LABEL: Final = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_GROUP_INDEX_LABEL: Final = "leaderworkerset.sigs.k8s.io/group-index"
SSH_PORT: Final = 2222
SSH_DIR: Final = "/etc/trtllm-mpi-ssh"
HOSTFILE: Final = "/tmp/trtllm-hostfile"
# NCCL's shared-memory transport and the MPI proxies use /dev/shm; the container default of
# 64 MiB fails large all-reduces. Memory-backed, counted against the pod's memory.
SHM_SIZE: Final = "16Gi"


@dataclass(frozen=True)
class GroupShape:
    """How one replica spreads over nodes: ``size`` pods of ``gpus_per_pod`` GPUs each."""

    size: int
    gpus_per_pod: int


def group_shape(world: int, gpus_per_node: int) -> GroupShape | None:
    """The group of an engine's world on nodes of ``gpus_per_node`` GPUs; None when the world
    fits on one node (single-node serving) or when it does not divide evenly (see
    :func:`shape_problem`)."""
    if gpus_per_node <= 0 or world <= gpus_per_node:
        return None
    size = math.ceil(world / gpus_per_node)
    if world % size:
        return None
    return GroupShape(size, world // size)


def shape_problem(parallelism: Parallelism, gpu: str, gpus_per_node: int,
                  field_name: str) -> Finding | None:
    """A finding when the world spans nodes but cannot give every node the same GPU count."""
    world = parallelism.world_size
    if gpus_per_node <= 0 or world <= gpus_per_node or group_shape(world, gpus_per_node):
        return None
    size = math.ceil(world / gpus_per_node)
    even = [n * size for n in range(1, gpus_per_node + 1) if n * size >= world][:1]
    hint = f" (for example {even[0]})" if even else ""
    return Finding(
        Reason.MULTI_NODE_SHAPE_UNEVEN, Severity.ERROR, field_name,
        f"{field_name}: tensor {parallelism.tensor} x pipeline {parallelism.pipeline} = "
        f"{world} GPUs need {size} {gpu} nodes of at most {gpus_per_node} GPUs, but {world} "
        f"does not split evenly over {size} nodes: set spec.build.parallelism so that tensor x "
        f"pipeline is a multiple of {size}{hint}, or at most {gpus_per_node} for one node",
        gpu=gpu)


# Room in a DNS label (63) for what LWS appends to its name: "-<group>-<worker>" pod names,
# which are also the pods' hostnames.
_POD_SUFFIX_ROOM: Final = 12


def lws_name(d: LLMDeployment) -> str:
    """The LeaderWorkerSet's name: not the deployment's own, which the Service of the
    leaders holds (the endpoint stays the same across shape switches), because LWS creates a
    headless Service of the LWS's name for its pods' stable DNS names. Long names are cut and
    made unique with a digest so that the pods' hostnames stay DNS labels."""
    name = f"{d.metadata.name}-lws"
    limit = 63 - _POD_SUFFIX_ROOM
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(d.metadata.name.encode()).hexdigest()[:6]
    return f"{d.metadata.name[:limit - 11].rstrip('-')}-{digest}-lws"


def ssh_secret_name(d: LLMDeployment) -> str:
    return f"{d.metadata.name}-mpi-ssh"


def ssh_secret(d: LLMDeployment, engine_name: str, private_key: str,
               public_key: str) -> dict[str, Any]:
    """The key pair mpirun on the leader uses to start ranks on the workers (OpenSSH text)."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": ssh_secret_name(d), "namespace": d.metadata.namespace,
                     "labels": builders.child_labels(d, engine_name),
                     "ownerReferences": [builders.owner_reference(d)]},
        "stringData": {"id_ed25519": private_key, "authorized_keys": public_key},
    }


def hostfile_script(gpus_per_pod: int) -> str:
    """Shell that writes the Open MPI hostfile of this group from the LWS environment."""
    return (
        f'leader="$LWS_LEADER_ADDRESS"; first="${{leader%%.*}}"; rest="${{leader#*.}}"; '
        f'echo "$leader slots={gpus_per_pod}" > {HOSTFILE}; '
        f'i=1; while [ "$i" -lt "$LWS_GROUP_SIZE" ]; do '
        f'echo "$first-$i.$rest slots={gpus_per_pod}" >> {HOSTFILE}; i=$((i+1)); done'
    )


def leader_command(serve_cmd: list[str], world: int, gpus_per_pod: int) -> list[str]:
    """The leader's command: write the hostfile, wait for every worker's sshd, then mpirun
    the world with each rank under trtllm-llmapi-launch."""
    ssh = (f"ssh -p {SSH_PORT} -i {SSH_DIR}/id_ed25519 -o StrictHostKeyChecking=no "
           f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
    mpirun = [
        "mpirun", "--allow-run-as-root", "-np", str(world), "--hostfile", HOSTFILE,
        "--mca", "plm_rsh_agent", ssh, "--bind-to", "none",
        # rank 0 strips MPI variables itself; the ranks need the serving environment.
        "-x", "PATH", "-x", "LD_LIBRARY_PATH", "-x", "HF_HOME",
        "trtllm-llmapi-launch", *serve_cmd,
    ]
    wait_workers = (
        f"for h in $(cut -d' ' -f1 {HOSTFILE} | tail -n +2); do "
        f"until (echo > /dev/tcp/$h/{SSH_PORT}) 2>/dev/null; do sleep 2; done; done")
    script = f"{hostfile_script(gpus_per_pod)}; {wait_workers}; exec {shlex.join(mpirun)}"
    return ["bash", "-c", script]


def worker_command() -> list[str]:
    """A worker runs only sshd: mpirun on the leader starts its ranks through it."""
    script = (
        "mkdir -p /run/sshd && ssh-keygen -q -t ed25519 -N '' -f /tmp/ssh_host_ed25519_key && "
        f"exec /usr/sbin/sshd -D -e -p {SSH_PORT} -h /tmp/ssh_host_ed25519_key "
        f"-o AuthorizedKeysFile={SSH_DIR}/authorized_keys -o StrictModes=no "
        "-o PermitRootLogin=prohibit-password -o PasswordAuthentication=no"
    )
    return ["bash", "-c", script]


def _with_group_parts(template: dict[str, Any], d: LLMDeployment,
                      command: list[str]) -> dict[str, Any]:
    """A copy of the single-node pod template with ``command``, the SSH keys and sized shm."""
    t = copy.deepcopy(template)
    spec = t["spec"]
    container = spec["containers"][0]
    container["command"] = command
    container["volumeMounts"].append({"name": "mpi-ssh", "mountPath": SSH_DIR, "readOnly": True})
    spec["volumes"].append({"name": "mpi-ssh", "secret": {
        "secretName": ssh_secret_name(d), "defaultMode": 0o400}})
    for v in spec["volumes"]:
        if v["name"] == "dshm":
            v["emptyDir"] = {"medium": "Memory", "sizeLimit": SHM_SIZE}
    # Every pod of every group on its own node: whole nodes, never two ranks' pods sharing.
    anti = {"labelSelector": {"matchExpressions": [
        {"key": LWS_NAME_LABEL, "operator": "In", "values": [lws_name(d)]}]},
        "topologyKey": "kubernetes.io/hostname"}
    affinity = spec.setdefault("affinity", {})
    pod_anti = affinity.setdefault("podAntiAffinity", {})
    pod_anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(anti)
    return t


def rollout_strategy(d: LLMDeployment) -> dict[str, Any]:
    """spec.strategy in groups: by default one group down at a time and no extra group (no
    spare nodes assumed), as for single-node pods. LWS has no Recreate, so Recreate is every
    group at once."""
    strategy = d.spec.strategy
    surge: int | str = 0
    unavailable: int | str = 1
    if strategy.type == "Recreate":
        unavailable = "100%"
    elif (ru := strategy.rolling_update) is not None:
        surge = ru.max_surge if ru.max_surge is not None else 0
        unavailable = ru.max_unavailable if ru.max_unavailable is not None else 1
    return {"type": "RollingUpdate", "rollingUpdateConfiguration": {
        "maxUnavailable": unavailable, "maxSurge": surge}}


def leaderworkerset(d: LLMDeployment, engine: LLMEngine, serving: builders.Serving,
                    claim: str, shape: GroupShape, *, set_replicas: bool = True
                    ) -> dict[str, Any]:
    """The LeaderWorkerSet serving ``serving`` in groups of ``shape`` (replicas = groups;
    left out when an autoscaler owns them: ``set_replicas`` False)."""
    base = builders.pod_template(d, engine, serving, claim, gpus_per_pod=shape.gpus_per_pod)
    serve_cmd = [*builders.serve_command(d, serving),
                 "--gpus_per_node", str(shape.gpus_per_pod)]
    leader = _with_group_parts(base, d, leader_command(serve_cmd, serving.world_size,
                                                       shape.gpus_per_pod))
    worker = _with_group_parts(base, d, worker_command())
    worker["metadata"]["labels"].pop(builders.ENDPOINT_LABEL, None)  # rank 0 alone serves HTTP
    wc = worker["spec"]["containers"][0]
    # Workers serve no HTTP: their readiness is sshd accepting the leader.
    wc["ports"] = [{"name": "ssh", "containerPort": SSH_PORT, "protocol": "TCP"}]
    ssh_probe = {"tcpSocket": {"port": "ssh"}, "periodSeconds": 10, "failureThreshold": 3}
    wc["readinessProbe"] = ssh_probe
    wc["livenessProbe"] = ssh_probe | {"periodSeconds": 20}
    wc.pop("startupProbe", None)
    manifest: dict[str, Any] = {
        "apiVersion": f"{LWS_GROUP}/{LWS_VERSION}",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": lws_name(d), "namespace": d.metadata.namespace,
                     "labels": builders.pod_labels(d, engine, serving),
                     "ownerReferences": [builders.owner_reference(d)]},
        "spec": {
            "replicas": d.spec.replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": rollout_strategy(d),
            "leaderWorkerTemplate": {
                "size": shape.size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }
    if not set_replicas:
        del manifest["spec"]["replicas"]
    return manifest


def leader_service(d: LLMDeployment, engine_name: str) -> dict[str, Any]:
    """The Service of a multi-node deployment: leaders only (rank 0 serves HTTP)."""
    svc = builders.service(d, engine_name)
    svc["spec"]["selector"] = {**svc["spec"]["selector"], LWS_WORKER_INDEX_LABEL: "0"}
    return svc


def group_status(lws: Mapping[str, Any]) -> dict[str, Any]:
    """A LeaderWorkerSet as the Deployment-shaped facts the status logic reads: generation,
    the leader template's annotations and nodeSelector, and groups counted as replicas (a
    group is ready only when all its pods are, so ready groups are also the available ones)."""
    spec = lws.get("spec") or {}
    lwt = spec.get("leaderWorkerTemplate") or {}
    leader = lwt.get("leaderTemplate") or {}
    held = gpu_usage.pod_gpus({**(leader.get("spec") or {}), "nodeName": "-"}, {})
    st = lws.get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    return {
        "kind": "LeaderWorkerSet",
        "group": {"size": int(lwt.get("size") or 0), "gpusPerPod": held[1] if held else 0},
        "metadata": {"generation": (lws.get("metadata") or {}).get("generation")},
        "spec": {"replicas": spec.get("replicas"), "template": {
            "metadata": {"annotations": dict((leader.get("metadata") or {})
                                             .get("annotations") or {})},
            "spec": {"nodeSelector": dict((leader.get("spec") or {})
                                          .get("nodeSelector") or {})}}},
        "status": {"replicas": int(st.get("replicas") or 0), "readyReplicas": ready,
                   "availableReplicas": ready,
                   "updatedReplicas": int(st.get("updatedReplicas") or 0),
                   "observedGeneration": int(st.get("observedGeneration") or 0),
                   "conditions": [dict(c) for c in st.get("conditions") or []]},
    }


def pending_groups(pods: Sequence[PodFact]) -> dict[str, str]:
    """Group index -> the scheduler's message, for each group with a pod it cannot place."""
    pending: dict[str, str] = {}
    for p in sorted(pods, key=lambda p: p.name):
        if p.group is not None and p.unschedulable and p.group not in pending:
            pending[p.group] = p.unschedulable
    return pending


def group_pending_message(pending: Mapping[str, str], ready: int, desired: int,
                          gpu: str | None, free: tuple[int, int, int] | None = None) -> str:
    """Why groups wait, in words: which, the scheduler's message, and what still serves.

    Without a gang scheduler a group can be half placed (its leader on a node, a worker
    Pending): such a group is not counted (ready groups are whole groups) and its placed pods
    keep their nodes until the rest fit, which the message says."""
    groups = sorted(pending, key=lambda g: (len(g), g))
    first = pending[groups[0]]
    nodes = f"{gpu} nodes" if gpu else "nodes"
    which = "group" if len(groups) == 1 else "groups"
    seen = ""
    if free is not None:
        whole, per_pod, size = free
        seen = (f"; the operator sees {whole} {gpu} node(s) with {per_pod} free GPUs that "
                f"the pods may use, a group needs {size}")
    return (f"{which} {', '.join(groups)} cannot be placed whole: {first}{seen}; "
            f"{ready}/{desired} "
            f"groups ready and serving (a group counts only when all its pods run; its placed "
            f"pods keep their nodes until the rest fit): free or add {nodes}, or lower "
            f"spec.replicas")


# --------------------------------------------------------------------------- shape switches


@dataclass(frozen=True)
class ShapeSwitch:
    """One step of replacing the workload of the other shape (a Deployment by an LWS when the
    rebuilt engine spans nodes, or back), and what status says meanwhile."""

    create_new: bool
    """Apply the new workload (and, unless ``keep_old_service``, its Service) now."""
    delete_old: bool
    keep_old_service: bool
    message: str | None
    """Ready's message while the switch is under way; None once the new workload is all
    that is left to roll out."""


def surge_allowed(d: LLMDeployment) -> bool:
    """Whether spec.strategy lets serving pods be added before old ones go (maxSurge > 0)."""
    ru = d.spec.strategy.rolling_update
    return (d.spec.strategy.type == "RollingUpdate" and ru is not None
            and ru.max_surge not in (None, 0, "0%"))


def shape_switch(d: LLMDeployment, old_kind: str, old_pods: int,
                 new_ready: int) -> ShapeSwitch:
    """The next step of replacing ``old_kind`` (``old_pods`` of its pods still exist;
    ``new_ready`` replicas of the new workload are ready).

    Two fleets never hold GPUs longer than spec.strategy allows. With maxSurge 0 (the default:
    no spare GPUs assumed) or Recreate, the old workload is deleted first and the new one
    created only once every old pod is gone: a short outage, never both fleets at once (a
    rolling mix is impossible: a group and a single-node pod are not replicas of one kind).
    With maxSurge above 0 the user has spare GPUs: the new workload starts beside the old, the
    Service keeps the old pods until every new replica is ready, then the old one is deleted."""
    new_kind = "Deployment" if old_kind == "LeaderWorkerSet" else "LeaderWorkerSet"
    what = f"the engine's new parallelism needs a {new_kind}: replacing the {old_kind}"
    if not surge_allowed(d):
        if old_pods:
            return ShapeSwitch(False, True, False, (
                f"{what}; its {old_pods} pod(s) stop first, then the {new_kind} starts "
                f"(spec.strategy allows no surge, so the two never hold GPUs at once)"))
        return ShapeSwitch(True, True, False, None)
    if new_ready >= d.spec.replicas:
        return ShapeSwitch(True, True, False, None)
    return ShapeSwitch(True, False, True, (
        f"{what}; the {new_kind} starts beside it (spec.strategy maxSurge) and the "
        f"{old_kind} serves until {d.spec.replicas} new replica(s) are ready "
        f"({new_ready} now)"))
