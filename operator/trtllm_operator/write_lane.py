"""Slow child writes made beside the reconcile workers, not on them.

A new Service's ClusterIP is allocated one Service at a time in the API server: under a mass
create (``make bench``, 1,000 LLMDeployments) one Service apply took 0.2-3 s. Made inside the
reconcile, those waits held the workers, and new LLMDeployments' Deployments queued behind
them. A :class:`WriteLane` takes such a write off the worker: the reconcile hands it over and
goes on (Deployment, status), the lane makes it on a task of its own, and when it is done, or
has failed, the object's key is queued again, so the next reconcile sees the outcome:

- done: the child's watch event (or the requeue) reconciles again, which finds it in place;
- failed: the lane keeps the error for that child; until a write of it succeeds, reconciles
  make it themselves, in the worker, so its error is the reconcile's (retried with back-off,
  a ``ReconcileError`` in status after a few) exactly as if it had never left.

At most one write per child is in flight; while it is, :meth:`busy` says so, and the
controller does not call the LLMDeployment Ready (its endpoint does not exist yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

Child = tuple[str, str, str]
"""(kind, namespace, name)."""


class WriteLane:
    def __init__(self, requeue: Callable[[Hashable], None]) -> None:
        self._requeue = requeue
        self._tasks: dict[Child, asyncio.Task[None]] = {}
        self._failed: dict[Child, BaseException] = {}

    def busy(self, child: Child) -> bool:
        """A write of ``child`` is in flight."""
        return child in self._tasks

    def failure(self, child: Child) -> BaseException | None:
        """The error of the lane's last write of ``child``, if it failed, until
        :meth:`clear`: the writes of ``child`` are made in the worker meanwhile."""
        return self._failed.get(child)

    def clear(self, child: Child) -> None:
        """``child`` was written (or is gone): the lane may write it again."""
        self._failed.pop(child, None)

    def submit(self, child: Child, key: Hashable, write: Awaitable[object]) -> None:
        """Make ``write`` on a task of its own; queue ``key`` again once it ends."""
        if child in self._tasks:
            raise RuntimeError(f"a write of {child} is already in flight")
        self._tasks[child] = asyncio.get_running_loop().create_task(
            self._run(child, key, write), name=f"write {child[0]} {child[1]}/{child[2]}")

    async def _run(self, child: Child, key: Hashable, write: Awaitable[object]) -> None:
        try:
            await write
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # kept for the next reconcile, which makes the write itself
            log.info("write of %s %s/%s failed, retried by the next reconcile: %s",
                     *child, exc)
            self._failed[child] = exc
        finally:
            self._tasks.pop(child, None)
        self._requeue(key)

    async def drain(self) -> None:
        """Wait for every write in flight (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)
