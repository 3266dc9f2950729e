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

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from lightkube.resources.apps_v1 import Deployment

from trtllm_operator import conditions as cond
from trtllm_operator import gpu_usage, gpus, metrics, trtllm_facts
from trtllm_operator.api import (
    ConditionStatus,
    EngineTargetStatus,
    LLMDeployment,
    LLMDeploymentStatus,
    LLMEngine,
)
from trtllm_operator.api.deployment import DeploymentConditionType
from trtllm_operator.api.engine import BuiltLimits, size_hint_bytes
from trtllm_operator.claims import SHARED_READ, ClaimFact, check_claim
from trtllm_operator.deployments import builders, choice, multinode
from trtllm_operator.kube import LeaderWorkerSetResource, invalid_refusal
from trtllm_operator.kube_objects import check_deployment_objects
from trtllm_operator.pods import PodContext, PodFact, PodProblem, diagnose
from trtllm_operator.reconcile_errors import RECONCILE_ERROR
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

log = logging.getLogger(__name__)

Key = tuple[str, str]
NOT_READY_RESYNC_SECONDS = 60.0


class Writer(Protocol):
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    async def create_if_absent(self, manifest: dict[str, Any]) -> bool: ...
    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None: ...
    async def delete(self, resource: Any, namespace: str, name: str) -> bool: ...


class View(Protocol):
    def deployment_body(self, key: Key) -> Mapping[str, Any] | None: ...
    def engine(self, key: Key) -> Mapping[str, Any] | None: ...
    def cluster_facts(self) -> ClusterFacts: ...
    def serving_deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    def serving_child(self, kind: str, namespace: str,
                      name: str) -> Mapping[str, Any] | None: ...
    def serving_group_set(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    def serving_pods(self, namespace: str, name: str) -> list[PodFact]: ...
    def claim(self, namespace: str, name: str) -> ClaimFact | None: ...
    def free_gpus(self, product: str, selector: Mapping[str, str]) -> dict[str, int]: ...


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
    lws_refusal: str = ""
    """When forbidden, the API server's refusal (names the operator's account), for status."""

    async def reconcile(self, key: Key) -> Result | None:
        body = self.view.deployment_body(key)
        if body is None:
            metrics.record_ready("LLMDeployment", key, None)
            self.status_writes.forget(key)
            return None
        d = LLMDeployment.model_validate(body)
        if d.metadata.deletion_timestamp is not None:
            return None  # garbage collection removes the Deployment and Service
        namespace, name = key
        engine_body = self.view.engine((namespace, d.spec.engine_ref.name))
        engine = LLMEngine.model_validate(engine_body) if engine_body else None
        facts = self.view.cluster_facts()
        findings = (*check_deployment_objects(d.spec), *validate_deployment(
            d.spec, engine.spec if engine else None, facts,
            resolved=resolved_targets(engine) if engine else None))
        group_set = self.view.serving_group_set(namespace, name)
        observed = group_set or self.view.serving_deployment(namespace, name)
        # What it serves on now: the running Deployment's GPU type, else what status recorded.
        chosen = choose_target(d, engine, findings, facts,
                               current=_serving_gpu(observed) or d.status.gpu, lws=self.lws)

        preflight: Finding | None = None
        switch: multinode.ShapeSwitch | None = None
        # An engine whose status is not yet about its current spec can list a target built
        # from the old one: serving it with the new spec's parallelism would mix the two (an
        # LWS of an old one-node engine). Nothing is applied until its status catches up,
        # which reconciles this again.
        if chosen.target is not None and engine is not None and (
                engine.status.observed_generation in (None, engine.metadata.generation)):
            place = placement(engine, chosen.target.gpu, facts, self.lws, self.lws_refusal)
            # Serving pods mount the engine's claim read-only, on many nodes.
            engine_claim = engine.spec.storage.claim_name
            claim_problems = check_claim(
                self.view.claim(namespace, engine_claim), engine_claim, namespace,
                f"LLMEngine {engine.metadata.name} spec.storage.claimName", SHARED_READ)
            preflight = next(iter([*claim_problems, *filter(None, [place.problem])]), None)
            if preflight is None:
                serving = serving_for(engine, chosen.target)
                claim = engine.spec.storage.claim_name
                options = builders.options_configmap(d, engine.metadata.name,
                                                     serving.backend)
                if options is not None:
                    await self._apply_if_changed(options)
                switch, observed = await self._switch_shape(d, place.shape is not None)
                if switch is not None and not switch.create_new:
                    pass  # the old shape's pods stop first
                elif place.shape is None:
                    try:
                        observed = await self._apply_if_changed(
                            builders.deployment(d, engine, serving, claim)) or observed
                    except Exception as exc:
                        refused = invalid_refusal(exc)
                        if refused is None:
                            raise
                        # A rule of Kubernetes the free-form fields (affinity, env) broke: a
                        # status reason until the spec changes, not a retried failure.
                        preflight = Finding(Reason.POD_FIELD_INVALID, Severity.ERROR, "spec", (
                            f"the API server refused the serving Deployment: {refused}; "
                            f"correct the field it names (spec.affinity, spec.env, "
                            f"spec.resources)"))
                    else:
                        if switch is None or not switch.keep_old_service:
                            await self._apply_if_changed(
                                builders.service(d, engine.metadata.name))
                else:
                    if group_set is None:
                        # Made once, never rewritten: the operator reads no Secret.
                        await self.writer.create_if_absent(multinode.ssh_secret(
                            d, engine.metadata.name, *ssh_key_pair()))
                    observed = multinode.group_status(await self.writer.apply(
                        multinode.leaderworkerset(d, engine, serving, claim, place.shape)))
                    if switch is None or not switch.keep_old_service:
                        await self.writer.apply(
                            multinode.leader_service(d, engine.metadata.name))

        status = self._status(d, chosen, preflight, observed, facts,
                              switching=switch.message if switch else None)
        status = status.model_copy(update={"conditions": spec_warning_condition(
            status.conditions, findings, d.metadata.generation, self.clock())})
        metrics.record_ready("LLMDeployment", key, cond.is_true(
            status.conditions, DeploymentConditionType.READY))
        old_wire, new_wire = d.status.to_wire(), status.to_wire()
        if await self.status_writes.publish(self.writer, key, old_wire, new_wire,
                                            uid=d.metadata.uid):
            self._emit(body, d.status, status)
            emit_spec_warnings(self.events, body, d.status.conditions, status.conditions,
                               findings)
        if not cond.is_true(status.conditions, DeploymentConditionType.READY):
            return Result(requeue_after=NOT_READY_RESYNC_SECONDS)
        return None

    async def _switch_shape(self, d: LLMDeployment, groups: bool
                            ) -> tuple[multinode.ShapeSwitch | None, Mapping[str, Any] | None]:
        """When a workload of the other shape exists (the engine was rebuilt with other
        parallelism): the next step of replacing it (see :func:`multinode.shape_switch`),
        taken here for the old workload, and the new shape's workload as observed."""
        namespace, name = d.metadata.namespace or "", d.metadata.name
        group_set = self.view.serving_group_set(namespace, name)
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
        desired = builders.with_spec_hash(manifest)
        meta = desired["metadata"]
        if builders.up_to_date(desired, self.view.serving_child(
                desired["kind"], meta["namespace"], meta["name"])):
            return None
        return await self.writer.apply(desired)

    def _status(self, d: LLMDeployment, chosen: EngineChoice, preflight: Finding | None,
                dep: Mapping[str, Any] | None, facts: ClusterFacts,
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
        dstatus = (dep or {}).get("status") or {}
        desired = d.spec.replicas
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
        pods = self.view.serving_pods(d.metadata.namespace or "", d.metadata.name)
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
        )

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
        for type_ in (DeploymentConditionType.ENGINE_READY, DeploymentConditionType.READY):
            before = cond.find_condition(old.conditions, type_)
            after = cond.find_condition(new.conditions, type_)
            if after is None or (before is not None and (before.status, before.reason)
                                 == (after.status, after.reason)):
                continue
            waiting = after.reason in ("RollingOut", "EngineNotBuilt", "EnginePending",
                                       "EngineBuilding", "ShapeSwitching")
            kind = "Normal" if after.status == "True" or waiting else "Warning"
            self.events(body, kind, after.reason[:128], after.message[:1024])
