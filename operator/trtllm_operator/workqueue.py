"""A level-triggered, de-duplicating reconcile queue.

kopf gives the operator watches, in-memory indexes, probes and peering, but it calls a handler
for the object an event is *about*. Our controllers are level-triggered instead: a change to a
build Job, a build pod or a GPU node must re-run the reconcile of the LLMEngine it affects, and
a burst of such events must cost one reconcile, not one per event. This queue provides that,
in the manner of client-go's workqueue:

- a key is queued at most once at a time, however often it is added;
- a key is never reconciled by two workers at once (added while running -> run again after);
- a failed reconcile is retried with capped exponential backoff; a successful one may ask to
  be run again after a delay (for example while a build is in progress, as a safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Result:
    """What a reconcile asks of the queue: run again after ``requeue_after`` seconds, or not."""

    requeue_after: float | None = None


Reconcile = Callable[[K], Awaitable[Result | None]]


class WorkQueue(Generic[K]):
    """Runs ``reconcile(key)`` for queued keys on ``workers`` concurrent tasks."""

    def __init__(self, name: str, reconcile: Reconcile[K], workers: int = 4,
                 base_backoff: float = 0.5, max_backoff: float = 300.0,
                 on_result: Callable[[str, str, float], None] | None = None) -> None:
        self.name = name
        self._reconcile = reconcile
        self._workers = workers
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._on_result = on_result
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ producers

    def add(self, key: K) -> None:
        """Queue ``key`` now (no-op if already queued; re-run after if currently running)."""
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        if key in self._running:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._idle.clear()
        self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds (an earlier pending timer wins)."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        due = loop.time() + delay
        if existing and existing.when() <= due:
            return
        if existing:
            existing.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        """Drop retries and timers of a key whose object is gone."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()

    # ------------------------------------------------------------------ workers

    def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}")
                       for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or running (timers may still be pending)."""
        await self._idle.wait()

    def __len__(self) -> int:
        return len(self._queued) + len(self._running)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            started = time.monotonic()
            outcome = "success"
            try:
                result = await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                outcome = "error"
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._max_backoff, self._base_backoff * 2 ** (failures - 1))
                log.exception("%s: reconcile of %s failed (attempt %d); retrying in %.1fs",
                              self.name, key, failures, delay)
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
                if result and result.requeue_after is not None:
                    self.add_after(key, result.requeue_after)
            finally:
                self._running.discard(key)
                if self._on_result:
                    self._on_result(self.name, outcome, time.monotonic() - started)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if not self._queued and not self._running:
                    self._idle.set()
