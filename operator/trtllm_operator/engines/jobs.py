"""Pure builders of the objects a build needs: the entrypoint ConfigMap and the build Job.

The entrypoint (``build-jobs/trtllm_build_job.py``) reaches the stock NVIDIA TensorRT-LLM
release image through a ConfigMap, so no custom image is needed. The ConfigMap is immutable
and named by a hash of the script: a Job always runs the script version it was created with,
and an operator upgrade never edits a file under a running build.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any, Final

from trtllm_operator import gpus, labels
from trtllm_operator.api import LLMEngine
from trtllm_operator.engines.planning import (
    ENGINES_MOUNT,
    MODELS_MOUNT,
    SCRATCH_MOUNT,
    TargetPlan,
    build_job_spec,
)

SCRIPT_NAME: Final = "trtllm_build_job.py"
SCRIPT_DIR: Final = "/opt/trtllm-operator"
CONTAINER: Final = "build"
BUILD_COMPONENT: Final = "engine-build"

# Exit codes of the entrypoint that no retry can fix (bad spec, no trtllm-build in the image,
# wrong GPU, full disk, missing checkpoint, a model too big for the GPU), with their reasons:
# the Job fails at once instead of retrying, and status names the reason even when the pod's
# termination message is not the entrypoint's summary. The entrypoint's EXIT_CODES; a unit
# test keeps the two equal.
EXIT_REASONS: Final[dict[int, str]] = {
    2: "InvalidSpec",
    3: "TrtllmBuildMissing",
    4: "GpuMismatch",
    5: "DiskFull",
    6: "ModelNotFound",
    7: "ModelDoesNotFit",
}
PERMANENT_EXIT_CODES: Final = tuple(EXIT_REASONS)


def entrypoint_script() -> str:
    """The build-job entrypoint, shipped inside the operator package."""
    return resources.files("trtllm_operator").joinpath("data", SCRIPT_NAME).read_text()


def script_configmap_name(script: str) -> str:
    return "trtllm-build-entrypoint-" + hashlib.sha256(script.encode()).hexdigest()[:10]


def script_configmap(namespace: str, script: str) -> dict[str, Any]:
    """The immutable ConfigMap holding the entrypoint. Unowned: shared by every build Job of
    the namespace (a few tens of kB; left behind when the last engine goes, on purpose)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": script_configmap_name(script),
            "namespace": namespace,
            "labels": labels.common(BUILD_COMPONENT),
        },
        "immutable": True,
        "data": {SCRIPT_NAME: script},
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
              gpu_memory_mib: int | None = None) -> dict[str, Any]:
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
            build_job_spec(engine, plan, gpu_memory_mib), sort_keys=True)},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
    ]
    hf = spec.model.hugging_face
    if hf is not None and hf.token_secret_ref is not None:
        ref = hf.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": ref.name, "key": ref.key}}})
    env += [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in build.env]

    mounts: list[dict[str, Any]] = [
        {"name": "engines", "mountPath": ENGINES_MOUNT},
        {"name": "entrypoint", "mountPath": SCRIPT_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "engines", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}},
        {"name": "entrypoint", "configMap": {"name": script_configmap, "defaultMode": 0o555}},
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
            "command": ["python3", f"{SCRIPT_DIR}/{SCRIPT_NAME}"],
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
