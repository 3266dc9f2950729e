"""The Prometheus Operator PodMonitor of an LLMDeployment's serving pods (pure builder).

Made only where the cluster serves ``monitoring.coreos.com/v1`` PodMonitors and the operator's
setting allows it; the chart does not install the Prometheus Operator. The monitor selects the
deployment's serving pods that export metrics (leaders only for a multi-node group: rank 0 is
the only HTTP server) and scrapes the named port ``http`` at ``/prometheus/metrics``. Every
series gets an ``llmdeployment`` label, which is what the autoscalers' queries select on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from trtllm_operator.api import LLMDeployment
from trtllm_operator.deployments import builders

API_VERSION: Final = "monitoring.coreos.com/v1"
KIND: Final = "PodMonitor"
DEPLOYMENT_LABEL: Final = "llmdeployment"
"""The target label every scraped series of a deployment carries (its name)."""


def pod_monitor_name(d: LLMDeployment) -> str:
    return d.metadata.name


def pod_monitor(d: LLMDeployment, engine_name: str,
                leaders: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The PodMonitor scraping ``d``'s serving pods; ``leaders`` narrows the selector to
    group leaders (multi-node: the LeaderWorkerSet's worker-index 0)."""
    match = {**builders.selector(d), builders.METRICS_LABEL: "prometheus", **(leaders or {})}
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": pod_monitor_name(d), "namespace": d.metadata.namespace,
                     "labels": builders.child_labels(d, engine_name),
                     "ownerReferences": [builders.owner_reference(d)]},
        "spec": {
            "selector": {"matchLabels": match},
            "podMetricsEndpoints": [{
                "port": "http",
                "path": builders.METRICS_PATH,
                # A fixed label per deployment: queries need no pod-name pattern, which would
                # also match a deployment whose name extends this one's.
                "relabelings": [{"action": "replace", "targetLabel": DEPLOYMENT_LABEL,
                                 "replacement": d.metadata.name}],
            }],
        },
    }
