"""Status conditions as Kubernetes API conventions (KEP-1623) define them. Pure.

The rules a reader of ``kubectl get`` / ``kubectl wait`` relies on:

- conditions are a list keyed by ``type``: setting a type replaces its entry, other entries
  keep their place;
- ``lastTransitionTime`` moves only when ``status`` moves (a new reason or message is not a
  transition), so "Ready since ..." stays true;
- ``observedGeneration`` says which spec the condition was computed from.

Time is passed in (``now``), never read here, so callers and tests decide what "now" is and
reconciling twice with nothing changed produces an identical list (nothing to write).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from trtllm_operator.api.common import Condition, ConditionStatus


def kubernetes_time(now: datetime) -> datetime:
    """``now`` in UTC with whole seconds: the precision Kubernetes stores times with.

    Truncating here keeps a condition built in memory equal to the same condition read back
    from the API server, so an unchanged status compares equal and is not rewritten.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC).replace(microsecond=0)


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Whether the condition of that type is present with status True."""
    found = find_condition(conditions, type_)
    return found is not None and found.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    observed_generation: int | None,
    now: datetime,
) -> tuple[Condition, ...]:
    """The conditions with the one of ``type_`` set; every other entry unchanged and in place.

    ``lastTransitionTime`` is ``now`` for a new condition or a changed status, and kept from
    the existing entry otherwise.
    """
    existing = find_condition(conditions, type_)
    if existing is not None and existing.status == status:
        transition = existing.last_transition_time
    else:
        transition = kubernetes_time(now)
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    if existing is None:
        return (*conditions, updated)
    return tuple(updated if c.type == type_ else c for c in conditions)


def remove_condition(conditions: Sequence[Condition], type_: str) -> tuple[Condition, ...]:
    """The conditions without the one of ``type_`` (for a condition that no longer applies)."""
    return tuple(c for c in conditions if c.type != type_)
