"""The GPU choice of an LLMDeployment without spec.gpu, and spec.gpu against auto-resolved
targets: the pure rule, then choose_target and validation on typed objects."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ROOT
from trtllm_operator import gpus
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.deployments.choice import Option, group_slots, pick_gpu, replica_slots
from trtllm_operator.deployments.controller import choose_target, resolved_targets
from trtllm_operator.validation import ClusterFacts, GPUPool, Reason, validate_deployment

H100 = gpus.gpu_type("h100").product
H200 = gpus.gpu_type("h200").product
A100 = gpus.gpu_type("a100").product
L40S = gpus.gpu_type("l40s").product


def opt(short: str, slots: int) -> Option:
    g = gpus.gpu_type(short)
    return Option(g.product, slots, g.memory_mib, g.compute_capability)


# --------------------------------------------------------------------------- the pure rule


def test_most_memory_wins_among_types_with_room_and_the_reason_says_so() -> None:
    pick = pick_gpu([opt("l40s", 8), opt("h200", 8), opt("h100", 8)], 4, None)

    assert pick is not None
    assert pick.gpu == H200
    assert pick.why == (f"chose {H200}: the most GPU memory (140 GiB) among built targets "
                        f"with room for 4 replicas (also built: {H100}, {L40S})")


def test_room_for_every_replica_comes_before_memory() -> None:
    # 4 replicas: the H200 pool holds 2, the L40S pool 4.
    pick = pick_gpu([opt("h200", 2), opt("l40s", 4)], 4, None)

    assert pick is not None
    assert pick.gpu == L40S
    assert "with room for 4 replicas" in pick.why


def test_without_room_anywhere_memory_decides_and_the_reason_says_pods_wait() -> None:
    pick = pick_gpu([opt("l40s", 1), opt("h100", 2)], 3, None)

    assert pick is not None
    assert pick.gpu == H100
    assert pick.why.startswith(f"chose {H100}: no built target has room for 3 replicas "
                               f"({H100} nodes hold 2; the rest wait for GPUs)")


def test_cards_of_the_same_memory_size_tie_and_the_newer_compute_wins() -> None:
    # A100 80GB reports 81920 MiB and H100 80GB 81559 MiB: both 80 GiB.
    pick = pick_gpu([opt("a100", 8), opt("h100", 8)], 1, None)

    assert pick is not None
    assert pick.gpu == H100
    assert "(80 GiB)" in pick.why
    assert "then the newest compute capability (9.0)" in pick.why


def test_equal_memory_and_compute_fall_back_to_the_name() -> None:
    pick = pick_gpu([Option("ZZ-GPU", 1, 40960, (9, 0)), Option("AA-GPU", 1, 40960, (9, 0))],
                    1, None)

    assert pick is not None
    assert pick.gpu == "AA-GPU"
    assert pick.why.endswith("then the first name (also built: ZZ-GPU)")


def test_unknown_memory_ranks_last() -> None:
    pick = pick_gpu([Option("NVIDIA-Mystery", 8, None), opt("l40s", 8)], 1, None)

    assert pick is not None
    assert pick.gpu == L40S


def test_the_gpu_type_served_on_is_kept_when_a_bigger_target_is_built() -> None:
    pick = pick_gpu([opt("l40s", 4), opt("h200", 16)], 2, current=L40S)

    assert pick is not None
    assert pick.gpu == L40S
    assert pick.why == (f"kept {L40S}, where it already serves: still built and schedulable, "
                        f"so a newly built target does not move the fleet (the rule alone would "
                        f"choose {H200}); set spec.gpu to move it (also built: {H200})")


def test_a_type_served_on_that_the_rule_would_choose_anyway_keeps_its_reason() -> None:
    fresh = pick_gpu([opt("l40s", 4), opt("h200", 16)], 2, None)

    assert pick_gpu([opt("l40s", 4), opt("h200", 16)], 2, current=H200) == fresh


def test_the_served_type_is_left_once_no_node_can_hold_a_replica() -> None:
    pick = pick_gpu([opt("l40s", 0), opt("h100", 2)], 2, current=L40S)

    assert pick is not None
    assert pick.gpu == H100


def test_no_built_target_no_pick() -> None:
    assert pick_gpu([], 1, None) is None


@pytest.mark.parametrize(("nodes", "per_replica", "slots"), [
    ((8, 8), 1, 16), ((8, 8), 2, 8), ((8, 4), 3, 3), ((4, 4), 8, 0), ((), 1, 0), ((8,), 0, 0),
])
def test_replica_slots_count_whole_replicas_per_node(nodes: tuple[int, ...], per_replica: int,
                                                     slots: int) -> None:
    assert replica_slots(nodes, per_replica) == slots


options = st.lists(
    st.builds(Option,
              gpu=st.sampled_from([g.product for g in gpus.CATALOG] + ["X-1", "X-2"]),
              slots=st.integers(0, 64),
              memory_mib=st.none() | st.integers(1, 200_000),
              compute=st.none() | st.tuples(st.integers(7, 12), st.integers(0, 9))),
    min_size=1, max_size=6, unique_by=lambda o: o.gpu)


@given(options, st.integers(0, 32), st.none() | st.sampled_from([H100, L40S, "X-1"]))
def test_the_choice_is_always_a_built_target_and_ignores_input_order(
        built: list[Option], replicas: int, current: str | None) -> None:
    pick = pick_gpu(built, replicas, current)
    assert pick is not None
    assert pick.gpu in {o.gpu for o in built}
    assert pick.why.startswith((f"chose {pick.gpu}:", f"kept {pick.gpu},"))
    again = pick_gpu(list(reversed(built)), replicas, current)
    assert again is not None
    assert again.gpu == pick.gpu


@given(options, st.integers(1, 32))
def test_a_schedulable_served_type_is_always_kept(built: list[Option], replicas: int) -> None:
    served = built[-1]
    pick = pick_gpu(built, replicas, served.gpu)
    assert pick is not None
    fresh = pick_gpu(built, replicas, None)
    assert fresh is not None
    if served.slots < 1 or fresh.gpu == served.gpu:
        assert pick == fresh  # where the rule alone agrees, its reason is given
    else:
        assert pick.gpu == served.gpu
        assert pick.why.startswith(f"kept {served.gpu},")


@given(options, st.integers(1, 32))
def test_a_type_with_room_is_chosen_over_every_type_without(built: list[Option],
                                                            replicas: int) -> None:
    pick = pick_gpu(built, replicas, None)
    assert pick is not None
    chosen = next(o for o in built if o.gpu == pick.gpu)
    if any(o.slots >= replicas for o in built):
        assert chosen.slots >= replicas
        roomy = [o for o in built if o.slots >= replicas]
        assert chosen.memory_gib == max(o.memory_gib for o in roomy)


# --------------------------------------------------------------------------- on the objects


def _engine(targets: list[str], built: dict[str, str], generation: int = 1,
            observed: int | None = 1, tensor: int = 1) -> LLMEngine:
    body: dict[str, Any] = yaml.safe_load(
        (ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u", "generation": generation}
    body["spec"]["targets"] = targets
    body["spec"]["build"]["parallelism"] = {"tensor": tensor}
    body["status"] = {"observedGeneration": observed, "targets": [
        {"gpu": gpu, "state": state, "fingerprint": "f" * 64, "path": f"engines/x/{gpu}"}
        for gpu, state in built.items()]}
    return LLMEngine.model_validate(body)


def _llmd(gpu: str | None = None, replicas: int = 1) -> LLMDeployment:
    spec: dict[str, Any] = {"engineRef": {"name": "llama-3-8b"}, "replicas": replicas}
    if gpu:
        spec["gpu"] = gpu
    return LLMDeployment.model_validate({
        "metadata": {"name": "server", "namespace": "ml", "generation": 1}, "spec": spec})


FLEET = ClusterFacts({H100: GPUPool((8, 8), (9, 0)), L40S: GPUPool((4,), (8, 9)),
                      A100: GPUPool((8,), (8, 0))})


def test_without_spec_gpu_the_largest_memory_built_target_is_served_not_the_first() -> None:
    engine = _engine(["auto"], {L40S: "Built", H100: "Built", A100: "Building"})

    chosen = choose_target(_llmd(replicas=2), engine, (), FLEET)

    assert chosen.target is not None
    assert chosen.target.gpu == H100
    assert (chosen.ready, chosen.reason) == ("True", "EngineChosen")
    assert chosen.gpu_reason == (f"chose {H100}: the most GPU memory (80 GiB) among built "
                                 f"targets with room for 2 replicas (also built: {L40S})")
    assert chosen.message == f"{chosen.gpu_reason}; engine for {H100} built (ffffffffffff)"


def test_room_is_counted_in_gpus_per_replica_on_the_observed_nodes() -> None:
    # tensor 4: the L40S pool (one 4-GPU node) holds 1 replica, the H100 pool 4.
    engine = _engine([L40S, H100], {L40S: "Built", H100: "Built"}, tensor=4)
    cluster = ClusterFacts({H100: GPUPool((8,), (9, 0)), L40S: GPUPool((4, 4, 4, 4), (8, 9))})

    assert choose_target(_llmd(replicas=3), engine, (), cluster).target.gpu == L40S  # type: ignore[union-attr]
    assert choose_target(_llmd(replicas=2), engine, (), cluster).target.gpu == H100  # type: ignore[union-attr]


def test_a_running_fleet_stays_when_a_bigger_target_finishes() -> None:
    engine = _engine([L40S, H100], {L40S: "Built", H100: "Built"})

    chosen = choose_target(_llmd(), engine, (), FLEET, current=L40S)

    assert chosen.target is not None
    assert chosen.target.gpu == L40S
    assert chosen.gpu_reason is not None
    assert chosen.gpu_reason.startswith(f"kept {L40S}")


def test_spec_gpu_overrides_the_rule_and_says_so() -> None:
    engine = _engine([L40S, H100], {L40S: "Built", H100: "Built"})

    chosen = choose_target(_llmd(gpu=L40S), engine, (), FLEET, current=H100)

    assert chosen.target is not None
    assert (chosen.target.gpu, chosen.reason, chosen.gpu_reason) == (
        L40S, "EngineBuilt", "named by spec.gpu")


def test_spec_gpu_naming_an_auto_resolved_type_is_accepted_and_served() -> None:
    engine = _engine(["auto"], {H100: "Built", L40S: "Built"})
    d = _llmd(gpu=H100)

    findings = validate_deployment(d.spec, engine.spec, FLEET, resolved=resolved_targets(engine))
    chosen = choose_target(d, engine, findings, FLEET)

    assert findings == ()
    assert chosen.target is not None
    assert (chosen.target.gpu, chosen.ready) == (H100, "True")


def test_spec_gpu_that_auto_did_not_resolve_to_is_refused_with_what_it_resolved_to() -> None:
    engine = _engine(["auto"], {H100: "Built", L40S: "Built"})
    d = _llmd(gpu=A100)

    findings = validate_deployment(d.spec, engine.spec, FLEET, resolved=resolved_targets(engine))

    assert [f.reason for f in findings] == [Reason.GPU_NOT_A_TARGET]
    assert findings[0].field == "spec.gpu"
    assert f"(targets: auto; auto resolved to {H100}, {L40S})" in findings[0].message
    assert f"add {A100} to the engine's spec.targets" in findings[0].message


def test_spec_gpu_waits_while_auto_is_not_resolved_for_the_current_spec() -> None:
    engine = _engine(["auto"], {}, generation=2, observed=1)
    d = _llmd(gpu=A100)

    assert resolved_targets(engine) is None
    findings = validate_deployment(d.spec, engine.spec, FLEET, resolved=resolved_targets(engine))
    chosen = choose_target(d, engine, findings, FLEET)

    assert findings == ()
    assert (chosen.target, chosen.ready, chosen.reason) == (None, "False", "EnginePending")


def test_an_explicit_engine_still_refuses_a_gpu_it_does_not_list() -> None:
    engine = _engine([H100], {H100: "Built"})
    d = _llmd(gpu=L40S)

    findings = validate_deployment(d.spec, engine.spec, FLEET, resolved=resolved_targets(engine))

    assert [f.reason for f in findings] == [Reason.GPU_NOT_A_TARGET]
    assert f"(targets: {H100}): choose one of them" in findings[0].message


# --------------------------------------------------------------------------- multi-node shapes


@pytest.mark.parametrize(("nodes", "world", "groups"), [
    ((8, 8, 8, 8), 16, 2),
    ((8, 8, 8), 16, 1),
    ((8,), 16, 0),          # one node: not one whole group
    ((4, 4, 4, 4), 8, 2),   # tp 8 on 4-GPU nodes: groups of two
    ((8, 4, 8), 16, 1),     # the 4-GPU node is not a whole node of the group
    ((8, 8), 9, 0),         # 9 does not split evenly over two nodes
])
def test_group_slots_count_whole_nodes_per_group(nodes: tuple[int, ...], world: int,
                                                 groups: int) -> None:
    assert group_slots(nodes, world) == groups


# Four-GPU H100 nodes (a tp 8 replica spans two) beside one eight-GPU L40S node.
SPLIT = ClusterFacts({H100: GPUPool((4, 4), (9, 0)), L40S: GPUPool((8,), (8, 9))})


def test_a_type_needing_groups_is_eligible_with_lws_and_enough_whole_nodes() -> None:
    engine = _engine([H100, L40S], {H100: "Built", L40S: "Built"}, tensor=8)
    chosen = choose_target(_llmd(), engine, (), SPLIT, lws="installed")
    assert chosen.target is not None
    assert chosen.target.gpu == H100  # more memory, room for one group of two nodes
    assert chosen.gpu_reason is not None
    assert "left out" not in chosen.gpu_reason


def test_without_lws_a_type_needing_groups_is_left_out_and_the_choice_says_so() -> None:
    engine = _engine([H100, L40S], {H100: "Built", L40S: "Built"}, tensor=8)
    chosen = choose_target(_llmd(), engine, (), SPLIT, lws="missing")
    assert chosen.target is not None
    assert chosen.target.gpu == L40S
    assert chosen.gpu_reason is not None
    assert f"({H100} left out: a replica spans nodes there and cannot be placed as a " \
           f"group: no LeaderWorkerSet)" in chosen.gpu_reason


def test_too_few_whole_nodes_for_a_group_leaves_the_type_out() -> None:
    engine = _engine([H100, L40S], {H100: "Built", L40S: "Built"}, tensor=8)
    one_h100 = ClusterFacts({H100: GPUPool((4,), (9, 0)), L40S: GPUPool((8,), (8, 9))})
    chosen = choose_target(_llmd(), engine, (), one_h100, lws="installed")
    assert chosen.target is not None
    assert chosen.target.gpu == L40S
    assert "too few whole nodes or an uneven split" in (chosen.gpu_reason or "")


def test_with_only_ineligible_types_the_rule_still_picks_one_for_the_preflight() -> None:
    engine = _engine([H100], {H100: "Built"}, tensor=8)
    chosen = choose_target(_llmd(), engine, (), SPLIT, lws="missing")
    assert chosen.target is not None
    assert chosen.target.gpu == H100
