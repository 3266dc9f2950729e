"""The SpecWarning condition and its Events, shared by LLMEngine and LLMDeployment.

A warning finding (an unpinned revision, a plain-text secret in env) does not stop the object
from working, so it gets a condition of its own rather than Ready=False: ``SpecWarning`` True,
named by the first warning's reason, with every warning's message; and one Warning Event per
warning whenever that set of warnings changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from trtllm_operator import conditions as cond
from trtllm_operator.api import Condition
from trtllm_operator.validation import Finding, Severity

SPEC_WARNING: Final = "SpecWarning"

EventSink = Callable[[Mapping[str, Any], str, str, str], None]


def _warnings(findings: Sequence[Finding]) -> list[Finding]:
    # Warnings about one GPU type (GPUNotInCluster) live on that target's status instead.
    return [f for f in findings if f.severity == Severity.WARNING and f.gpu is None]


def spec_warning_condition(conds: Sequence[Condition], findings: Sequence[Finding],
                           generation: int | None, now: datetime) -> tuple[Condition, ...]:
    """``conds`` with SpecWarning set from the findings' warnings, or removed when none."""
    warnings = _warnings(findings)
    if not warnings:
        return cond.remove_condition(conds, SPEC_WARNING)
    return cond.set_condition(conds, SPEC_WARNING, "True", warnings[0].reason.value,
                              "; ".join(f.message for f in warnings),
                              observed_generation=generation, now=now)


def emit_spec_warnings(events: EventSink, body: Mapping[str, Any],
                       old: Sequence[Condition], new: Sequence[Condition],
                       findings: Sequence[Finding]) -> None:
    """A Warning Event per warning, when the SpecWarning condition appears or its text changes."""
    before = cond.find_condition(old, SPEC_WARNING)
    after = cond.find_condition(new, SPEC_WARNING)
    if after is None or (before is not None and before.message == after.message):
        return
    for f in _warnings(findings):
        events(body, "Warning", f.reason.value, f.message[:1024])
