"""The chart's Argo CD health check (Lua), run on objects recorded from the e2e run of
tests/e2e/test_gitops_health.py (GITOPS_RECORD) and on edge cases written here."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitops import ARGOCD_CM, HEALTH_LUA, KINDS, argocd_health

RECORDED = json.loads((Path(__file__).parent / "data" / "gitops_status_objects.json").read_text())
# What each kstatus result means to Argo CD: the two tools must agree on every object.
KSTATUS_TO_ARGOCD = {"InProgress": "Progressing", "Current": "Healthy", "Failed": "Degraded"}


@pytest.mark.parametrize("record", RECORDED, ids=[r["label"] for r in RECORDED])
def test_recorded_objects_get_the_health_kstatus_gave_them(record: dict[str, Any]) -> None:
    status, message = argocd_health(record["object"])
    assert status == KSTATUS_TO_ARGOCD[record["kstatus"]]
    assert status == record["argocd"]
    assert message  # always says why


def test_the_recording_covers_every_outcome_for_both_kinds() -> None:
    seen = {(r["object"]["kind"], r["argocd"]) for r in RECORDED}
    assert seen == {(k, s) for k in KINDS for s in ("Progressing", "Healthy", "Degraded")}


def _record(label: str) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(next(r["object"] for r in RECORDED
                                             if r["label"] == label))
    return obj


def test_degraded_carries_the_reason_and_the_fix() -> None:
    status, message = argocd_health(_record("deployment Secret missing"))
    assert status == "Degraded"
    assert message.startswith("SecretNotFound: ")
    assert "create Secret serve-keys" in message
    status, message = argocd_health(_record("engine build failed"))
    assert (status, message.split(":")[0]) == ("Degraded", "BuildFailed")


def test_a_ready_object_whose_new_spec_is_not_observed_is_progressing() -> None:
    obj = _record("deployment ready")
    assert argocd_health(obj)[0] == "Healthy"
    obj["metadata"]["generation"] += 1
    assert argocd_health(obj) == (
        "Progressing", f"Waiting for the operator to observe generation "
                       f"{obj['metadata']['generation']}")


def test_an_object_without_status_is_progressing() -> None:
    obj = _record("engine built")
    del obj["status"]
    assert argocd_health(obj) == ("Progressing", "Waiting for the operator to report status")


def test_stalled_wins_over_a_ready_condition_listed_first() -> None:
    obj = _record("engine build failed")
    conds = obj["status"]["conditions"]
    conds.sort(key=lambda c: c["type"] != "Ready")  # Ready before Stalled
    assert conds[0]["type"] == "Ready"
    assert argocd_health(obj)[0] == "Degraded"


def test_argocd_cm_patch_registers_the_script_for_both_kinds_word_for_word() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    script = HEALTH_LUA.read_text()
    assert cm["data"] == {f"resource.customizations.health.trtllm.dev_{k}": script
                          for k in KINDS}
