"""A level-triggered, de-duplicating reconcile queue.

kopf gives the operator watches, in-memory indexes, probes and peering, but it calls a handler
for the object an event is *about*. Our controllers are level-triggered instead: a change to a
build Job, a build pod or a GPU node must re-run the reconcile of the LLMEngine it affects, and
a burst of such events must cost one reconcile, not one per event. This queue provides that,
in the manner of client-go's workqueue:

- a key is queued at most once at a time, however often it is added;
- a key added as *urgent* (an object whose spec the operator has not acted on yet: a new
  LLMDeployment waiting for its Deployment) runs before keys that only re-check status, so a
  fleet's own churn (child status events, resyncs) does not delay a new object's first
  reconcile (controller-runtime's priority queue does the same for its initial list);
- a key is never reconciled by two workers at once (added while running -> run again after);
- a failed reconcile is retried with capped, jittered exponential backoff per key, and all
  retries together are held to a token bucket (client-go's default controller rate limiter:
  the larger of the two delays), so a failing API server sees neither synchronised retry
  waves nor a retry storm; a successful reconcile may ask to be run again after a delay (for
  example while a build is in progress, as a safety net);
- expected failures (an optimistic-concurrency 409, a busy or restarting API server) are
  logged in one quiet line; anything else keeps its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Result:
    """What a reconcile asks of the queue: run again after ``requeue_after`` seconds, or not."""

    requeue_after: float | None = None


Reconcile = Callable[[K], Awaitable[Result | None]]


@dataclass(frozen=True)
class Failure:
    """What kind of error failed a reconcile: ``reason`` is a short CamelCase class (a metric
    label and a condition reason); ``expected`` errors are retried without a traceback."""

    reason: str
    expected: bool
    message: str


def unclassified(exc: Exception) -> Failure:
    """Without a classifier every error is unexpected (its message stays in the log only)."""
    return Failure(type(exc).__name__, False, f"unexpected {type(exc).__name__}")


@dataclass
class Backoff:
    """Per-key exponential backoff with jitter: attempt n waits
    ``min(cap, base * 2**(n-1))`` scaled by a factor drawn from [1 - jitter, 1].

    The jitter spreads the retries of keys that failed together (say, while the API server
    restarted) so they do not all come back in the same instant. ``random`` is injectable for
    deterministic tests."""

    base: float = 0.5
    cap: float = 300.0
    jitter: float = 0.5
    random: Callable[[], float] = field(default=random.random)

    def delay(self, failures: int) -> float:
        raw = min(self.cap, self.base * 2.0 ** min(failures - 1, 64))
        return raw * (1.0 - self.jitter * self.random())


@dataclass
class TokenBucket:
    """``qps`` tokens a second, at most ``burst`` saved up. ``reserve()`` takes one token and
    says how long to wait for it (0 when one is available), as golang.org/x/time/rate does;
    ``acquire()`` waits for one, urgent callers ahead of the others. The clock is injectable
    for deterministic tests."""

    qps: float
    burst: int
    clock: Callable[[], float] = field(default=time.monotonic)
    _tokens: float = field(init=False)
    _last: float = field(init=False)
    _waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = field(
        init=False)
    _dispatcher: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.qps <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs qps > 0 and burst >= 1")
        self._tokens = float(self.burst)
        self._last = self.clock()
        self._waiting = (deque(), deque())

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now

    def reserve(self) -> float:
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def acquire(self, urgent: bool = False) -> None:
        """Wait for a token. Callers are served in order of arrival, urgent ones first: a new
        object's children need not wait behind a mass of status writes."""
        if not any(self._waiting):
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        self._waiting[0 if urgent else 1].append(granted)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch())
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._tokens += 1.0  # granted as the caller was cancelled: not spent
            raise

    async def _dispatch(self) -> None:
        """Hand out tokens to waiters as they accrue (cancelled waiters are skipped)."""
        while any(self._waiting):
            self._refill()
            if self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self.qps)
                continue
            granted = (self._waiting[0] or self._waiting[1]).popleft()
            if not granted.done():
                self._tokens -= 1.0
                granted.set_result(None)


FailureHook = Callable[[K, Failure, int], Awaitable[None]]
"""(key, what failed it, consecutive failures) -> e.g. report it in the object's status."""


class WorkQueue(Generic[K]):
    """Runs ``reconcile(key)`` for queued keys on ``workers`` concurrent tasks."""

    def __init__(self, name: str, reconcile: Reconcile[K], workers: int = 4,
                 backoff: Backoff | None = None, retry_limit: TokenBucket | None = None,
                 classify: Callable[[Exception], Failure] = unclassified,
                 on_failure: FailureHook[K] | None = None,
                 on_success: Callable[[K], None] | None = None,
                 on_result: Callable[[str, str, float], None] | None = None,
                 on_wait: Callable[[str, float], None] | None = None) -> None:
        self.name = name
        self._reconcile = reconcile
        self._workers = workers
        self._backoff = backoff or Backoff()
        # client-go's default overall limit: 10 retries a second, bursts of 100.
        self._retry_limit = retry_limit or TokenBucket(10.0, 100)
        self._classify = classify
        self._on_failure = on_failure
        self._on_success = on_success
        self._on_result = on_result
        self._on_wait = on_wait
        self._added: dict[K, float] = {}
        """When each queued key was queued (for on_wait: how long keys wait for a worker)."""
        # A heap of (lane, sequence, key): urgent keys (lane 0) first, then first in first
        # out. A key moved to the urgent lane leaves a stale entry behind, skipped on pop.
        self._heap: list[tuple[int, int, K]] = []
        self._entry: dict[K, tuple[int, int]] = {}
        self._seq = itertools.count()
        self._waiting: list[asyncio.Future[None]] = []
        """Idle workers, each waiting on its own future (woken one per added key)."""
        self._queued: set[K] = set()
        self._running: set[K] = set()
        self._dirty: set[K] = set()
        self._dirty_urgent: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ producers

    def add(self, key: K, urgent: bool = False) -> None:
        """Queue ``key`` now (no-op if already queued, unless this makes it urgent; re-run
        after if currently running). ``urgent`` keys run before the others."""
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        if key in self._running:
            self._dirty.add(key)
            if urgent:
                self._dirty_urgent.add(key)
            return
        lane = 0 if urgent else 1
        if key in self._queued:
            if lane >= self._entry[key][0]:
                return
        else:
            self._queued.add(key)
            self._added[key] = time.monotonic()
            self._idle.clear()
        entry = (lane, next(self._seq))
        self._entry[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        self._wake()

    def _wake(self) -> None:
        """Wake one idle worker, if any (a cancelled one is skipped)."""
        while self._waiting:
            waiter = self._waiting.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _get(self) -> K:
        """The next key to run: the most urgent, then the oldest."""
        while True:
            while self._heap:
                lane, seq, key = heapq.heappop(self._heap)
                if self._entry.get(key) == (lane, seq):
                    del self._entry[key]
                    return key
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)

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

    def retry_delay(self, failures: int) -> float:
        """The wait before retry number ``failures``: the key's own jittered backoff, or longer
        when all keys together have used up the retry budget."""
        return max(self._backoff.delay(failures), self._retry_limit.reserve())

    async def _report(self, hook: Awaitable[None]) -> None:
        """Run a failure hook; its own failure must not stop the worker."""
        try:
            await hook
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s: reporting a reconcile failure failed", self.name, exc_info=True)

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
            key = await self._get()
            self._queued.discard(key)
            self._running.add(key)
            started = time.monotonic()
            added = self._added.pop(key, started)
            if self._on_wait:
                self._on_wait(self.name, started - added)
            outcome = "success"
            try:
                result = await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = "error"
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = self.retry_delay(failures)
                failure = self._classify(exc)
                if failure.expected:
                    log.info("%s: reconcile of %s: %s (%s, attempt %d); retrying in %.1fs",
                             self.name, key, failure.reason, failure.message, failures, delay)
                else:
                    log.exception("%s: reconcile of %s failed (attempt %d); retrying in %.1fs",
                                  self.name, key, failures, delay)
                self.add_after(key, delay)
                if self._on_failure:
                    await self._report(self._on_failure(key, failure, failures))
            else:
                self._failures.pop(key, None)
                if self._on_success:
                    self._on_success(key)
                if result and result.requeue_after is not None:
                    self.add_after(key, result.requeue_after)
            finally:
                self._running.discard(key)
                if self._on_result:
                    self._on_result(self.name, outcome, time.monotonic() - started)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key, urgent=key in self._dirty_urgent)
                self._dirty_urgent.discard(key)
                if not self._queued and not self._running:
                    self._idle.set()
