"""The KEP-1623 condition helper: what ``kubectl get`` / ``kubectl wait`` readers rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from trtllm_operator.api import Condition
from trtllm_operator.conditions import (
    find_condition,
    is_true,
    kubernetes_time,
    remove_condition,
    set_condition,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready(status: str = "False", reason: str = "Building", *, generation: int = 1,
          now: datetime = T0, conditions: tuple[Condition, ...] = ()) -> tuple[Condition, ...]:
    return set_condition(conditions, "Ready", status, reason, f"{reason} message",  # type: ignore[arg-type]
                         observed_generation=generation, now=now)


def test_a_new_condition_is_appended_with_now_in_whole_utc_seconds() -> None:
    conditions = ready()

    (condition,) = conditions
    assert (condition.type, condition.status, condition.reason) == ("Ready", "False", "Building")
    assert condition.last_transition_time == datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert condition.observed_generation == 1


def test_same_status_keeps_transition_time_but_updates_reason_message_and_generation() -> None:
    first = ready("False", "Building", generation=1, now=T0)

    second = ready("False", "WaitingForNodes", generation=2, now=T1, conditions=first)

    (condition,) = second
    assert condition.last_transition_time == kubernetes_time(T0)
    assert condition.reason == "WaitingForNodes"
    assert condition.message == "WaitingForNodes message"
    assert condition.observed_generation == 2


def test_a_status_change_moves_the_transition_time() -> None:
    first = ready("False", "Building", now=T0)

    second = ready("True", "Built", now=T1, conditions=first)

    assert second[0].status == "True"
    assert second[0].last_transition_time == kubernetes_time(T1)


def test_setting_one_type_leaves_the_others_in_place() -> None:
    conditions = set_condition((), "Built", "True", "Built", "", observed_generation=1, now=T0)
    conditions = ready(conditions=conditions)
    conditions = set_condition(conditions, "Building", "False", "Idle", "",
                               observed_generation=1, now=T0)

    updated = set_condition(conditions, "Built", "False", "Rebuilding", "",
                            observed_generation=2, now=T1)

    assert [c.type for c in updated] == ["Built", "Ready", "Building"]
    assert updated[1:] == conditions[1:]


def test_reconciling_again_with_nothing_new_changes_nothing() -> None:
    first = ready("True", "Built", now=T0)

    again = ready("True", "Built", now=T1, conditions=first)

    assert again == first, "an unchanged status must compare equal so it is not rewritten"


def test_condition_survives_a_round_trip_through_the_api_server_unchanged() -> None:
    (condition,) = ready("True", "Built")

    wire = condition.to_wire()
    assert wire["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert wire["observedGeneration"] == 1
    assert Condition.model_validate(wire) == condition


def test_now_must_carry_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ready(now=datetime(2026, 1, 1, 12, 0))


def test_kubernetes_time_converts_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert kubernetes_time(datetime(2026, 1, 1, 13, 0, 5, 999, tzinfo=paris)) == datetime(
        2026, 1, 1, 12, 0, 5, tzinfo=UTC)


def test_lookups() -> None:
    conditions = ready("True", "Built")

    assert is_true(conditions, "Ready")
    assert not is_true(conditions, "Building")
    found = find_condition(conditions, "Ready")
    assert found is not None
    assert found.reason == "Built"
    assert find_condition(remove_condition(conditions, "Ready"), "Ready") is None
