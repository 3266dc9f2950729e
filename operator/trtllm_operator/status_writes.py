"""Status writes shared by both controllers: only on change, and never twice the same.

A reconcile can run on a view that does not yet show the operator's own last status write
(events from a child arrive before the status patch's own event). Computing the same status
again then must neither write it again nor announce its transitions again, so each controller
remembers what it last wrote per object and compares against that as well as the view.
The memory is per object *instance* (uid): an object deleted and created again under the same
name between two reconciles starts from what the view shows, not from its predecessor.
"""

from __future__ import annotations

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
        return True

    def forget(self, key: Key) -> None:
        """The object is gone: a new one of the same name starts from what the view shows."""
        self.written.pop(key, None)
