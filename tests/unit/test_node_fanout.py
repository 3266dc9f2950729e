"""A GPU node event reaches only the objects that read its GPU type's pool, and only when the
pool really changed."""

from __future__ import annotations

from typing import Any

from trtllm_operator.handlers import IndexView, NodeFact

H100 = "NVIDIA-H100-80GB-HBM3"
L40S = "NVIDIA-L40S"


def _view() -> IndexView:
    view = IndexView()
    engines: dict[Any, list[Any]] = {
        ("ml", "on-h100"): [{"spec": {"targets": [H100]}}],
        ("ml", "on-l40s"): [{"spec": {"targets": [L40S]}}],
        ("ml", "anywhere"): [{"spec": {"targets": ["auto"]},
                              "status": {"targets": [{"gpu": L40S}]}}],
    }
    deployments: dict[Any, list[Any]] = {
        ("ml", "a"): [{"spec": {"engineRef": {"name": "on-h100"}}}],
        ("ml", "b"): [{"spec": {"engineRef": {"name": "on-l40s"}}}],
        ("ml", "c"): [{"spec": {"engineRef": {"name": "anywhere"}}}],
        ("ml", "d"): [{"spec": {"engineRef": {"name": "missing"}, "gpu": H100}}],
        ("ml", "e"): [{"spec": {"engineRef": {"name": "missing"},
                                "slices": [{"gpu": L40S}, {"gpu": H100}]}}],
    }
    view.indexes = {"engine_bodies": engines, "deployment_bodies": deployments}
    return view


def _h100(gpus: int = 8, memory: int | None = 81559) -> NodeFact:
    return (H100, gpus, (9, 0), memory)


def test_a_new_node_reaches_only_objects_of_its_gpu_type() -> None:
    view = _view()
    assert view.node_changed("n1", _h100()) == {H100}
    engines = view.engines_affected_by({H100})
    assert sorted(engines) == [("ml", "anywhere"), ("ml", "on-h100")]
    assert sorted(view.deployments_affected_by({H100}, engines)) == [
        ("ml", "a"), ("ml", "c"), ("ml", "d"), ("ml", "e")]


def test_a_heartbeat_or_a_fact_that_leaves_the_pool_as_it_was_changes_nothing() -> None:
    view = _view()
    view.node_changed("n1", _h100(memory=81559))
    view.node_changed("n2", _h100(memory=81559))
    assert view.node_changed("n1", _h100(memory=81559)) == set()  # heartbeat
    # n2 reports more memory: the pool's memory is the smallest, still n1's.
    assert view.node_changed("n2", _h100(memory=90000)) == set()
    assert view.node_changed("n2", _h100(gpus=4, memory=90000)) == {H100}


def test_a_node_changing_gpu_type_changes_both_pools_and_leaving_changes_its_own() -> None:
    view = _view()
    view.node_changed("n1", _h100())
    assert view.node_changed("n1", (L40S, 4, (8, 9), 46068)) == {H100, L40S}
    assert view.node_changed("n1", None) == {L40S}
    assert view.node_changed("n1", None) == set()
