"""spec.autoscaling: a KEDA ScaledObject or an autoscaling/v2 HorizontalPodAutoscaler for a
scale target, which provider, and what status says about it. Pure: no I/O.

- The scale target is given as (apiVersion, kind, name): the trtllm-serve Deployment, or the
  multi-node LeaderWorkerSet (it has a scale subresource whose selector picks group leaders,
  the pods that serve metrics). A later per-GPU-type slice is one more target.
- While an autoscaler owns the replica count the operator leaves ``replicas`` out of what it
  applies to the workload (server-side apply then leaves the field to whoever scales it), so
  the operator and the autoscaler never fight.
- Metrics are trtllm-serve's own (:mod:`trtllm_operator.serving_metrics`), selected by the
  ``llmdeployment`` label the PodMonitor adds; a metric the image's release line does not serve
  is refused, naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from trtllm_operator import serving_metrics
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api import API_GROUP, API_VERSION, LLMDeployment
from trtllm_operator.api.deployment import (
    AutoscalingMetricType,
    AutoscalingSpec,
    LLMDeploymentSpec,
)
from trtllm_operator.api.engine import LLMEngineSpec
from trtllm_operator.deployments import builders, monitoring, multinode
from trtllm_operator.optional_apis import Support
from trtllm_operator.validation import Finding, Reason, Severity, effective_backend

KEDA_API_VERSION: Final = "keda.sh/v1alpha1"
SCALED_OBJECT: Final = "ScaledObject"
HPA_API_VERSION: Final = "autoscaling/v2"
HPA: Final = "HorizontalPodAutoscaler"
KEDA_HPA_PREFIX: Final = "keda-hpa-"
"""KEDA names the HorizontalPodAutoscaler it makes for a ScaledObject ``keda-hpa-<name>`` and
copies the ScaledObject's labels onto it (KEDA v2.18 controllers/keda/hpa.go), so the watch of
the operator's labelled HPAs sees KEDA's too."""

METRIC_OF: Final[Mapping[AutoscalingMetricType, str]] = {
    "QueuedRequests": "trtllm_num_requests_waiting",
    "KVCacheUtilization": "trtllm_kv_cache_utilization",
    "TimeToFirstToken": "trtllm_time_to_first_token_seconds",
}
DEFAULT_TARGET: Final[Mapping[AutoscalingMetricType, float]] = {
    "QueuedRequests": 4.0, "KVCacheUtilization": 0.8, "TimeToFirstToken": 2.0}
DEFAULT_METRIC: Final[Mapping[serving_metrics.Line, AutoscalingMetricType]] = {
    "pytorch": "QueuedRequests", "engine": "TimeToFirstToken"}
TTFT_WINDOW: Final = "2m"
"""The window the mean time to first token is taken over (rate of the histogram's sum over
rate of its count)."""
TTFT_EXTERNAL_METRIC: Final = "trtllm_time_to_first_token_seconds_mean"
"""The External metric name an HPA asks the metrics adapter for (a rule computing the mean from
the histogram, see the README)."""

Provider = Literal["ScaledObject", "HorizontalPodAutoscaler"]


@dataclass(frozen=True)
class ScaleTarget:
    """What an autoscaler scales: any object with a scale subresource."""

    api_version: str
    kind: str
    name: str

    def ref(self) -> dict[str, str]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}


def deployment_target(d: LLMDeployment) -> ScaleTarget:
    return ScaleTarget("apps/v1", "Deployment", d.metadata.name)


def group_set_target(d: LLMDeployment) -> ScaleTarget:
    return ScaleTarget("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", multinode.lws_name(d))


def llmdeployment_target(d: LLMDeployment) -> ScaleTarget:
    """A fleet over several GPU types (spec.slices) scales as a whole through the
    LLMDeployment's own scale subresource; the operator splits spec.replicas by weight."""
    return ScaleTarget(f"{API_GROUP}/{API_VERSION}", "LLMDeployment", d.metadata.name)


@dataclass(frozen=True)
class MetricTarget:
    type: AutoscalingMetricType
    value: float


def effective_metrics(spec: AutoscalingSpec, backend: facts.Backend) -> tuple[MetricTarget, ...]:
    """The metric targets in force: the spec's (default targets filled in), else the line's
    default metric."""
    chosen = spec.metrics or ()
    if not chosen:
        default = DEFAULT_METRIC[serving_metrics.line_of(backend)]
        return (MetricTarget(default, DEFAULT_TARGET[default]),)
    return tuple(MetricTarget(m.type, m.target if m.target is not None
                              else DEFAULT_TARGET[m.type]) for m in chosen)


def check_autoscaling(spec: AutoscalingSpec | None, metrics_on: bool, backend: facts.Backend,
                      release: facts.Release | None) -> list[Finding]:
    """What makes spec.autoscaling unable to work on this image, each naming its field."""
    if spec is None:
        return []
    found: list[Finding] = []
    if not metrics_on:
        found.append(Finding(
            Reason.AUTOSCALING_NEEDS_METRICS, Severity.ERROR, "spec.serve.metrics",
            "spec.autoscaling scales on trtllm-serve's metrics, which spec.serve.metrics "
            "false turns off: set spec.serve.metrics true or remove spec.autoscaling"))
        return found
    if not serving_metrics.metrics_served(backend, release):
        found.append(Finding(
            Reason.AUTOSCALING_NEEDS_METRICS, Severity.ERROR, "spec.autoscaling",
            f"spec.autoscaling: TensorRT-LLM {release or '(unknown release)'} serves no "
            f"Prometheus metrics known to the operator (the engine line does from "
            f"{serving_metrics.FIRST_ENGINE_RELEASE_WITH_METRICS} on): use a newer image or "
            f"remove spec.autoscaling"))
        return found
    line = serving_metrics.line_of(backend)
    seen: set[str] = set()
    for i, m in enumerate(spec.metrics):
        field = f"spec.autoscaling.metrics[{i}]"
        if m.type in seen:
            found.append(Finding(Reason.AUTOSCALING_METRIC_UNAVAILABLE, Severity.ERROR,
                                 f"{field}.type", f"{field}.type {m.type} is listed twice: "
                                 f"keep one entry per metric"))
        seen.add(m.type)
        if not serving_metrics.serves(METRIC_OF[m.type], backend, release):
            offered = sorted(t for t, name in METRIC_OF.items()
                             if serving_metrics.serves(name, backend, release))
            found.append(Finding(
                Reason.AUTOSCALING_METRIC_UNAVAILABLE, Severity.ERROR, f"{field}.type",
                f"{field}.type {m.type} reads {METRIC_OF[m.type]}, which the {line} line "
                f"(TensorRT-LLM {release or 'of this image'}) does not serve: use "
                f"{' or '.join(offered)}"))
        if m.type == "KVCacheUtilization" and m.target is not None and m.target > 1:
            found.append(Finding(
                Reason.AUTOSCALING_METRIC_UNAVAILABLE, Severity.ERROR, f"{field}.target",
                f"{field}.target {m.target:g} is a share of the KV cache: give a value "
                f"above 0 and at most 1 (e.g. 0.8)"))
    return found


def findings(spec: LLMDeploymentSpec, engine: LLMEngineSpec | None) -> list[Finding]:
    """:func:`check_autoscaling` for an LLMDeployment and its engine (the serving image's
    release is spec.image's, else the engine's builder image's)."""
    if engine is None or spec.autoscaling is None:
        return []
    release = (facts.effective_release(spec.image, spec.image_release) if spec.image
               else facts.effective_release(engine.build.image, engine.build.image_release))
    return check_autoscaling(spec.autoscaling, spec.serve.metrics, effective_backend(engine),
                             release)


# --------------------------------------------------------------------------- provider


@dataclass(frozen=True)
class Decision:
    """Which autoscaler to keep, or why none can be made (reason, message)."""

    provider: Provider | None
    reason: str = ""
    message: str = ""


KEDA_HINT = ("install KEDA (https://keda.sh/docs/deploy/) and grant the operator ScaledObjects "
             "(chart value autoscaling.keda=true)")


def decide(spec: AutoscalingSpec, keda: Support, prometheus_address: str | None) -> Decision:
    """The provider spec.autoscaling gets in this cluster (pure)."""
    if spec.provider == "hpa":
        return Decision(HPA)
    if keda == "installed":
        if prometheus_address is None:
            return Decision(None, "PrometheusAddressMissing", (
                "KEDA's Prometheus triggers need the Prometheus server's address: set "
                "spec.autoscaling.prometheusAddress or the operator's setting (chart value "
                "autoscaling.prometheusAddress)"))
        return Decision(SCALED_OBJECT)
    why = ("the cluster does not serve keda.sh/v1alpha1 ScaledObjects" if keda == "missing"
           else "the operator may not list ScaledObjects")
    if spec.provider == "keda":
        return Decision(None, "KEDANotAvailable", f"spec.autoscaling.provider keda: {why}: "
                        f"{KEDA_HINT}, or set provider hpa")
    if spec.min_replicas == 0:
        return Decision(None, "ScaleToZeroNeedsKEDA", (
            f"spec.autoscaling.minReplicas 0 needs KEDA ({why}): {KEDA_HINT}, or set "
            f"minReplicas to 1 or more"))
    return Decision(HPA)


# --------------------------------------------------------------------------- builders


def _number(value: float) -> str:
    return f"{value:g}"


def _quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, else in thousandths (0.8 -> 800m)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _series(d: LLMDeployment, metric: str) -> str:
    return (f'{metric}{{namespace="{d.metadata.namespace}",'
            f'{monitoring.DEPLOYMENT_LABEL}="{d.metadata.name}"}}')


def query(d: LLMDeployment, m: MetricTarget) -> tuple[str, Literal["AverageValue", "Value"]]:
    """The PromQL of a metric target, and how KEDA compares it with the target: AverageValue
    divides the sum by the replica count (per-replica targets), Value takes it as it is."""
    if m.type == "QueuedRequests":
        return f"sum({_series(d, METRIC_OF[m.type])})", "AverageValue"
    if m.type == "KVCacheUtilization":
        return f"avg({_series(d, METRIC_OF[m.type])})", "Value"
    base = METRIC_OF[m.type]
    return (f"sum(rate({_series(d, base + '_sum')}[{TTFT_WINDOW}])) / "
            f"sum(rate({_series(d, base + '_count')}[{TTFT_WINDOW}]))", "Value")


def _meta(d: LLMDeployment, engine_name: str) -> dict[str, Any]:
    return {"name": d.metadata.name, "namespace": d.metadata.namespace,
            "labels": builders.child_labels(d, engine_name),
            "ownerReferences": [builders.owner_reference(d)]}


def scaled_object(d: LLMDeployment, engine_name: str, target: ScaleTarget,
                  metrics: tuple[MetricTarget, ...], prometheus_address: str) -> dict[str, Any]:
    """A KEDA ScaledObject with one Prometheus trigger per metric target."""
    spec = d.spec.autoscaling
    assert spec is not None
    triggers = []
    for m in metrics:
        promql, metric_type = query(d, m)
        triggers.append({
            "type": "prometheus", "name": m.type.lower(), "metricType": metric_type,
            "metadata": {"serverAddress": prometheus_address, "query": promql,
                         "threshold": _number(m.value)}})
    body: dict[str, Any] = {
        "scaleTargetRef": target.ref(),
        "minReplicaCount": spec.min_replicas,
        "maxReplicaCount": spec.max_replicas,
        "triggers": triggers,
    }
    if spec.cooldown_seconds is not None:
        body["cooldownPeriod"] = spec.cooldown_seconds
    return {"apiVersion": KEDA_API_VERSION, "kind": SCALED_OBJECT,
            "metadata": _meta(d, engine_name), "spec": body}


def hpa_metric(d: LLMDeployment, m: MetricTarget) -> dict[str, Any]:
    """One autoscaling/v2 metric: per-pod gauges as Pods metrics (averaged over the target's
    pods), the time to first token as an External metric of this deployment."""
    if m.type == "TimeToFirstToken":
        return {"type": "External", "external": {
            "metric": {"name": TTFT_EXTERNAL_METRIC, "selector": {"matchLabels": {
                monitoring.DEPLOYMENT_LABEL: d.metadata.name}}},
            "target": {"type": "Value", "value": _quantity(m.value)}}}
    return {"type": "Pods", "pods": {
        "metric": {"name": METRIC_OF[m.type]},
        "target": {"type": "AverageValue", "averageValue": _quantity(m.value)}}}


def hpa(d: LLMDeployment, engine_name: str, target: ScaleTarget,
        metrics: tuple[MetricTarget, ...]) -> dict[str, Any]:
    """An autoscaling/v2 HorizontalPodAutoscaler on metrics served by a metrics adapter."""
    spec = d.spec.autoscaling
    assert spec is not None
    return {"apiVersion": HPA_API_VERSION, "kind": HPA, "metadata": _meta(d, engine_name),
            "spec": {"scaleTargetRef": target.ref(),
                     "minReplicas": max(1, spec.min_replicas),
                     "maxReplicas": spec.max_replicas,
                     "metrics": [hpa_metric(d, m) for m in metrics]}}


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class HPAFact:
    """What the watch keeps of a HorizontalPodAutoscaler (the operator's, or KEDA's for the
    operator's ScaledObject)."""

    name: str
    conditions: tuple[tuple[str, str, str, str], ...] = ()
    """(type, status, reason, message) of AbleToScale, ScalingActive, ScalingLimited."""
    current_replicas: int | None = None
    desired_replicas: int | None = None
    last_scale_time: str | None = None


def observe_hpa(name: str, status: Mapping[str, Any]) -> HPAFact:
    return HPAFact(
        name=name,
        conditions=tuple((str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""),
                          str(c.get("message") or ""))
                         for c in status.get("conditions") or []),
        current_replicas=status.get("currentReplicas"),
        desired_replicas=status.get("desiredReplicas"),
        last_scale_time=status.get("lastScaleTime"))


def hpa_name_for(provider: Provider, d: LLMDeployment) -> str:
    """The HorizontalPodAutoscaler that does the scaling: the operator's, or KEDA's."""
    return (KEDA_HPA_PREFIX + d.metadata.name if provider == SCALED_OBJECT
            else d.metadata.name)


def owner(provider: Provider | None, d: LLMDeployment) -> str:
    """status.replicasOwner."""
    return f"{provider}/{d.metadata.name}" if provider else "spec.replicas"


def condition(d: LLMDeployment, decision: Decision,
              fact: HPAFact | None) -> tuple[Literal["True", "False", "Unknown"], str, str]:
    """The Autoscaling condition: the autoscaler's own words where it reported any."""
    if decision.provider is None:
        return "False", decision.reason, decision.message
    made = f"{decision.provider} {d.metadata.name}"
    spec = d.spec.autoscaling
    zero = (" At zero replicas no pod exports metrics: only a trigger fed by traffic seen "
            "elsewhere can wake the deployment." if spec and spec.min_replicas == 0 else "")
    if fact is None:
        who = ("KEDA has not reported on it yet (no HorizontalPodAutoscaler "
               f"{KEDA_HPA_PREFIX}{d.metadata.name})" if decision.provider == SCALED_OBJECT
               else "its controller has not reported yet")
        return "Unknown", "AutoscalerPending", f"{made} applied; {who}.{zero}"
    by_type = {c[0]: c for c in fact.conditions}
    active = by_type.get("ScalingActive")
    able = by_type.get("AbleToScale")
    last = f"; last scaled at {fact.last_scale_time}" if fact.last_scale_time else ""
    size = (f"{fact.current_replicas} -> {fact.desired_replicas} replicas"
            if fact.desired_replicas is not None else "no size decided yet")
    if active is not None and active[1] == "False":
        return "False", active[2] or "ScalingInactive", (
            f"{made}: {size}: {active[3]}{last}.{zero}")
    if active is None:
        return "Unknown", "AutoscalerPending", f"{made}: {size}{last}.{zero}"
    detail = f": {able[3]}" if able is not None and able[3] else ""
    return "True", active[2] or "ScalingActive", f"{made}: {size}{detail}{last}.{zero}"
