"""Pure builders of what an LLMDeployment runs: the trtllm-serve Deployment, its Service, and
the ConfigMap holding extra LLM API options. No I/O; tested on exact output.

Placement follows from the engine, never from the user: pods select nodes by the engine
target's ``nvidia.com/gpu.product`` and request tensor x pipeline GPUs, so a server cannot land
on a GPU type its engine was not built for, nor with fewer GPUs than its parallelism needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import yaml

from trtllm_operator import gpus, labels
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.api.engine import BuiltLimits
from trtllm_operator.engines.planning import ENGINES_MOUNT

SERVING_COMPONENT: Final = "serving"
CONTAINER: Final = "trtllm-serve"
ENGINE_DIR: Final = "/engine"
OPTIONS_DIR: Final = "/etc/trtllm-serve"
OPTIONS_FILE: Final = "extra-llm-api-options.yaml"
FINGERPRINT_ANNOTATION: Final = labels.FINGERPRINT
PATH_ANNOTATION: Final = labels.ENGINE_PATH

# /health answers only once the engine is loaded: a 70B engine can take many minutes to load
# from a network volume, so startup gets a long budget and liveness starts only after it.
STARTUP_BUDGET_SECONDS: Final = 30 * 60


@dataclass(frozen=True)
class Serving:
    """Which engine a Deployment serves: GPU type, fingerprint, folder and built limits."""

    gpu: str
    fingerprint: str
    path: str
    """Engine folder inside the storage claim."""
    limits: BuiltLimits
    world_size: int
    tensor: int
    pipeline: int


def selector(d: LLMDeployment) -> dict[str, str]:
    """The pod selector: stable for the life of the LLMDeployment (Deployments forbid changing
    it)."""
    return {labels.NAME: "trtllm-serve", labels.INSTANCE: d.metadata.name}


def selector_string(d: LLMDeployment) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(d).items()))


def child_labels(d: LLMDeployment, engine_name: str) -> dict[str, str]:
    return {**labels.common(SERVING_COMPONENT), **selector(d),
            labels.DEPLOYMENT: d.metadata.name, labels.ENGINE: engine_name}


def owner_reference(d: LLMDeployment) -> dict[str, Any]:
    return {"apiVersion": d.api_version, "kind": d.kind, "name": d.metadata.name,
            "uid": d.metadata.uid, "controller": True, "blockOwnerDeletion": True}


def effective_limits(d: LLMDeployment, built: BuiltLimits) -> dict[str, int | None]:
    """Runtime limits: the serve setting if given (validation keeps it within the engine's),
    else the engine's built limit, else trtllm-build's default. trtllm-serve otherwise passes
    its own defaults, which can exceed what the engine accepts."""
    serve = d.spec.serve
    return {
        "max_batch_size": serve.max_batch_size or built.max_batch_size
        or facts.BUILD_DEFAULT_MAX_BATCH_SIZE,
        "max_num_tokens": serve.max_num_tokens or built.max_num_tokens
        or facts.BUILD_DEFAULT_MAX_NUM_TOKENS,
        "max_seq_len": serve.max_seq_len or built.max_seq_len,
        "max_beam_width": serve.max_beam_width or built.max_beam_width
        or facts.BUILD_DEFAULT_MAX_BEAM_WIDTH,
    }


def serve_command(d: LLMDeployment, serving: Serving) -> list[str]:
    """The trtllm-serve command line (only flags of the 1.2 flag table)."""
    serve = d.spec.serve
    cmd = [
        "trtllm-serve", ENGINE_DIR, "--backend", "tensorrt",
        "--host", "0.0.0.0", "--port", str(serve.port),
        "--tp_size", str(serving.tensor), "--pp_size", str(serving.pipeline),
    ]
    for flag, value in effective_limits(d, serving.limits).items():
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    if serve.kv_cache_free_gpu_memory_fraction is not None:
        cmd += ["--kv_cache_free_gpu_memory_fraction",
                str(serve.kv_cache_free_gpu_memory_fraction)]
    if serve.log_level is not None:
        cmd += ["--log_level", serve.log_level]
    if serve.extra_llm_api_options is not None:
        cmd += ["--extra_llm_api_options", f"{OPTIONS_DIR}/{OPTIONS_FILE}"]
    cmd += list(serve.extra_args)
    return cmd


def options_configmap_name(d: LLMDeployment) -> str:
    return f"{d.metadata.name}-llm-api-options"


def options_configmap(d: LLMDeployment, engine_name: str) -> dict[str, Any] | None:
    """The YAML file behind --extra_llm_api_options, when the spec gives options."""
    options = d.spec.serve.extra_llm_api_options
    if options is None:
        return None
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": options_configmap_name(d), "namespace": d.metadata.namespace,
                     "labels": child_labels(d, engine_name),
                     "ownerReferences": [owner_reference(d)]},
        "data": {OPTIONS_FILE: yaml.safe_dump(options, sort_keys=True)},
    }


def _probe(port: int, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": timeout}


def _strategy(d: LLMDeployment) -> dict[str, Any]:
    strategy = d.spec.strategy
    if strategy.type == "Recreate":
        return {"type": "Recreate"}
    ru = strategy.rolling_update
    # Default for clusters without spare GPUs: never add a pod before one has gone.
    surge = ru.max_surge if ru and ru.max_surge is not None else 0
    unavailable = ru.max_unavailable if ru and ru.max_unavailable is not None else 1
    return {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}


def pod_labels(d: LLMDeployment, engine: LLMEngine, serving: Serving) -> dict[str, str]:
    return child_labels(d, engine.metadata.name) | {labels.GPU_PRODUCT: serving.gpu}


def pod_template(d: LLMDeployment, engine: LLMEngine, serving: Serving, claim: str,
                 gpus_per_pod: int | None = None) -> dict[str, Any]:
    """The trtllm-serve pod template (one pod with ``gpus_per_pod``, default the world size);
    the Deployment and the multi-node LeaderWorkerSet both start from it."""
    spec = d.spec
    lbl = pod_labels(d, engine, serving)
    image = spec.image or engine.spec.build.image
    port = spec.serve.port
    per_pod = gpus_per_pod or serving.world_size
    resources: dict[str, Any] = {"limits": {gpus.GPU_RESOURCE: str(per_pod)}}
    if spec.resources is not None:
        user = spec.resources.model_dump(mode="json", by_alias=True, exclude_none=True)
        resources = {"requests": dict(user.get("requests", {})),
                     "limits": dict(user.get("limits", {})) | resources["limits"]}
    mounts: list[dict[str, Any]] = [
        {"name": "engine", "mountPath": ENGINE_DIR, "subPath": serving.path, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "engine", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if spec.serve.extra_llm_api_options is not None:
        mounts.append({"name": "options", "mountPath": OPTIONS_DIR, "readOnly": True})
        volumes.append({"name": "options",
                        "configMap": {"name": options_configmap_name(d)}})
    tolerations = [{"key": gpus.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    tolerations += [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                    for t in spec.tolerations]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": serve_command(d, serving),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in spec.env],
        "resources": resources,
        "volumeMounts": mounts,
        "startupProbe": _probe(port, 10, STARTUP_BUDGET_SECONDS // 10),
        "readinessProbe": _probe(port, 10, 3),
        "livenessProbe": _probe(port, 20, 3),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod_spec: dict[str, Any] = {
        "nodeSelector": {gpus.PRODUCT_LABEL: serving.gpu} | dict(spec.node_selector or {}),
        "tolerations": tolerations,
        "containers": [container],
        "volumes": volumes,
        # Let in-flight requests finish before the pod goes.
        "terminationGracePeriodSeconds": 60,
    }
    if spec.affinity is not None:
        pod_spec["affinity"] = dict(spec.affinity)
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {
        "metadata": {
            "labels": lbl,
            # A new engine (or path) changes the template, hence a rollout.
            "annotations": {FINGERPRINT_ANNOTATION: serving.fingerprint,
                            PATH_ANNOTATION: serving.path},
        },
        "spec": pod_spec,
    }


def deployment(d: LLMDeployment, engine: LLMEngine, serving: Serving,
               claim: str) -> dict[str, Any]:
    """The trtllm-serve Deployment serving ``serving`` from the engines ``claim``."""
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": d.metadata.name, "namespace": d.metadata.namespace,
                     "labels": pod_labels(d, engine, serving),
                     "ownerReferences": [owner_reference(d)]},
        "spec": {
            "replicas": d.spec.replicas,
            "selector": {"matchLabels": selector(d)},
            "strategy": _strategy(d),
            "template": pod_template(d, engine, serving, claim),
        },
    }
    return manifest


def service(d: LLMDeployment, engine_name: str) -> dict[str, Any]:
    """The Service in front of the serving pods."""
    meta: dict[str, Any] = {"name": d.metadata.name, "namespace": d.metadata.namespace,
                            "labels": child_labels(d, engine_name),
                            "ownerReferences": [owner_reference(d)]}
    if d.spec.service.annotations:
        meta["annotations"] = dict(d.spec.service.annotations)
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": d.spec.service.type, "selector": selector(d),
                 "ports": [{"name": "http", "port": d.spec.service.port,
                            "targetPort": "http", "protocol": "TCP"}]},
    }


def endpoint(d: LLMDeployment) -> str:
    """The OpenAI-compatible base URL inside the cluster."""
    return (f"http://{d.metadata.name}.{d.metadata.namespace}.svc.cluster.local:"
            f"{d.spec.service.port}/v1")


def template_hash(manifest: dict[str, Any]) -> str:
    """A short hash of a manifest, for logs and comparisons."""
    return hashlib.sha256(yaml.safe_dump(manifest, sort_keys=True).encode()).hexdigest()[:12]


__all__ = ["ENGINES_MOUNT", "Serving"]
