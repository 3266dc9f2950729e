"""The local LWS install: upstream's webhook manifests made loopback, the manager config."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from trtllm_operator.localcluster import lws

# The shape of upstream's config/webhook/manifests.yaml (one webhook of each kind).
MANIFESTS = """
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mleaderworkerset.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system,
                           path: /mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset}}
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: validating-webhook-configuration}
webhooks:
- name: vpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /validate--v1-pod}}
"""


def test_webhooks_call_loopback_with_the_ca_and_pods_are_selected() -> None:
    docs = lws.webhook_configurations(MANIFESTS, 9443, b"PEM")
    hooks = {h["name"]: h for d in docs for h in d["webhooks"]}
    assert hooks["mpod.kb.io"]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate--v1-pod",
        "caBundle": base64.b64encode(b"PEM").decode()}
    for name in ("mpod.kb.io", "vpod.kb.io"):
        assert hooks[name]["objectSelector"]["matchExpressions"] == [
            {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]
    assert "objectSelector" not in hooks["mleaderworkerset.kb.io"]


def test_a_webhook_without_a_service_is_refused() -> None:
    text = MANIFESTS.replace("{service: {name: webhook-service, namespace: system, "
                             "path: /validate--v1-pod}}", "{url: https://x}")
    with pytest.raises(ValueError, match=r"vpod\.kb\.io"):
        lws.webhook_configurations(text, 1, b"")


def test_manager_listens_on_loopback_only() -> None:
    cfg = lws.manager_configuration(1, 2, 3, Path("/c"))
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": "/c"}
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:2"
    assert cfg["metrics"]["bindAddress"] == "127.0.0.1:3"
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["internalCertManagement"] == {"enable": False}
