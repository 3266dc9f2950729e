"""The quantize phase of a pytorch-backend LLMEngine: one ModelOpt export per (model, commit,
format, calibration, claim), shared by every target and every LLMEngine that names it. Pure.

The Job's name and the export's folder follow from those inputs alone
(:func:`planning.quantize_job_name`, :func:`planning.quantized_path`), which is what makes the
export shared and crash-safe: an operator restarted mid-quantize plans the same name, finds the
Job (or gets 409 creating it) and starts no second one. The Job runs after the download, on
one GPU type of the engine's targets that runs the format and holds the model at 16 bits
(:func:`choose_gpu`); every target whose GPU runs the format is Built from the one export.
Targets whose GPU cannot run the format are refused by preflight (QuantizationUnsupported)
before any of this.

"Built" is known from the Job, or from what LLMEngines recorded (this one's previous status,
or another's target naming the same Job): a finished Job deleted later starts no second
quantize for an engine that saw the export published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from trtllm_jobs import contract as job_contract
from trtllm_operator import labels
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api import EngineTargetStatus, LLMEngineSpec
from trtllm_operator.engines.planning import quantize_job_name, quantized_path
from trtllm_operator.engines.status import (
    Decision,
    container_exit_code,
    job_condition,
    job_failure,
    non_negative_int,
    parse_time,
    termination_summary,
    unschedulable_message,
)
from trtllm_operator.pods import PodProblem
from trtllm_operator.validation import ClusterFacts

CALIBRATION_WEIGHTS: Final = "bfloat16"
"""ModelOpt calibrates the model as loaded: at 16 bits, spread over the Job's GPUs."""


@dataclass(frozen=True)
class QuantizePlan:
    """The export of one cached checkpoint in one format with one calibration."""

    repo: str
    commit: str
    format: str
    job_name: str
    path: str
    """The export's folder inside the storage claim."""
    dataset_path: str | None = None
    """The calibration dataset's cache entry, when the download Job fetched one."""

    def describe(self) -> str:
        return f"{self.repo}@{self.commit[:12]} as {self.format}"


def plan_quantize(spec: LLMEngineSpec, commit: str,
                  dataset_path: str | None = None) -> QuantizePlan | None:
    """The export this spec needs once its checkpoint is cached at ``commit`` (and its
    calibration dataset, if fetched, at ``dataset_path``); None when it needs none (no
    quantization format, or a volume-sourced model)."""
    hf = spec.model.hugging_face
    quant = spec.build.quantization
    if hf is None or quant is None or quant.format is None:
        return None
    return QuantizePlan(repo=hf.repo, commit=commit, format=quant.format,
                        job_name=quantize_job_name(spec, commit, dataset_path),
                        path=quantized_path(spec, commit, dataset_path),
                        dataset_path=dataset_path)


@dataclass(frozen=True)
class GPUChoice:
    """Where the quantize Job runs, and why there."""

    gpu: str
    gpus: int
    why: str


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def gpus_to_hold(checkpoint_bytes: int, memory_mib: int, most: int) -> int | None:
    """The fewest GPUs (at most ``most``) whose memory holds the model at 16 bits for
    calibration, by the fit check's formula; None if no count up to ``most`` does."""
    for n in range(1, most + 1):
        if facts.fit_need_bytes(checkpoint_bytes, CALIBRATION_WEIGHTS, n) <= memory_mib << 20:
            return n
    return None


def choose_gpu(candidates: Sequence[str], cluster: ClusterFacts,
               checkpoint_bytes: int | None) -> GPUChoice | None:
    """The GPU type the quantize Job runs on, among ``candidates`` (the engine's targets that
    passed preflight, so their compute capability runs the format), in spec order: the one
    that holds the model on the fewest GPUs of one node, the first such on a tie. None when no
    candidate has a node that can hold it (or none is known to the cluster)."""
    options: list[tuple[int, int, str, int, int]] = []
    for index, gpu in enumerate(candidates):
        pool = cluster.pools.get(gpu)
        memory = cluster.memory_mib(gpu)
        if pool is None or not pool.node_gpus or memory is None:
            continue
        need = (gpus_to_hold(checkpoint_bytes, memory, pool.largest_node)
                if checkpoint_bytes is not None else 1)
        if need is not None:
            options.append((need, index, gpu, memory, pool.largest_node))
    if not options:
        return None
    options.sort()
    need, _, gpu, memory, _ = options[0]
    size = (f"the {_gib(checkpoint_bytes)} model at 16 bits" if checkpoint_bytes is not None
            else "the model (size unknown)")
    others = [f"{g} needs {n}" for n, _, g, _, _ in options[1:]]
    why = (f"{gpu} holds {size} on {need} GPU(s) of {_gib(memory << 20)}"
           + (f" (of the other targets, {', '.join(others)})" if others else "")
           + "; ModelOpt loads the model there to calibrate")
    return GPUChoice(gpu=gpu, gpus=need, why=why)


def no_gpu_reason(candidates: Sequence[str], checkpoint_bytes: int | None) -> str:
    size = f"{_gib(checkpoint_bytes)} " if checkpoint_bytes is not None else ""
    return (f"no node of {', '.join(candidates)} can hold the {size}model at 16 bits for "
            f"calibration on its GPUs (ModelOpt loads it whole): add a GPU type with more "
            f"memory per node to spec.targets, or wait for such nodes to join")


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class QuantizeObserved:
    """What the operator sees of one export's quantize Job."""

    job: Mapping[str, Any] | None = None
    pod: Mapping[str, Any] | None = None
    """The newest pod of the Job."""
    recorded: EngineTargetStatus | None = None
    """A target Built from this export, as this LLMEngine (or another one) recorded it."""
    stuck: PodProblem | None = None


@dataclass(frozen=True)
class QuantizeOutcome:
    """The export's state, as every target that serves it shows it."""

    state: str
    """Pending, Building, Built or Failed (a target's states)."""
    reason: str
    message: str
    total_bytes: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    create_job: bool = False


def job_gpu(job: Mapping[str, Any]) -> str | None:
    """The GPU type a quantize Job was placed on (its label: the Job may be another
    LLMEngine's, which chose among its own targets)."""
    return ((job.get("metadata") or {}).get("labels") or {}).get(labels.GPU_PRODUCT)


def decide_quantize(plan: QuantizePlan, namespace: str, observed: QuantizeObserved,
                    choice: GPUChoice | None, candidates: Sequence[str] = (),
                    checkpoint_bytes: int | None = None) -> QuantizeOutcome:
    """The export's state, and whether its Job must be created now (on ``choice``; None:
    no GPU type among ``candidates`` can hold the model, so nothing is created)."""
    job, name = observed.job, plan.job_name
    status = (job or {}).get("status") or {}
    started = parse_time(status.get("startTime"))
    if job is None:
        recorded = observed.recorded
        if recorded is not None and recorded.state == "Built" and recorded.job == name:
            return QuantizeOutcome(
                "Built", "Quantized", f"serves the {plan.format} export at {plan.path}, "
                f"quantized in Job {name}", total_bytes=recorded.total_bytes,
                start_time=recorded.start_time, completion_time=recorded.completion_time)
        if choice is None:
            return QuantizeOutcome("Unschedulable", "NoGPUHoldsModel",
                                   f"cannot quantize {plan.describe()}: "
                                   + no_gpu_reason(candidates, checkpoint_bytes))
        return QuantizeOutcome(
            "Pending", "JobCreated", f"quantize Job {name} created for {plan.describe()} on "
            f"{choice.gpus} {choice.gpu} GPU(s): {choice.why}", create_job=True)
    where = job_gpu(job) or "its GPU type"
    # Why there: when this engine would choose the same (another one may have created it).
    chosen = f" ({choice.why})" if choice is not None and choice.gpu == job_gpu(job) else ""
    summary = termination_summary(observed.pod) or {}
    if job_condition(job, "Complete"):
        hit = summary.get("phase") == job_contract.Phase.CACHE_HIT
        return QuantizeOutcome(
            "Built", "Quantized",
            f"serves the {plan.format} export at {plan.path}, quantized in Job {name} on "
            f"{where}" + (" (the export was already in the volume)" if hit else "")
            + "; shared by every target whose GPU runs the format",
            total_bytes=non_negative_int(summary.get("totalBytes")), start_time=started,
            completion_time=parse_time(status.get("completionTime")))
    if job_condition(job, "Failed"):
        reason, message = job_failure(
            job, summary,
            f"Fix the cause, then delete the Job to retry (kubectl delete job -n {namespace} "
            f"{name}) or change the spec",
            job_contract.Reason.QUANTIZE_FAILED, f"the quantize Job {name} failed",
            container_exit_code(observed.pod))
        return QuantizeOutcome("Failed", reason, message, start_time=started)
    if observed.stuck is not None:
        return QuantizeOutcome("Pending", observed.stuck.reason.value,
                               f"the quantize pod cannot start: {observed.stuck.message}",
                               start_time=started)
    waiting = unschedulable_message(observed.pod, "no node fits the quantize pod")
    if waiting is not None:
        return QuantizeOutcome("Pending", "WaitingForGPUs",
                               f"quantize Job {name} waits for {where} GPUs: {waiting}",
                               start_time=started)
    phase = ((observed.pod or {}).get("status") or {}).get("phase")
    if phase in ("Running", "Succeeded", "Failed"):
        return QuantizeOutcome("Building", "Quantizing",
                               f"quantizing {plan.describe()} with ModelOpt in Job {name} on "
                               f"{where}{chosen}", start_time=started)
    return QuantizeOutcome("Pending", "JobStarting", f"quantize Job {name} is starting on "
                           f"{where}{chosen}", start_time=started)


def apply_outcome(decision: Decision, plan: QuantizePlan, outcome: QuantizeOutcome,
                  checkpoint_bytes: int | None) -> Decision:
    """A target that would start its own build now shows the shared export's state instead
    (it never creates a Job itself); targets refused by preflight, or already Built for this
    fingerprint, are left as they are."""
    if not decision.create_job:
        return decision
    return Decision(decision.status.model_copy(update={
        "state": outcome.state, "reason": outcome.reason, "message": outcome.message,
        "job": plan.job_name if outcome.state != "Unschedulable" else None,
        "path": plan.path, "model_revision": plan.commit,
        "total_bytes": outcome.total_bytes, "checkpoint_bytes": checkpoint_bytes,
        "start_time": outcome.start_time, "completion_time": outcome.completion_time}))
