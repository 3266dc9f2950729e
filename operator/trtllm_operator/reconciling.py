"""The ``Reconciling`` and ``Stalled`` conditions GitOps tools read. Pure.

Flux (through kstatus, sigs.k8s.io/cli-utils pkg/kstatus/status) and most other tools that wait
for a custom object decide its health in this order:

1. ``status.observedGeneration`` differs from ``metadata.generation``: InProgress;
2. a ``Reconciling`` condition is True: InProgress; a ``Stalled`` condition is True: Failed;
3. otherwise ``Ready``: True is Current, False is InProgress.

``Ready`` alone cannot tell "still working" from "will never get there without a human", so
both kinds add one of the two "abnormal-true" conditions while Ready is False, copying Ready's
reason and message (one fact, said twice for two kinds of reader): ``Stalled`` when the object
waits for a person (a failed build, an invalid spec, a pod that cannot start), ``Reconciling``
when it waits for something that comes by itself (a build running, GPUs or nodes to appear, a
rollout, a referenced object or claim being created). Neither is present once Ready is True,
as kstatus reads absence as False.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Final

from trtllm_operator import conditions as cond
from trtllm_operator.api.common import Condition
from trtllm_operator.api.engine import EngineTargetStatus, SkippedTarget
from trtllm_operator.claims import WAITING_REASONS
from trtllm_operator.pods import STUCK_REASONS
from trtllm_operator.validation import Reason

RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"
READY: Final = "Ready"

# Findings that more or bigger nodes, or an object created later, resolve without a spec change.
_WAITING_FINDINGS: Final = frozenset({
    *WAITING_REASONS, Reason.ENGINE_NOT_FOUND, Reason.PARALLELISM_EXCEEDS_NODE,
    Reason.GROUP_NODES_INSUFFICIENT, Reason.GPU_NOT_IN_CLUSTER})

# Every other finding is a spec (or cluster setup) a person has to change, as is a pod the
# kubelet cannot start.
STALLED_REASONS: Final = frozenset(
    {r.value for r in Reason if r not in _WAITING_FINDINGS} | {r.value for r in STUCK_REASONS})
"""Ready reasons of an LLMDeployment that mean Stalled; any other False reason is Reconciling."""

# The LLMDeployment reasons that wait on its engine: stalled exactly when the engine is.
ENGINE_WAIT_REASONS: Final = frozenset({
    "EngineNotFound", "EngineNotBuilt", "EnginePending", "EngineBuilding", "EngineUnschedulable"})
_ENGINE_STALLED_REASONS: Final = frozenset({"EngineFailed", "EngineInvalid"})


def progress_conditions(conds: Sequence[Condition], *, stalled: bool,
                        observed_generation: int | None,
                        now: datetime) -> tuple[Condition, ...]:
    """``conds`` with Reconciling or Stalled set from Ready (see the module docstring).

    Ready True (or absent): neither. Ready False: ``Stalled`` if ``stalled``, else
    ``Reconciling``, with Ready's reason and message; the other one removed.
    """
    ready = cond.find_condition(conds, READY)
    if ready is None or ready.status == "True":
        return cond.remove_condition(cond.remove_condition(conds, RECONCILING), STALLED)
    keep, drop = (STALLED, RECONCILING) if stalled else (RECONCILING, STALLED)
    return cond.set_condition(cond.remove_condition(conds, drop), keep, "True", ready.reason,
                              ready.message, observed_generation=observed_generation, now=now)


def engine_stalled(targets: Sequence[EngineTargetStatus],
                   skipped: Collection[SkippedTarget] = ()) -> bool:
    """Whether an LLMEngine that is not Ready needs a person to get there.

    Stalled: a target Failed or Invalid (the message says what to change), a target Pending
    because its pod cannot start (a missing Secret, an unpullable image), or no target at all
    because ``auto`` refused every GPU type present. Pending, Building and Unschedulable
    targets are on their way: Jobs run, GPUs free up, nodes get added.
    """
    if not targets:
        return bool(skipped)
    return any(t.state in ("Failed", "Invalid")
               or (t.state == "Pending" and (t.reason or "") in STUCK_REASONS)
               for t in targets)


def deployment_stalled(ready_reason: str, engine_is_stalled: bool) -> bool:
    """Whether an LLMDeployment whose Ready is False with ``ready_reason`` needs a person.

    Waiting on its engine, it is stalled exactly when the engine is (``engine_is_stalled``:
    the engine's own Stalled condition).
    """
    if ready_reason in ENGINE_WAIT_REASONS:
        return engine_is_stalled
    return ready_reason in _ENGINE_STALLED_REASONS or ready_reason in STALLED_REASONS


def deployment_progress_conditions(conds: Sequence[Condition],
                                   engine_conds: Sequence[Condition] | None, *,
                                   observed_generation: int | None,
                                   now: datetime) -> tuple[Condition, ...]:
    """An LLMDeployment's ``conds`` with Reconciling or Stalled set from its Ready condition
    and, while it waits on its engine, the engine's Stalled condition (``engine_conds``: the
    engine's conditions, None when there is no engine)."""
    ready = cond.find_condition(conds, READY)
    stalled = ready is not None and deployment_stalled(
        ready.reason, cond.is_true(engine_conds or (), STALLED))
    return progress_conditions(conds, stalled=stalled, observed_generation=observed_generation,
                               now=now)
