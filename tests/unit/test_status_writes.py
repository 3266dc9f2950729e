"""Status writes: only on change, never the same one twice, cleared keys set to null."""

from __future__ import annotations

import asyncio
from typing import Any

from trtllm_operator.status_writes import StatusWrites

KEY = ("team-a", "llama")


class Patcher:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []

    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.patches.append((kind, namespace, name, status))


def publish(writes: StatusWrites, patcher: Patcher, seen: dict[str, Any],
            wanted: dict[str, Any]) -> bool:
    return asyncio.run(writes.publish(patcher, KEY, seen, wanted))


def test_a_change_is_written_as_a_merge_patch_clearing_what_is_gone() -> None:
    writes, patcher = StatusWrites("LLMEngine"), Patcher()
    assert publish(writes, patcher, {"builtTargets": "1/2", "message": "x"},
                   {"builtTargets": "2/2"})
    assert patcher.patches == [("LLMEngine", "team-a", "llama",
                                {"builtTargets": "2/2", "message": None})]


def test_what_the_view_already_shows_is_not_written() -> None:
    writes, patcher = StatusWrites("LLMEngine"), Patcher()
    assert not publish(writes, patcher, {"builtTargets": "2/2"}, {"builtTargets": "2/2"})
    assert patcher.patches == []


def test_our_own_last_write_is_not_repeated_while_the_view_lags() -> None:
    writes, patcher = StatusWrites("LLMDeployment"), Patcher()
    stale = {"replicaSummary": "0/1"}
    assert publish(writes, patcher, stale, {"replicaSummary": "1/1"})
    assert not publish(writes, patcher, stale, {"replicaSummary": "1/1"})
    assert len(patcher.patches) == 1
    # Something else changed meanwhile: that is written.
    assert publish(writes, patcher, stale, {"replicaSummary": "0/1", "gpu": "NVIDIA-L40S"})
    assert len(patcher.patches) == 2


def test_a_forgotten_object_starts_again_from_the_view() -> None:
    writes, patcher = StatusWrites("LLMEngine"), Patcher()
    assert publish(writes, patcher, {}, {"builtTargets": "1/1"})
    writes.forget(KEY)
    # A new object of the same name whose status is empty gets its status written.
    assert publish(writes, patcher, {}, {"builtTargets": "1/1"})
    assert len(patcher.patches) == 2


def test_a_recreated_object_of_the_same_name_does_not_inherit_the_memory() -> None:
    writes, patcher = StatusWrites("LLMEngine"), Patcher()
    status = {"builtTargets": "1/1"}
    assert asyncio.run(writes.publish(patcher, KEY, {}, status, uid="old"))
    # Deleted and created again between two reconciles (no forget in between): the new object
    # shows no status, and must get it although the old one was given the same.
    assert asyncio.run(writes.publish(patcher, KEY, {}, status, uid="new"))
    assert len(patcher.patches) == 2
    assert not asyncio.run(writes.publish(patcher, KEY, {}, status, uid="new"))


def test_details_wait_for_the_interval_after_a_write_and_headlines_do_not() -> None:
    now = [100.0]
    writes = StatusWrites("LLMDeployment", min_interval=2.0, monotonic=lambda: now[0])
    patcher = Patcher()
    first = {"replicaSummary": "0/1"}
    # Nothing written to this object yet: never held.
    assert writes.hold(KEY, {}, first, headline=False) == 0.0
    assert publish(writes, patcher, {}, first)
    now[0] = 100.5
    detail = {"replicaSummary": "0/1", "message": "1/1 updated"}
    assert writes.hold(KEY, first, detail, headline=False) == 1.5
    assert writes.hold(KEY, first, detail, headline=True) == 0.0
    assert writes.hold(KEY, first, first, headline=False) == 0.0  # nothing to write
    now[0] = 102.0
    assert writes.hold(KEY, first, detail, headline=False) == 0.0  # the interval is over
    writes.forget(KEY)
    now[0] = 102.1
    assert writes.hold(KEY, first, detail, headline=False) == 0.0


def test_without_an_interval_nothing_is_held() -> None:
    writes, patcher = StatusWrites("LLMEngine"), Patcher()
    assert publish(writes, patcher, {}, {"a": 1})
    assert writes.hold(KEY, {"a": 1}, {"a": 2}, headline=False) == 0.0
