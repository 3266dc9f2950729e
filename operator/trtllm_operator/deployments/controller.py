"""LLMDeployment reconcile: engine target -> Deployment + Service -> honest status.

- The target is ``spec.gpu`` if given (one of the engine's targets, ``auto`` resolved
  included), else the Built target :mod:`~trtllm_operator.deployments.choice` picks (sticky,
  room for every replica, most GPU memory); the choice and why go to status.
- Until that target is Built, no Deployment is created or changed: a running fleet keeps
  serving the engine it has while a new one builds, and rolls only once the new one is Built.
- Children are written by server-side apply only when the watched copy differs from what the
  operator would apply (a hash of the manifest on the child, and its owned fields compared):
  a converged fleet costs no API writes, and a hand edit or a deleted child is still put back.
- ``Ready`` is True only when the current spec is rolled out and every desired replica is
  available: never earlier.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from lightkube import ApiError
from lightkube.resources.apps_v1 import Deployment

from trtllm_operator import conditions as cond
from trtllm_operator import gpu_usage, gpus, labels, metrics, trtllm_facts
from trtllm_operator.api import (
    ConditionStatus,
    EngineTargetStatus,
    LLMDeployment,
    LLMDeploymentStatus,
    LLMEngine,
)
from trtllm_operator.api.deployment import DeploymentConditionType, SliceStatus
from trtllm_operator.api.engine import BuiltLimits, size_hint_bytes
from trtllm_operator.claims import SHARED_READ, ClaimFact, check_claim
from trtllm_operator.deployments import (
    autoscaling,
    builders,
    choice,
    inference_pool,
    monitoring,
    multinode,
    slices,
)
from trtllm_operator.engines.planning import serving_claim
from trtllm_operator.kube import (
    URGENT_WRITES,
    InferencePoolResource,
    LeaderWorkerSetResource,
    invalid_refusal,
    not_served,
)
from trtllm_operator.kube_objects import check_deployment_objects
from trtllm_operator.optional_apis import Support
from trtllm_operator.pods import PodContext, PodFact, PodProblem, diagnose
from trtllm_operator.reconcile_errors import RECONCILE_ERROR
from trtllm_operator.reconciling import deployment_progress_conditions
from trtllm_operator.spec_warnings import emit_spec_warnings, spec_warning_condition
from trtllm_operator.status_writes import StatusWrites
from trtllm_operator.validation import (
    ClusterFacts,
    Finding,
    Reason,
    Severity,
    effective_backend,
    validate_deployment,
)
from trtllm_operator.workqueue import Result
from trtllm_operator.write_lane import WriteLane

log = logging.getLogger(__name__)

Key = tuple[str, str]
NOT_READY_RESYNC_SECONDS = 60.0
CREATED_GRACE_SECONDS = 30.0


class Writer(Protocol):
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    async def create_child(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    async def create_if_absent(self, manifest: dict[str, Any]) -> bool: ...
    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None: ...
    async def delete(self, resource: Any, namespace: str, name: str) -> bool: ...
    async def apply_as(self, manifest: dict[str, Any], field_manager: str) -> None: ...
    async def delete_child(self, kind: str, namespace: str, name: str) -> bool: ...


class View(Protocol):
    def deployment_body(self, key: Key) -> Mapping[str, Any] | None: ...
    def engine(self, key: Key) -> Mapping[str, Any] | None: ...
    def cluster_facts(self) -> ClusterFacts: ...
    def serving_deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    def serving_child(self, kind: str, namespace: str,
                      name: str) -> Mapping[str, Any] | None: ...
    def serving_group_set(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    def serving_pods(self, namespace: str, name: str) -> list[PodFact]: ...
    def serving_workloads(self, namespace: str, name: str) -> list[tuple[str, str]]: ...
    def claim(self, namespace: str, name: str) -> ClaimFact | None: ...
    def free_gpus(self, product: str, selector: Mapping[str, str]) -> dict[str, int]: ...
    def serving_autoscaler(self, namespace: str, name: str) -> autoscaling.HPAFact | None: ...
    """The HorizontalPodAutoscaler of that name (the operator's, or KEDA's for its
    ScaledObject), as watched."""


REPLICAS_HANDOVER_MANAGER = "trtllm-operator-replicas-handover"
"""Field manager that keeps ``replicas`` of a workload when autoscaling starts: the operator's
own apply then omits the field, and it stays at its value until the autoscaler changes it."""


async def _never_served(kind: str, namespace: str | None) -> Support:
    return "missing"


@dataclass(frozen=True)
class Scaling:
    """Who owns replicas, the Autoscaling condition (None: autoscaling not asked for) and the
    PodMonitor kept, as status shows them."""

    owner: str = "spec.replicas"
    condition: tuple[ConditionStatus, str, str] | None = None
    pod_monitor: str | None = None
    owned_by_autoscaler: bool = False
    carried: bool = False
    """Nothing was reconciled (no workload yet, or a preflight stopped it): the Autoscaling
    condition stays as it was."""




@dataclass(frozen=True)
class EngineChoice:
    """The engine target an LLMDeployment should serve, or why there is none yet."""

    target: EngineTargetStatus | None
    ready: ConditionStatus
    reason: str
    message: str
    gpu_reason: str | None = None
    """Why this GPU type: named by spec.gpu, or the rule's choice in words."""


def resolved_targets(engine: LLMEngine) -> tuple[str, ...] | None:
    """The GPU types the engine builds for (its status.targets: ``auto`` expanded), or None
    while its status does not describe its current spec yet."""
    if engine.status.observed_generation != engine.metadata.generation:
        return None
    return tuple(t.gpu for t in engine.status.targets)


def gpu_options(built: list[EngineTargetStatus], gpus_per_replica: int,
                cluster: ClusterFacts, lws: str = "missing") -> list[choice.Option]:
    """What the GPU choice weighs for each Built target, from the observed node pools; a
    replica wider than a node counts in groups, and only with LeaderWorkerSet installed."""
    options = []
    for t in built:
        pool = cluster.pools.get(t.gpu)
        nodes = pool.node_gpus if pool else ()
        eligible = True
        if nodes and gpus_per_replica > max(nodes):
            slots = choice.group_slots(nodes, gpus_per_replica) if lws == "installed" else 0
            eligible = slots >= 1
        else:
            slots = choice.replica_slots(nodes, gpus_per_replica)
        options.append(choice.Option(
            gpu=t.gpu, slots=slots, memory_mib=cluster.memory_mib(t.gpu),
            compute=cluster.compute_capability(t.gpu), eligible=eligible))
    return options


def choose_target(d: LLMDeployment, engine: LLMEngine | None, findings: tuple[Finding, ...],
                  cluster: ClusterFacts | None = None,
                  current: str | None = None, lws: str = "missing") -> EngineChoice:
    """Pick the engine target to serve (pure). ``current`` is the GPU type the deployment
    serves on now, kept while it stays Built and schedulable (see :mod:`choice`); ``lws``
    whether LeaderWorkerSet is "installed" (multi-node types are eligible only then)."""
    ref = d.spec.engine_ref.name
    errors = [f for f in findings if f.severity == Severity.ERROR]
    if engine is None:
        return EngineChoice(None, "False", "EngineNotFound",
                            f"LLMEngine {ref} does not exist in this namespace: create it or "
                            f"correct spec.engineRef.name")
    if errors:
        return EngineChoice(None, "False", errors[0].reason.value,
                            "; ".join(f.message for f in errors))
    by_gpu = {t.gpu: t for t in engine.status.targets}

    def built(t: EngineTargetStatus) -> str:
        return f"engine for {t.gpu} built ({(t.fingerprint or '')[:12]})"

    if d.spec.gpu is not None:
        t = by_gpu.get(d.spec.gpu)
        if t is not None and t.state == "Built":
            return EngineChoice(t, "True", "EngineBuilt", built(t), "named by spec.gpu")
        state = t.state if t is not None else "Pending"
        detail = f": {t.message}" if t is not None and t.message else ""
        return EngineChoice(None, "False", f"Engine{state}",
                            f"LLMEngine {ref} has no built engine for {d.spec.gpu} yet "
                            f"({state}{detail})")
    built_targets = [t for t in engine.status.targets if t.state == "Built"]
    options = gpu_options(built_targets, engine.spec.build.parallelism.world_size,
                          cluster or ClusterFacts(), lws)
    eligible = [o for o in options if o.eligible]
    # None eligible: the rule still picks one, and the serving preflight says what it lacks.
    pick = choice.pick_gpu(eligible or options, d.spec.replicas, current)
    if pick is not None:
        t = by_gpu[pick.gpu]
        left_out = sorted(o.gpu for o in options if not o.eligible) if eligible else []
        why = pick.why + (f" ({', '.join(left_out)} left out: a replica spans nodes there and "
                          f"cannot be placed as a group: " + (
                              "no LeaderWorkerSet" if lws != "installed"
                              else "too few whole nodes or an uneven split") + ")"
                          if left_out else "")
        return EngineChoice(t, "True", "EngineChosen", f"{why}; {built(t)}", why)
    states = ", ".join(f"{t.gpu}: {t.state}" for t in engine.status.targets) or "no targets yet"
    return EngineChoice(None, "False", "EngineNotBuilt",
                        f"LLMEngine {ref} has no built target yet ({states}); the deployment "
                        f"starts as soon as one is built")


LWS_INSTALL_HINT = ("install LeaderWorkerSet (kubectl apply --server-side -f "
                    "https://github.com/kubernetes-sigs/lws/releases/download/v0.9.0/"
                    "manifests.yaml) and restart the operator")
# Without the right to list LWSs, the API server answers 403 whether or not LWS is installed.
LWS_RBAC_HINT = ("the operator may not list LeaderWorkerSets: install LeaderWorkerSet if it is "
                 "not installed, install the chart with leaderWorkerSet.enabled=true, and "
                 "restart the operator")


@dataclass(frozen=True)
class Placement:
    """How a replica is placed: one pod (``shape`` None) or a LeaderWorkerSet group, or why it
    cannot be placed (``problem``)."""

    shape: multinode.GroupShape | None = None
    problem: Finding | None = None


def placement(engine: LLMEngine, gpu: str, cluster: ClusterFacts, lws: str,
              refusal: str = "") -> Placement:
    """One node if the engine's world fits the largest node of ``gpu``, else whole-node groups
    (needs LeaderWorkerSet: ``lws`` is "installed", "missing" or "forbidden"; ``refusal`` the
    API server's words when forbidden)."""
    par = engine.spec.build.parallelism
    pool = cluster.pools.get(gpu)
    known = gpus.by_product(gpu)
    per_node = (pool.largest_node if pool is not None and pool.node_gpus
                else known.gpus_per_node if known is not None else 0)
    if per_node <= 0 or par.world_size <= per_node:
        return Placement()
    uneven = multinode.shape_problem(par, gpu, per_node, "spec.build.parallelism")
    if uneven is not None:
        return Placement(problem=uneven)
    shape = multinode.group_shape(par.world_size, per_node)
    assert shape is not None
    needs = (f"tensor {par.tensor} x pipeline {par.pipeline} = {par.world_size} GPUs span "
             f"{shape.size} {gpu} nodes of {shape.gpus_per_pod} GPUs")
    if lws != "installed":
        hint = LWS_RBAC_HINT if lws == "forbidden" else LWS_INSTALL_HINT
        if lws == "forbidden" and refusal:
            hint += f" (the API server said: {refusal})"
        return Placement(shape, Finding(
            Reason.LEADER_WORKER_SET_REQUIRED, Severity.ERROR, "spec.build.parallelism",
            f"{needs}: multi-node serving runs on LeaderWorkerSet, which is not available: "
            f"{hint}", gpu=gpu))
    # Whole nodes: a group's pods each take a node with gpus_per_pod GPUs.
    nodes = sum(1 for n in (pool.node_gpus if pool else ()) if n >= shape.gpus_per_pod)
    if pool is not None and nodes < shape.size:
        return Placement(shape, Finding(
            Reason.GROUP_NODES_INSUFFICIENT, Severity.ERROR, "spec.build.parallelism",
            f"{needs}, but the cluster has {nodes} {gpu} node(s) with {shape.gpus_per_pod} "
            f"GPUs: add {gpu} nodes or lower spec.build.parallelism", gpu=gpu))
    return Placement(shape)


def ssh_key_pair() -> tuple[str, str]:
    """A fresh ed25519 key pair (OpenSSH private key, public key line) for an MPI group."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public + "\n"


def serving_for(engine: LLMEngine, target: EngineTargetStatus) -> builders.Serving:
    par = engine.spec.build.parallelism
    # A build that reported no limits (an older summary): serve with the requested ones.
    requested = engine.spec.build.limits
    built = target.limits or BuiltLimits.model_validate(
        requested.model_dump() if requested else {})
    assert target.fingerprint and target.path
    build = engine.spec.build
    backend = effective_backend(engine.spec)
    hint = engine.spec.model.size_hint
    return builders.Serving(
        gpu=target.gpu, fingerprint=target.fingerprint, path=target.path, limits=built,
        world_size=par.world_size, tensor=par.tensor, pipeline=par.pipeline, backend=backend,
        # The serving release equals the builder's (validation refuses another).
        release=trtllm_facts.effective_release(build.image, build.image_release),
        served_model_name=builders.served_model_name(engine) if backend == "pytorch" else None,
        checkpoint_bytes=target.checkpoint_bytes or (
            size_hint_bytes(hint) if hint is not None else None))


def _child_id(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return manifest["kind"], meta["namespace"], meta["name"]


_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def status_echo(body: Mapping[str, Any], status: Mapping[str, Any]) -> bytes:
    """A digest of what a reconcile reads of an LLMDeployment besides its spec (which cannot
    change without its generation): identity, generation, labels, annotations, finalizers,
    deletion, and ``status``."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != _LAST_APPLIED}
    seen = [meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"),
            meta.get("labels") or {}, annotations, list(meta.get("finalizers") or []),
            status]
    return hashlib.blake2b(json.dumps(seen, sort_keys=True, default=_plain).encode(),
                           digest_size=16).digest()


def _plain(value: object) -> object:
    """kopf's views of a body (Mappings, not dicts) as JSON sees them."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} in an LLMDeployment body")


def status_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Which top-level fields and which conditions (``condition/<type>``) differ, for the
    status writes metric (bounded: the schema's fields and condition types)."""
    def by_type(wire: Mapping[str, Any]) -> dict[str, Any]:
        return {c.get("type"): c for c in wire.get("conditions") or []}

    before, after = by_type(old), by_type(new)
    changed = {f"condition/{t}" for t in before.keys() | after.keys()
               if before.get(t) != after.get(t)}
    changed |= {k for k in old.keys() | new.keys()
                if k != "conditions" and old.get(k) != new.get(k)}
    return changed


_WAITING_REASONS = frozenset({"RollingOut", "EngineNotBuilt", "EnginePending",
                              "EngineBuilding", "AutoscalerPending", "ShapeSwitching",
                              "ServicePending"})
"""Reasons of a False condition that say work goes on, not that something is wrong."""
_ROLLOUT_STEPS = frozenset({"RollingOut", "ServicePending"})
"""Waiting reasons of Ready that are routine steps of a rollout: no Event of their own when
reached from another waiting reason (or on creation)."""

_DETAIL_CONDITIONS = frozenset({DeploymentConditionType.AVAILABLE,
                                DeploymentConditionType.PROGRESSING})


def _headline(wire: Mapping[str, Any]) -> tuple[object, ...]:
    """What a status write may not wait for: the generation observed, each condition's status
    (Ready, Reconciling, Stalled, ...) and any reason that names a problem (ImagePullBackOff,
    GroupPending, ...). Counts, messages, moves between reasons that say work goes on
    (RollingOut, ServicePending, ...) and the conditions mirrored from the Deployment are
    details (see StatusWrites.hold)."""
    return (wire.get("observedGeneration"), frozenset(
        (c.get("type"), c.get("status"),
         "waiting" if c.get("reason") in _WAITING_REASONS else c.get("reason"))
        for c in wire.get("conditions") or [] if c.get("type") not in _DETAIL_CONDITIONS))


def _serving_gpu(dep: Mapping[str, Any] | None) -> str | None:
    """The GPU type a trtllm-serve Deployment's pods are pinned to (its nodeSelector)."""
    template = ((dep or {}).get("spec") or {}).get("template") or {}
    gpu = ((template.get("spec") or {}).get("nodeSelector") or {}).get(gpus.PRODUCT_LABEL)
    return str(gpu) if gpu else None


def _dep_condition(dep: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in ((dep or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def serving_pod_problem(d: LLMDeployment, pods: list[PodFact],
                        engine_image: str | None) -> PodProblem | None:
    """Why a serving pod cannot start or keeps crashing (the first such pod), with the fix."""
    pod = next((p for p in pods if p.stuck is not None), None)
    if pod is None or pod.stuck is None:
        return None
    if d.spec.image is not None:
        image, field_name = d.spec.image, "spec.image"
    else:
        image = engine_image or "(the engine's image)"
        field_name = "spec.image (unset: the engine's spec.build.image)"
    return diagnose(pod.name, pod.stuck, PodContext(
        kind="serving", namespace=d.metadata.namespace or "", image=image,
        image_field=field_name, pull_secrets_field="spec.imagePullSecrets",
        env_field="spec.env"))


@dataclass
class DeploymentController:
    view: View
    writer: Writer
    events: Callable[[Mapping[str, Any], str, str, str], None]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    status_writes: StatusWrites = field(
        default_factory=lambda: StatusWrites("LLMDeployment"))
    lws: str = "missing"
    """LeaderWorkerSet in the cluster, checked once at startup: installed, missing, forbidden."""
    inference_pools: Callable[[str], Awaitable[str]] | None = None
    """Whether the cluster serves InferencePools to this namespace (installed, missing,
    forbidden), asked again after a TTL; None: never."""
    pool_reapply_seconds: float = 300.0
    """An InferencePool (not watched) is applied when its manifest changes, else at most this
    often, so a deleted or edited one comes back."""
    monotonic: Callable[[], float] = time.monotonic
    _pools_applied: dict[Key, tuple[str, float]] = field(default_factory=dict)
    supports: Callable[[str, str | None], Awaitable[Support]] = _never_served
    """Whether the cluster serves an optional kind (ScaledObject, PodMonitor) in a namespace,
    asked again after a short time (CRDs installed later are seen without a restart)."""
    pod_monitors: bool = True
    """Keep a PodMonitor per LLMDeployment where the Prometheus Operator's CRD exists."""
    prometheus_address: str | None = None
    """Default Prometheus server KEDA's triggers query (spec.autoscaling.prometheusAddress
    wins)."""
    forget_supports: Callable[[], None] = lambda: None
    """Drop cached answers of ``supports`` (a write found a kind no longer served)."""
    _applied: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """Hash of what this process last applied of each unwatched child (ScaledObject,
    PodMonitor): re-applied only when the desired object changes."""
    created: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    """(kind, namespace, name) -> (spec hash, when) of children this controller created that
    the watch has not shown yet: a reconcile running before the child's own event arrives must
    not create it again (see forget_child). Trusted for CREATED_GRACE_SECONDS only, in case
    the child was deleted before the record was made."""
    lws_refusal: str = ""
    """When forbidden, the API server's refusal (names the operator's account), for status."""
    _written: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(kind, namespace, name) -> resourceVersion of the object this controller's last create
    or apply of that child answered with, until its watch event arrives (see is_child_echo)."""
    _status_echo: dict[Key, bytes] = field(default_factory=dict)
    """Per LLMDeployment, :func:`status_echo` of its last status write (see is_status_echo)."""
    service_lane: WriteLane | None = None
    """Where Service writes are made off the reconcile worker (see :mod:`write_lane`); None:
    in the worker."""

    async def reconcile(self, key: Key) -> Result | None:
        URGENT_WRITES.set(False)
        body = self.view.deployment_body(key)
        if body is None:
            metrics.record_ready("LLMDeployment", key, None)
            self.status_writes.forget(key)
            self._status_echo.pop(key, None)
            if self.service_lane is not None:
                self.service_lane.clear(("Service", *key))
            for kind in (autoscaling.SCALED_OBJECT, monitoring.KIND):
                self._applied.pop((kind, *key), None)
            return None
        d = LLMDeployment.model_validate(body)
        if d.metadata.deletion_timestamp is not None:
            return None  # garbage collection removes the Deployment and Service
        # A new or edited object: its children go ahead of other writes on the write limit.
        URGENT_WRITES.set(d.status.observed_generation != d.metadata.generation)
        namespace = key[0]
        engine_body = self.view.engine((namespace, d.spec.engine_ref.name))
        engine = LLMEngine.model_validate(engine_body) if engine_body else None
        facts = self.view.cluster_facts()
        if d.spec.slices:
            status, findings = await self._reconcile_slices(d, engine, facts)
        else:
            status, findings = await self._reconcile_one(d, engine, facts)
        status = await self._reconcile_pool(d, engine, status)
        status = self._unless_service_pending(d, status)
        status = status.model_copy(update={"conditions": spec_warning_condition(
            status.conditions, findings, d.metadata.generation, self.clock())})
        status = status.model_copy(update={"conditions": deployment_progress_conditions(
            status.conditions, engine.status.conditions if engine else None,
            observed_generation=d.metadata.generation, now=self.clock())})
        metrics.record_ready("LLMDeployment", key, cond.is_true(
            status.conditions, DeploymentConditionType.READY))
        old_wire, new_wire = d.status.to_wire(), status.to_wire()
        current = self.status_writes.last(key, d.metadata.uid, old_wire)
        held = self.status_writes.hold(key, old_wire, new_wire, uid=d.metadata.uid,
                                       headline=_headline(current) != _headline(new_wire))
        if not held and await self.status_writes.publish(self.writer, key, old_wire, new_wire,
                                                         uid=d.metadata.uid):
            self._status_echo[key] = status_echo(body, new_wire)
            for part in status_changes(current, new_wire):
                metrics.STATUS_WRITES.labels("LLMDeployment", part).inc()
            # Transitions from what this object last had: the operator's own last write when
            # the view has not shown it yet (else each write re-announced the first ones).
            previous = (d.status if current is old_wire
                        else LLMDeploymentStatus.model_validate(current))
            self._emit(body, previous, status)
            emit_spec_warnings(self.events, body, previous.conditions, status.conditions,
                               findings)
        if held:
            metrics.STATUS_HELD.labels("LLMDeployment").inc()
        later = [held] if held else []
        if not cond.is_true(status.conditions, DeploymentConditionType.READY):
            later.append(NOT_READY_RESYNC_SECONDS)
        elif d.spec.inference_pool is not None:
            # InferencePools are not watched: a deleted or edited one is put back this late.
            later.append(self.pool_reapply_seconds)
        return Result(requeue_after=min(later)) if later else None

    async def _reconcile_one(self, d: LLMDeployment, engine: LLMEngine | None,
                             facts: ClusterFacts) -> tuple[LLMDeploymentStatus,
                                                           tuple[Finding, ...]]:
        """One GPU type (spec.gpu, or chosen): one workload named like the LLMDeployment."""
        namespace, name = d.metadata.namespace or "", d.metadata.name
        findings = (*check_deployment_objects(d.spec), *validate_deployment(
            d.spec, engine.spec if engine else None, facts,
            resolved=resolved_targets(engine) if engine else None),
            *autoscaling.findings(d.spec, engine.spec if engine else None))
        group_set = self.view.serving_group_set(namespace, multinode.lws_name(d))
        observed = group_set or self.view.serving_deployment(namespace, name)
        # What it serves on now: the running Deployment's GPU type, else what status recorded.
        chosen = choose_target(d, engine, findings, facts,
                               current=_serving_gpu(observed) or d.status.gpu, lws=self.lws)
        scaling = await self._scaling_before(d)
        decision = await self._autoscaling_decision(d)
        preflight, observed, shape, switch = await self._serve(
            d, engine, chosen, facts, observed, group_set is None, as_slice=None,
            set_replicas=decision is None or decision.provider is None)
        if engine is not None and chosen.target is not None and shape is not None:
            if switch is None or not switch.keep_old_service:
                if shape == "single":
                    await self._apply_service(d, builders.service(d, engine.metadata.name))
                else:
                    await self.writer.apply(multinode.leader_service(d, engine.metadata.name))
            target = (autoscaling.deployment_target(d) if shape == "single"
                      else autoscaling.group_set_target(d))
            scaling = await self._reconcile_scaling(
                d, engine.metadata.name, serving_for(engine, chosen.target), target, decision,
                leaders={builders.ENDPOINT_LABEL: "http"})
        status = self._status(d, chosen, preflight, observed, facts,
                              self.view.serving_pods(namespace, name), scaling,
                              switching=switch.message if switch else None)
        if cond.is_true(status.conditions, DeploymentConditionType.READY):
            # Back from spec.slices: their workloads go once this one serves (a switch
            # between its own two shapes is _switch_shape's).
            await self._delete_workloads(d, keep={name, multinode.lws_name(d)})
        return status, findings

    async def _reconcile_slices(self, d: LLMDeployment, engine: LLMEngine | None,
                                facts: ClusterFacts) -> tuple[LLMDeploymentStatus,
                                                              tuple[Finding, ...]]:
        """spec.slices: one workload per GPU type (see :mod:`slices`), one Service over all."""
        namespace = d.metadata.namespace or ""
        counts = slices.split_replicas(d.spec.replicas, [s.weight for s in d.spec.slices])
        resolved = resolved_targets(engine) if engine else None
        all_findings: dict[tuple[str, str], Finding] = {}
        views: list[LLMDeploymentStatus] = []
        shown: list[SliceStatus] = []
        served = False
        served_by: builders.Serving | None = None
        pods = self.view.serving_pods(namespace, d.metadata.name)
        fleet_findings = autoscaling.findings(d.spec, engine.spec if engine else None)
        all_findings.update({(f.field, f.message): f for f in fleet_findings})
        scaling = await self._scaling_before(d)
        decision = await self._autoscaling_decision(d)
        for i, (gpu_slice, count) in enumerate(zip(d.spec.slices, counts, strict=True)):
            gpu = gpu_slice.gpu
            view = slices.slice_view(d, gpu, count)
            findings = slices.slice_findings((*check_deployment_objects(view.spec),
                                              *validate_deployment(
                view.spec, engine.spec if engine else None, facts, resolved=resolved)), i)
            all_findings.update({(f.field, f.message): f for f in findings})
            wname = slices.workload_name(d, gpu)
            group_set = self.view.serving_group_set(namespace, wname)
            observed = group_set or self.view.serving_deployment(namespace, wname)
            chosen = choose_target(view, engine, tuple(findings), facts, lws=self.lws)
            if chosen.gpu_reason is not None:
                chosen = EngineChoice(chosen.target, chosen.ready, chosen.reason,
                                      chosen.message, f"named by spec.slices[{i}]")
            preflight, observed, shape, _switch = await self._serve(
                view, engine, chosen, facts, observed, group_set is None,
                as_slice=functools.partial(slices.as_slice, d=d, gpu=gpu))
            served = served or shape is not None
            if shape is not None and engine is not None and chosen.target is not None:
                served_by = served_by or serving_for(engine, chosen.target)
            status = self._status(view, chosen, preflight, observed, facts,
                                  [p for p in pods if p.gpu == gpu])
            views.append(status)
            shown.append(slices.slice_status(gpu, status, count))
        if served and engine is not None:
            await self._apply_service(d, builders.service(d, engine.metadata.name))
        if served_by is not None and engine is not None:
            # The whole fleet scales: the autoscaler sizes the LLMDeployment through its scale
            # subresource and the operator splits spec.replicas by weight, as for kubectl scale.
            scaling = await self._reconcile_scaling(
                d, engine.metadata.name, served_by, autoscaling.llmdeployment_target(d),
                decision, leaders={builders.ENDPOINT_LABEL: "http"})
            scaling = dataclasses.replace(scaling, owned_by_autoscaler=False)
        status = slices.fleet_status(
            d, views, shown, self.clock(),
            endpoint=builders.endpoint(d) if any(s.replicas for s in shown) or served
            else None, selector=builders.selector_string(d))
        status = self._with_scaling(status, scaling)
        keep = {slices.workload_name(d, s.gpu) for s in d.spec.slices}
        if not cond.is_true(status.conditions, DeploymentConditionType.READY):
            # Moving from one GPU type to slices: the old workload serves until they do.
            keep.update({d.metadata.name, multinode.lws_name(d)})
        await self._delete_workloads(d, keep=keep)
        return status, tuple(all_findings.values())

    async def _serve(self, d: LLMDeployment, engine: LLMEngine | None, chosen: EngineChoice,
                     facts: ClusterFacts, observed: Mapping[str, Any] | None,
                     first_group: bool,
                     as_slice: Callable[[dict[str, Any]], dict[str, Any]] | None,
                     set_replicas: bool = True,
                     ) -> tuple[Finding | None, Mapping[str, Any] | None, str | None,
                                multinode.ShapeSwitch | None]:
        """Apply the workload of ``d`` (a slice view when ``as_slice`` renames it) once its
        target is Built and nothing stops it: (the preflight problem, the workload as
        observed, "single" or "multi" when it was applied, else None, and the step of a
        switch between the two shapes under way, if any)."""
        if chosen.target is None or engine is None:
            return None, observed, None, None
        if engine.status.observed_generation not in (None, 0, engine.metadata.generation):
            # An engine whose status is not yet about its current spec can list a target built
            # from the old one: serving it with the new spec's parallelism would mix the two
            # (an LWS of an old one-node engine). Nothing is applied until its status catches
            # up, which reconciles this again.
            return None, observed, None, None
        namespace = d.metadata.namespace or ""
        owner = (((observed or {}).get("metadata") or {}).get("labels") or {}).get(
            labels.DEPLOYMENT)
        if owner is not None and owner != d.metadata.name:
            # Names are <name>-<gpu type>: "llama" on L40S and an LLMDeployment named
            # "llama-nvidia-l40s" would take turns writing one Deployment.
            name = ((observed or {}).get("metadata") or {}).get("name")
            return Finding(Reason.WORKLOAD_NAME_TAKEN, Severity.ERROR, "metadata.name", (
                f"the Deployment {name} this needs already serves LLMDeployment {owner} "
                f"(a slice's workload is named <name>-<gpu type>): rename one of the two "
                f"LLMDeployments")), None, None, None
        place = placement(engine, chosen.target.gpu, facts, self.lws, self.lws_refusal)
        # Serving pods mount the engine's claim read-only, on many nodes.
        engine_claim, claim_field = serving_claim(engine.spec)
        claim_problems = check_claim(
            self.view.claim(namespace, engine_claim), engine_claim, namespace,
            f"LLMEngine {engine.metadata.name} {claim_field}", SHARED_READ)
        preflight = next(iter([*claim_problems, *filter(None, [place.problem])]), None)
        if preflight is not None:
            return preflight, observed, None, None
        rename = as_slice or (lambda m: m)
        serving = serving_for(engine, chosen.target)
        options = builders.options_configmap(d, engine.metadata.name, serving.backend,
                                             serving.release)
        if options is not None:
            await self._apply_if_changed(options)
        switch: multinode.ShapeSwitch | None = None
        if as_slice is None:
            switch, observed = await self._switch_shape(d, place.shape is not None)
            if switch is not None and not switch.create_new:
                return None, observed, None, switch  # the old shape's pods stop first
        if place.shape is None:
            workload = rename(builders.deployment(d, engine, serving, engine_claim,
                                                  set_replicas=set_replicas))
            await self._hand_over_replicas(d, workload, observed, set_replicas)
            try:
                observed = await self._apply_if_changed(workload) or observed
            except Exception as exc:
                refused = invalid_refusal(exc)
                if refused is None:
                    raise
                # A rule of Kubernetes the free-form fields (affinity, env) broke: a status
                # reason until the spec changes, not a retried failure.
                return Finding(Reason.POD_FIELD_INVALID, Severity.ERROR, "spec", (
                    f"the API server refused the serving Deployment: {refused}; correct the "
                    f"field it names (spec.affinity, spec.env, spec.resources)"),
                ), observed, None, switch
            return None, observed, "single", switch
        if first_group:
            # Made once, never rewritten: the operator reads no Secret.
            await self.writer.create_if_absent(multinode.ssh_secret(
                d, engine.metadata.name, *ssh_key_pair()))
        workload = rename(multinode.leaderworkerset(d, engine, serving, engine_claim,
                                                    place.shape, set_replicas=set_replicas))
        await self._hand_over_replicas(d, workload, observed, set_replicas)
        observed = multinode.group_status(await self.writer.apply(workload))
        return None, observed, "multi", switch

    async def _delete_workloads(self, d: LLMDeployment, keep: set[str]) -> None:
        """Delete this LLMDeployment's serving workloads not named in ``keep`` (a slice taken
        off the list, or the other form after a move between spec.gpu and spec.slices)."""
        namespace = d.metadata.namespace or ""
        for kind, wname in self.view.serving_workloads(namespace, d.metadata.name):
            if wname in keep:
                continue
            resource = Deployment if kind == "Deployment" else LeaderWorkerSetResource
            log.info("deleting %s %s/%s: no slice of LLMDeployment %s serves on it", kind,
                     namespace, wname, d.metadata.name)
            await self.writer.delete(resource, namespace, wname)

    async def _reconcile_pool(self, d: LLMDeployment, engine: LLMEngine | None,
                              status: LLMDeploymentStatus) -> LLMDeploymentStatus:
        """spec.inferencePool: apply the InferencePool where the CRD is served, else say why;
        the field removed: delete the one made before (the InferencePoolReady condition says
        there was one: the operator watches no InferencePools, so the CRD may come and go)."""
        key = (d.metadata.namespace or "", d.metadata.name)
        type_ = DeploymentConditionType.INFERENCE_POOL_READY
        if d.spec.inference_pool is None:
            self._pools_applied.pop(key, None)
            if cond.find_condition(d.status.conditions, type_) is None:
                return status
            if await self._pool_support(key[0]) != "missing":
                await self.writer.delete(InferencePoolResource, key[0],
                                         inference_pool.pool_name(d))
            return status.model_copy(update={"conditions": cond.remove_condition(
                status.conditions, type_)})
        ok, reason, message = await self._apply_pool(d, engine)
        conds = cond.set_condition(status.conditions, type_, ok, reason, message,
                                   observed_generation=d.metadata.generation, now=self.clock())
        ready = cond.find_condition(conds, DeploymentConditionType.READY)
        if ok != "True" and ready is not None and ready.status == "True":
            # Serving works, but not everything the spec asks for: not Ready.
            conds = cond.set_condition(conds, DeploymentConditionType.READY, "False", reason,
                                       message, observed_generation=d.metadata.generation,
                                       now=self.clock())
        return status.model_copy(update={"conditions": conds})

    async def _pool_support(self, namespace: str) -> str:
        return (await self.inference_pools(namespace) if self.inference_pools is not None
                else "missing")

    async def _apply_pool(self, d: LLMDeployment, engine: LLMEngine | None,
                          ) -> tuple[ConditionStatus, str, str]:
        """Apply the InferencePool unless the same manifest was applied lately: the
        InferencePoolReady condition's status, reason and message."""
        key = (d.metadata.namespace or "", d.metadata.name)
        missing: tuple[ConditionStatus, str, str] = ("False", "InferencePoolCRDMissing", (
            f"spec.inferencePool: the cluster does not serve {inference_pool.PLURAL}."
            f"{inference_pool.GROUP}/{inference_pool.VERSION}: {inference_pool.CRD_HINT}"))
        if engine is None:
            return "False", "EngineNotFound", (
                f"spec.inferencePool: no InferencePool until LLMEngine "
                f"{d.spec.engine_ref.name} exists")
        # "forbidden" (no right to list them) is tried all the same: the API server's
        # refusal of the write is the message that names the missing right.
        if await self._pool_support(key[0]) == "missing":
            self._pools_applied.pop(key, None)
            return missing
        manifest = inference_pool.inference_pool(d, engine.metadata.name)
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        last = self._pools_applied.get(key)
        now = self.monotonic()
        if last is None or last[0] != digest or now - last[1] >= self.pool_reapply_seconds:
            try:
                await self.writer.apply(manifest)
            except Exception as exc:
                self._pools_applied.pop(key, None)
                if not_served(exc):
                    # The CRD went since the support check: ask again next time.
                    self.forget_supports()
                    return missing
                if not isinstance(exc, ApiError):
                    raise
                code = exc.status.code
                if code == 403:
                    return "False", "InferencePoolForbidden", (
                        f"spec.inferencePool: {exc.status.message}: "
                        f"{inference_pool.RBAC_HINT}")
                refused = invalid_refusal(exc)
                if refused is None:
                    raise
                return "False", "InferencePoolInvalid", (
                    f"spec.inferencePool: the API server refused the InferencePool: {refused}; "
                    f"correct spec.inferencePool")
            self._pools_applied[key] = (digest, now)
        assert d.spec.inference_pool is not None
        return "True", "Applied", (
            f"InferencePool {inference_pool.pool_name(d)} selects the serving pods that answer "
            f"HTTP on port {d.spec.serve.port}; endpoint picker "
            f"{d.spec.inference_pool.endpoint_picker_ref.name}")

    # ------------------------------------------------------------ autoscaling and monitoring

    async def _scaling_before(self, d: LLMDeployment) -> Scaling:
        """What status says of scaling until the workload is reconciled: what it said, or,
        with autoscaling off, spec.replicas (and the autoscaler made before is deleted)."""
        if d.spec.autoscaling is None:
            await self._remove_autoscaler(d, None)
            return Scaling(pod_monitor=d.status.pod_monitor)
        owner = d.status.replicas_owner or "spec.replicas"
        return Scaling(owner=owner, pod_monitor=d.status.pod_monitor,
                       owned_by_autoscaler=owner != "spec.replicas", carried=True)

    async def _autoscaling_decision(self, d: LLMDeployment) -> autoscaling.Decision | None:
        spec = d.spec.autoscaling
        if spec is None:
            return None
        keda = ("missing" if spec.provider == "hpa"
                else await self.supports(autoscaling.SCALED_OBJECT, d.metadata.namespace))
        return autoscaling.decide(spec, keda, spec.prometheus_address or self.prometheus_address)

    async def _hand_over_replicas(self, d: LLMDeployment, workload: dict[str, Any],
                                  observed: Mapping[str, Any] | None,
                                  set_replicas: bool) -> None:
        """When an autoscaler takes over a workload the operator sized so far, another field
        manager first takes ``replicas`` at its current value: dropping it from the
        operator's apply would otherwise reset it to the default (one)."""
        if set_replicas or observed is None or (d.status.replicas_owner or "spec.replicas") \
                != "spec.replicas":
            return
        current = ((observed.get("spec") or {}).get("replicas")
                   if isinstance(observed.get("spec"), Mapping) else None)
        meta = workload["metadata"]
        await self.writer.apply_as({
            "apiVersion": workload["apiVersion"], "kind": workload["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": int(current if current is not None else d.spec.replicas)}},
            REPLICAS_HANDOVER_MANAGER)

    async def _reconcile_scaling(self, d: LLMDeployment, engine_name: str,
                                 serving: builders.Serving, target: autoscaling.ScaleTarget,
                                 decision: autoscaling.Decision | None,
                                 leaders: Mapping[str, str] | None) -> Scaling:
        """Apply (or remove) the autoscaler and the PodMonitor; what status says of them."""
        pod_monitor = await self._reconcile_pod_monitor(d, engine_name, serving, leaders)
        if decision is None:
            return Scaling(pod_monitor=pod_monitor)
        await self._remove_autoscaler(d, decision.provider)
        if decision.provider is None:
            return Scaling(condition=autoscaling.condition(d, decision, None),
                           pod_monitor=pod_monitor)
        spec = d.spec.autoscaling
        assert spec is not None
        metrics = autoscaling.effective_metrics(spec, serving.backend)
        if decision.provider == autoscaling.SCALED_OBJECT:
            address = spec.prometheus_address or self.prometheus_address
            assert address is not None
            await self._apply_unwatched(autoscaling.scaled_object(
                d, engine_name, target, metrics, address))
        else:
            await self._apply_if_changed(autoscaling.hpa(d, engine_name, target, metrics))
        fact = self.view.serving_autoscaler(d.metadata.namespace or "",
                                            autoscaling.hpa_name_for(decision.provider, d))
        return Scaling(owner=autoscaling.owner(decision.provider, d),
                       condition=autoscaling.condition(d, decision, fact),
                       pod_monitor=pod_monitor, owned_by_autoscaler=True)

    async def _remove_autoscaler(self, d: LLMDeployment,
                                 keep: autoscaling.Provider | None) -> None:
        """Delete the autoscaler status says the operator made, unless it is still wanted."""
        namespace, name = d.metadata.namespace or "", d.metadata.name
        made = (d.status.replicas_owner or "").split("/", 1)[0]
        for kind in (autoscaling.SCALED_OBJECT, autoscaling.HPA):
            if kind == keep:
                continue
            exists = (self.view.serving_child(kind, namespace, name) is not None
                      if kind == autoscaling.HPA else made == kind)
            if exists:
                await self.writer.delete_child(kind, namespace, name)
                self._applied.pop((kind, namespace, name), None)

    async def _reconcile_pod_monitor(self, d: LLMDeployment, engine_name: str,
                                     serving: builders.Serving,
                                     leaders: Mapping[str, str] | None) -> str | None:
        """The PodMonitor's name if one is kept; a PodMonitor no longer wanted is deleted."""
        namespace = d.metadata.namespace or ""
        wanted = (self.pod_monitors and builders.metrics_on(d, serving)
                  and await self.supports(monitoring.KIND, namespace) == "installed")
        if wanted:
            await self._apply_unwatched(monitoring.pod_monitor(d, engine_name, leaders))
            return monitoring.pod_monitor_name(d)
        if d.status.pod_monitor is not None:
            # The CRD may be gone (and the object with it): a 404 is fine.
            await self.writer.delete_child(monitoring.KIND, namespace, d.status.pod_monitor)
            self._applied.pop((monitoring.KIND, namespace, d.status.pod_monitor), None)
        return None

    async def _apply_unwatched(self, manifest: dict[str, Any]) -> None:
        """Apply a child the operator does not watch (its CRD may come and go) when it differs
        from what this process last applied."""
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        digest = builders.template_hash(manifest)
        if self._applied.get(key) == digest:
            return
        try:
            await self.writer.apply(manifest)
        except Exception as exc:
            if not not_served(exc):
                raise
            # The CRD went since the support check: nothing to keep; asked again next time.
            log.info("%s %s/%s not applied: the cluster no longer serves the kind", key[0],
                     key[1], key[2])
            self.forget_supports()
            return
        self._applied[key] = digest

    async def _switch_shape(self, d: LLMDeployment, groups: bool
                            ) -> tuple[multinode.ShapeSwitch | None, Mapping[str, Any] | None]:
        """When a workload of the other shape exists (the engine was rebuilt with other
        parallelism): the next step of replacing it (see :func:`multinode.shape_switch`),
        taken here for the old workload, and the new shape's workload as observed."""
        namespace, name = d.metadata.namespace or "", d.metadata.name
        group_set = self.view.serving_group_set(namespace, multinode.lws_name(d))
        single = self.view.serving_deployment(namespace, name)
        new, old = (group_set, single) if groups else (single, group_set)
        # LWS pods carry their group index; Deployment pods do not. Pods outlive their
        # deleted workload (garbage collection, grace periods) and hold GPUs until gone.
        old_pods = [p for p in self.view.serving_pods(namespace, name)
                    if (p.group is None) == groups]
        if old is None and not old_pods:
            return None, new
        old_kind = "Deployment" if groups else "LeaderWorkerSet"
        new_ready = int(((new or {}).get("status") or {}).get("readyReplicas") or 0)
        step = multinode.shape_switch(d, old_kind, len(old_pods), new_ready)
        if step.delete_old and old is not None:
            if groups:
                await self.writer.delete(Deployment, namespace, name)
            else:
                await self.writer.delete(LeaderWorkerSetResource, namespace,
                                         multinode.lws_name(d))
        return step, new

    async def _apply_if_changed(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Apply a child unless the watched copy already matches it (see
        :func:`builders.up_to_date`); the applied object, or None when nothing was written."""
        write = self._child_write(manifest)
        return await write() if write is not None else None

    def _child_write(self, manifest: dict[str, Any]
                     ) -> Callable[[], Awaitable[dict[str, Any]]] | None:
        """The write that brings a child to ``manifest``, or None when the watched copy (or
        one this process created, not yet shown by the watch) already matches."""
        desired = builders.with_spec_hash(manifest)
        ident = _child_id(desired)
        observed = self.view.serving_child(*ident)
        want = desired["metadata"]["annotations"][builders.SPEC_HASH_ANNOTATION]
        mine = self.created.get(ident)
        if observed is None and mine is not None and mine[0] == want and (
                time.monotonic() - mine[1] < CREATED_GRACE_SECONDS):
            return None  # created by an earlier reconcile; its event has not arrived yet
        if observed is not None:
            self.created.pop(ident, None)  # the watch has caught up: it is the judge again
        if builders.up_to_date(desired, observed):
            return None

        async def write() -> dict[str, Any]:
            if observed is not None:
                made = await self.writer.apply(desired)
            else:
                # New to the watch: a create, far cheaper for the API server than an apply
                # (see Kube.create_child); an existing one is applied instead.
                made = await self.writer.create_child(desired)
                self.created[ident] = (want, time.monotonic())
            version = (made.get("metadata") or {}).get("resourceVersion")
            if version:
                self._written[ident] = str(version)
            return made
        return write

    async def _apply_service(self, d: LLMDeployment, manifest: dict[str, Any]) -> None:
        """The Service, on the service lane when there is one (see :mod:`write_lane`)."""
        lane = self.service_lane
        child = _child_id(manifest)
        if lane is None or lane.failure(child) is not None:
            # No lane, or its last write of this Service failed: made here until one succeeds,
            # so the error is this reconcile's (back-off, ReconcileError in status).
            await self._apply_if_changed(manifest)
            if lane is not None:
                lane.clear(child)
            return
        if lane.busy(child):
            return  # its end queues this LLMDeployment again
        write = self._child_write(manifest)
        if write is not None:
            lane.submit(child, (d.metadata.namespace or "", d.metadata.name), write())

    def _unless_service_pending(self, d: LLMDeployment,
                                status: LLMDeploymentStatus) -> LLMDeploymentStatus:
        """Not Ready while its Service is still being written: the endpoint does not exist."""
        lane = self.service_lane
        name = (d.metadata.namespace or "", d.metadata.name)
        if lane is None or not lane.busy(("Service", *name)) or not cond.is_true(
                status.conditions, DeploymentConditionType.READY):
            return status
        return status.model_copy(update={"conditions": cond.set_condition(
            status.conditions, DeploymentConditionType.READY, "False", "ServicePending",
            f"the Service {d.metadata.name} (the endpoint) is being written",
            observed_generation=d.metadata.generation, now=self.clock())})

    def is_status_echo(self, key: Key, body: Mapping[str, Any]) -> bool:
        """``body`` is the object as the reconcile that last wrote its status saw it, with
        that status: its watch event brings nothing to reconcile (a new fleet's status writes
        were a third of its reconciles)."""
        return self._status_echo.get(key) == status_echo(body, body.get("status") or {})

    def is_child_echo(self, kind: str, namespace: str, name: str,
                      body: Mapping[str, Any]) -> bool:
        """``body`` (a child's watch event) is the object exactly as this controller's own
        last write of it answered: the reconcile that wrote it has already read that state,
        so the event brings nothing new (skipping them cut a new fleet's reconciles by a
        quarter, make bench). Any later change (a controller's status write, a hand edit, a
        delete) has another resourceVersion and is reconciled."""
        ident = (kind, namespace, name)
        version = (body.get("metadata") or {}).get("resourceVersion")
        if version is None or self._written.get(ident) != str(version):
            return False
        del self._written[ident]
        return True

    def forget_child(self, kind: str, namespace: str, name: str) -> None:
        """The watch saw this child deleted: the next reconcile creates it again."""
        self.created.pop((kind, namespace, name), None)
        self._written.pop((kind, namespace, name), None)

    def _status(self, d: LLMDeployment, chosen: EngineChoice, preflight: Finding | None,
                dep: Mapping[str, Any] | None, facts: ClusterFacts,
                pods: list[PodFact], scaling: Scaling | None = None,
                switching: str | None = None) -> LLMDeploymentStatus:
        gen = d.metadata.generation
        now = self.clock()
        # Computed only by a reconcile that got this far: a past ReconcileError is over.
        conds = cond.remove_condition(d.status.conditions, RECONCILE_ERROR)

        def put(type_: str, status: ConditionStatus, reason: str, message: str) -> None:
            nonlocal conds
            conds = cond.set_condition(conds, type_, status, reason, message,
                                       observed_generation=gen, now=now)

        put(DeploymentConditionType.ENGINE_READY, chosen.ready, chosen.reason, chosen.message)
        scaling = scaling or Scaling()
        if scaling.condition is not None:
            put(DeploymentConditionType.AUTOSCALING, *scaling.condition)
        elif not scaling.carried:
            conds = cond.remove_condition(conds, DeploymentConditionType.AUTOSCALING)
        dstatus = (dep or {}).get("status") or {}
        desired = d.spec.replicas
        if scaling.owned_by_autoscaler:
            # The autoscaler's choice, as the workload holds it.
            sized = ((dep or {}).get("spec") or {}).get("replicas")
            desired = int(sized) if sized is not None else int(dstatus.get("replicas") or 0)
        replicas = int(dstatus.get("replicas") or 0)
        ready = int(dstatus.get("readyReplicas") or 0)
        available = int(dstatus.get("availableReplicas") or 0)
        updated = int(dstatus.get("updatedReplicas") or 0)

        avail = _dep_condition(dep, "Available")
        if dep is None:
            put(DeploymentConditionType.AVAILABLE, "False", "NoDeployment",
                "no trtllm-serve Deployment yet")
        elif avail is not None:
            put(DeploymentConditionType.AVAILABLE, avail.get("status", "Unknown"),
                avail.get("reason") or "Unknown", avail.get("message") or "")
        else:
            put(DeploymentConditionType.AVAILABLE, "Unknown", "Pending",
                "the Deployment has not reported availability yet")

        meta = (dep or {}).get("metadata") or {}
        observed_gen = int(dstatus.get("observedGeneration") or 0)
        current = dep is not None and observed_gen >= int(meta.get("generation") or 0)
        rolled_out = (current and updated == desired and replicas == desired
                      and available == desired and ready == desired)
        prog = _dep_condition(dep, "Progressing")
        if dep is None:
            put(DeploymentConditionType.PROGRESSING, "False", "NoDeployment",
                "nothing to roll out until the engine is built")
        elif not rolled_out:
            put(DeploymentConditionType.PROGRESSING, "True",
                (prog or {}).get("reason") or "RollingOut",
                f"{updated}/{desired} updated, {available}/{desired} available"
                + (f": {prog.get('message')}" if prog and prog.get("message") else ""))
        else:
            put(DeploymentConditionType.PROGRESSING, "False", "RolloutComplete",
                f"{desired} replica(s) on the current engine and settings")

        r_status: ConditionStatus
        unschedulable = next((p.unschedulable for p in pods if p.unschedulable), None)
        stuck = serving_pod_problem(d, pods, chosen.target.image if chosen.target else None)
        if chosen.ready != "True":
            r_status, r_reason, r_msg = "False", chosen.reason, chosen.message
        elif preflight is not None:
            r_status, r_reason, r_msg = "False", preflight.reason.value, preflight.message
        elif switching is not None:
            r_status, r_reason, r_msg = "False", "ShapeSwitching", switching
        elif not rolled_out and stuck is not None:
            r_status, r_reason, r_msg = "False", stuck.reason.value, stuck.message
        elif not rolled_out and (dep or {}).get("kind") == "LeaderWorkerSet" and (
                pending := multinode.pending_groups(pods)):
            r_status, r_reason = "False", "GroupPending"
            gpu_type = chosen.target.gpu if chosen.target else None
            r_msg = multinode.group_pending_message(
                pending, ready, desired, gpu_type, self._whole_free_nodes(dep, gpu_type))
        elif not rolled_out and unschedulable:
            r_status, r_reason = "False", "PodsUnschedulable"
            r_msg = f"serving pods cannot be scheduled: {unschedulable}"
        elif not rolled_out:
            r_status, r_reason = "False", "RollingOut"
            r_msg = f"{ready}/{desired} ready, {updated}/{desired} updated"
        else:
            r_status, r_reason = "True", "Ready"
            r_msg = f"{ready}/{desired} replicas ready"
        put(DeploymentConditionType.READY, r_status, r_reason, r_msg)

        template = ((dep or {}).get("spec") or {}).get("template") or {}
        fingerprint = ((template.get("metadata") or {}).get("annotations") or {}).get(
            builders.FINGERPRINT_ANNOTATION)
        gpu = _serving_gpu(dep) or (chosen.target.gpu if chosen.target else None)
        # The reason belongs to the GPU type in status: a move not rolled out (a preflight
        # stopped it) keeps the reason of the type still served.
        same = chosen.target is not None and gpu == chosen.target.gpu
        return LLMDeploymentStatus(
            observed_generation=gen, conditions=conds,
            replicas=replicas, ready_replicas=ready,
            replica_summary=f"{ready}/{desired}",
            selector=builders.selector_string(d),
            gpu=gpu,
            gpu_reason=chosen.gpu_reason if same else d.status.gpu_reason,
            engine_fingerprint=fingerprint,
            endpoint=builders.endpoint(d) if dep is not None else None,
            replicas_owner=scaling.owner,
            pod_monitor=scaling.pod_monitor,
        )

    def _with_scaling(self, status: LLMDeploymentStatus,
                      scaling: Scaling) -> LLMDeploymentStatus:
        """A fleet's status (spec.slices) with what the whole fleet's scaling says."""
        conds = status.conditions
        if scaling.condition is not None:
            conds = cond.set_condition(conds, DeploymentConditionType.AUTOSCALING,
                                       *scaling.condition,
                                       observed_generation=status.observed_generation,
                                       now=self.clock())
        elif not scaling.carried:
            conds = cond.remove_condition(conds, DeploymentConditionType.AUTOSCALING)
        return status.model_copy(update={"conditions": conds, "replicas_owner": scaling.owner,
                                         "pod_monitor": scaling.pod_monitor})

    def _whole_free_nodes(self, lws: Mapping[str, Any] | None,
                          gpu: str | None) -> tuple[int, int, int] | None:
        """(whole free nodes of the type, GPUs per pod, pods per group) of a group set."""
        group = (lws or {}).get("group") or {}
        size, per_pod = int(group.get("size") or 0), int(group.get("gpusPerPod") or 0)
        if gpu is None or not size or not per_pod:
            return None
        selector = ((((lws or {}).get("spec") or {}).get("template") or {}).get("spec")
                    or {}).get("nodeSelector") or {}
        free = gpu_usage.whole_free_nodes(self.view.free_gpus(gpu, selector), per_pod)
        return free, per_pod, size

    def _emit(self, body: Mapping[str, Any], old: LLMDeploymentStatus,
              new: LLMDeploymentStatus) -> None:
        # The first choice is told by the EngineReady event; this one marks a move.
        if old.gpu is not None and new.gpu not in (None, old.gpu) and new.gpu_reason:
            self.events(body, "Normal", "GPUChosen", new.gpu_reason[:1024])
        for type_ in (DeploymentConditionType.ENGINE_READY, DeploymentConditionType.READY,
                      DeploymentConditionType.AUTOSCALING):
            before = cond.find_condition(old.conditions, type_)
            after = cond.find_condition(new.conditions, type_)
            if after is None or (before is not None and (before.status, before.reason)
                                 == (after.status, after.reason)):
                continue
            waiting = after.reason in _WAITING_REASONS
            if after.reason in _ROLLOUT_STEPS and type_ == DeploymentConditionType.READY and (
                    before is None or before.reason in _WAITING_REASONS):
                # A new object starting to roll out, or a step within a rollout: Ready's
                # event comes when it serves (or cannot).
                continue
            if before is None and after.reason == "EngineBuilt" and (
                    type_ == DeploymentConditionType.ENGINE_READY):
                # Its engine, on the type it names, was built before it was created: nothing
                # happened to announce. A wait for a build ends with this Event, and a choice
                # of GPU type (EngineChosen) is announced with its reason.
                continue
            kind = "Normal" if after.status == "True" or waiting else "Warning"
            self.events(body, kind, after.reason[:128], after.message[:1024])
