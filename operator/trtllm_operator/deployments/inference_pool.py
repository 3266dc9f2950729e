"""The InferencePool of an LLMDeployment (Gateway API Inference Extension), pure. No I/O.

With ``spec.inferencePool`` set, the operator keeps one ``inference.networking.k8s.io/v1``
InferencePool per LLMDeployment, named like it, while the cluster serves that CRD:

- its selector is the LLMDeployment's pods that answer HTTP (every GPU type of a fleet; the
  leader of each multi-node group, never a worker, whose port serves nothing), by
  :data:`builders.ENDPOINT_LABEL` — an InferencePool selects by ``matchLabels`` only, so one
  label has to mark them in every shape;
- its target port is trtllm-serve's container port;
- ``endpointPickerRef`` is the picker the user names (the operator runs none).

The pods carry ``inference.networking.k8s.io/engine-type: trtllm-serve``
(:data:`builders.ENGINE_TYPE_LABEL`), the label the picker reads to choose trtllm-serve's
metric names, which it scrapes at ``/prometheus/metrics`` when told to (its own setting).
"""

from __future__ import annotations

from typing import Any, Final

from trtllm_operator.api import LLMDeployment
from trtllm_operator.deployments import builders

GROUP: Final = "inference.networking.k8s.io"
VERSION: Final = "v1"
KIND: Final = "InferencePool"
PLURAL: Final = "inferencepools"
CRD_HINT: Final = (
    "install the Gateway API Inference Extension CRDs (kubectl apply -f https://github.com/"
    "kubernetes-sigs/gateway-api-inference-extension/releases/download/v1.6.2/manifests.yaml"
    ") or remove spec.inferencePool")
RBAC_HINT: Final = (
    "grant the operator's role inferencepools (the chart's role does); it tries again within "
    "a minute")


def pool_name(d: LLMDeployment) -> str:
    return d.metadata.name


def inference_pool(d: LLMDeployment, engine_name: str) -> dict[str, Any]:
    """The InferencePool of ``d``'s serving pods; ``d.spec.inferencePool`` must be set."""
    spec = d.spec.inference_pool
    assert spec is not None
    ref = spec.endpoint_picker_ref
    picker: dict[str, Any] = {"group": "", "kind": "Service", "name": ref.name,
                              "port": {"number": ref.port}}
    if ref.failure_mode is not None:
        picker["failureMode"] = ref.failure_mode
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": pool_name(d), "namespace": d.metadata.namespace,
                     "labels": builders.child_labels(d, engine_name),
                     "ownerReferences": [builders.owner_reference(d)]},
        "spec": {
            "selector": {"matchLabels": builders.endpoint_selector(d)},
            "targetPorts": [{"number": d.spec.serve.port}],
            "endpointPickerRef": picker,
        },
    }
