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
    workers: int = Field(default=4, ge=1, le=64)
    """Concurrent reconciles per kind."""
    build_deadline_seconds: int = Field(default=6 * 3600, ge=60)
    """activeDeadlineSeconds of build Jobs: a build running longer is failed."""
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Prometheus metrics port (0 disables)."""
    health_port: int = Field(default=8081, ge=0, le=65535)
    """Liveness/readiness port (0 disables)."""
    bind_address: str = "0.0.0.0"  # in a pod, probes and scrapes come from outside
    """Address the metrics and health servers listen on."""
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
