"""The model phase of an LLMEngine: one CPU-only download Job per Hugging Face checkpoint. Pure.

A Hugging Face model is fetched once per (namespace, storage claim, repo, revision) into the
model cache on the engines claim (``/engines/models/<org>--<name>/<commit>``, the layout of
``trtllm_jobs.cache``), by a Job whose name is a hash of exactly those four: every target and
every LLMEngine naming the same model plan the same Job, and an operator restarted mid-download
finds it instead of starting another (create, 409 = already there). Builds start only once the
checkpoint is Cached and read it in place (``model.cachedPath``); a volume-sourced model needs
no download and has no model phase.

"Cached" is known from the LLMEngines' own status (this one's, or another's naming the same Job)
as well as from the Job: a finished download Job that is deleted later does not start a second
download for an engine that recorded the entry. An engine that never saw it Cached creates the
Job again; the job finds the entry and exits at once with ``CacheHit``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trtllm_jobs import cache as job_cache
from trtllm_jobs import contract as job_contract
from trtllm_operator import gpus, labels
from trtllm_operator.api import LLMEngine, LLMEngineSpec
from trtllm_operator.api.engine import DownloadProgress, ModelCacheStatus
from trtllm_operator.engines import jobs
from trtllm_operator.engines.planning import ENGINES_MOUNT, SCRATCH_MOUNT
from trtllm_operator.engines.status import (
    Decision,
    job_condition,
    job_failure,
    non_negative_int,
    termination_summary,
)
from trtllm_operator.pods import STUCK_REASONS, PodProblem

JOB_PREFIX: Final = "trtllm-model-"
DATASET_JOB_PREFIX: Final = "trtllm-data-"
DOWNLOAD_COMPONENT: Final = "model-download"
REPO_ANNOTATION: Final = "trtllm.dev/model-repo"
REVISION_ANNOTATION: Final = "trtllm.dev/model-revision"
CONTAINER: Final = "download"

# Modest: the download is network- and disk-bound. The memory limit bounds huggingface_hub's
# buffers; no GPU is ever requested.
RESOURCES: Final = {"requests": {"cpu": "500m", "memory": "1Gi"},
                    "limits": {"memory": "4Gi"}}
# A failed download is retried: the next pod resumes the staging folder (podReplacementPolicy
# Failed: never while the old pod still writes). The job retries rate limits itself too.
BACKOFF_LIMIT: Final = 2
PROGRESS_READ_SECONDS: Final = 10.0
"""How often, at most, the operator reads a running download pod's log for progress."""
PROGRESS_TAIL_LINES: Final = 20


@dataclass(frozen=True)
class ModelPlan:
    """The download of one Hugging Face repo (a checkpoint, or a calibration dataset) into one
    claim's model cache."""

    repo: str
    revision: str
    claim: str
    job_name: str
    cache_root: str = ENGINES_MOUNT
    repo_type: str = "model"
    files: tuple[str, ...] = ()
    """A dataset's files to fetch (glob patterns); empty: all."""

    def entry_path(self, commit: str) -> str:
        """The cache entry of ``commit`` as download, build and quantize pods see it."""
        if self.repo_type == "dataset":
            return str(job_cache.dataset_entry_dir(Path(self.cache_root), self.repo, commit,
                                                   self.files))
        return str(job_cache.entry_dir(Path(self.cache_root), self.repo, commit))


def plan_model(spec: LLMEngineSpec) -> ModelPlan | None:
    """The download this spec needs; None for a volume-sourced model (nothing to fetch)."""
    hf = spec.model.hugging_face
    if hf is None:
        return None
    revision = hf.revision or "main"
    claim = spec.storage.claim_name
    digest = hashlib.sha256(f"{claim}\0{hf.repo}\0{revision}".encode()).hexdigest()[:12]
    return ModelPlan(repo=hf.repo, revision=revision, claim=claim,
                     job_name=JOB_PREFIX + digest)


def plan_calibration(spec: LLMEngineSpec) -> ModelPlan | None:
    """The download of the calibration dataset a pytorch-backend spec asks for
    (``calibration.downloadDataset``), shared like a model's: one Job per (claim, dataset repo,
    revision, files); None when the spec fetches no dataset."""
    quant = spec.build.quantization
    calib = quant.calibration if quant is not None else None
    if calib is None or not calib.download_dataset or calib.dataset_path is not None:
        return None
    revision = calib.revision or "main"
    claim = spec.storage.claim_name
    key = "\0".join((claim, "dataset", calib.dataset, revision, *sorted(calib.files)))
    return ModelPlan(repo=calib.dataset, revision=revision, claim=claim,
                     job_name=DATASET_JOB_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12],
                     repo_type="dataset", files=tuple(calib.files))


def download_spec(plan: ModelPlan) -> dict[str, Any]:
    """The spec ``trtllm_jobs.download`` reads from TRTLLM_DOWNLOAD_SPEC (no secret in it)."""
    spec: dict[str, Any] = {
        "version": 1, "kind": "download",
        "model": {"source": "huggingFace", "repo": plan.repo, "revision": plan.revision},
        "cacheRoot": plan.cache_root}
    if plan.repo_type != "model":
        spec |= {"repoType": plan.repo_type, "files": list(plan.files) or None}
    return spec


def download_job(engine: LLMEngine, plan: ModelPlan, script_configmap: str,
                 active_deadline_seconds: int) -> dict[str, Any]:
    """The CPU-only Job that fetches ``plan`` into the model cache.

    - no ``nvidia.com/gpu`` request, and a preference for nodes without a GPU (GPU Feature
      Discovery's ``nvidia.com/gpu.present``); the GPU taint is tolerated only so that a
      cluster made of GPU nodes alone can still run it;
    - the engines claim read-write (the cache lives there), the token Secret as a
      secretKeyRef (``spec.build.env`` is the build container's own: not passed here);
    - no API access (``automountServiceAccountToken: false``): progress goes to the log;
    - ``JOB_NAME`` from the pod's job-name label names the staging folder, so a retry resumes.
    """
    spec = engine.spec
    build = spec.build
    lbl = labels.common(DOWNLOAD_COMPONENT) | {labels.ENGINE: engine.metadata.name}
    env: list[dict[str, Any]] = [
        {"name": "TRTLLM_DOWNLOAD_SPEC", "value": json.dumps(download_spec(plan),
                                                             sort_keys=True)},
        {"name": "JOB_NAME", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    hf = spec.model.hugging_face
    if hf is not None and hf.token_secret_ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": hf.token_secret_ref.name, "key": hf.token_secret_ref.key}}})
    entrypoint, entrypoint_mount = jobs.entrypoint_volume(script_configmap)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "preference": {"matchExpressions": [{
                "key": gpus.PRESENT_LABEL, "operator": "NotIn", "values": ["true"]}]},
        }]}},
        "tolerations": [{"key": gpus.GPU_TAINT_KEY, "operator": "Exists",
                         "effect": "NoSchedule"}],
        "containers": [{
            "name": CONTAINER,
            "image": build.image,
            "command": jobs.job_command("download"),
            "workingDir": jobs.JOBS_DIR,
            "env": env,
            "resources": json.loads(json.dumps(RESOURCES)),
            "volumeMounts": [{"name": "engines", "mountPath": plan.cache_root},
                             entrypoint_mount,
                             {"name": "scratch", "mountPath": SCRATCH_MOUNT}],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": [{"name": "engines", "persistentVolumeClaim": {"claimName": plan.claim}},
                    entrypoint, {"name": "scratch", "emptyDir": {}}],
    }
    if build.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in build.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": plan.job_name,
            "namespace": engine.metadata.namespace,
            "labels": lbl,
            "annotations": {REPO_ANNOTATION: plan.repo, REVISION_ANNOTATION: plan.revision},
            # Owned by the engine that created it: it goes when that engine goes. Engines
            # that recorded the entry keep it; one still waiting creates the Job again.
            "ownerReferences": [jobs.owner_reference(engine)],
        },
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": active_deadline_seconds,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                "values": list(job_contract.PERMANENT_EXIT_CODES)},
            }]},
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    }


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ModelObserved:
    """What the operator sees of one checkpoint's download."""

    job: Mapping[str, Any] | None = None
    pod: Mapping[str, Any] | None = None
    """The newest pod of the download Job."""
    previous: ModelCacheStatus | None = None
    """This LLMEngine's recorded model status."""
    cached_elsewhere: ModelCacheStatus | None = None
    """The same download recorded Cached by another LLMEngine of the namespace."""
    stuck: PodProblem | None = None
    progress: tuple[int, int] | None = None
    """(doneBytes, totalBytes) from the running pod's log, when it could be read."""


@dataclass(frozen=True)
class ModelDecision:
    status: ModelCacheStatus
    create_job: bool = False

    @property
    def cached(self) -> bool:
        return self.status.state == "Cached"


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def _progress_text(progress: DownloadProgress | None) -> str:
    if progress is None or progress.total_bytes == 0:
        return ""
    pct = 100.0 * progress.done_bytes / progress.total_bytes
    return (f" ({progress.done_bytes / 2**30:.1f} of {progress.total_bytes / 2**30:.1f} GiB, "
            f"{pct:.0f}%)")


def decide_model(plan: ModelPlan, namespace: str, observed: ModelObserved) -> ModelDecision:
    """The checkpoint's cache status, and whether the download Job must be created now."""
    job, name = observed.job, plan.job_name
    if job is None:
        for known in (observed.cached_elsewhere, observed.previous):
            if known is not None and known.state == "Cached" and known.job == name:
                return ModelDecision(known.model_copy(update={"progress": None}))
        return ModelDecision(ModelCacheStatus(
            state="Pending", reason="JobCreated", job=name,
            message=f"download Job {name} created for {plan.repo}@{plan.revision}"),
            create_job=True)

    summary = termination_summary(observed.pod) or {}
    if job_condition(job, "Complete"):
        commit = summary.get("commit")
        if not isinstance(commit, str) or not commit:
            # The pod (and its message) is gone: what this or another engine recorded stands.
            for known in (observed.previous, observed.cached_elsewhere):
                if known is not None and known.state == "Cached" and known.job == name:
                    return ModelDecision(known.model_copy(update={"progress": None}))
            commit = plan.revision if _is_commit(plan.revision) else None
        if commit is None:
            return ModelDecision(ModelCacheStatus(
                state="Failed", reason="DownloadSummaryMissing", job=name,
                message=f"download Job {name} completed but its pod (and the commit it "
                        f"resolved) is gone; delete the Job to look again (kubectl delete job "
                        f"-n {namespace} {name}): a cached model is found in seconds"))
        cache_hit = summary.get("phase") == job_contract.Phase.CACHE_HIT
        total = non_negative_int(summary.get("totalBytes"))
        return ModelDecision(ModelCacheStatus(
            state="Cached", reason="CacheHit" if cache_hit else "Downloaded", job=name,
            commit=commit, path=plan.entry_path(commit), total_bytes=total,
            checkpoint_bytes=non_negative_int(summary.get("checkpointBytes")),
            message=(f"{plan.repo}@{commit[:12]} is in the model cache"
                     + (" (it was already there)" if cache_hit else ""))))
    if job_condition(job, "Failed"):
        # No exit-code reason: the summary or the Job says why a download failed.
        reason, message = job_failure(
            job, summary,
            f"Fix the cause, then delete the download Job to retry (kubectl delete job -n "
            f"{namespace} {name}) or change spec.model",
            job_contract.Reason.DOWNLOAD_FAILED,
            f"the download of {plan.repo}@{plan.revision} failed")
        return ModelDecision(ModelCacheStatus(state="Failed", reason=reason, job=name,
                                              message=message))
    if observed.stuck is not None:
        return ModelDecision(ModelCacheStatus(state="Pending",
                                              reason=observed.stuck.reason.value, job=name,
                                              message=observed.stuck.message))
    phase = ((observed.pod or {}).get("status") or {}).get("phase")
    if phase in ("Running", "Succeeded", "Failed"):
        progress = None
        if observed.progress is not None:
            progress = DownloadProgress(done_bytes=observed.progress[0],
                                        total_bytes=observed.progress[1])
        elif observed.previous is not None and observed.previous.job == name:
            progress = observed.previous.progress  # not re-read this time: keep the last
        return ModelDecision(ModelCacheStatus(
            state="Downloading", reason="Downloading", job=name, progress=progress,
            total_bytes=progress.total_bytes if progress else None,
            message=f"downloading {plan.repo}@{plan.revision} in Job {name}"
                    + _progress_text(progress)))
    return ModelDecision(ModelCacheStatus(
        state="Pending", reason="JobStarting", job=name,
        message=f"download Job {name} is starting"))


def gate_target(decision: Decision, model: ModelDecision, what: str = "model") -> Decision:
    """A target that would start its build now waits for the checkpoint instead: Pending
    (``ModelDownloading``) while it downloads, or with the download pod's own reason while
    that pod cannot start (``SecretNotFound``, ``ImagePullFailed``: the fix is the same as for
    a build pod), Failed with the download's reason if it failed. Targets already built,
    building, or invalid are left as they are."""
    if model.cached or not decision.create_job:
        return decision
    s, m = decision.status, model.status
    if m.state == "Failed":
        return Decision(s.model_copy(update={
            "state": "Failed", "reason": m.reason, "job": None,
            "message": f"the {what} download failed: {m.message}"}))
    if m.reason in STUCK_REASONS:
        return Decision(s.model_copy(update={
            "state": "Pending", "reason": m.reason, "job": None,
            "message": f"the {what} download cannot start: {m.message}"}))
    return Decision(s.model_copy(update={
        "state": "Pending", "reason": "ModelDownloading", "job": None,
        "message": f"waiting for the {what}: {m.message}"}))


def model_size_source(model: ModelCacheStatus | None) -> int | None:
    """The checkpoint size the cache's manifest measured, if the model is Cached."""
    if model is None or model.state != "Cached":
        return None
    return model.checkpoint_bytes


def serve_cached_checkpoint(decision: Decision, model: ModelDecision, repo: str) -> Decision:
    """A target of the pytorch backend without quantization: nothing is built, trtllm-serve
    loads the cached Hugging Face checkpoint itself. Where the tensorrt backend would start a
    build, the target is Built once the checkpoint is Cached (its path is the cache entry,
    relative to the claim as serving pods mount it), and waits for it like a build otherwise.
    Targets refused by preflight (Invalid, Unschedulable) are left as they are; no Job is
    ever created for them."""
    if not decision.create_job:
        return decision
    if not model.cached:
        return Decision(gate_target(decision, model).status)
    m = model.status
    path = str(Path(m.path or "").relative_to(ENGINES_MOUNT))
    return Decision(decision.status.model_copy(update={
        "state": "Built", "reason": "CheckpointCached", "job": None, "path": path,
        "message": f"serves the cached checkpoint {repo}@{(m.commit or '')[:12]} with "
                   f"trtllm-serve --backend pytorch (no engine build on this backend)",
        "total_bytes": m.total_bytes, "checkpoint_bytes": m.checkpoint_bytes}))


def serve_volume_checkpoint(decision: Decision, spec: LLMEngineSpec) -> Decision:
    """A target of the pytorch backend whose checkpoint is on a volume: nothing is downloaded
    or built; serving pods mount the model's claim and trtllm-serve loads the folder where it
    is. Built at once where the tensorrt backend would start a build; targets refused by
    preflight are left as they are, and no Job is ever created."""
    volume = spec.model.volume
    if not decision.create_job or volume is None:
        return Decision(decision.status)
    return Decision(decision.status.model_copy(update={
        "state": "Built", "reason": "CheckpointOnVolume", "job": None,
        "path": volume.path.strip("/"),
        "message": f"serves the checkpoint on PersistentVolumeClaim {volume.claim_name} at "
                   f"{volume.path} with trtllm-serve --backend pytorch (nothing to download "
                   f"or build on this backend)"}))
