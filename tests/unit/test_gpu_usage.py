"""GPUs held per node and the whole free nodes of a group: the scheduler's arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from trtllm_operator.gpu_usage import free_gpus, pod_gpus, whole_free_nodes


def _spec(node: str | None, *gpus: int, init: tuple[int, ...] = ()) -> dict[str, Any]:
    def c(n: int) -> dict[str, Any]:
        return {"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(n)}}}
    spec: dict[str, Any] = {"containers": [c(n) for n in gpus],
                            "initContainers": [c(n) for n in init]}
    if node:
        spec["nodeName"] = node
    return spec


@pytest.mark.parametrize(("spec", "phase", "held"), [
    (_spec("n1", 8), "Running", ("n1", 8)),
    (_spec("n1", 2, 2), "Pending", ("n1", 4)),      # bound, not started: still held
    (_spec("n1", 1, init=(4,)), "Running", ("n1", 4)),  # the larger init container
    (_spec(None, 8), "Pending", None),              # not bound: holds nothing yet
    (_spec("n1", 8), "Succeeded", None),            # finished: gave its GPUs back
    (_spec("n1", 8), "Failed", None),
    (_spec("n1"), "Running", None),                 # asks for no GPU
])
def test_pod_gpus(spec: dict[str, Any], phase: str, held: tuple[str, int] | None) -> None:
    assert pod_gpus(spec, {"phase": phase}) == held


def test_a_request_without_a_limit_counts() -> None:
    spec = {"nodeName": "n", "containers": [{"resources": {"requests": {"nvidia.com/gpu": 2}}}]}
    assert pod_gpus(spec, {}) == ("n", 2)


def test_whole_free_nodes_count_nodes_not_gpus() -> None:
    # 4 + 4 free GPUs on two nodes are 8 GPUs, but not one whole free node of 8.
    free = free_gpus({"a": 8, "b": 8, "c": 8}, [("a", 4), ("b", 4), ("elsewhere", 8)])
    assert free == {"a": 4, "b": 4, "c": 8}
    assert whole_free_nodes(free, 8) == 1
    assert whole_free_nodes(free, 4) == 3
    assert free_gpus({"a": 8}, [("a", 6), ("a", 6)]) == {"a": 0}
