"""spec.autoscaling and serving metrics: pure builders (exact output), the per-release-line
refusals, the provider choice and the status the autoscaler's own report makes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.unit.test_deployment_builders import H100, _engine, _llmd
from tests.unit.test_deployment_controller import KEY, FakeView, FakeWriter
from tests.unit.test_serving_backends import _pytorch_engine, _target
from trtllm_operator import serving_metrics
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api import LLMDeployment
from trtllm_operator.api.deployment import AutoscalingSpec
from trtllm_operator.deployments import autoscaling, builders, monitoring
from trtllm_operator.deployments.autoscaling import HPAFact, MetricTarget
from trtllm_operator.deployments.controller import (
    REPLICAS_HANDOVER_MANAGER,
    DeploymentController,
    serving_for,
)
from trtllm_operator.optional_apis import Support
from trtllm_operator.validation import Reason

PROM = "http://prometheus.monitoring.svc:9090"


def _d(**spec: Any) -> LLMDeployment:
    d = _llmd(**spec)
    return d.model_copy(update={"metadata": d.metadata.model_copy(
        update={"namespace": "ml", "uid": "u1"})})


def _scaling(**spec: Any) -> AutoscalingSpec:
    return AutoscalingSpec.model_validate({"maxReplicas": 4, **spec})


# --------------------------------------------------------------------------- metrics


def test_engine_line_options_turn_on_return_perf_metrics_only_from_1_1() -> None:
    d = _d()
    for tag, expected in (("1.2.0", {"return_perf_metrics": True}),
                          ("1.1.0rc5", {"return_perf_metrics": True}), ("1.0.0", None)):
        cm = builders.options_configmap(d, "e", "tensorrt", facts.parse_release(tag))
        got = yaml.safe_load(cm["data"][builders.OPTIONS_FILE]) if cm else None
        assert got == expected, tag


def test_engine_line_options_merge_the_users_keys_and_metrics_off_writes_none() -> None:
    d = _d(serve={"extraLlmApiOptions": {"kv_cache_config": {"enable_block_reuse": True}}})
    cm = builders.options_configmap(d, "e", "tensorrt", facts.Release(1, 2, 0))
    assert cm is not None
    assert yaml.safe_load(cm["data"][builders.OPTIONS_FILE]) == {
        "kv_cache_config": {"enable_block_reuse": True}, "return_perf_metrics": True}
    assert builders.options_configmap(_d(serve={"metrics": False}), "e", "tensorrt",
                                      facts.Release(1, 2, 0)) is None


def test_engine_pods_with_metrics_get_the_options_flag_and_the_scrape_label() -> None:
    engine = _engine()
    serving = serving_for(engine, _target(engine))
    on = builders.deployment(_d(), engine, serving, "c")["spec"]["template"]
    off = builders.deployment(_d(serve={"metrics": False}), engine, serving, "c")[
        "spec"]["template"]
    assert "--extra_llm_api_options" in on["spec"]["containers"][0]["command"]
    assert on["metadata"]["labels"][builders.METRICS_LABEL] == "prometheus"
    assert on["metadata"]["annotations"]["prometheus.io/path"] == "/prometheus/metrics"
    assert "--extra_llm_api_options" not in off["spec"]["containers"][0]["command"]
    assert builders.METRICS_LABEL not in off["metadata"]["labels"]


def test_pytorch_metrics_off_keeps_the_options_file_without_the_metric_keys() -> None:
    options = builders.pytorch_options(_d(serve={"metrics": False}))
    assert "return_perf_metrics" not in options
    assert "enable_iter_perf_stats" not in options


def test_the_catalog_marks_kv_and_queue_gauges_pytorch_only() -> None:
    r12 = facts.Release(1, 2, 0)
    assert serving_metrics.serves("trtllm_time_to_first_token_seconds", "tensorrt", r12)
    assert not serving_metrics.serves("trtllm_kv_cache_utilization", "tensorrt", r12)
    assert serving_metrics.serves("trtllm_num_requests_waiting", "pytorch",
                                  facts.Release(1, 3, 0, rc=25))
    assert not serving_metrics.serves("trtllm_time_to_first_token_seconds", "tensorrt",
                                      facts.Release(1, 0, 0))


def test_a_pod_monitor_selects_the_metric_pods_and_labels_series_with_the_deployment() -> None:
    d = _d()
    pm = monitoring.pod_monitor(d, "llama-3-8b")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["kind"] == "PodMonitor"
    assert pm["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert pm["spec"]["selector"] == {"matchLabels": {
        "app.kubernetes.io/name": "trtllm-serve", "app.kubernetes.io/instance": d.metadata.name,
        builders.METRICS_LABEL: "prometheus"}}
    assert pm["spec"]["podMetricsEndpoints"] == [{
        "port": "http", "path": "/prometheus/metrics",
        "relabelings": [{"action": "replace", "targetLabel": "llmdeployment",
                         "replacement": d.metadata.name}]}]
    leaders = monitoring.pod_monitor(d, "e", {"leaderworkerset.sigs.k8s.io/worker-index": "0"})
    assert leaders["spec"]["selector"]["matchLabels"][
        "leaderworkerset.sigs.k8s.io/worker-index"] == "0"


# --------------------------------------------------------------------------- refusals


def _reasons(spec: AutoscalingSpec, backend: facts.Backend, tag: str,
             metrics_on: bool = True) -> list[tuple[Reason, str]]:
    return [(f.reason, f.field) for f in autoscaling.check_autoscaling(
        spec, metrics_on, backend, facts.parse_release(tag))]


def test_a_metric_the_release_line_lacks_is_refused_naming_its_field() -> None:
    spec = _scaling(metrics=[{"type": "TimeToFirstToken"}, {"type": "QueuedRequests"}])
    assert _reasons(spec, "tensorrt", "1.2.0") == [
        (Reason.AUTOSCALING_METRIC_UNAVAILABLE, "spec.autoscaling.metrics[1].type")]
    message = autoscaling.check_autoscaling(spec, True, "tensorrt", facts.Release(1, 2, 0))[0]
    assert "use TimeToFirstToken" in message.message
    assert _reasons(spec, "pytorch", "1.3.0rc25") == []


def test_autoscaling_without_metrics_or_on_a_release_without_them_is_refused() -> None:
    spec = _scaling()
    assert _reasons(spec, "tensorrt", "1.2.0", metrics_on=False) == [
        (Reason.AUTOSCALING_NEEDS_METRICS, "spec.serve.metrics")]
    assert _reasons(spec, "tensorrt", "1.0.0") == [
        (Reason.AUTOSCALING_NEEDS_METRICS, "spec.autoscaling")]


def test_a_kv_cache_target_above_one_and_a_repeated_metric_are_refused() -> None:
    spec = _scaling(metrics=[{"type": "KVCacheUtilization", "target": 1.5},
                             {"type": "KVCacheUtilization"}])
    assert _reasons(spec, "pytorch", "1.3.0rc25") == [
        (Reason.AUTOSCALING_METRIC_UNAVAILABLE, "spec.autoscaling.metrics[0].target"),
        (Reason.AUTOSCALING_METRIC_UNAVAILABLE, "spec.autoscaling.metrics[1].type")]


def test_the_model_refuses_bounds_the_crd_refuses() -> None:
    with pytest.raises(ValidationError, match="maxReplicas is below minReplicas"):
        _scaling(minReplicas=5)
    with pytest.raises(ValidationError, match="needs KEDA"):
        _scaling(minReplicas=0, provider="hpa")


def test_defaults_per_release_line() -> None:
    assert autoscaling.effective_metrics(_scaling(), "pytorch") == (
        MetricTarget("QueuedRequests", 4.0),)
    assert autoscaling.effective_metrics(_scaling(), "tensorrt") == (
        MetricTarget("TimeToFirstToken", 2.0),)


# --------------------------------------------------------------------------- provider


@pytest.mark.parametrize(("spec", "keda", "address", "expected"), [
    ({}, "installed", PROM, ("ScaledObject", "")),
    ({}, "missing", None, ("HorizontalPodAutoscaler", "")),
    ({"provider": "hpa"}, "installed", PROM, ("HorizontalPodAutoscaler", "")),
    ({"provider": "keda"}, "missing", PROM, (None, "KEDANotAvailable")),
    ({"provider": "keda"}, "forbidden", PROM, (None, "KEDANotAvailable")),
    ({"minReplicas": 0}, "missing", PROM, (None, "ScaleToZeroNeedsKEDA")),
    ({}, "installed", None, (None, "PrometheusAddressMissing")),
])
def test_the_provider_follows_what_the_cluster_serves(
        spec: dict[str, Any], keda: Support, address: str | None,
        expected: tuple[str | None, str]) -> None:
    decision = autoscaling.decide(_scaling(**spec), keda, address)
    assert (decision.provider, decision.reason) == expected


# --------------------------------------------------------------------------- builders


def test_a_scaled_object_per_metric_trigger_for_a_scale_target() -> None:
    d = _d(autoscaling={"minReplicas": 0, "maxReplicas": 6, "cooldownSeconds": 600,
                        "metrics": [{"type": "QueuedRequests", "target": 3},
                                    {"type": "TimeToFirstToken", "target": 1.5}]})
    assert d.spec.autoscaling is not None
    target = autoscaling.ScaleTarget("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "g")
    so = autoscaling.scaled_object(d, "e", target, autoscaling.effective_metrics(
        d.spec.autoscaling, "pytorch"), PROM)
    name = d.metadata.name
    sel = f'namespace="ml",llmdeployment="{name}"'
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["kind"] == "ScaledObject"
    assert so["spec"] == {
        "scaleTargetRef": {"apiVersion": "leaderworkerset.x-k8s.io/v1",
                           "kind": "LeaderWorkerSet", "name": "g"},
        "minReplicaCount": 0, "maxReplicaCount": 6, "cooldownPeriod": 600,
        "triggers": [
            {"type": "prometheus", "name": "queuedrequests", "metricType": "AverageValue",
             "metadata": {"serverAddress": PROM, "threshold": "3",
                          "query": f"sum(trtllm_num_requests_waiting{{{sel}}})"}},
            {"type": "prometheus", "name": "timetofirsttoken", "metricType": "Value",
             "metadata": {"serverAddress": PROM, "threshold": "1.5", "query": (
                 f"sum(rate(trtllm_time_to_first_token_seconds_sum{{{sel}}}[2m])) / "
                 f"sum(rate(trtllm_time_to_first_token_seconds_count{{{sel}}}[2m]))")}}]}


def test_an_hpa_uses_pods_metrics_for_gauges_and_an_external_one_for_ttft() -> None:
    d = _d(autoscaling={"maxReplicas": 3, "metrics": [
        {"type": "KVCacheUtilization"}, {"type": "TimeToFirstToken", "target": 2}]})
    assert d.spec.autoscaling is not None
    h = autoscaling.hpa(d, "e", autoscaling.deployment_target(d),
                        autoscaling.effective_metrics(d.spec.autoscaling, "pytorch"))
    assert h["apiVersion"] == "autoscaling/v2"
    assert h["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                           "name": d.metadata.name},
        "minReplicas": 1, "maxReplicas": 3,
        "metrics": [
            {"type": "Pods", "pods": {"metric": {"name": "trtllm_kv_cache_utilization"},
                                      "target": {"type": "AverageValue",
                                                 "averageValue": "800m"}}},
            {"type": "External", "external": {
                "metric": {"name": "trtllm_time_to_first_token_seconds_mean",
                           "selector": {"matchLabels": {"llmdeployment": d.metadata.name}}},
                "target": {"type": "Value", "value": "2"}}}]}


def test_the_condition_carries_the_hpas_own_words() -> None:
    d = _d(autoscaling={"maxReplicas": 3})
    decision = autoscaling.Decision("HorizontalPodAutoscaler")
    assert autoscaling.condition(d, decision, None)[:2] == ("Unknown", "AutoscalerPending")
    failing = HPAFact("x", (
        ("AbleToScale", "True", "SucceededGetScale", "the HPA controller was able to get "
         "the target's current scale"),
        ("ScalingActive", "False", "FailedGetPodsMetric", "the HPA was unable to compute the "
         "replica count: unable to get metric trtllm_num_requests_waiting")),
        current_replicas=1, desired_replicas=0)
    status, reason, message = autoscaling.condition(d, decision, failing)
    assert (status, reason) == ("False", "FailedGetPodsMetric")
    assert "unable to get metric trtllm_num_requests_waiting" in message
    scaled = HPAFact("x", (("AbleToScale", "True", "ReadyForNewScale", "recommended size "
                            "matches current size"),
                           ("ScalingActive", "True", "ValidMetricFound", "ok")),
                     current_replicas=2, desired_replicas=2,
                     last_scale_time="2026-12-05T20:00:00Z")
    status, reason, message = autoscaling.condition(d, decision, scaled)
    assert (status, reason) == ("True", "ValidMetricFound")
    assert "2 -> 2 replicas: recommended size matches current size" in message
    assert "last scaled at 2026-12-05T20:00:00Z" in message


# --------------------------------------------------------------------------- controller


def _controller(view: FakeView, writer: FakeWriter, served: dict[str, Support],
                **kw: Any) -> DeploymentController:
    async def supports(kind: str, namespace: str | None) -> Support:
        return served.get(kind, "missing")

    return DeploymentController(view=view, writer=writer, events=lambda *_: None,
                                clock=lambda: datetime(2026, 12, 5, tzinfo=UTC),
                                supports=supports, **kw)


def _pytorch_view() -> FakeView:
    view = FakeView()
    engine = _pytorch_engine()
    body = engine.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"] |= {"namespace": "ml", "uid": "u", "generation": 1}
    body["status"]["targets"] = [t | {"job": "j", "image": "x"} for t in body["status"]["targets"]
                                 if t["gpu"] == H100]
    body["status"]["observedGeneration"] = 1
    view.engine_body = body
    return view


def test_with_an_hpa_the_deployment_has_no_replicas_and_status_names_the_owner() -> None:
    view = _pytorch_view()
    view.body["spec"]["autoscaling"] = {"maxReplicas": 4}
    writer = FakeWriter()
    asyncio.run(_controller(view, writer, {}).reconcile(KEY))
    kinds = [m["kind"] for m in writer.applied]
    assert "HorizontalPodAutoscaler" in kinds
    dep = next(m for m in writer.applied if m["kind"] == "Deployment")
    assert "replicas" not in dep["spec"]
    status = writer.status_patches[-1]
    assert status["replicasOwner"] == "HorizontalPodAutoscaler/server"
    auto = next(c for c in status["conditions"] if c["type"] == "Autoscaling")
    assert (auto["status"], auto["reason"]) == ("Unknown", "AutoscalerPending")
    assert writer.handed_over == []  # nothing was running: nothing to hand over


def test_turning_autoscaling_on_hands_the_running_size_over_first() -> None:
    view = _pytorch_view()
    view.dep = {"metadata": {"generation": 1}, "spec": {"replicas": 3},
                "status": {"replicas": 3}}
    view.body["spec"]["autoscaling"] = {"maxReplicas": 4}
    writer = FakeWriter()
    asyncio.run(_controller(view, writer, {}).reconcile(KEY))
    assert writer.handed_over == [(REPLICAS_HANDOVER_MANAGER, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "server", "namespace": "ml"}, "spec": {"replicas": 3}})]


def test_keda_asked_for_but_absent_makes_nothing_and_keeps_replicas() -> None:
    view = _pytorch_view()
    view.body["spec"]["autoscaling"] = {"maxReplicas": 4, "provider": "keda"}
    writer = FakeWriter()
    events: list[tuple[str, str]] = []
    controller = _controller(view, writer, {})
    controller.events = lambda _b, kind, reason, _m: events.append((kind, reason))
    asyncio.run(controller.reconcile(KEY))
    assert ("Warning", "KEDANotAvailable") in events
    kinds = [m["kind"] for m in writer.applied]
    assert "ScaledObject" not in kinds
    assert "HorizontalPodAutoscaler" not in kinds
    dep = next(m for m in writer.applied if m["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 1
    status = writer.status_patches[-1]
    assert status["replicasOwner"] == "spec.replicas"
    auto = next(c for c in status["conditions"] if c["type"] == "Autoscaling")
    assert (auto["status"], auto["reason"]) == ("False", "KEDANotAvailable")
    assert "set provider hpa" in auto["message"]


def test_a_scaled_object_and_pod_monitor_where_served_applied_once_and_removed_after() -> None:
    view = _pytorch_view()
    view.body["spec"]["autoscaling"] = {"maxReplicas": 4, "prometheusAddress": PROM}
    writer = FakeWriter()
    controller = _controller(view, writer, {"ScaledObject": "installed",
                                            "PodMonitor": "installed"})
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in writer.applied if m["kind"] in ("ScaledObject", "PodMonitor")
            ] == ["PodMonitor", "ScaledObject"]
    status = writer.status_patches[-1]
    assert (status["replicasOwner"], status["podMonitor"]) == ("ScaledObject/server", "server")

    view.body["status"] = status
    again = FakeWriter()
    controller.writer = again
    asyncio.run(controller.reconcile(KEY))
    assert [m["kind"] for m in again.applied if m["kind"] in ("ScaledObject", "PodMonitor")
            ] == []  # unchanged: not written again

    del view.body["spec"]["autoscaling"]
    view.body["spec"]["serve"] = {"metrics": False}
    off = FakeWriter()
    controller.writer = off
    asyncio.run(controller.reconcile(KEY))
    assert sorted(off.deleted) == [("PodMonitor", "server"), ("ScaledObject", "server")]
    status = off.status_patches[-1]
    assert status["replicasOwner"] == "spec.replicas"
    assert status.get("podMonitor") is None  # a merge patch removes it with null
    assert "Autoscaling" not in [c["type"] for c in status["conditions"]]


def test_a_refused_metric_stops_the_rollout_with_the_field_named() -> None:
    view = FakeView()  # engine line, 1.2.0
    view.body["spec"]["autoscaling"] = {"maxReplicas": 2,
                                        "metrics": [{"type": "KVCacheUtilization"}]}
    writer = FakeWriter()
    asyncio.run(_controller(view, writer, {}).reconcile(KEY))
    assert [m["kind"] for m in writer.applied] == []
    ready = next(c for c in writer.status_patches[-1]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "AutoscalingMetricUnavailable"
    assert "spec.autoscaling.metrics[0].type KVCacheUtilization" in ready["message"]


def test_a_multi_node_group_set_is_the_scale_target_and_only_leaders_are_monitored() -> None:
    view = FakeView()  # engine line 1.2.0: TimeToFirstToken by default
    view.engine_body["spec"]["build"]["parallelism"] = {"tensor": 8, "pipeline": 2}
    view.engine_body["spec"]["build"]["gpus"] = 8
    view.body["spec"]["autoscaling"] = {"maxReplicas": 3}
    writer = FakeWriter()
    asyncio.run(_controller(view, writer, {"PodMonitor": "installed"}, lws="installed")
                .reconcile(KEY))
    by_kind = {m["kind"]: m for m in writer.applied}
    assert "replicas" not in by_kind["LeaderWorkerSet"]["spec"]
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
        "name": "server-lws"}
    # Only pods that serve HTTP: single-node pods and group leaders, never workers.
    assert by_kind["PodMonitor"]["spec"]["selector"]["matchLabels"][
        "trtllm.dev/endpoint"] == "http"
