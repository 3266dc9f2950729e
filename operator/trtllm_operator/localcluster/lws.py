"""LeaderWorkerSet (sigs.k8s.io/lws) beside the local control plane: the manifests, made local.

The upstream manifests expect the manager in-cluster behind a Service and with its own
certificate rotation. Here the manager is a local process, so:

- its admission webhooks are called at ``https://127.0.0.1:<port><path>`` with the cluster
  CA as ``caBundle`` (the API server runs on the same host);
- the pod webhooks get the ``objectSelector`` of upstream's ``mutating-patch.yaml`` /
  ``validating-patch.yaml``, so only LWS pods go through them (failurePolicy is Fail);
- its Configuration turns off leader election and internal cert management and binds every
  listener to 127.0.0.1.

Pure functions; :meth:`LocalCluster.start_lws` applies what they return.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
POD_WEBHOOKS = ("mpod.kb.io", "vpod.kb.io")


def webhook_configurations(manifests_yaml: str, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """Upstream's webhook configurations with loopback URLs, the CA and the pod selectors."""
    docs = [d for d in yaml.safe_load_all(manifests_yaml) if d]
    if not docs:
        raise ValueError("the LWS webhook manifests are empty")
    ca = base64.b64encode(ca_pem).decode()
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        for hook in doc.get("webhooks") or []:
            service = hook["clientConfig"].get("service")
            if service is None:
                raise ValueError(f"webhook {hook['name']} has no clientConfig.service")
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{service['path']}",
                                    "caBundle": ca}
            if hook["name"] in POD_WEBHOOKS:
                hook["objectSelector"] = {"matchExpressions": [
                    {"key": LWS_NAME_LABEL, "operator": "Exists"}]}
        out.append(doc)
    return out


def manager_configuration(webhook_port: int, health_port: int, metrics_port: int,
                          cert_dir: Path) -> dict[str, Any]:
    """The manager's ``Configuration`` (config.lws.x-k8s.io/v1alpha1), loopback only."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
    }
