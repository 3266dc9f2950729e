"""The reconcile queue: de-duplication, one worker per key, retries, requeues."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter

import pytest

from trtllm_operator.workqueue import Backoff, Failure, Result, TokenBucket, WorkQueue


def test_a_burst_of_adds_costs_one_reconcile() -> None:
    async def scenario() -> Counter[str]:
        calls: Counter[str] = Counter()
        release = asyncio.Event()

        async def reconcile(key: str) -> None:
            await release.wait()
            calls[key] += 1

        q: WorkQueue[str] = WorkQueue("t", reconcile, workers=2)
        for _ in range(50):
            q.add("a")
        q.add("b")
        q.start()
        release.set()
        await asyncio.wait_for(q.wait_idle(), 5)
        await q.stop()
        return calls

    assert asyncio.run(scenario()) == Counter({"a": 1, "b": 1})


def test_a_key_added_while_running_runs_again_but_never_concurrently() -> None:
    async def scenario() -> tuple[int, int]:
        running = 0
        peak = 0
        calls = 0
        gate = asyncio.Event()

        async def reconcile(key: str) -> None:
            nonlocal running, peak, calls
            running += 1
            peak = max(peak, running)
            calls += 1
            if calls == 1:
                gate.set()
                await asyncio.sleep(0.05)
            running -= 1

        q: WorkQueue[str] = WorkQueue("t", reconcile, workers=4)
        q.start()
        q.add("k")
        await gate.wait()
        q.add("k")  # while the first run is in progress
        q.add("k")
        await asyncio.sleep(0.2)
        await asyncio.wait_for(q.wait_idle(), 5)
        await q.stop()
        return calls, peak

    calls, peak = asyncio.run(scenario())
    assert calls == 2  # the change seen mid-run is not lost, and costs one more run
    assert peak == 1


def test_failures_retry_with_backoff_until_success() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        done = asyncio.Event()

        async def reconcile(key: str) -> None:
            times.append(loop.time())
            if len(times) < 4:
                raise RuntimeError("API server said no")
            done.set()

        q: WorkQueue[str] = WorkQueue("t", reconcile, backoff=Backoff(
            base=0.02, cap=1, random=lambda: 0.0))  # no jitter: each wait is the full delay
        q.start()
        q.add("k")
        await asyncio.wait_for(done.wait(), 5)
        await q.stop()
        return times

    times = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    # 0.02, 0.04, 0.08: each wait at least its backoff, and growing.
    assert gaps[0] >= 0.02
    assert gaps[1] >= 0.04
    assert gaps[2] >= 0.08


def test_requeue_after_runs_again_and_an_earlier_add_wins() -> None:
    async def scenario() -> int:
        calls = 0

        async def reconcile(key: str) -> Result:
            nonlocal calls
            calls += 1
            return Result(requeue_after=0.05 if calls == 1 else None)

        q: WorkQueue[str] = WorkQueue("t", reconcile)
        q.start()
        q.add("k")
        await asyncio.sleep(0.3)
        await q.stop()
        return calls

    assert asyncio.run(scenario()) == 2


def test_forget_cancels_a_pending_retry() -> None:
    async def scenario() -> int:
        calls = 0

        async def reconcile(key: str) -> Result:
            nonlocal calls
            calls += 1
            return Result(requeue_after=0.05)

        q: WorkQueue[str] = WorkQueue("t", reconcile)
        q.start()
        q.add("gone")
        await asyncio.sleep(0.01)
        q.forget("gone")
        await asyncio.sleep(0.15)
        await q.stop()
        return calls

    assert asyncio.run(scenario()) == 1


def test_backoff_doubles_to_its_cap_and_jitter_only_shortens_it() -> None:
    draws = iter([0.0, 1.0, 0.5, 0.0, 1.0])
    b = Backoff(base=1.0, cap=8.0, jitter=0.5, random=lambda: next(draws))
    assert [b.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 1.0, 3.0, 8.0, 4.0]
    # A huge failure count neither overflows nor exceeds the cap.
    assert Backoff(base=1.0, cap=8.0, jitter=0.0).delay(10_000) == 8.0


def test_jitter_spreads_keys_that_failed_together() -> None:
    rng = __import__("random").Random(7)
    b = Backoff(base=1.0, cap=300.0, jitter=0.5, random=rng.random)
    delays = {round(b.delay(4), 6) for _ in range(20)}
    assert len(delays) == 20
    assert all(4.0 <= d <= 8.0 for d in delays)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_paces_at_qps() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=10.0, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    # Out of tokens: each further reservation waits one more tenth of a second.
    assert [round(bucket.reserve(), 6) for _ in range(3)] == [0.1, 0.2, 0.3]
    clock.now += 10.0  # refills, but never beyond the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert round(bucket.reserve(), 6) == 0.1


def test_token_bucket_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="qps > 0"):
        TokenBucket(qps=0, burst=1)


def test_retries_of_many_keys_are_held_to_the_overall_rate() -> None:
    clock = FakeClock()

    async def reconcile(key: str) -> None:
        return None

    q: WorkQueue[str] = WorkQueue("t", reconcile, backoff=Backoff(base=0.001, jitter=0.0),
                                  retry_limit=TokenBucket(qps=10.0, burst=2, clock=clock))
    # First failures of five keys at the same instant: two go at their own backoff, the rest
    # wait for the shared budget.
    assert [round(q.retry_delay(1), 6) for _ in range(5)] == [0.001, 0.001, 0.1, 0.2, 0.3]


def test_expected_failures_are_one_quiet_line_others_keep_the_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    class Conflict(Exception):
        pass

    def classify(exc: Exception) -> Failure:
        if isinstance(exc, Conflict):
            return Failure("Conflict", True, "the object has been modified")
        return Failure(type(exc).__name__, False, "unexpected")

    reported: list[tuple[str, str, int]] = []
    succeeded: list[str] = []

    async def on_failure(key: str, failure: Failure, failures: int) -> None:
        reported.append((key, failure.reason, failures))

    async def scenario() -> None:
        calls = 0
        done = asyncio.Event()

        async def reconcile(key: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Conflict("409")
            if calls == 2:
                raise KeyError("bug")
            done.set()

        q: WorkQueue[str] = WorkQueue(
            "t", reconcile, backoff=Backoff(base=0.01, jitter=0.0), classify=classify,
            on_failure=on_failure, on_success=succeeded.append)
        q.start()
        q.add("k")
        await asyncio.wait_for(done.wait(), 5)
        await q.stop()

    with caplog.at_level(logging.DEBUG, logger="trtllm_operator.workqueue"):
        asyncio.run(scenario())
    records = [r for r in caplog.records if r.name == "trtllm_operator.workqueue"]
    assert [(r.levelno, r.exc_info is not None) for r in records] == [
        (logging.INFO, False), (logging.ERROR, True)]
    assert "Conflict" in records[0].getMessage()
    assert "\n" not in records[0].getMessage()
    assert reported == [("k", "Conflict", 1), ("k", "KeyError", 2)]
    assert succeeded == ["k"]


def test_a_failing_failure_hook_does_not_stop_the_worker() -> None:
    async def scenario() -> int:
        calls = 0
        done = asyncio.Event()

        async def reconcile(key: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("first")
            done.set()

        async def on_failure(key: str, failure: Failure, failures: int) -> None:
            raise RuntimeError("status write refused")

        q: WorkQueue[str] = WorkQueue("t", reconcile, backoff=Backoff(base=0.01, jitter=0.0),
                                      on_failure=on_failure)
        q.start()
        q.add("k")
        await asyncio.wait_for(done.wait(), 5)
        await q.stop()
        return calls

    assert asyncio.run(scenario()) == 2


def test_urgent_keys_run_before_older_ones_and_a_queued_key_can_be_made_urgent() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []

        async def reconcile(key: str) -> None:
            order.append(key)

        q: WorkQueue[str] = WorkQueue("t", reconcile, workers=1)
        for key in ("old-1", "old-2", "old-3"):
            q.add(key)
        q.add("new", urgent=True)
        q.add("old-3", urgent=True)  # already queued: moves to the urgent lane, runs once
        q.add("old-1")  # a plain re-add keeps its place
        q.start()
        await asyncio.wait_for(q.wait_idle(), 5)
        await q.stop()
        return order

    assert asyncio.run(scenario()) == ["new", "old-3", "old-1", "old-2"]


def test_a_key_made_urgent_while_running_runs_again_ahead_of_the_queue() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        started = asyncio.Event()
        release = asyncio.Event()

        async def reconcile(key: str) -> None:
            order.append(key)
            if key == "k" and order.count("k") == 1:
                started.set()
                await release.wait()

        q: WorkQueue[str] = WorkQueue("t", reconcile, workers=1)
        q.start()
        q.add("k")
        await started.wait()
        q.add("other")
        q.add("k", urgent=True)
        release.set()
        await asyncio.wait_for(q.wait_idle(), 5)
        await q.stop()
        return order

    assert asyncio.run(scenario()) == ["k", "k", "other"]


def test_the_queue_wait_of_every_run_is_reported() -> None:
    async def scenario() -> list[tuple[str, float]]:
        waits: list[tuple[str, float]] = []

        async def reconcile(key: str) -> None:
            await asyncio.sleep(0.02)

        q: WorkQueue[str] = WorkQueue("t", reconcile, workers=1,
                                      on_wait=lambda name, s: waits.append((name, s)))
        q.add("a")
        q.add("b")
        q.start()
        await asyncio.wait_for(q.wait_idle(), 5)
        await q.stop()
        return waits

    waits = asyncio.run(scenario())
    assert [name for name, _ in waits] == ["t", "t"]
    assert waits[1][1] >= 0.015  # "b" waited for "a" to finish on the only worker


def test_urgent_callers_get_tokens_before_callers_that_waited_longer() -> None:
    order: list[str] = []

    async def scenario() -> None:
        bucket = TokenBucket(qps=50.0, burst=1)
        await bucket.acquire()  # the burst is spent: everyone below waits

        async def take(name: str, urgent: bool) -> None:
            await bucket.acquire(urgent=urgent)
            order.append(name)

        waiting = [asyncio.create_task(take("status-1", False)),
                   asyncio.create_task(take("status-2", False))]
        await asyncio.sleep(0)
        waiting.append(asyncio.create_task(take("deployment", True)))
        await asyncio.gather(*waiting)

    asyncio.run(scenario())
    assert order == ["deployment", "status-1", "status-2"]


def test_a_cancelled_waiter_spends_no_token() -> None:
    now = [0.0]

    async def scenario() -> float:
        bucket = TokenBucket(qps=1000.0, burst=1, clock=lambda: now[0])
        await bucket.acquire()
        gone = asyncio.create_task(bucket.acquire())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        now[0] = 0.001  # one token accrues
        await asyncio.sleep(0.01)  # the dispatcher runs: the cancelled waiter gets nothing
        return bucket.reserve()

    assert asyncio.run(scenario()) == 0.0  # the accrued token is still there
