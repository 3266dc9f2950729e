"""Prometheus metrics of the operator (prometheus_client), served on the metrics port.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` units). Label values
are bounded: kinds, outcomes, GPU products and HTTP status codes -- never object names, so the
series count stays flat however many objects exist.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "trtllm_operator_reconciles_total", "Reconciles run, by kind and outcome.",
    ["kind", "outcome"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "trtllm_operator_reconcile_duration_seconds", "Time one reconcile took, by kind.",
    ["kind"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
QUEUE_SECONDS = Histogram(
    "trtllm_operator_queue_wait_seconds",
    "Time a queued object waited for a worker before its reconcile started, by kind.",
    ["kind"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
API_SECONDS = Histogram(
    "trtllm_operator_api_request_duration_seconds",
    "Time the API server took to answer one write, by operation.", ["operation"],
    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
API_THROTTLE_SECONDS = Histogram(
    "trtllm_operator_api_rate_limiter_duration_seconds",
    "Time one write waited on the client-side write limit (apiWriteQps/apiWriteBurst).",
    registry=REGISTRY, buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FIELD_OWNERSHIP_FOLDS = Counter(
    "trtllm_operator_field_ownership_folds_total",
    "Children made by create whose fields were handed to the operator's apply entry at their "
    "first apply (once per child).", registry=REGISTRY)
BUILDS_STARTED = Counter(
    "trtllm_operator_builds_started_total", "Build Jobs created, by GPU type.",
    ["gpu"], registry=REGISTRY)
BUILDS_SUCCEEDED = Counter(
    "trtllm_operator_builds_succeeded_total", "Builds that published an engine, by GPU type.",
    ["gpu"], registry=REGISTRY)
BUILDS_FAILED = Counter(
    "trtllm_operator_builds_failed_total", "Builds that failed, by GPU type.",
    ["gpu"], registry=REGISTRY)
BUILD_SECONDS = Histogram(
    "trtllm_operator_build_duration_seconds",
    "Wall time of a build Job from start to publish, by GPU type.", ["gpu"], registry=REGISTRY,
    buckets=(1, 10, 60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800))
OBJECTS = Gauge(
    "trtllm_operator_objects", "LLMEngines and LLMDeployments the operator knows, by Ready.",
    ["kind", "ready"], registry=REGISTRY)
API_ERRORS = Counter(
    "trtllm_operator_api_errors_total", "Kubernetes API calls that failed, by operation and code.",
    ["operation", "code"], registry=REGISTRY)

STATUS_WRITES = Counter(
    "trtllm_operator_status_writes_total",
    "Status writes, by kind and by what changed: each top-level status field and each "
    "condition type that differs from the object's last status (conditions as condition/<type>).",
    ["kind", "changed"], registry=REGISTRY)
STATUS_HELD = Counter(
    "trtllm_operator_status_writes_held_total",
    "Status changes of detail only held back (statusDetailSeconds), by kind.", ["kind"],
    registry=REGISTRY)

RECONCILE_FAILURES = Counter(
    "trtllm_operator_reconcile_failures_total",
    "Failed reconciles, by kind, error class (Conflict, Forbidden, ...) and whether such an "
    "error is expected (retried quietly).", ["kind", "reason", "expected"], registry=REGISTRY)

_QUEUE_KINDS = {"llmengine": "LLMEngine", "llmdeployment": "LLMDeployment"}
_ready: dict[str, dict[Hashable, bool]] = {"LLMEngine": {}, "LLMDeployment": {}}
_true: dict[str, int] = {"LLMEngine": 0, "LLMDeployment": 0}
_lock = threading.Lock()


def observe_reconcile(queue: str, outcome: str, seconds: float) -> None:
    """WorkQueue hook: one finished reconcile."""
    kind = _QUEUE_KINDS.get(queue, queue)
    RECONCILES.labels(kind, outcome).inc()
    RECONCILE_SECONDS.labels(kind).observe(seconds)


def observe_queue_wait(queue: str, seconds: float) -> None:
    """WorkQueue hook: a queued object reached a worker after ``seconds``."""
    QUEUE_SECONDS.labels(_QUEUE_KINDS.get(queue, queue)).observe(seconds)


def record_ready(kind: str, key: Hashable, ready: bool | None) -> None:
    """Track one object's Ready state (None: the object is gone) for the objects gauge."""
    with _lock:
        states = _ready[kind]
        before = states.pop(key, None) if ready is None else states.get(key)
        if ready is not None:
            states[key] = ready
        # Counted as they change, not summed over every object on every reconcile.
        _true[kind] += int(bool(ready)) - int(bool(before))
        OBJECTS.labels(kind, "true").set(_true[kind])
        OBJECTS.labels(kind, "false").set(len(states) - _true[kind])


def serve(port: int, address: str) -> None:
    """Expose /metrics (a daemon thread of prometheus_client)."""
    if port:
        start_http_server(port, addr=address, registry=REGISTRY)
