"""GPUs in use on each node, from the pods bound there, and the whole free nodes a multi-node
group can take. Pure: the pod index feeds it.

Nodes report only allocatable GPUs; what is free is allocatable minus what the pods bound to
the node ask for, as the scheduler counts it: a pod's effective request is the larger of its
containers' sum and its largest init container (init containers run one at a time, before the
rest). Pods that finished (Succeeded, Failed) hold nothing. Pods of namespaces the operator
does not watch are not seen, so with ``watchNamespaces`` the count can be high: the
scheduler's own message stays the authority, this count says what the operator sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trtllm_operator import gpus


def _gpus_of(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    for part in ("limits", "requests"):  # extended resources: requests equal limits
        value = (resources.get(part) or {}).get(gpus.GPU_RESOURCE)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0


def pod_gpus(spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str, int] | None:
    """(node, GPUs) a pod holds: None when it is not bound, has finished or asks for none."""
    node = spec.get("nodeName")
    if not node or status.get("phase") in ("Succeeded", "Failed"):
        return None
    running = sum(_gpus_of(c) for c in spec.get("containers") or [])
    init = max((_gpus_of(c) for c in spec.get("initContainers") or []), default=0)
    held = max(running, init)
    return (str(node), held) if held > 0 else None


def free_gpus(allocatable: Mapping[str, int], held: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Free GPUs by node: allocatable minus what the pods bound there hold (never below 0)."""
    used: dict[str, int] = {}
    for node, n in held:
        used[node] = used.get(node, 0) + n
    return {node: max(0, a - used.get(node, 0)) for node, a in allocatable.items()}


def whole_free_nodes(free: Mapping[str, int], gpus_per_pod: int) -> int:
    """Nodes whose free GPUs cover one pod of a group (a group takes whole nodes: one pod
    each, never split across)."""
    return sum(1 for n in free.values() if n >= gpus_per_pod)
