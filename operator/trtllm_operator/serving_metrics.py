"""trtllm-serve's Prometheus metrics: which release line serves which, and what turns them on.

One source of truth for the serving builders (the options file), the autoscaler builders (which
metric a target reads, refused where the line lacks it) and the README's table.

Sources (see docs/trtllm-release-lines.md and shared/reference/trtllm-cli-1.3.json):

- ``tensorrt_llm/serve/openai_server.py``: ``/prometheus/metrics`` is mounted and the ``trtllm_``
  collector made only when the LLM args have ``return_perf_metrics`` true; the iteration gauges
  (KV cache, queue) are fed only when ``enable_iter_perf_stats`` is also true -- a field of the
  PyTorch backend's args only ("tensorrt backend does not have this attribute", same file), and
  the args refuse unknown keys, so the engine line's file must not carry it.
- NVIDIA Dynamo's TensorRT-LLM page: release 1.1.0rc5 exposes five metrics (the request
  histograms and the success counter below); its integration was validated on the PyTorch
  backend only. Whether the TensorRT (engine) backend fills the request histograms is not
  confirmed by a source read here.
- ``tensorrt_llm/metrics/collector.py`` (a recent revision) and NVIDIA's example
  ``examples/serve/prometheus_metrics.py``: the KV-cache and queue gauges of the PyTorch line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from trtllm_operator import trtllm_facts as facts

METRICS_PATH: Final = "/prometheus/metrics"
"""Prometheus text on the serving port (never /metrics: a JSON list emptied on read)."""

FIRST_ENGINE_RELEASE_WITH_METRICS: Final = facts.Release(1, 1, 0, rc=0)
"""The engine line serves the collector from the 1.1 line on (Dynamo's page names 1.1.0rc5);
for 1.0 no source read here shows ``return_perf_metrics`` mounting an endpoint, and a key the
release does not know would stop trtllm-serve, so 1.0 images get no metrics options."""

Line = Literal["engine", "pytorch"]


@dataclass(frozen=True)
class ServingMetric:
    """One ``trtllm_`` metric and the release lines known to serve it."""

    name: str
    type: Literal["counter", "gauge", "histogram"]
    meaning: str
    lines: frozenset[Line]
    confirmed: bool = True
    """False: named by a recent collector revision only; the first release with it is not
    known."""


BOTH: Final[frozenset[Line]] = frozenset({"engine", "pytorch"})
PYTORCH: Final[frozenset[Line]] = frozenset({"pytorch"})

CATALOG: Final[tuple[ServingMetric, ...]] = (
    ServingMetric("trtllm_request_success_total", "counter",
                  "requests finished, by finished_reason (stop, length, ...)", BOTH),
    ServingMetric("trtllm_e2e_request_latency_seconds", "histogram",
                  "arrival to last token, per request", BOTH),
    ServingMetric("trtllm_time_to_first_token_seconds", "histogram",
                  "arrival to first token (TTFT), per request", BOTH),
    ServingMetric("trtllm_time_per_output_token_seconds", "histogram",
                  "mean time between output tokens (TPOT), per request", BOTH),
    ServingMetric("trtllm_request_queue_time_seconds", "histogram",
                  "time a request waited before it was scheduled", BOTH),
    ServingMetric("trtllm_kv_cache_utilization", "gauge",
                  "share of KV-cache blocks in use, 0 to 1", PYTORCH),
    ServingMetric("trtllm_kv_cache_hit_rate", "gauge",
                  "share of prompt blocks found in the KV cache (block reuse)", PYTORCH),
    ServingMetric("trtllm_num_requests_waiting", "gauge",
                  "requests queued, not yet scheduled", PYTORCH, confirmed=False),
    ServingMetric("trtllm_num_requests_running", "gauge",
                  "requests being generated", PYTORCH, confirmed=False),
)
BY_NAME: Final = {m.name: m for m in CATALOG}


def line_of(backend: facts.Backend) -> Line:
    return "pytorch" if backend == "pytorch" else "engine"


def metrics_served(backend: facts.Backend, release: facts.Release | None) -> bool:
    """Whether trtllm-serve of this backend and release can serve /prometheus/metrics."""
    if backend == "pytorch":
        return True
    return release is not None and release >= FIRST_ENGINE_RELEASE_WITH_METRICS


def serves(metric: str, backend: facts.Backend, release: facts.Release | None) -> bool:
    """Whether ``metric`` is known to exist on this backend's release line."""
    return (metrics_served(backend, release)
            and line_of(backend) in BY_NAME[metric].lines)


def options(backend: facts.Backend, release: facts.Release | None) -> dict[str, Any]:
    """The options-file keys that turn the metrics on (empty where none can be)."""
    if not metrics_served(backend, release):
        return {}
    if backend == "pytorch":
        return {"return_perf_metrics": True, "enable_iter_perf_stats": True}
    return {"return_perf_metrics": True}
