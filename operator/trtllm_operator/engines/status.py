"""What each build target's state is, and whether a Job must be created. Pure.

Inputs are observations (the build Job, its newest pod, the same build recorded Built by
another LLMEngine, this LLMEngine's previous status) and the validation findings; the output is
the target's status and one decision: create the Job or not. Times come only from observed
objects (Job start and completion), never from the clock, so reconciling twice with nothing
changed produces the same status and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from trtllm_jobs import contract as job_contract
from trtllm_operator.api import EngineTargetStatus, LLMEngineSpec
from trtllm_operator.api.engine import MAX_SKIPPED_TARGETS, BuildVersions, SkippedTarget
from trtllm_operator.claims import WAITING_REASONS
from trtllm_operator.engines.jobs import EXIT_REASONS
from trtllm_operator.engines.planning import TargetPlan
from trtllm_operator.pods import PodContext, PodProblem, diagnose, observe_pod
from trtllm_operator.validation import ClusterFacts, Finding, Reason, Severity

AUTO_TARGET: Final = "auto"

# Findings that leave a target Unschedulable rather than Invalid: more or bigger nodes fix them.
_UNSCHEDULABLE_REASONS: Final = frozenset({Reason.PARALLELISM_EXCEEDS_NODE})


@dataclass(frozen=True)
class Observed:
    """What the operator sees of one target's build."""

    job: Mapping[str, Any] | None = None
    pod: Mapping[str, Any] | None = None
    """The newest pod of the Job."""
    built_elsewhere: EngineTargetStatus | None = None
    """The same build (same Job name: fingerprint and storage) recorded Built by another
    LLMEngine of the namespace."""
    previous: EngineTargetStatus | None = None
    """This LLMEngine's last recorded status for the GPU type."""
    stuck: PodProblem | None = None
    """Why the newest pod cannot start or keeps crashing (see :func:`build_pod_problem`)."""


def build_pod_problem(spec: LLMEngineSpec, namespace: str,
                      pod: Mapping[str, Any] | None) -> PodProblem | None:
    """What keeps a build pod from running (a missing token Secret, an unpullable image), with
    the fix naming the engine's fields; None if nothing does."""
    if not pod:
        return None
    meta = pod.get("metadata") or {}
    fact = observe_pod(str(meta.get("name") or ""), meta.get("creationTimestamp"),
                       pod.get("status") or {})
    if fact.stuck is None:
        return None
    hf = spec.model.hugging_face
    ref = hf.token_secret_ref if hf is not None else None
    return diagnose(fact.name, fact.stuck, PodContext(
        kind="build", namespace=namespace, image=spec.build.image,
        image_field="spec.build.image", pull_secrets_field="spec.build.imagePullSecrets",
        env_field="spec.build.env", token_secret=(ref.name, ref.key) if ref else None))


@dataclass(frozen=True)
class Decision:
    status: EngineTargetStatus
    create_job: bool = False


def resolve_targets(spec: LLMEngineSpec, cluster: ClusterFacts,
                    eligible: Mapping[str, bool]) -> tuple[str, ...]:
    """The GPU types to build for: explicit entries, plus for ``auto`` every GPU type present
    in the cluster that ``eligible`` (no Error finding for it) allows, sorted for stability."""
    explicit = tuple(t for t in spec.targets if t != AUTO_TARGET)
    if AUTO_TARGET not in spec.targets:
        return explicit
    discovered = sorted(p for p, pool in cluster.pools.items()
                        if pool.node_gpus and p not in explicit and eligible.get(p, False))
    return (*explicit, *discovered)


def skipped_targets(auto_findings: Mapping[str, Sequence[Finding]],
                    cluster: ClusterFacts) -> tuple[SkippedTarget, ...]:
    """The GPU types ``auto`` considered (those with GPUs allocatable) and left out for an
    Error, each with its first Error's reason and every Error's message, sorted by GPU type."""
    out = []
    for gpu in sorted(auto_findings):
        pool = cluster.pools.get(gpu)
        errors = [f for f in auto_findings[gpu] if f.severity == Severity.ERROR]
        if pool is None or not pool.node_gpus or not errors:
            continue
        out.append(SkippedTarget(gpu=gpu, reason=errors[0].reason.value,
                                 message="; ".join(f.message for f in errors)))
    return tuple(out[:MAX_SKIPPED_TARGETS])


def no_targets_reason(skipped: Sequence[SkippedTarget]) -> tuple[str, str]:
    """Ready's (reason, message) when spec.targets resolved to no GPU type at all: the
    skipped types' reason when they share one (ModelDoesNotFit: every GPU type is too small),
    else NoTargets."""
    if not skipped:
        return "NoTargets", ("spec.targets resolved to no GPU type: auto found no GPU node "
                             "that can run this build")
    reasons = {s.reason for s in skipped}
    reason = reasons.pop() if len(reasons) == 1 else "NoTargets"
    details = "; ".join(f"{s.gpu}: {s.reason}" for s in skipped)
    return reason, (f"spec.targets auto found no GPU type that can run this build ({details}); "
                    f"status.skippedTargets says why for each")


def termination_summary(pod: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The build entrypoint's JSON summary from the pod's termination message, if any."""
    if not pod:
        return None
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        message = terminated.get("message")
        if not message:
            continue
        try:
            summary = json.loads(message)
        except ValueError:
            return {"logTail": message}  # FallbackToLogsOnError: the log, not our JSON
        return summary if isinstance(summary, dict) else None
    return None


def job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The Job's condition ``type_`` when it is True (Complete, Failed), else None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (or a datetime already parsed) as a datetime; None if unset."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def unschedulable_message(pod: Mapping[str, Any] | None, default: str) -> str | None:
    """The scheduler's message when the pod is Unschedulable (``default`` if it gave none)."""
    for c in ((pod or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" \
                and c.get("reason") == "Unschedulable":
            return str(c.get("message") or default)
    return None


def job_failure(job: Mapping[str, Any], summary: Mapping[str, Any] | None, fix: str,
                default_reason: str, default_what: str,
                exit_code: int | None = None) -> tuple[str, str]:
    """Reason and message of a failed Job: the entrypoint's reason when it gave one, else the
    one its exit code stands for, else the Job's; then what failed, ``fix`` and the log tail."""
    s = summary or {}
    failed = job_condition(job, "Failed") or {}
    reason = str(s.get("reason") or EXIT_REASONS.get(exit_code or 0) or failed.get("reason")
                 or default_reason)
    what = str(s.get("message") or failed.get("message") or default_what)
    message = f"{what}. {fix}"
    tail = str(s.get("logTail") or "").strip()
    if tail:
        message += f"\nlast log lines:\n{tail[-2000:]}"
    return reason, message


def _base(plan: TargetPlan, image: str, job: bool = True) -> dict[str, Any]:
    return {"gpu": plan.gpu, "fingerprint": plan.fingerprint, "path": plan.path,
            "job": plan.job_name if job else None, "image": image}


def built_status(plan: TargetPlan, image: str, job: Mapping[str, Any] | None,
                 summary: Mapping[str, Any] | None) -> EngineTargetStatus:
    """A Built target, with what the build reported about itself."""
    s = summary or {}
    status = (job or {}).get("status") or {}
    versions = None
    if s.get("tensorrtLlmVersion") or s.get("tensorrtVersion"):
        versions = BuildVersions(tensorrt_llm=s.get("tensorrtLlmVersion"),
                                 tensorrt=s.get("tensorrtVersion"))
    cache = (" (the engine was already in the volume)"
             if s.get("phase") == job_contract.Phase.CACHE_HIT else "")
    return EngineTargetStatus(
        **_base(plan, image), state="Built", reason="Built",
        message=f"engine published at {plan.path}{cache}",
        model_revision=s.get("resolvedRevision"),
        start_time=parse_time(status.get("startTime")),
        completion_time=parse_time(status.get("completionTime")),
        engine_bytes=s.get("engineBytes"), total_bytes=s.get("totalBytes"),
        checkpoint_bytes=non_negative_int(s.get("checkpointBytes")),
        versions=versions,
    )


def non_negative_int(value: Any) -> int | None:
    """A count from a job's JSON, None if it is not one (status must still be written)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def container_exit_code(pod: Mapping[str, Any] | None) -> int | None:
    """The exit code of the build container of a finished pod, if it terminated."""
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
        if isinstance(code, int):
            return code
    return None


def failed_status(plan: TargetPlan, image: str, namespace: str, job: Mapping[str, Any],
                  summary: Mapping[str, Any] | None,
                  exit_code: int | None = None) -> EngineTargetStatus:
    """A Failed target, with its reason and a fix (:func:`job_failure`)."""
    reason, message = job_failure(
        job, summary,
        f"fix the cause, then delete the Job to retry (kubectl delete job -n {namespace} "
        f"{plan.job_name}) or change the spec",
        job_contract.Reason.BUILD_FAILED, "the build Job failed", exit_code)
    status = job.get("status") or {}
    # A build refused as too big (or failing later) has measured the checkpoint already.
    return EngineTargetStatus(**_base(plan, image), state="Failed", reason=reason,
                              message=message, start_time=parse_time(status.get("startTime")),
                              checkpoint_bytes=non_negative_int(
                                  (summary or {}).get("checkpointBytes")))


def decide_target(plan: TargetPlan, image: str, namespace: str,
                  findings: Sequence[Finding], observed: Observed,
                  cluster: ClusterFacts) -> Decision:
    """The status of one target, and whether its build Job must be created now."""
    errors = [f for f in findings if f.severity == Severity.ERROR]
    if errors:
        first = errors[0]
        state = ("Unschedulable" if first.reason in _UNSCHEDULABLE_REASONS
                 else "Pending" if first.reason in WAITING_REASONS else "Invalid")
        message = "; ".join(f.message for f in errors)
        return Decision(EngineTargetStatus(**_base(plan, image, job=False), state=state,
                                           reason=first.reason.value, message=message))

    job = observed.job
    summary = termination_summary(observed.pod)
    if job is None:
        if observed.built_elsewhere is not None and observed.built_elsewhere.state == "Built":
            reused = observed.built_elsewhere.model_copy(update={
                "message": f"engine published at {plan.path} (built for another LLMEngine "
                           f"with identical inputs)"})
            return Decision(reused)
        prev = observed.previous
        if prev is not None and prev.state == "Built" and prev.fingerprint == plan.fingerprint:
            return Decision(prev)  # the Job was cleaned up; the engine is still in the volume
        return Decision(EngineTargetStatus(
            **_base(plan, image), state="Pending", reason="JobCreated",
            message=f"build Job {plan.job_name} created; waiting for a node with "
                    f"{plan.build_gpus} free {plan.gpu} GPU(s)"), create_job=True)

    if job_condition(job, "Complete"):
        return Decision(built_status(plan, image, job, summary))
    if job_condition(job, "Failed"):
        return Decision(failed_status(plan, image, namespace, job, summary,
                                      container_exit_code(observed.pod)))
    if observed.stuck is not None:
        # Placed, holding its GPUs, but not building: never report it as Building. The kubelet
        # retries, so fixing the cause (creating the Secret) lets this same pod start.
        return Decision(EngineTargetStatus(
            **_base(plan, image), state="Pending", reason=observed.stuck.reason.value,
            message=observed.stuck.message,
            start_time=parse_time((job.get("status") or {}).get("startTime"))))

    pool = cluster.pools.get(plan.gpu)
    pending_reason = unschedulable_message(observed.pod, "no node fits the build pod")
    if pool is None or not pool.node_gpus:
        return Decision(EngineTargetStatus(
            **_base(plan, image), state="Unschedulable", reason="NoNodeOfGPUType",
            message=f"no node has nvidia.com/gpu.product={plan.gpu}; the build Job waits "
                    f"for one (a cluster autoscaler may add it now that the Job asks)"))
    if pool.largest_node < plan.build_gpus:
        return Decision(EngineTargetStatus(
            **_base(plan, image), state="Unschedulable", reason="InsufficientGPUsPerNode",
            message=f"the build needs {plan.build_gpus} GPUs on one node but the largest "
                    f"{plan.gpu} node has {pool.largest_node}: add bigger nodes, or lower "
                    f"spec.build.gpus"))
    pod_phase = ((observed.pod or {}).get("status") or {}).get("phase")
    if pending_reason is not None:
        return Decision(EngineTargetStatus(
            **_base(plan, image), state="Pending", reason="WaitingForGPUs",
            message=f"build Job {plan.job_name} waits for {plan.build_gpus} free {plan.gpu} "
                    f"GPU(s): {pending_reason}"))
    if pod_phase in ("Running", "Succeeded", "Failed"):
        # A finished pod whose Job is not yet marked Complete/Failed is still this build.
        started = parse_time((job.get("status") or {}).get("startTime"))
        return Decision(EngineTargetStatus(
            **_base(plan, image), state="Building", reason="Building",
            message=f"trtllm-build running in Job {plan.job_name}", start_time=started))
    return Decision(EngineTargetStatus(
        **_base(plan, image), state="Pending", reason="JobStarting",
        message=f"build Job {plan.job_name} is starting",
        start_time=parse_time((job.get("status") or {}).get("startTime"))))
