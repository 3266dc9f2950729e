"""The reconcile queue: de-duplication, one worker per key, retries, requeues."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from trtllm_operator.workqueue import Result, WorkQueue


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

        q: WorkQueue[str] = WorkQueue("t", reconcile, base_backoff=0.02, max_backoff=1)
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
