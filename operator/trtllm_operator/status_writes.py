"""Status writes shared by both controllers: only on change, and never twice the same.

A reconcile can run on a view that does not yet show the operator's own last status write
(events from a child arrive before the status patch's own event). Computing the same status
again then must neither write it again nor announce its transitions again, so each controller
remembers what it last wrote per object and compares against that as well as the view.
The memory is per object *instance* (uid): an object deleted and created again under the same
name between two reconciles starts from what the view shows, not from its predecessor.

A change of detail only (a count, a message, a condition mirrored from a child) may be held
back for ``min_interval`` after the last write to the object (:meth:`hold`): a new
LLMDeployment's Deployment reports four or five intermediate states in its first seconds, and
writing each one, for a thousand of them at once, loaded the API server that was creating
their pods. What the caller calls a headline change (a condition's status, a new generation)
is written at once; the held detail is written by the reconcile the caller requeues for then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Key = tuple[str, str]


class StatusPatcher(Protocol):
    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None: ...


@dataclass
class StatusWrites:
    """The status last written per object of one kind."""

    kind: str
    written: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """(uid, status) last written per object."""
    min_interval: float = 0.0
    """Least seconds between two writes to one object that change only details; 0: none."""
    monotonic: Callable[[], float] = time.monotonic
    _written_at: dict[Key, float] = field(default_factory=dict)

    def last(self, key: Key, uid: str | None, seen: dict[str, Any]) -> dict[str, Any]:
        """The status this object has as far as this process knows: its own last write to this
        very object, else what the view shows."""
        written = self.written.get(key)
        return written[1] if written is not None and written[0] == (uid or "") else seen

    def hold(self, key: Key, seen: dict[str, Any], wanted: dict[str, Any],
             uid: str | None = None, headline: bool = True) -> float:
        """Seconds to hold back the write of ``wanted`` (0: write now, or nothing to write).
        Only a change of detail (``headline`` False) to an object written less than
        ``min_interval`` ago is held."""
        if headline or self.min_interval <= 0 or wanted == seen or (
                (uid or "", wanted) == self.written.get(key)):
            return 0.0
        last = self._written_at.get(key)
        if last is None:
            return 0.0
        return max(0.0, last + self.min_interval - self.monotonic())

    async def publish(self, writer: StatusPatcher, key: Key, seen: dict[str, Any],
                      wanted: dict[str, Any], uid: str | None = None) -> bool:
        """Merge-patch ``wanted`` over ``seen`` unless one of them or our last write to this
        very object (``uid``) already says it; True when a write was made (the caller then
        announces transitions)."""
        if wanted == seen or (uid or "", wanted) == self.written.get(key):
            return False
        patch: dict[str, Any] = dict(wanted)
        for k in seen:
            patch.setdefault(k, None)  # merge patch: clear what is gone
        await writer.patch_status(self.kind, key[0], key[1], patch)
        self.written[key] = (uid or "", wanted)
        self._written_at[key] = self.monotonic()
        return True

    def forget(self, key: Key) -> None:
        """The object is gone: a new one of the same name starts from what the view shows."""
        self.written.pop(key, None)
        self._written_at.pop(key, None)
