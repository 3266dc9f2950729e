"""Pure builders of what an LLMDeployment runs: the trtllm-serve Deployment, its Service, and
the ConfigMap holding extra LLM API options. No I/O; tested on exact output.

Placement follows from the engine, never from the user: pods select nodes by the engine
target's ``nvidia.com/gpu.product`` and request tensor x pipeline GPUs, so a server cannot land
on a GPU type its engine was not built for, nor with fewer GPUs than its parallelism needs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from trtllm_operator import flag_tables, gpus, labels, serving_metrics
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
SPEC_HASH_ANNOTATION: Final = "trtllm.dev/spec-hash"
PATH_ANNOTATION: Final = labels.ENGINE_PATH

# /health answers only once the engine is loaded: a 70B engine can take many minutes to load
# from a network volume, so startup gets a long budget and liveness starts only after it.
STARTUP_BUDGET_SECONDS: Final = 30 * 60

# ------------------------------------------------------------------ pytorch backend

MODEL_DIR: Final = "/model"
"""Where a pytorch-backend pod sees its Hugging Face folder (the cached or quantized model)."""
METRICS_PATH: Final = serving_metrics.METRICS_PATH
METRICS_LABEL: Final = "trtllm.dev/metrics"
"""Pod label a PodMonitor selects on (value ``prometheus``): labels, not annotations, are what
a PodMonitor's selector reads."""
ENGINE_TYPE_LABEL: Final = "inference.networking.k8s.io/engine-type"
"""Pod label by which the Inference Extension's endpoint picker chooses the metric names it
scrapes (unlabelled pods are read as vLLM)."""
ENGINE_TYPE: Final = "trtllm-serve"
"""The picker's built-in engine type for trtllm-serve's Prometheus metrics."""
ENDPOINT_LABEL: Final = "trtllm.dev/endpoint"
"""On pods that answer HTTP (value ``http``): every single-node pod, the leader of a multi-node
group, never its workers. What the Service of a fleet across GPU types and an InferencePool
select on, whatever mix of single- and multi-node slices they hold."""
PYTORCH_STARTUP_BASE_SECONDS: Final = 15 * 60
"""Start-up work besides reading the weights: CUDA and NCCL initialisation, kernel autotuning,
CUDA graph capture and the KV-cache allocation."""
PYTORCH_LOAD_BYTES_PER_SECOND: Final = 100 << 20
"""A conservative read rate of a shared network volume (100 MiB/s): the weights are read once,
at start-up, before /health answers."""
PYTORCH_STARTUP_DEFAULT_SECONDS: Final = 60 * 60
"""The budget when the checkpoint's size is unknown: an hour, enough for ~200 GB at that rate."""
PYTORCH_STARTUP_MAX_SECONDS: Final = 4 * 60 * 60
SHM_BYTES_PER_GPU: Final = 2 << 30
"""/dev/shm per GPU of the pod. NVIDIA runs the container with --ipc=host and states no size;
the ranks' worker processes and NCCL's shared-memory transport use it, and Docker's 64 MiB
default fails with a bus error. 2 GiB per GPU (a memory-backed emptyDir, counted against the
pod's memory) leaves room for both without giving a pod half the node's RAM."""


def startup_budget_seconds(checkpoint_bytes: int | None) -> int:
    """How long a pytorch-backend pod may take to answer /health: the base plus reading the
    weights at PYTORCH_LOAD_BYTES_PER_SECOND, at least 30 minutes, at most 4 hours; an hour
    when the size is unknown."""
    if checkpoint_bytes is None:
        return PYTORCH_STARTUP_DEFAULT_SECONDS
    load = PYTORCH_STARTUP_BASE_SECONDS + checkpoint_bytes // PYTORCH_LOAD_BYTES_PER_SECOND
    return max(STARTUP_BUDGET_SECONDS, min(PYTORCH_STARTUP_MAX_SECONDS, load))


def shm_size_limit(world_size: int) -> str:
    """The /dev/shm emptyDir's sizeLimit for a pod of ``world_size`` GPUs (SHM_BYTES_PER_GPU)."""
    return f"{world_size * (SHM_BYTES_PER_GPU >> 30)}Gi"


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
    backend: facts.Backend = "tensorrt"
    """pytorch: ``path`` is a Hugging Face folder (the cached or quantized model), not an
    engine."""
    release: facts.Release | None = None
    """The serving image's release: picks the flag table (and the options-file flag)."""
    served_model_name: str | None = None
    """What /v1/models reports (pytorch; else the folder's name, a commit hash)."""
    checkpoint_bytes: int | None = None
    """The weights at 16 bits per parameter, when known: sizes the start-up budget."""

    @property
    def options_flag(self) -> str:
        """The flag that takes the options file in the serving release (per its table)."""
        line = flag_tables.line_of(self.release) if self.release is not None else None
        return flag_tables.options_file(line or "1.2").flag


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


def metrics_on(d: LLMDeployment, serving: Serving) -> bool:
    """spec.serve.metrics, where the serving release can serve them (see serving_metrics)."""
    return d.spec.serve.metrics and serving_metrics.metrics_served(serving.backend,
                                                                  serving.release)


def has_options_file(d: LLMDeployment, serving: Serving) -> bool:
    """Whether the pods get an options file: always on the pytorch backend, else when the
    spec gives options or the metrics need one."""
    return (serving.backend == "pytorch" or d.spec.serve.extra_llm_api_options is not None
            or metrics_on(d, serving))


def serve_command(d: LLMDeployment, serving: Serving) -> list[str]:
    """The trtllm-serve command line, only flags of the table of the serving release."""
    if serving.backend == "pytorch":
        return pytorch_serve_command(d, serving)
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
    if has_options_file(d, serving):
        cmd += ["--extra_llm_api_options", f"{OPTIONS_DIR}/{OPTIONS_FILE}"]
    cmd += list(serve.extra_args)
    return cmd


def pytorch_serve_command(d: LLMDeployment, serving: Serving) -> list[str]:
    """``trtllm-serve <folder> --backend pytorch ...``: the flags the PyTorch-line table marks
    emitted, in their emit_as spelling. Only the runtime limits the spec sets are passed (no
    engine limits exist: trtllm-serve's defaults apply otherwise); the KV-cache fraction goes in
    the options file, which the flag of that release always receives (metrics are turned on
    there)."""
    serve = d.spec.serve
    cmd = ["trtllm-serve", MODEL_DIR, "--backend", "pytorch",
           "--host", "0.0.0.0", "--port", str(serve.port),
           "--tp_size", str(serving.tensor), "--pp_size", str(serving.pipeline)]
    limits = {"max_batch_size": serve.max_batch_size, "max_num_tokens": serve.max_num_tokens,
              "max_seq_len": serve.max_seq_len, "max_beam_width": serve.max_beam_width}
    for flag, value in limits.items():
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    if serve.log_level is not None:
        cmd += ["--log_level", serve.log_level]
    if serving.served_model_name is not None:
        cmd += ["--served_model_name", serving.served_model_name]
    cmd += [serving.options_flag, f"{OPTIONS_DIR}/{OPTIONS_FILE}"]
    if not serve.usage_telemetry:
        cmd.append("--no-telemetry")
    return cmd + list(serve.extra_args)


def pytorch_options(d: LLMDeployment) -> dict[str, Any]:
    """The pytorch backend's options file: the user's keys (validation refuses those the
    operator writes), metrics on, and the KV-cache fraction merged into kv_cache_config (a
    kv_cache_config mapping in the file replaces the one a flag would build)."""
    serve = d.spec.serve
    options: dict[str, Any] = dict(serve.extra_llm_api_options or {})
    if serve.metrics:
        options |= serving_metrics.options("pytorch", None)
    if serve.kv_cache_free_gpu_memory_fraction is not None:
        kv = options.get("kv_cache_config")
        options["kv_cache_config"] = (dict(kv) if isinstance(kv, dict) else {}) | {
            "free_gpu_memory_fraction": serve.kv_cache_free_gpu_memory_fraction}
    return options


def served_model_name(engine: LLMEngine) -> str:
    """The name clients use in requests: the Hugging Face repo id, or the volume folder's name
    (what trtllm-serve reports for a folder it is given, were it not a commit hash here)."""
    model = engine.spec.model
    if model.hugging_face is not None:
        return model.hugging_face.repo
    assert model.volume is not None
    return model.volume.path.rstrip("/").rsplit("/", 1)[-1]


def options_configmap_name(d: LLMDeployment) -> str:
    return f"{d.metadata.name}-llm-api-options"


def options_configmap(d: LLMDeployment, engine_name: str,
                      backend: facts.Backend = "tensorrt",
                      release: facts.Release | None = None) -> dict[str, Any] | None:
    """The YAML options file: for pytorch always, for tensorrt when the spec gives options or
    the metrics are on (``return_perf_metrics``, where the release serves them)."""
    options: dict[str, Any] | None
    if backend == "pytorch":
        options = pytorch_options(d)
    else:
        extra = (serving_metrics.options(backend, release) if d.spec.serve.metrics else {})
        user = d.spec.serve.extra_llm_api_options
        options = None if user is None and not extra else dict(user or {}) | extra
    if options is None:
        return None
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": options_configmap_name(d), "namespace": d.metadata.namespace,
                     "labels": child_labels(d, engine_name),
                     "ownerReferences": [owner_reference(d)]},
        "data": {OPTIONS_FILE: _options_yaml(json.dumps(options, sort_keys=True))},
    }


@functools.lru_cache(maxsize=256)
def _options_yaml(options_json: str) -> str:
    """The options file for options given as JSON. PyYAML's dumper is pure Python and each
    reconcile builds the file again; a fleet shares a few distinct option sets, so each is
    dumped once (8% of a new fleet's reconcile time went to dumping, make bench)."""
    return yaml.safe_dump(json.loads(options_json), sort_keys=True)


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
    pytorch = serving.backend == "pytorch"
    mounts: list[dict[str, Any]] = [
        {"name": "engine", "mountPath": MODEL_DIR if pytorch else ENGINE_DIR,
         "subPath": serving.path, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    shm: dict[str, Any] = {"medium": "Memory"}
    if pytorch:
        shm["sizeLimit"] = shm_size_limit(serving.world_size)
    volumes: list[dict[str, Any]] = [
        {"name": "engine", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
        {"name": "dshm", "emptyDir": shm},
    ]
    if has_options_file(d, serving):
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
        "env": [*(_pytorch_env(d) if pytorch else []),
                *(e.model_dump(mode="json", by_alias=True, exclude_none=True)
                  for e in spec.env)],
        "resources": resources,
        "volumeMounts": mounts,
        "startupProbe": _probe(port, 10, (startup_budget_seconds(serving.checkpoint_bytes)
                                          if pytorch else STARTUP_BUDGET_SECONDS) // 10),
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
    annotations = {FINGERPRINT_ANNOTATION: serving.fingerprint, PATH_ANNOTATION: serving.path}
    template_labels = lbl | {ENGINE_TYPE_LABEL: ENGINE_TYPE, ENDPOINT_LABEL: "http"}
    if metrics_on(d, serving):
        # What a PodMonitor (selecting on the label) or an annotation-driven scrape config
        # needs: the port's name and number, and the path.
        template_labels[METRICS_LABEL] = "prometheus"
        annotations |= {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                        "prometheus.io/path": METRICS_PATH}
    # A new engine (or path) changes the template, hence a rollout.
    return {"metadata": {"labels": template_labels, "annotations": annotations},
            "spec": pod_spec}


def deployment(d: LLMDeployment, engine: LLMEngine, serving: Serving,
               claim: str, *, set_replicas: bool = True) -> dict[str, Any]:
    """The trtllm-serve Deployment serving ``serving`` from the engines ``claim``; without
    ``replicas`` when an autoscaler owns them (``set_replicas`` False), so server-side apply
    leaves that field to it."""
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
    if not set_replicas:
        del manifest["spec"]["replicas"]
    return manifest


def _pytorch_env(d: LLMDeployment) -> list[dict[str, Any]]:
    """The serving pod never downloads (the folder is local; with HF_HUB_OFFLINE a missing file
    is an error, not a fetch), and sends no usage statistics unless the spec allows it."""
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    if not d.spec.serve.usage_telemetry:
        env.append({"name": "TRTLLM_NO_USAGE_STATS", "value": "1"})
    return env


def endpoint_selector(d: LLMDeployment) -> dict[str, str]:
    """The pods of this LLMDeployment that answer HTTP, on every GPU type it serves on."""
    return selector(d) | {ENDPOINT_LABEL: "http"}


def service(d: LLMDeployment, engine_name: str) -> dict[str, Any]:
    """The Service in front of the serving pods (with spec.slices: the HTTP pods of every
    slice)."""
    meta: dict[str, Any] = {"name": d.metadata.name, "namespace": d.metadata.namespace,
                            "labels": child_labels(d, engine_name),
                            "ownerReferences": [owner_reference(d)]}
    if d.spec.service.annotations:
        meta["annotations"] = dict(d.spec.service.annotations)
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": d.spec.service.type,
                 "selector": endpoint_selector(d) if d.spec.slices else selector(d),
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


def with_spec_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with a hash of itself in ``metadata.annotations`` (SPEC_HASH_ANNOTATION):
    a child carrying the hash of what the operator would apply now needs no write, unless
    someone changed it since (see :func:`up_to_date`)."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":"))
                            .encode()).hexdigest()[:16]
    meta = dict(manifest["metadata"])
    meta["annotations"] = dict(meta.get("annotations") or {}) | {SPEC_HASH_ANNOTATION: digest}
    return manifest | {"metadata": meta}


def _contains(observed: Any, desired: Any) -> bool:
    """Every field ``desired`` sets has the same value in ``observed``; fields the API server
    defaulted (or others own) may be added. Lists match element by element. An empty list or
    object is what the API server stores as absent (``env: []``)."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            _contains(observed[k], v) if k in observed else v in ([], {}, None)
            for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(observed, list) and len(observed) == len(desired)
                and all(_contains(o, d) for o, d in zip(observed, desired, strict=True)))
    return bool(observed == desired)


def up_to_date(desired: dict[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether applying ``desired`` (built by :func:`with_spec_hash`) would change nothing:
    the observed child carries the same hash, so no field the operator set before has since
    been dropped from the desired manifest, and still holds every value the operator sets, so
    nobody edited them by hand. A value the API server rewrites (a quantity such as 0.5 CPU
    stored as 500m) only costs an apply that changes nothing."""
    if observed is None:
        return False
    annotations = (observed.get("metadata") or {}).get("annotations") or {}
    want = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    if annotations.get(SPEC_HASH_ANNOTATION) != want:
        return False
    return _contains(observed, {k: v for k, v in desired.items()
                                if k not in ("apiVersion", "kind")})


__all__ = ["ENGINES_MOUNT", "Serving"]
