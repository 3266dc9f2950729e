"""Pure builders of the objects a build needs: the entrypoint ConfigMap and the build Job.

The job entrypoints (the ``trtllm_jobs`` package, ``build-jobs/trtllm_jobs``) reach the stock
NVIDIA TensorRT-LLM release image through a ConfigMap, one key per file, so no custom image is
needed. The ConfigMap is mounted as the package folder and the pod runs
``python3 -m trtllm_jobs.<kind>`` from its parent. It is immutable and named by a hash of every
file: a Job always runs the code it was created with, and an operator upgrade never edits a
file under a running job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

from trtllm_jobs import contract as job_contract
from trtllm_operator import gpus, labels
from trtllm_operator.api import LLMEngine
from trtllm_operator.engines.planning import (
    ENGINES_MOUNT,
    MODELS_MOUNT,
    SCRATCH_MOUNT,
    TargetPlan,
    build_job_spec,
    quantize_job_name,
    quantize_job_spec,
    quantized_path,
)

JOBS_PACKAGE: Final = "trtllm_jobs"
JOBS_DIR: Final = "/opt/trtllm-jobs"
"""The ConfigMap is mounted at ``JOBS_DIR/trtllm_jobs`` (keys cannot hold '/', so the mount
point is the package folder); ``JOBS_DIR`` is the container's workingDir, which ``python3 -m``
puts on sys.path, so the image's own PYTHONPATH stays as it is."""
CONTAINER: Final = "build"
BUILD_COMPONENT: Final = "engine-build"

# Exit codes of the entrypoints that no retry can fix (bad spec, no trtllm-build in the image,
# wrong GPU, full disk, missing or forbidden checkpoint, a model too big for the GPU): fail the
# Job at once instead of retrying; status names the reason even when the pod's termination
# message is not the entrypoint's summary. Taken from the package the jobs run, not restated.
EXIT_REASONS: Final[dict[int, str]] = {
    code: reason.value for reason, code in job_contract.EXIT_CODES.items()}
PERMANENT_EXIT_CODES: Final = job_contract.PERMANENT_EXIT_CODES


def entrypoint_files() -> dict[str, str]:
    """The job entrypoint package, file name -> source, shipped inside the operator's wheel."""
    package = resources.files(JOBS_PACKAGE)
    return {f.name: f.read_text() for f in sorted(package.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".py") and f.is_file()}


def job_command(kind: str) -> list[str]:
    """The container command of a job kind (``build``, ``download``)."""
    return ["python3", "-m", f"{JOBS_PACKAGE}.{kind}"]


def script_configmap_name(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return "trtllm-jobs-" + digest.hexdigest()[:10]


def entrypoint_volume(configmap: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) putting the entrypoint ConfigMap's files at JOBS_DIR/trtllm_jobs/."""
    return ({"name": "entrypoint", "configMap": {"name": configmap, "defaultMode": 0o444}},
            {"name": "entrypoint", "mountPath": f"{JOBS_DIR}/{JOBS_PACKAGE}", "readOnly": True})


def script_configmap(namespace: str, files: Mapping[str, str]) -> dict[str, Any]:
    """The immutable ConfigMap holding the entrypoint package, one key per file. Unowned:
    shared by every job of the namespace (about 100 kB; left behind when the last engine goes,
    on purpose)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": script_configmap_name(files),
            "namespace": namespace,
            "labels": labels.common(BUILD_COMPONENT),
        },
        "immutable": True,
        "data": dict(files),
    }


def owner_reference(engine: LLMEngine) -> dict[str, Any]:
    return {
        "apiVersion": engine.api_version,
        "kind": engine.kind,
        "name": engine.metadata.name,
        "uid": engine.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(engine: LLMEngine, plan: TargetPlan) -> dict[str, str]:
    return labels.common(BUILD_COMPONENT) | {
        labels.ENGINE: engine.metadata.name,
        labels.FINGERPRINT: plan.fingerprint[:32],
        labels.GPU_PRODUCT: plan.gpu,
    }


def build_job(engine: LLMEngine, plan: TargetPlan, script_configmap: str,
              active_deadline_seconds: int = 6 * 3600,
              gpu_memory_mib: int | None = None,
              cached_path: str | None = None) -> dict[str, Any]:
    """The Job that builds ``plan`` on a node of its GPU type.

    - ``nodeSelector`` pins the GPU product: an engine only loads on the GPU it was built on;
    - ``nvidia.com/gpu`` = build GPUs (default tensor x pipeline), the GPU taint tolerated;
    - ``backoffLimit`` 1 with a pod failure policy: one retry for a flaky node, none for a
      failure the entrypoint knows is permanent;
    - no TTL: the finished Job (and its pod's termination message) is what status is read
      from, so it must outlive the operator's next look at it.
    """
    spec = engine.spec
    build = spec.build
    name = plan.job_name
    lbl = job_labels(engine, plan)
    env: list[dict[str, Any]] = [
        {"name": "TRTLLM_BUILD_SPEC", "value": json.dumps(
            build_job_spec(engine, plan, gpu_memory_mib, cached_path), sort_keys=True)},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
        # The package is on a read-only mount: no bytecode to write.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    hf = spec.model.hugging_face
    if hf is not None and hf.token_secret_ref is not None:
        ref = hf.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": ref.name, "key": ref.key}}})
    env += [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in build.env]

    entrypoint, entrypoint_mount = entrypoint_volume(script_configmap)
    mounts: list[dict[str, Any]] = [
        {"name": "engines", "mountPath": ENGINES_MOUNT},
        entrypoint_mount,
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "engines", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}},
        entrypoint,
        # NCCL between ranks uses shared memory; the container default (64 MiB) is far too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    if spec.model.volume is not None:
        mounts.append({"name": "model", "mountPath": MODELS_MOUNT, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {
            "claimName": spec.model.volume.claim_name, "readOnly": True}})

    resources_: dict[str, Any] = {"limits": {gpus.GPU_RESOURCE: str(plan.build_gpus)}}
    if build.resources is not None:
        user = build.resources.model_dump(mode="json", by_alias=True, exclude_none=True)
        resources_ = {
            "requests": dict(user.get("requests", {})),
            "limits": dict(user.get("limits", {})) | resources_["limits"],
        }

    tolerations = [{"key": gpus.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    tolerations += [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                    for t in build.tolerations]
    node_selector = {gpus.PRODUCT_LABEL: plan.gpu} | dict(build.node_selector or {})

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "containers": [{
            "name": CONTAINER,
            "image": build.image,
            "command": job_command("build"),
            "workingDir": JOBS_DIR,
            "env": env,
            "resources": resources_,
            "volumeMounts": mounts,
            # The entrypoint writes a JSON summary; if it dies before that, the log tail
            # becomes the message, so status can still say what happened.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": volumes,
    }
    if build.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in build.image_pull_secrets]

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": engine.metadata.namespace,
            "labels": lbl,
            "annotations": {
                labels.FINGERPRINT: plan.fingerprint,
                labels.ENGINE_PATH: plan.path,
            },
            "ownerReferences": [owner_reference(engine)],
        },
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": active_deadline_seconds,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                "values": list(PERMANENT_EXIT_CODES)},
            }]},
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    }


# --------------------------------------------------------------------------- quantize (pytorch)

QUANTIZE_COMPONENT: Final = "model-quantize"


def quantize_job(engine: LLMEngine, commit: str, gpu: str, gpus_: int, script_configmap: str,
                 active_deadline_seconds: int = 6 * 3600,
                 dataset_path: str | None = None) -> dict[str, Any]:
    """The Job that quantizes ``engine``'s model at ``commit`` on a node of GPU type ``gpu``.

    The caller picks ``gpu`` (a type whose compute capability runs the format, with nodes that
    hold ``gpus_`` GPUs for the bf16 model: ModelOpt spreads it over them with device_map auto).
    Like the build Job: the package ConfigMap mounted as ``trtllm_jobs``, the storage claim at
    ENGINES_MOUNT (the model cache and the output both live there), permanent exit codes fail
    at once, no TTL. Unlike it: ``JOB_NAME`` (downward API) names the staging folder and
    ``podReplacementPolicy: Failed`` keeps a replacement pod from starting while the old one
    still writes; offline (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``), with no token.
    """
    spec = engine.spec
    build = spec.build
    name = quantize_job_name(spec, commit, dataset_path)
    quant_spec = quantize_job_spec(spec, commit, dataset_path)
    lbl = labels.common(QUANTIZE_COMPONENT) | {labels.ENGINE: engine.metadata.name,
                                               labels.GPU_PRODUCT: gpu}
    env: list[dict[str, Any]] = [
        {"name": "TRTLLM_QUANTIZE_SPEC", "value": json.dumps(quant_spec, sort_keys=True)},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "JOB_NAME", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    # Offline always: the checkpoint is the model cache's, the calibration samples are on the
    # claim (put there by the user, or by the CPU download Job); nothing is fetched on a GPU.
    env += [{"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HF_DATASETS_OFFLINE", "value": "1"},
            {"name": "TRANSFORMERS_OFFLINE", "value": "1"}]
    env += [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in build.env]
    entrypoint, entrypoint_mount = entrypoint_volume(script_configmap)
    resources_: dict[str, Any] = {"limits": {gpus.GPU_RESOURCE: str(gpus_)}}
    if build.resources is not None:
        user = build.resources.model_dump(mode="json", by_alias=True, exclude_none=True)
        resources_ = {"requests": dict(user.get("requests", {})),
                      "limits": dict(user.get("limits", {})) | resources_["limits"]}
    tolerations = [{"key": gpus.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    tolerations += [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                    for t in build.tolerations]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": {gpus.PRODUCT_LABEL: gpu} | dict(build.node_selector or {}),
        "tolerations": tolerations,
        "containers": [{
            "name": CONTAINER, "image": build.image, "command": job_command("quantize"),
            "workingDir": JOBS_DIR, "env": env, "resources": resources_,
            "volumeMounts": [
                {"name": "engines", "mountPath": ENGINES_MOUNT}, entrypoint_mount,
                {"name": "dshm", "mountPath": "/dev/shm"},
                {"name": "scratch", "mountPath": SCRATCH_MOUNT}],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": [
            {"name": "engines", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}},
            entrypoint, {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "scratch", "emptyDir": {}}],
    }
    if build.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in build.image_pull_secrets]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": engine.metadata.namespace, "labels": lbl,
                     "annotations": {labels.ENGINE_PATH: quantized_path(spec, commit,
                                                                     dataset_path)},
                     "ownerReferences": [owner_reference(engine)]},
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": active_deadline_seconds,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                "values": list(PERMANENT_EXIT_CODES)},
            }]},
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    }
