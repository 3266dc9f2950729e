"""Storage claims: present, Bound, and mountable by many pods on many nodes."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import ROOT
from trtllm_operator.api import LLMEngine
from trtllm_operator.claims import (
    SHARED_READ,
    SHARED_WRITE,
    ClaimFact,
    check_claim,
    check_engine_claims,
    claims_of,
    observe_claim,
)
from trtllm_operator.validation import Reason, Severity

RWX = ClaimFact("Bound", ("ReadWriteMany",))


def _engine(model_volume: bool = False) -> LLMEngine:
    body: dict[str, Any] = yaml.safe_load(
        (ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"]["namespace"] = "ml"
    if model_volume:
        body["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama"}}
    return LLMEngine.model_validate(body)


def test_a_bound_rwx_claim_passes() -> None:
    assert check_claim(RWX, "c", "ml", "spec.storage.claimName", SHARED_WRITE) == []


def test_missing_claim_names_field_namespace_and_fix() -> None:
    [f] = check_claim(None, "engines", "ml", "spec.storage.claimName", SHARED_WRITE)
    assert (f.reason, f.severity, f.field) == (Reason.CLAIM_NOT_FOUND, Severity.ERROR,
                                               "spec.storage.claimName")
    assert "no PersistentVolumeClaim engines in namespace ml" in f.message
    assert "ReadWriteMany" in f.message
    assert f.gpu is None


def test_unbound_claim() -> None:
    [f] = check_claim(ClaimFact("Pending", ("ReadWriteMany",)), "engines", "ml",
                      "spec.storage.claimName", SHARED_WRITE)
    assert f.reason is Reason.CLAIM_NOT_BOUND
    assert "is Pending, not Bound" in f.message
    assert "kubectl describe pvc -n ml engines" in f.message


def test_single_node_claims_are_not_shared() -> None:
    for modes in (("ReadWriteOnce",), ("ReadWriteOncePod",), ("ReadOnlyMany",), ()):
        [f] = check_claim(ClaimFact("Bound", modes), "engines", "ml",
                          "spec.storage.claimName", SHARED_WRITE)
        assert f.reason is Reason.CLAIM_NOT_SHARED
        assert "needs ReadWriteMany" in f.message


def test_a_model_volume_may_be_read_only_many() -> None:
    rox = ClaimFact("Bound", ("ReadOnlyMany",))
    assert check_claim(rox, "m", "ml", "spec.model.volume.claimName", SHARED_READ) == []


def test_engine_claims_checks_storage_and_model_volume() -> None:
    engine = _engine(model_volume=True)
    assert claims_of(engine.spec) == ("trtllm-engines", "models")
    facts = {"trtllm-engines": RWX, "models": ClaimFact("Bound", ("ReadWriteOnce",))}
    [f] = check_engine_claims(engine.spec, "ml", facts.get)
    assert (f.reason, f.field) == (Reason.CLAIM_NOT_SHARED, "spec.model.volume.claimName")
    found = check_engine_claims(engine.spec, "ml", lambda _name: None)
    assert [(x.reason, x.field) for x in found] == [
        (Reason.CLAIM_NOT_FOUND, "spec.storage.claimName"),
        (Reason.CLAIM_NOT_FOUND, "spec.model.volume.claimName")]


def test_observe_claim_prefers_what_the_volume_grants() -> None:
    fact = observe_claim({"accessModes": ["ReadWriteOnce"]},
                         {"phase": "Bound", "accessModes": ["ReadWriteMany"]})
    assert fact == RWX
    assert observe_claim({"accessModes": ["ReadWriteMany"]}, {}) == ClaimFact(
        None, ("ReadWriteMany",))
