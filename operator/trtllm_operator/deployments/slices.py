"""One fleet across GPU types (``spec.slices``): pure pieces of it. No I/O.

A slice is one GPU type of the fleet. Each runs its own workload (a Deployment, or a
LeaderWorkerSet when the engine spans nodes of that type), built by the same builders as a
single-type deployment from a *slice view* of the LLMDeployment: the same object with
``spec.gpu`` set to the slice's type and ``spec.replicas`` to the slice's share. So each slice
is placed and sized by its own engine target (image, parallelism, node selector) and nothing
about serving is written twice. The workload is then named after the slice and its pods get a
slice label in the selector, so two slices never claim each other's pods.

``spec.replicas`` stays the total (what the scale subresource reads and writes); it is split
over the slices by weight with the largest-remainder rule, so the parts always add up to it and
an autoscaler scales the whole fleet in proportion.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from trtllm_operator import conditions as cond
from trtllm_operator.api import ConditionStatus, LLMDeployment, LLMDeploymentStatus
from trtllm_operator.api.deployment import DeploymentConditionType, SliceStatus
from trtllm_operator.validation import Finding

SLICE_LABEL: Final = "trtllm.dev/slice"
"""Pod (and selector) label naming the slice a pod belongs to: its GPU type as a name."""
MAX_NAME: Final = 63
"""Workload names become pod host names under a LeaderWorkerSet: keep them DNS labels."""


def split_replicas(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the earlier
    slice), adding up to ``total`` exactly."""
    if not weights:
        return []
    whole = sum(weights)
    exact = [total * w for w in weights]
    parts = [e // whole for e in exact]
    left = total - sum(parts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] % whole), i))
    for i in by_remainder[:left]:
        parts[i] += 1
    return parts


def slug(gpu: str) -> str:
    """A GPU type as a lowercase name part: NVIDIA-H100-80GB-HBM3 -> nvidia-h100-80gb-hbm3."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"


def workload_name(d: LLMDeployment, gpu: str) -> str:
    """The slice's Deployment or LeaderWorkerSet: ``<name>-<gpu type>``, shortened with a hash
    when that would exceed a DNS label."""
    name = f"{d.metadata.name}-{slug(gpu)}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(gpu.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9].rstrip('-')}-{digest}"


def slice_label_value(gpu: str) -> str:
    value = slug(gpu)
    if len(value) <= MAX_NAME:
        return value
    return f"{value[:MAX_NAME - 9].rstrip('-')}-{hashlib.sha256(gpu.encode()).hexdigest()[:8]}"


def slice_view(d: LLMDeployment, gpu: str, replicas: int) -> LLMDeployment:
    """The LLMDeployment as if it served only this slice: ``spec.gpu`` its type,
    ``spec.replicas`` its share, no slices, and an empty status (the slice's own conditions
    are computed afresh; the whole's keep their transition times)."""
    spec = d.spec.model_copy(update={"gpu": gpu, "replicas": replicas, "slices": ()})
    return d.model_copy(update={"spec": spec, "status": LLMDeploymentStatus()})


def as_slice(manifest: dict[str, Any], d: LLMDeployment, gpu: str) -> dict[str, Any]:
    """A workload built for a slice view, renamed after the slice and with the slice label on
    it, in its selector and on its pods (both templates of a LeaderWorkerSet)."""
    m = copy.deepcopy(manifest)
    name = workload_name(d, gpu)
    value = slice_label_value(gpu)
    m["metadata"]["name"] = name
    m["metadata"]["labels"] = {**m["metadata"].get("labels", {}), SLICE_LABEL: value}
    spec = m["spec"]
    if m["kind"] == "Deployment":
        spec["selector"]["matchLabels"][SLICE_LABEL] = value
        templates = [spec["template"]]
    else:
        lwt = spec["leaderWorkerTemplate"]
        templates = [lwt["leaderTemplate"], lwt["workerTemplate"]]
    for t in templates:
        t["metadata"]["labels"][SLICE_LABEL] = value
        # Multi-node pods keep off each other's nodes by the LeaderWorkerSet's name label.
        anti = ((t["spec"].get("affinity") or {}).get("podAntiAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution") or []
        for term in anti:
            for expr in term.get("labelSelector", {}).get("matchExpressions", []):
                if expr.get("values") == [d.metadata.name]:
                    expr["values"] = [name]
    return m


def slice_findings(findings: Sequence[Finding], index: int) -> list[Finding]:
    """Findings of a slice view, told about ``spec.slices[index].gpu`` instead of spec.gpu."""
    field = f"spec.slices[{index}].gpu"
    return [dataclasses.replace(f, field=f.field.replace("spec.gpu", field),
                                message=f.message.replace("spec.gpu", field))
            for f in findings]


def slice_status(gpu: str, view: LLMDeploymentStatus, desired: int) -> SliceStatus:
    """What status shows of one slice, from the status computed for its slice view."""
    ready = cond.find_condition(view.conditions, DeploymentConditionType.READY)
    return SliceStatus(
        gpu=gpu, desired_replicas=desired, replicas=view.replicas or 0,
        ready_replicas=view.ready_replicas or 0, engine_fingerprint=view.engine_fingerprint,
        ready=ready is not None and ready.status == "True",
        reason=ready.reason[:128] if ready else None,
        message=ready.message[:1024] if ready else None)


_ALL_TRUE: Final = (DeploymentConditionType.ENGINE_READY, DeploymentConditionType.AVAILABLE,
                    DeploymentConditionType.READY)


def fleet_status(d: LLMDeployment, views: Sequence[LLMDeploymentStatus],
                 slices: Sequence[SliceStatus], now: datetime,
                 endpoint: str | None, selector: str) -> LLMDeploymentStatus:
    """The whole's status from its slices' (in spec order): EngineReady, Available and Ready
    are True only when they are in every slice, else the first slice's that is not, naming
    it; Progressing is True while any slice rolls out."""
    gen = d.metadata.generation
    conds = d.status.conditions

    def put(type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conds
        conds = cond.set_condition(conds, type_, status, reason, message[:32768],
                                   observed_generation=gen, now=now)

    def where(i: int) -> str:
        return f"spec.slices[{i}] ({slices[i].gpu})"

    for type_ in (*_ALL_TRUE, DeploymentConditionType.PROGRESSING):
        each = [cond.find_condition(v.conditions, type_) for v in views]
        wanted: ConditionStatus = (
            "False" if type_ == DeploymentConditionType.PROGRESSING else "True")
        off = next((i for i, c in enumerate(each) if c is None or c.status != wanted), None)
        if off is None:
            reasons = {c.reason for c in each if c is not None}
            reason = reasons.pop() if len(reasons) == 1 else "AllSlices"
            put(type_, wanted, reason, "; ".join(
                f"{where(i)}: {c.message}" for i, c in enumerate(each) if c is not None))
        else:
            c = each[off]
            put(type_, c.status if c else "Unknown", c.reason if c else "Pending",
                f"{where(off)}: {c.message if c else 'not observed yet'}")
    total_ready = sum(s.ready_replicas for s in slices)
    return LLMDeploymentStatus(
        observed_generation=gen, conditions=conds,
        replicas=sum(s.replicas for s in slices), ready_replicas=total_ready,
        replica_summary=f"{total_ready}/{d.spec.replicas}",
        selector=selector, endpoint=endpoint, slices=tuple(slices))
