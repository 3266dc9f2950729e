"""The operator's Prometheus metrics are scraped (on loopback) and move with real work."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Kubectl
from tests.e2e.conftest import H100, OperatorProcess, apply, load_sample

pytestmark = pytest.mark.usefixtures("gpu_fleet", "storage", "hf_token")


def scrape(op: OperatorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_move_when_builds_and_reconciles_happen(
        running_operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    before = scrape(running_operator)
    engine = load_sample("llmengine-llama-3-8b.yaml")
    engine["metadata"] = {"name": "metered"}
    engine["spec"]["targets"] = [H100]
    engine["spec"]["build"]["limits"]["maxBatchSize"] = 17  # a fingerprint no test shares
    apply(kubectl, namespace, engine)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/metered",
            "--timeout=90s")
    after = scrape(running_operator)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("trtllm_operator_reconciles_total", kind="LLMEngine", outcome="success") >= 2
    assert delta("trtllm_operator_reconcile_duration_seconds_count", kind="LLMEngine") >= 2
    assert delta("trtllm_operator_builds_started_total", gpu=H100) == 1
    assert delta("trtllm_operator_builds_succeeded_total", gpu=H100) == 1
    assert delta("trtllm_operator_build_duration_seconds_count", gpu=H100) == 1
    assert after[("trtllm_operator_objects", (("kind", "LLMEngine"), ("ready", "true")))] >= 1
