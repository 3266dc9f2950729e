"""A reconcile that keeps failing says so on the object, not only in the operator's log.

After ``after`` consecutive failures of one object's reconcile, a ``ReconcileError`` condition
(status True, reason = the error's class such as ``Forbidden`` or ``Conflict``, message = a
short description without object data) is merged into the object's status through the status
subresource. It is written on change only (the same error again writes nothing, so a failing
reconcile cannot turn into a write loop), and it disappears with the next successful
reconcile: both controllers compute their status without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trtllm_operator import conditions as cond
from trtllm_operator import metrics
from trtllm_operator.api.common import Condition
from trtllm_operator.status_writes import StatusPatcher, StatusWrites
from trtllm_operator.workqueue import Failure

RECONCILE_ERROR = "ReconcileError"

Key = tuple[str, str]


def error_message(failure: Failure) -> str:
    return f"reconcile keeps failing, retrying with backoff: {failure.message}"[:1024]


@dataclass
class ReconcileErrors:
    """Reports persistent reconcile failures of one kind of object in its status."""

    kind: str
    body_of: Callable[[Key], Mapping[str, Any] | None]
    writer: StatusPatcher
    status_writes: StatusWrites
    after: int = 3
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    written: dict[Key, tuple[str, str, str]] = field(default_factory=dict)
    """(uid, reason, message) last written per object: never the same write twice."""

    async def failed(self, key: Key, failure: Failure, failures: int) -> None:
        """WorkQueue hook: one more consecutive failure of ``key``."""
        metrics.RECONCILE_FAILURES.labels(self.kind, failure.reason,
                                          str(failure.expected).lower()).inc()
        body = self.body_of(key)
        if failures < self.after or body is None:
            return
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        message = error_message(failure)
        if self.written.get(key) == (uid, failure.reason, message):
            return
        current = tuple(Condition.model_validate(c)
                        for c in (body.get("status") or {}).get("conditions") or [])
        seen = cond.find_condition(current, RECONCILE_ERROR)
        if seen is None or (seen.status, seen.reason, seen.message) != (
                "True", failure.reason, message):
            updated = cond.set_condition(current, RECONCILE_ERROR, "True", failure.reason,
                                         message, observed_generation=meta.get("generation"),
                                         now=self.clock())
            await self.writer.patch_status(self.kind, key[0], key[1], {
                "conditions": [c.to_wire() for c in updated]})
        self.written[key] = (uid, failure.reason, message)
        # The controller's memory of its last status write no longer describes the object:
        # its next successful write (without this condition) must not be skipped.
        self.status_writes.forget(key)

    def succeeded(self, key: Key) -> None:
        """WorkQueue hook: the controller's own status write has dropped the condition."""
        self.written.pop(key, None)
