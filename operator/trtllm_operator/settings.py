"""Operator settings, from flags or environment (``TRTLLM_OPERATOR_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """How one operator process runs. Every field is also an env var: TRTLLM_OPERATOR_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="TRTLLM_OPERATOR_", extra="ignore")

    kubeconfig: str | None = None
    """Kubeconfig file; unset uses the in-cluster service account."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty watches all."""
    workers: int = Field(default=32, ge=1, le=128)
    """Concurrent reconciles per kind (LLMEngine, LLMDeployment). A reconcile mostly waits on
    the API server (a new Service's ClusterIP allocation can take seconds under load), so many
    more workers than cores pay off: they are asyncio tasks, not threads, and the client keeps
    a kept-alive connection for each (see kube.make_client). Objects whose spec is not yet
    observed go ahead of status re-checks (see workqueue)."""
    build_deadline_seconds: int = Field(default=6 * 3600, ge=60)
    """activeDeadlineSeconds of build Jobs: a build running longer is failed."""
    retry_qps: float = Field(default=10.0, gt=0)
    """Retries of failed reconciles per second, all objects of a kind together (client-go's
    default controller limit); each object also backs off on its own, with jitter."""
    retry_burst: int = Field(default=100, ge=1)
    """Retries allowed at once before retry_qps paces them."""
    api_write_qps: float = Field(default=200.0, gt=0)
    """API writes per second. Reads come from watches and converged objects cost no writes, so
    the limit only paces a mass change (a fleet created at once, a new engine rolled to every
    deployment). A new object's child writes go ahead of status writes waiting on it. At 100/s
    the limit itself was what 1,000 new LLMDeployments waited on (``make bench``: writes
    waited 0.2 s each on average, reconciles 0.38 s); 200/400 is what the local control plane
    gives its own controller-manager and scheduler, and the API server's priority and
    fairness still queues the operator's requests against everyone else's."""
    api_write_burst: int = Field(default=400, ge=1)
    """API writes allowed at once before api_write_qps paces them."""
    status_detail_seconds: float = Field(default=15.0, ge=0)
    """Least time between two LLMDeployment status writes that change only details (counts,
    messages, moves between waiting reasons, the Available and Progressing conditions mirrored
    from the Deployment); a change of a condition's status (Ready, Reconciling, Stalled), of
    a reason that names a problem, or of generation is written at once, and
    held details within this time. 0 writes every change at once. ``make bench``, 1,000 new
    LLMDeployments: 6.3 status writes each before details were held, 4.1 at 5 s, 3.3 at 15 s,
    2.0 at 30 s (the Deployment controller's own: 3-4 per Deployment)."""
    reconcile_error_after: int = Field(default=3, ge=1)
    """Consecutive failed reconciles of an object before its status shows ReconcileError."""
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Prometheus metrics port (0 disables)."""
    health_port: int = Field(default=8081, ge=0, le=65535)
    """Liveness/readiness port (0 disables)."""
    bind_address: str = "0.0.0.0"  # in a pod, probes and scrapes come from outside
    """Address the metrics and health servers listen on."""
    pod_monitors: bool = True
    """Keep a Prometheus Operator PodMonitor per LLMDeployment whose metrics are on, where the
    cluster serves PodMonitors (checked again every 30 s: no restart after installing it)."""
    prometheus_address: str | None = None
    """The Prometheus server KEDA's triggers query when spec.autoscaling.prometheusAddress is
    unset, e.g. http://prometheus-operated.monitoring.svc:9090."""
    optional_api_ttl_seconds: float = Field(default=30.0, gt=0)
    """How long an answer to "does the cluster serve ScaledObjects / PodMonitors /
    InferencePools" is kept
    before it is asked again (one LIST of at most one object)."""
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
