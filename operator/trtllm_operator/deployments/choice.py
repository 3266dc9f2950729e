"""Which GPU type an LLMDeployment without ``spec.gpu`` serves on: one documented, pure rule.

Among the engine's Built targets:

1. **Sticky.** The GPU type the deployment already serves on is kept while it stays Built and
   schedulable (a node of that type can hold one replica), even when the rules below would now
   choose another: a new target finishing its build never moves a running fleet. Set
   ``spec.gpu`` to move it on purpose.
2. **Room for every replica.** Prefer GPU types whose nodes can hold ``replicas`` pods, each
   needing tensor x pipeline GPUs on one node (per node: allocatable GPUs // GPUs per replica).
   A type whose nodes are too small for one replica serves it as a group of whole nodes
   (LeaderWorkerSet, see :mod:`multinode`): it is eligible only when LeaderWorkerSet is
   installed and the type has the whole nodes of at least one group; its room is those
   nodes // the group's size.
3. **Most GPU memory per GPU**, compared in whole GiB so that two cards sold with the same
   memory tie (an H100 80GB reports 81559 MiB, an A100 80GB 81920): more memory leaves more
   room for the KV cache, so more concurrent requests and longer contexts.
4. **Newest compute capability**, then **name**, so the choice is deterministic.

No I/O: the caller passes the numbers (node capacity from the GPU node index, memory from
:func:`memory_mib`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trtllm_operator.deployments import multinode

MIB_PER_GIB = 1024


@dataclass(frozen=True)
class Option:
    """One Built target, with what the rule weighs."""

    gpu: str
    """nvidia.com/gpu.product value."""
    slots: int
    """Replicas the nodes of this GPU type can hold."""
    memory_mib: int | None
    """Memory of one GPU (nvidia.com/gpu.memory), None if unknown."""
    compute: tuple[int, int] | None = None
    """Compute capability, None if unknown."""
    eligible: bool = True
    """False for a type whose replica spans nodes and cannot be placed as a group there (no
    LeaderWorkerSet, a world that does not divide, fewer whole nodes than a group)."""

    @property
    def memory_gib(self) -> int:
        """Memory in whole GiB (rounded): the unit cards are sold and compared in."""
        return round(self.memory_mib / MIB_PER_GIB) if self.memory_mib else 0


@dataclass(frozen=True)
class Pick:
    """The chosen GPU type and, in words, why."""

    gpu: str
    why: str


def replica_slots(node_gpus: Iterable[int], gpus_per_replica: int) -> int:
    """How many replicas of ``gpus_per_replica`` GPUs each the nodes can hold (one pod never
    spans nodes)."""
    if gpus_per_replica < 1:
        return 0
    return sum(n // gpus_per_replica for n in node_gpus)


def group_slots(node_gpus: Iterable[int], world: int) -> int:
    """How many replicas of ``world`` GPUs the nodes hold as groups of whole nodes, when a
    replica is wider than the largest node (0 when the world does not split evenly)."""
    nodes = tuple(node_gpus)
    shape = multinode.group_shape(world, max(nodes, default=0))
    if shape is None:
        return 0
    return sum(1 for n in nodes if n >= shape.gpus_per_pod) // shape.size


def _rank(o: Option, replicas: int) -> tuple[bool, int, tuple[int, int], str]:
    """Sort key: the best option is the smallest (hence the negations)."""
    major, minor = o.compute or (0, 0)
    return (o.slots < replicas, -o.memory_gib, (-major, -minor), o.gpu)


def pick_gpu(options: Sequence[Option], replicas: int, current: str | None) -> Pick | None:
    """The GPU type to serve on among the Built targets in ``options`` (None if there are none).

    ``current`` is the GPU type the deployment serves on now (its status), if any.
    """
    if not options:
        return None
    def also(gpu: str) -> str:
        others = sorted(o.gpu for o in options if o.gpu != gpu)
        return f" (also built: {', '.join(others)})" if others else ""

    ranked = sorted(options, key=lambda o: _rank(o, replicas))
    best = ranked[0]
    kept = next((o for o in options if o.gpu == current and o.slots >= 1), None)
    if kept is not None and kept.gpu != best.gpu:
        return Pick(kept.gpu, f"kept {kept.gpu}, where it already serves: still built and "
                              f"schedulable, so a newly built target does not move the fleet "
                              f"(the rule alone would choose {best.gpu}); set spec.gpu to move "
                              f"it{also(kept.gpu)}")
    plural = "replica" if replicas == 1 else "replicas"
    memory = f"{best.memory_gib} GiB" if best.memory_mib else "unknown"
    if best.slots >= replicas:
        why = f"the most GPU memory ({memory}) among built targets with room for {replicas} " \
              f"{plural}"
    else:
        why = (f"no built target has room for {replicas} {plural} ({best.gpu} nodes hold "
               f"{best.slots}; the rest wait for GPUs); the most GPU memory ({memory})")
    runner = ranked[1] if len(ranked) > 1 else None
    if (runner is not None and (runner.slots >= replicas) == (best.slots >= replicas)
            and runner.memory_gib == best.memory_gib):
        if (runner.compute or (0, 0)) != (best.compute or (0, 0)) and best.compute:
            why += f", then the newest compute capability ({best.compute[0]}." \
                   f"{best.compute[1]})"
        else:
            why += ", then the first name"
    return Pick(best.gpu, f"chose {best.gpu}: {why}{also(best.gpu)}")
