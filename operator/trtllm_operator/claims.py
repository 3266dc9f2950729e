"""Whether the storage claims an LLMEngine names can be used by its build and serving pods. Pure.

Build pods write engines into ``spec.storage.claimName`` and serving pods on many nodes read
them, so the claim must exist, be Bound, and allow many pods on many nodes (ReadWriteMany). A
checkpoint in ``spec.model.volume.claimName`` is only read: ReadOnlyMany is fine there too.
A claim that is missing or unbound leaves the target Pending (creating or binding the claim
resumes the work: the operator watches claims); a claim that exists but can be mounted by one
node only is a setting to change, so the target is Invalid.

:class:`ClaimFact` is the typed fact the claim index keeps and the checks read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from trtllm_operator.api import LLMEngineSpec
from trtllm_operator.validation import Finding, Reason, Severity

SHARED_WRITE: Final = frozenset({"ReadWriteMany"})
SHARED_READ: Final = frozenset({"ReadWriteMany", "ReadOnlyMany"})

# Reasons after which the claim, not the spec, has to change: the target waits (Pending).
WAITING_REASONS: Final = frozenset({Reason.CLAIM_NOT_FOUND, Reason.CLAIM_NOT_BOUND})
CLAIM_REASONS: Final = WAITING_REASONS | {Reason.CLAIM_NOT_SHARED}


@dataclass(frozen=True)
class ClaimFact:
    """A PersistentVolumeClaim as the operator sees it."""

    phase: str | None
    """Pending, Bound or Lost."""
    access_modes: tuple[str, ...]
    """What the bound volume grants (status.accessModes), else what the claim asks for."""


def observe_claim(spec: Mapping[str, Any], status: Mapping[str, Any]) -> ClaimFact:
    modes = status.get("accessModes") or spec.get("accessModes") or []
    return ClaimFact(phase=status.get("phase"), access_modes=tuple(str(m) for m in modes))


ClaimLookup = Callable[[str], ClaimFact | None]
"""A claim of the object's namespace by name (None if there is none)."""


def claims_of(spec: LLMEngineSpec) -> tuple[str, ...]:
    """The claim names an LLMEngine mounts (what the claim index is searched by)."""
    names = [spec.storage.claim_name]
    if spec.model.volume is not None:
        names.append(spec.model.volume.claim_name)
    return tuple(dict.fromkeys(names))


def check_engine_claims(spec: LLMEngineSpec, namespace: str,
                        claim: ClaimLookup) -> list[Finding]:
    """Findings about the engine's storage claim and its model volume's claim."""
    found = check_claim(claim(spec.storage.claim_name), spec.storage.claim_name, namespace,
                        "spec.storage.claimName", SHARED_WRITE)
    volume = spec.model.volume
    if volume is not None:
        found += check_claim(claim(volume.claim_name), volume.claim_name, namespace,
                             "spec.model.volume.claimName", SHARED_READ)
    return found


def check_claim(fact: ClaimFact | None, name: str, namespace: str, field_name: str,
                shared_modes: frozenset[str]) -> list[Finding]:
    """One claim: present, Bound, and mountable by pods on many nodes."""
    modes = " or ".join(sorted(shared_modes, reverse=True))
    if fact is None:
        return [Finding(Reason.CLAIM_NOT_FOUND, Severity.ERROR, field_name, (
            f"{field_name} {name}: there is no PersistentVolumeClaim {name} in namespace "
            f"{namespace}; create it ({modes}), or correct {field_name}. Nothing starts until "
            f"it exists; then the work resumes by itself"))]
    if fact.phase != "Bound":
        return [Finding(Reason.CLAIM_NOT_BOUND, Severity.ERROR, field_name, (
            f"{field_name} {name} is {fact.phase or 'Pending'}, not Bound: no volume backs it "
            f"yet (kubectl describe pvc -n {namespace} {name} says why: no PersistentVolume "
            f"or StorageClass offers {modes}, or its class binds on first use). Nothing starts "
            f"until it is Bound; then the work resumes by itself"))]
    if not shared_modes & set(fact.access_modes):
        granted = ", ".join(fact.access_modes) or "no access mode"
        return [Finding(Reason.CLAIM_NOT_SHARED, Severity.ERROR, field_name, (
            f"{field_name} {name} grants {granted}, but build and serving pods on several "
            f"nodes mount it at once: it needs {modes}; point {field_name} at a claim of a "
            f"StorageClass that offers {modes} (NFS, CephFS, a cloud file store), or recreate "
            f"{name} that way"))]
    return []
