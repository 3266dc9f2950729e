"""LLMEngine reconcile: observe (from memory) -> plan -> apply what differs -> report status.

Everything read here comes from the operator's in-memory view of the cluster (kopf indexes,
see :mod:`trtllm_operator.handlers`); the only API calls are writes: a build Job or the
entrypoint ConfigMap when missing, a Job deletion for a removed target, and the status patch
when the status differs from what is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from trtllm_jobs.reporting import last_progress
from trtllm_operator import conditions as cond
from trtllm_operator import metrics
from trtllm_operator.api import ConditionStatus, EngineTargetStatus, LLMEngine, LLMEngineStatus
from trtllm_operator.api.engine import EngineConditionType, ModelCacheStatus, SkippedTarget
from trtllm_operator.claims import CLAIM_REASONS, ClaimFact, check_engine_claims
from trtllm_operator.engines import jobs
from trtllm_operator.engines import model_cache as mc
from trtllm_operator.engines import quantize as qz
from trtllm_operator.engines.planning import (
    CheckpointKey,
    TargetPlan,
    checkpoint_key,
    plan_target,
)
from trtllm_operator.engines.status import (
    AUTO_TARGET,
    Decision,
    Observed,
    build_pod_problem,
    decide_target,
    no_targets_reason,
    resolve_targets,
    skipped_targets,
)
from trtllm_operator.kube_objects import check_engine_objects
from trtllm_operator.pods import STUCK_REASONS
from trtllm_operator.reconcile_errors import RECONCILE_ERROR
from trtllm_operator.reconciling import engine_stalled, progress_conditions
from trtllm_operator.spec_warnings import emit_spec_warnings, spec_warning_condition
from trtllm_operator.status_writes import StatusWrites
from trtllm_operator.validation import (
    CheckpointSize,
    ClusterFacts,
    Finding,
    Severity,
    checkpoint_size,
    effective_backend,
    validate_engine,
)
from trtllm_operator.workqueue import Result

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

# While a build runs, look again this often even without events (a safety net only: Job and
# pod events drive progress).
BUILDING_RESYNC_SECONDS = 120.0


IN_USE_FINALIZER = "trtllm.dev/in-use-protection"

# Target reasons about the cluster's state (a pod that cannot start, an unusable claim): their
# Event carries the reason itself, as a Warning, even while the target stays Pending.
ANNOUNCED_REASONS = STUCK_REASONS | CLAIM_REASONS


class Writer(Protocol):
    async def create_if_absent(self, manifest: dict[str, Any]) -> bool: ...
    async def set_finalizers(self, kind: str, namespace: str, name: str,
                             finalizers: list[str], resource_version: str | None) -> None: ...
    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None: ...
    async def delete(self, resource: Any, namespace: str, name: str) -> bool: ...


class View(Protocol):
    """The in-memory view of the cluster the reconcile reads."""

    def engine(self, key: Key) -> Mapping[str, Any] | None: ...
    def cluster_facts(self) -> ClusterFacts: ...
    def job(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    def newest_pod(self, namespace: str, job_name: str) -> Mapping[str, Any] | None: ...
    def built_elsewhere(self, namespace: str, job_name: str,
                        but_not: str) -> EngineTargetStatus | None: ...
    def jobs_of_engine(self, namespace: str, engine: str) -> list[str]: ...
    def deployments_using(self, namespace: str, engine: str) -> list[str]: ...
    def job_wanted_by_others(self, namespace: str, job_name: str, but_not: str) -> bool: ...
    def has_configmap(self, namespace: str, name: str) -> bool: ...
    def claim(self, namespace: str, name: str) -> ClaimFact | None: ...
    def model_cached_elsewhere(self, namespace: str, job_name: str,
                               but_not: str) -> ModelCacheStatus | None: ...
    def checkpoint_bytes(self, key: CheckpointKey | None) -> int | None: ...


LogReader = Callable[[str, str, str, int], Awaitable[str | None]]
"""(namespace, pod, container, tail lines) -> the log's last lines, None if unreadable."""


EventSink = Callable[[Mapping[str, Any], str, str, str], None]
"""(object body, type Normal|Warning, reason, message) -> posts a Kubernetes Event."""


@dataclass
class EngineController:
    view: View
    writer: Writer
    events: EventSink
    job_resource: Any
    script: Mapping[str, str] = field(default_factory=jobs.entrypoint_files)
    active_deadline_seconds: int = 6 * 3600
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    status_writes: StatusWrites = field(default_factory=lambda: StatusWrites("LLMEngine"))
    log_reader: LogReader | None = None
    """Reads a running download pod's progress; None: progress is not shown."""
    monotonic: Callable[[], float] = time.monotonic
    _progress: dict[tuple[str, str], tuple[float, tuple[int, int] | None]] = field(
        default_factory=dict)

    async def reconcile(self, key: Key) -> Result | None:
        body = self.view.engine(key)
        if body is None:
            metrics.record_ready("LLMEngine", key, None)
            self.status_writes.forget(key)
            return None  # deleted: garbage collection removes its Jobs
        engine = LLMEngine.model_validate(body)
        namespace, name = key
        if engine.metadata.deletion_timestamp is not None:
            return await self._deleting(engine, body)  # start nothing new
        if IN_USE_FINALIZER not in engine.metadata.finalizers:
            await self.writer.set_finalizers(
                "LLMEngine", namespace, name, [*engine.metadata.finalizers, IN_USE_FINALIZER],
                engine.metadata.resource_version)
        facts = self.view.cluster_facts()
        model = await self._model(engine)
        size = checkpoint_size(engine.spec, self.view.checkpoint_bytes(
            checkpoint_key(namespace, engine.spec.model.to_wire())),
            cached_bytes=mc.model_size_source(model.status if model else None))

        findings = (*check_engine_objects(engine.spec), *validate_engine(
            engine.spec.model_copy(update={"targets": tuple(
                t for t in engine.spec.targets if t != AUTO_TARGET)}), facts, size))
        auto_findings = self._auto_candidates(engine, facts, size)
        eligible = {gpu: not any(f.severity == Severity.ERROR for f in fs)
                    for gpu, fs in auto_findings.items()}
        targets = resolve_targets(engine.spec, facts, eligible)
        skipped = skipped_targets(auto_findings, facts)
        by_gpu: dict[str, list[Finding]] = {}
        for f in (*findings, *[f for fs in auto_findings.values() for f in fs]):
            if f.gpu is not None:
                by_gpu.setdefault(f.gpu, []).append(f)
        # An Error that names no GPU (e.g. BuilderImageUnsupported) is wrong for every
        # target: each becomes Invalid and no Job starts. Warnings without a GPU stay in
        # the SpecWarning condition only.
        spec_errors = [f for f in findings if f.gpu is None and f.severity == Severity.ERROR]
        for gpu in targets:
            by_gpu.setdefault(gpu, [])[:0] = spec_errors

        # Every target writes to (and may read from) the same claims: their findings go to each.
        claim_findings = check_engine_claims(
            engine.spec, namespace, lambda claim: self.view.claim(namespace, claim))

        previous = {t.gpu: t for t in engine.status.targets}
        plans: list[TargetPlan] = []
        decisions: list[Decision] = []
        wants_build = False
        pytorch = effective_backend(engine.spec) == "pytorch"
        quant = engine.spec.build.quantization
        quantized = quant is not None and quant.format is not None
        hf_repo = engine.spec.model.hugging_face.repo if engine.spec.model.hugging_face else None
        for gpu in targets:
            plan = plan_target(engine, gpu)
            plans.append(plan)
            pod = self.view.newest_pod(namespace, plan.job_name)
            observed = Observed(
                job=self.view.job(namespace, plan.job_name),
                pod=pod,
                built_elsewhere=self.view.built_elsewhere(namespace, plan.job_name, name),
                previous=previous.get(gpu),
                stuck=build_pod_problem(engine.spec, namespace, pod),
            )
            decision = decide_target(plan, engine.spec.build.image, namespace,
                                     [*claim_findings, *by_gpu.get(gpu, [])], observed, facts)
            wants_build = wants_build or decision.create_job
            if pytorch and model is not None and hf_repo is not None and not quantized:
                # No engine to build: the target serves the cached checkpoint once it is in.
                decision = mc.serve_cached_checkpoint(decision, model, hf_repo)
            elif pytorch and not quantized and engine.spec.model.volume is not None:
                decision = mc.serve_volume_checkpoint(decision, engine.spec)
            elif pytorch and not quantized:
                decision = Decision(decision.status)  # refused by preflight: never a Job
            decisions.append(mc.gate_target(decision, model) if model else decision)
        if model is not None and model.create_job and not wants_build:
            model = None  # every target is built or cannot build: nothing to download for
        # A quantized pytorch engine: targets still waiting (the checkpoint is cached, and the
        # calibration dataset when one is fetched) show the one shared export's quantize Job
        # instead of starting builds of their own.
        data_plan = mc.plan_calibration(engine.spec) if pytorch and quantized else None
        data = (await self._model(engine, data_plan, engine.status.calibration_data)
                if data_plan is not None else None)
        if data is not None and data.create_job and not wants_build:
            data = None  # every target is built or cannot build: nothing to fetch it for
        if data is not None and model is not None and model.cached and not data.cached:
            decisions = [Decision(mc.gate_target(d, data, "calibration dataset").status)
                         if d.create_job else d for d in decisions]
        qplan = (qz.plan_quantize(engine.spec, model.status.commit or "",
                                  data.status.path if data is not None else None)
                 if pytorch and quantized and model is not None and model.cached
                 and (data_plan is None or (data is not None and data.cached)) else None)
        quantize_manifest: dict[str, Any] | None = None
        if pytorch and quantized and qplan is None:
            decisions = [Decision(d.status) for d in decisions]  # never a build Job
        elif qplan is not None and model is not None:
            decisions, quantize_manifest = self._quantize(
                engine, qplan, plans, decisions, facts, model.status.checkpoint_bytes)

        # Running builds need the script too: pods of a Job whose ConfigMap was deleted would
        # wait in ContainerCreating (FailedMount) until the build deadline.
        if (model is not None and model.create_job) or quantize_manifest is not None or (
                data is not None and data.create_job) or any(
                d.create_job or d.status.state in ("Pending", "Building") for d in decisions):
            await self._ensure_script(namespace)
        model_plan = mc.plan_model(engine.spec)
        if model is not None and model_plan is not None and model.create_job:
            await self.writer.create_if_absent(mc.download_job(
                engine, model_plan, jobs.script_configmap_name(self.script),
                self.active_deadline_seconds))
        if data is not None and data_plan is not None and data.create_job:
            await self.writer.create_if_absent(mc.download_job(
                engine, data_plan, jobs.script_configmap_name(self.script),
                self.active_deadline_seconds))
        if quantize_manifest is not None:
            await self.writer.create_if_absent(quantize_manifest)
        cached_path = model.status.path if model is not None and model.cached else None
        for plan, decision in zip(plans, decisions, strict=True):
            # Created, never applied: a Job's template is immutable, and engines sharing a
            # fingerprint share the Job. 409 means it is already there (made by another engine,
            # or by us a moment ago and not yet in the view): nothing started, nothing counted.
            # The GPU's memory lets the build Job refuse a model too big for it before the
            # download (exit 7, ModelDoesNotFit), when the operator could not tell beforehand.
            if decision.create_job and await self.writer.create_if_absent(jobs.build_job(
                    engine, plan, jobs.script_configmap_name(self.script),
                    self.active_deadline_seconds, gpu_memory_mib=facts.memory_mib(plan.gpu),
                    cached_path=cached_path)):
                metrics.BUILDS_STARTED.labels(plan.gpu).inc()
        await self._delete_unplanned_jobs(namespace, name, {p.job_name for p in plans} | (
            {model_plan.job_name} if model_plan is not None else set()) | (
            {qplan.job_name} if qplan is not None else set()) | (
            {data_plan.job_name} if data_plan is not None else set()))

        statuses = tuple(d.status for d in decisions)
        new_status = self._status(engine, statuses, findings, skipped,
                                  model.status if model is not None else None)
        if data is not None:
            new_status = new_status.model_copy(update={"calibration_data": data.status})
        metrics.record_ready("LLMEngine", key, cond.is_true(new_status.conditions,
                                                            EngineConditionType.READY))
        old_wire = engine.status.to_wire()
        new_wire = new_status.to_wire()
        announced = self._skipped_announced(key, engine)
        if await self.status_writes.publish(self.writer, key, old_wire, new_wire,
                                            uid=engine.metadata.uid):
            self._emit_transitions(body, previous, statuses)
            if model is not None:
                self._emit_model_transition(body, engine.status.model_cache, model.status)
            if data is not None:
                self._emit_model_transition(body, engine.status.calibration_data, data.status,
                                            "calibration dataset")
            emit_spec_warnings(self.events, body, engine.status.conditions,
                               new_status.conditions, findings)
            self._emit_skipped(body, announced, skipped)
        if any(m is not None and m.status.state == "Downloading" for m in (model, data)) \
                and self.log_reader is not None:
            # Pod logs send no events: look again for the next progress line.
            return Result(requeue_after=mc.PROGRESS_READ_SECONDS)
        if any(s.state in ("Building", "Pending", "Unschedulable") for s in statuses):
            return Result(requeue_after=BUILDING_RESYNC_SECONDS)
        return None

    def _quantize(self, engine: LLMEngine, plan: qz.QuantizePlan,
                  plans: list[TargetPlan], decisions: list[Decision], facts: ClusterFacts,
                  checkpoint_bytes: int | None) -> tuple[list[Decision], dict[str, Any] | None]:
        """Every waiting target's status from the shared export, and the quantize Job to
        create (None: it exists, or is not needed, or no target can hold the model)."""
        namespace, name = engine.metadata.namespace or "", engine.metadata.name
        candidates = [p.gpu for p, d in zip(plans, decisions, strict=True) if d.create_job]
        if not candidates:
            return decisions, None
        job = self.view.job(namespace, plan.job_name)
        pod = self.view.newest_pod(namespace, plan.job_name) if job is not None else None
        recorded = next((t for t in engine.status.targets
                         if t.job == plan.job_name and t.state == "Built"), None) \
            or self.view.built_elsewhere(namespace, plan.job_name, name)
        choice = qz.choose_gpu(candidates, facts, checkpoint_bytes)
        outcome = qz.decide_quantize(plan, namespace, qz.QuantizeObserved(
            job=job, pod=pod, recorded=recorded,
            stuck=build_pod_problem(engine.spec, namespace, pod)), choice, candidates,
            checkpoint_bytes)
        manifest = None
        if outcome.create_job and choice is not None:
            manifest = jobs.quantize_job(engine, plan.commit, choice.gpu, choice.gpus,
                                         jobs.script_configmap_name(self.script),
                                         self.active_deadline_seconds, plan.dataset_path)
        return [qz.apply_outcome(d, plan, outcome, checkpoint_bytes) for d in decisions], \
            manifest

    async def _model(self, engine: LLMEngine, plan: mc.ModelPlan | None = None,
                     previous: ModelCacheStatus | None = None) -> mc.ModelDecision | None:
        """A download's state: the checkpoint's by default (None for a volume-sourced model),
        or the one ``plan`` names (the calibration dataset's)."""
        if plan is None:
            plan, previous = mc.plan_model(engine.spec), engine.status.model_cache
        if plan is None:
            return None
        namespace, name = engine.metadata.namespace or "", engine.metadata.name
        job = self.view.job(namespace, plan.job_name)
        pod = self.view.newest_pod(namespace, plan.job_name) if job is not None else None
        return mc.decide_model(plan, namespace, mc.ModelObserved(
            job=job, pod=pod, previous=previous,
            cached_elsewhere=self.view.model_cached_elsewhere(namespace, plan.job_name, name),
            stuck=build_pod_problem(engine.spec, namespace, pod),
            progress=await self._read_progress(namespace, plan.job_name, pod)))

    async def _read_progress(self, namespace: str, job_name: str,
                             pod: Mapping[str, Any] | None) -> tuple[int, int] | None:
        """The running download pod's last progress line, read at most every
        PROGRESS_READ_SECONDS per Job (between reads: the last one read)."""
        key = (namespace, job_name)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if self.log_reader is None or pod is None or phase != "Running":
            self._progress.pop(key, None)
            return None
        now = self.monotonic()
        last = self._progress.get(key)
        if last is not None and now - last[0] < mc.PROGRESS_READ_SECONDS:
            return last[1]
        text = await self.log_reader(namespace, str(pod["metadata"]["name"]), mc.CONTAINER,
                                     mc.PROGRESS_TAIL_LINES)
        progress = last_progress(text) if text else None
        self._progress[key] = (now, progress or (last[1] if last else None))
        return self._progress[key][1]

    def _emit_model_transition(self, body: Mapping[str, Any], old: ModelCacheStatus | None,
                               new: ModelCacheStatus, what: str = "model") -> None:
        if old is not None and (old.state, old.reason, old.job) == (
                new.state, new.reason, new.job):
            return
        if old is None and new.state == "Cached":
            return  # found in the cache at first sight: nothing happened worth an Event
        kind = "Warning" if new.state == "Failed" or new.reason in ANNOUNCED_REASONS \
            else "Normal"
        reason = new.reason if new.reason in ANNOUNCED_REASONS and new.reason else {
            "Pending": "ModelDownloadPending", "Downloading": "ModelDownloading",
            "Cached": "ModelCached", "Failed": "ModelDownloadFailed"}[new.state]
        self.events(body, kind, reason, f"{what}: {new.message}"[:1024])

    # ------------------------------------------------------------------ pieces

    async def _deleting(self, engine: LLMEngine, body: Mapping[str, Any]) -> Result | None:
        """Deletion waits while an LLMDeployment serves this engine (in-use protection)."""
        namespace, name = engine.metadata.namespace or "", engine.metadata.name
        if IN_USE_FINALIZER not in engine.metadata.finalizers:
            return None
        users = sorted(self.view.deployments_using(namespace, name))
        if not users:
            await self.writer.set_finalizers(
                "LLMEngine", namespace, name,
                [f for f in engine.metadata.finalizers if f != IN_USE_FINALIZER],
                engine.metadata.resource_version)
            return None
        message = (f"deletion waits: in use by LLMDeployment {', '.join(users)}; delete or "
                   f"re-point {'it' if len(users) == 1 else 'them'} first")
        conds = cond.set_condition(engine.status.conditions, EngineConditionType.READY,
                                   "False", "InUse", message,
                                   observed_generation=engine.metadata.generation,
                                   now=self.clock())
        status = engine.status.model_copy(update={"conditions": conds})
        if status.to_wire() != engine.status.to_wire():
            await self.writer.patch_status("LLMEngine", namespace, name,
                                           {"conditions": status.to_wire()["conditions"]})
            self.events(body, "Warning", "DeletionBlocked", message)
        return Result(requeue_after=BUILDING_RESYNC_SECONDS)

    def _auto_candidates(self, engine: LLMEngine, facts: ClusterFacts,
                         size: CheckpointSize | None) -> dict[str, list[Finding]]:
        """Findings for every GPU type present, when ``auto`` asks to consider them all."""
        if AUTO_TARGET not in engine.spec.targets:
            return {}
        explicit = set(engine.spec.targets)
        candidates = tuple(p for p in facts.pools if p not in explicit)
        if not candidates:
            return {}
        spec = engine.spec.model_copy(update={"targets": candidates})
        out: dict[str, list[Finding]] = {p: [] for p in candidates}
        for f in validate_engine(spec, facts, size):
            if f.gpu in out:
                out[f.gpu].append(f)
        return out

    async def _ensure_script(self, namespace: str) -> None:
        name = jobs.script_configmap_name(self.script)
        if not self.view.has_configmap(namespace, name):
            await self.writer.create_if_absent(jobs.script_configmap(namespace, self.script))

    async def _delete_unplanned_jobs(self, namespace: str, engine: str,
                                     planned: set[str]) -> None:
        """A target removed from the spec (or whose inputs changed) stops its running Job,
        unless another LLMEngine waits on the same build."""
        for job_name in self.view.jobs_of_engine(namespace, engine):
            if job_name in planned:
                continue
            if self.view.job_wanted_by_others(namespace, job_name, engine):
                continue
            job = self.view.job(namespace, job_name) or {}
            finished = any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed")
                           for c in (job.get("status") or {}).get("conditions") or [])
            if not finished:
                log.info("stopping build Job %s/%s: no longer planned by %s",
                         namespace, job_name, engine)
                await self.writer.delete(self.job_resource, namespace, job_name)

    def _status(self, engine: LLMEngine, targets: tuple[EngineTargetStatus, ...],
                findings: tuple[Finding, ...],
                skipped: tuple[SkippedTarget, ...] = (),
                model: ModelCacheStatus | None = None) -> LLMEngineStatus:
        gen = engine.metadata.generation
        now = self.clock()
        total = len(targets)
        built = sum(t.state == "Built" for t in targets)
        states = {t.state for t in targets}
        # Computed only by a reconcile that got this far: a past ReconcileError is over.
        conds = cond.remove_condition(engine.status.conditions, RECONCILE_ERROR)

        if total == 0:
            reason, message = no_targets_reason(skipped)
            ready: ConditionStatus = "False"
        elif built == total:
            ready, reason, message = "True", "AllTargetsBuilt", f"{built}/{total} targets built"
        else:
            ready = "False"
            worst = next((s for s in ("Invalid", "Failed", "Unschedulable", "Building",
                                      "Pending") if s in states), "Pending")
            reason = next((t.reason for t in targets if t.state == worst and t.reason
                           and t.reason in ANNOUNCED_REASONS), None) or {
                "Invalid": "TargetInvalid", "Failed": "BuildFailed",
                "Unschedulable": "TargetUnschedulable", "Building": "Building",
                "Pending": "BuildPending"}[worst]
            details = "; ".join(f"{t.gpu}: {t.state} ({t.reason})" for t in targets
                                if t.state != "Built")
            message = f"{built}/{total} targets built; {details}"
        conds = cond.set_condition(conds, EngineConditionType.READY, ready, reason, message,
                                   observed_generation=gen, now=now)
        conds = cond.set_condition(conds, EngineConditionType.BUILT, ready, reason, message,
                                   observed_generation=gen, now=now)
        building = [t for t in targets if t.state == "Building"]
        conds = cond.set_condition(
            conds, EngineConditionType.BUILDING, "True" if building else "False",
            "BuildRunning" if building else "NoBuildRunning",
            (f"building for {', '.join(t.gpu for t in building)}" if building
             else "no build Job is running"),
            observed_generation=gen, now=now)
        if model is not None:
            conds = cond.set_condition(
                conds, EngineConditionType.MODEL_CACHED,
                "True" if model.state == "Cached" else "False", model.reason or model.state,
                # Without the progress figures: they change every few seconds.
                (model.message or "").split(" (")[0] if model.state == "Downloading"
                else model.message or "", observed_generation=gen, now=now)
        else:
            conds = cond.remove_condition(conds, EngineConditionType.MODEL_CACHED)
        conds = spec_warning_condition(conds, findings, gen, now)
        conds = progress_conditions(conds, stalled=engine_stalled(targets, skipped),
                                    observed_generation=gen, now=now)
        return LLMEngineStatus(
            observed_generation=gen, conditions=conds, targets=targets,
            skipped_targets=skipped or None, built_targets=f"{built}/{total}",
            model=_model_line(engine), backend=effective_backend(engine.spec),
            model_cache=model)

    def _emit_transitions(self, body: Mapping[str, Any],
                          previous: Mapping[str, EngineTargetStatus],
                          targets: tuple[EngineTargetStatus, ...]) -> None:
        for t in targets:
            old = previous.get(t.gpu)
            announced = t.reason in ANNOUNCED_REASONS
            if old is not None and (old.state, old.fingerprint) == (t.state, t.fingerprint) \
                    and (not announced or old.reason == t.reason):
                continue
            kind = ("Warning" if announced or t.state in ("Failed", "Invalid", "Unschedulable")
                    else "Normal")
            reason = t.reason if announced and t.reason else _QUANTIZE_EVENTS.get(
                (t.state, t.reason or "")) or {
                "Pending": "BuildPending", "Building": "BuildStarted", "Built": "Built",
                "Failed": "BuildFailed", "Invalid": "TargetInvalid",
                "Unschedulable": "TargetUnschedulable"}[t.state]
            self.events(body, kind, reason, f"{t.gpu}: {t.message}"[:1024])
            _count_build_outcome(t)

    def _skipped_announced(self, key: Key, engine: LLMEngine) -> set[tuple[str, str]]:
        """(GPU type, reason) of the skipped targets already announced: in the status the view
        shows, or in our last write to this object (the view may not show it yet)."""
        seen = {(s.gpu, s.reason) for s in engine.status.skipped_targets or ()}
        uid, last = self.status_writes.written.get(key, ("", {}))
        if uid == (engine.metadata.uid or ""):
            seen |= {(s.get("gpu", ""), s.get("reason", ""))
                     for s in last.get("skippedTargets") or ()}
        return seen

    def _emit_skipped(self, body: Mapping[str, Any], seen: set[tuple[str, str]],
                      now: tuple[SkippedTarget, ...]) -> None:
        """One Event per GPU type auto newly leaves out, or leaves out for a new reason."""
        for s in now:
            if (s.gpu, s.reason) not in seen:
                self.events(body, "Normal", "TargetSkipped",
                            f"{s.gpu}: auto does not build for it ({s.reason}): "
                            f"{s.message}"[:1024])


_QUANTIZE_EVENTS = {("Building", "Quantizing"): "QuantizeStarted",
                    ("Built", "Quantized"): "Quantized"}
"""Event reasons of a pytorch target following its quantize Job (a build's otherwise)."""


def _count_build_outcome(t: EngineTargetStatus) -> None:
    """Metrics of a target that just reached Built or Failed through a build of its own."""
    if t.state == "Failed":
        metrics.BUILDS_FAILED.labels(t.gpu).inc()
    elif t.state == "Built" and t.reason == "Built" and t.start_time and t.completion_time:
        metrics.BUILDS_SUCCEEDED.labels(t.gpu).inc()
        metrics.BUILD_SECONDS.labels(t.gpu).observe(
            (t.completion_time - t.start_time).total_seconds())


def _model_line(engine: LLMEngine) -> str:
    hf = engine.spec.model.hugging_face
    if hf is not None:
        rev = (hf.revision or "main")[:12]
        return f"{hf.repo}@{rev}"
    vol = engine.spec.model.volume
    assert vol is not None
    return f"pvc://{vol.claim_name}/{vol.path}"
