"""Build planning: what one (LLMEngine, GPU type) pair must build, and where it goes. Pure.

The fingerprint is a sha256 over everything the engine's bytes depend on -- model identity and
revision, every build setting, the builder image and the GPU product -- and nothing else.
Scheduling knobs (resources, tolerations, node selector, pull secrets, env, build GPU count)
are left out: changing them must not rebuild. Settings are hashed without their defaults, so a
new optional field in a later operator release does not change every fingerprint (and rebuild
every engine) on upgrade.

From the fingerprint follow the engine folder in the shared volume and the build Job's name.
Both are deterministic, which is what makes builds shared and crash-safe: two LLMEngines with
identical inputs (any names, same namespace and storage) plan the same Job and the same folder,
and an operator restarted mid-build finds its Job instead of launching another.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trtllm_jobs import cache as _jobcache
from trtllm_jobs.spec import parse_quantize_spec
from trtllm_operator.api import LLMEngine, LLMEngineSpec
from trtllm_operator.validation import effective_backend

FINGERPRINT_SCHEMA: Final = 1
"""Bumped only when the meaning of the fingerprint changes (forces rebuilds)."""

ENGINES_MOUNT: Final = "/engines"
"""Where the engines claim is mounted in build and serving pods."""
MODELS_MOUNT: Final = "/models"
"""Where a checkpoint claim is mounted in build pods."""
SCRATCH_MOUNT: Final = "/scratch"
"""Node-local scratch space of a build pod (downloads, converted checkpoints)."""
JOB_PREFIX: Final = "trtllm-build-"


@dataclass(frozen=True)
class TargetPlan:
    """The build of one engine for one GPU type."""

    gpu: str
    """nvidia.com/gpu.product value."""
    fingerprint: str
    """sha256 hex of the engine's inputs."""
    path: str
    """Engine folder inside the storage claim."""
    job_name: str
    build_gpus: int
    world_size: int
    """tensor x pipeline: GPUs a server of this engine needs."""

    @property
    def mount_path(self) -> str:
        """The engine folder as build and serving pods see it."""
        return f"{ENGINES_MOUNT}/{self.path}"

    @property
    def short(self) -> str:
        return self.fingerprint[:16]


def _dump(model: Any) -> Any:
    if model is None:
        return None
    return model.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude_none=True)


def model_identity(spec: LLMEngineSpec) -> dict[str, Any]:
    """Which checkpoint, as a fingerprint sees it (no credentials: they do not change bytes)."""
    hf = spec.model.hugging_face
    if hf is not None:
        return {"huggingFace": {"repo": hf.repo, "revision": hf.revision or "main"}}
    vol = spec.model.volume
    assert vol is not None  # exactly one source: the CRD's CEL rule and the model both say so
    return {"volume": {"claimName": vol.claim_name, "path": vol.path}}


CheckpointKey = tuple[str, ...]
"""Identifies a checkpoint across LLMEngines: ("huggingFace", repo, revision) anywhere in the
cluster, or ("volume", namespace, claim, path) (claims are namespaced)."""


def checkpoint_key(namespace: str, model: Mapping[str, Any]) -> CheckpointKey | None:
    """The identity of ``spec.model`` (wire form) for sharing measured checkpoint sizes; None
    for a spec without a source (refused by admission)."""
    hf = model.get("huggingFace")
    if hf and hf.get("repo"):
        return ("huggingFace", str(hf["repo"]), str(hf.get("revision") or "main"))
    vol = model.get("volume")
    if vol and vol.get("claimName"):
        return ("volume", namespace, str(vol["claimName"]), str(vol.get("path") or "").strip("/"))
    return None


def fingerprint_inputs(spec: LLMEngineSpec, gpu: str) -> dict[str, Any]:
    """The canonical inputs hashed into a target's fingerprint."""
    build = spec.build
    return {
        "schema": FINGERPRINT_SCHEMA,
        "model": model_identity(spec),
        "image": build.image,
        "gpuProduct": gpu,
        "dtype": build.dtype,
        "quantization": _dump(build.quantization),
        "parallelism": {"tensor": build.parallelism.tensor,
                        "pipeline": build.parallelism.pipeline},
        "limits": _dump(build.limits),
        "plugins": _dump(build.plugins),
        "extraArgs": list(build.extra_args),
    }


def fingerprint(spec: LLMEngineSpec, gpu: str) -> str:
    """sha256 hex of :func:`fingerprint_inputs` as canonical JSON."""
    canonical = json.dumps(fingerprint_inputs(spec, gpu), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_slug(spec: LLMEngineSpec) -> str:
    """A short, path-safe, human name of the checkpoint: ``meta-llama-3-8b-instruct``."""
    hf = spec.model.hugging_face
    if hf is not None:
        raw = hf.repo.rsplit("/", 1)[-1]
    else:
        assert spec.model.volume is not None
        raw = spec.model.volume.path.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9.-]+", "-", raw.lower()).strip("-.")
    return slug[:63] or "model"


def job_name(fp: str, spec: LLMEngineSpec) -> str:
    """``trtllm-build-<12 hex>``: from the fingerprint and the storage it publishes into.

    Storage is part of the name because two LLMEngines with identical inputs but different
    claims need two builds (each volume gets its own copy).
    """
    storage = f"{spec.storage.claim_name}\0{spec.storage.path_prefix}"
    return JOB_PREFIX + hashlib.sha256(f"{fp}\0{storage}".encode()).hexdigest()[:12]


def serving_claim(spec: LLMEngineSpec) -> tuple[str, str]:
    """(claim, its spec field) that serving pods mount the target's folder from: the model's
    own volume for a pytorch engine serving a volume-sourced checkpoint where it is (nothing
    is built or copied), else the storage claim (engines, the model cache, exports)."""
    volume = spec.model.volume
    if volume is not None and effective_backend(spec) == "pytorch":
        return volume.claim_name, "spec.model.volume.claimName"
    return spec.storage.claim_name, "spec.storage.claimName"


def plan_target(engine: LLMEngine, gpu: str) -> TargetPlan:
    """Plan the build of ``engine`` for GPU product ``gpu``."""
    spec = engine.spec
    fp = fingerprint(spec, gpu)
    world = spec.build.parallelism.world_size
    path = f"{spec.storage.path_prefix.strip('/')}/{model_slug(spec)}/{gpu}/{fp[:16]}"
    return TargetPlan(gpu=gpu, fingerprint=fp, path=path, job_name=job_name(fp, spec),
                      build_gpus=spec.build.gpus or world, world_size=world)


def extra_args_as_options(args: tuple[str, ...]) -> dict[str, str | bool | list[str]]:
    """``["--strip_plan", "--logits_dtype", "float32"]`` -> ``{"strip_plan": True, ...}``.

    A flag takes the tokens up to the next flag: none makes it a switch, one its value,
    several a list (for flags such as --lora_target_modules). Also accepts ``--flag=value``.
    """
    options: dict[str, str | bool | list[str]] = {}
    name: str | None = None
    values: list[str] = []

    def flush() -> None:
        if name is not None:
            options[name] = True if not values else values[0] if len(values) == 1 else values

    for token in args:
        if token.startswith("--"):
            flush()
            flag, eq, value = token[2:].partition("=")
            name, values = flag, ([value] if eq else [])
        elif name is not None:
            values.append(token)
    flush()
    return options


def build_job_spec(engine: LLMEngine, plan: TargetPlan,
                   gpu_memory_mib: int | None = None,
                   cached_path: str | None = None) -> dict[str, Any]:
    """The build-spec JSON the build-job entrypoint (build-jobs/) reads from TRTLLM_BUILD_SPEC.

    ``gpu_memory_mib`` is the target GPU type's nvidia.com/gpu.memory label (None when unknown):
    the entrypoint refuses, before downloading, a model whose weights cannot fit it. It is not a
    fingerprint input: it does not change the engine's bytes. No secret ever goes in here: the
    Hugging Face token reaches the pod as a secretKeyRef.
    """
    spec = engine.spec
    build = spec.build
    hf = spec.model.hugging_face
    model: dict[str, Any]
    if hf is not None:
        model = {"source": "huggingFace", "repo": hf.repo, "revision": hf.revision or "main"}
        if cached_path is not None:
            # The model cache's entry (engines/model_cache.py): the build reads it in place
            # and never talks to the hub. Not a fingerprint input: same repo and revision.
            model["cachedPath"] = cached_path
    else:
        assert spec.model.volume is not None
        model = {"source": "volume", "path": f"{MODELS_MOUNT}/{spec.model.volume.path}"}
    quant = build.quantization
    quantization = None
    if quant is not None:
        quantization = {"format": quant.format, "kvCacheDtype": quant.kv_cache_dtype,
                        "calibration": _dump(quant.calibration) or None}
    options: dict[str, Any] = dict(_dump(build.plugins) or {})
    options = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in options.items()}
    options |= extra_args_as_options(build.extra_args)
    limits = build.limits
    return {
        "version": 1,
        "fingerprint": plan.fingerprint,
        "gpuProduct": plan.gpu,
        "outputDir": plan.mount_path,
        "workDir": SCRATCH_MOUNT,
        "model": model,
        "modelFamily": None,
        "dtype": build.dtype,
        "quantization": quantization,
        "tensorParallel": build.parallelism.tensor,
        "pipelineParallel": build.parallelism.pipeline,
        "limits": {
            "maxBatchSize": limits.max_batch_size if limits else None,
            "maxInputLen": limits.max_input_len if limits else None,
            "maxSeqLen": limits.max_seq_len if limits else None,
            "maxNumTokens": limits.max_num_tokens if limits else None,
            "maxBeamWidth": limits.max_beam_width if limits else None,
        },
        "buildOptions": options,
        "gpuMemoryMiB": gpu_memory_mib,
    }


# --------------------------------------------------------------------------- quantize (pytorch)

QUANTIZE_JOB_PREFIX: Final = "trtllm-quantize-"


def quantized_path(spec: LLMEngineSpec, commit: str, dataset_path: str | None = None) -> str:
    """The quantized checkpoint's folder inside the storage claim,
    ``quantized/<org>--<name>/<commit>/<format>[-kv<kvdtype>]-cal<key>``: named by the quantize
    job's own parser from the spec this operator writes, so the two cannot disagree. Only for
    a quantized Hugging Face model. ``dataset_path``: see :func:`quantize_job_spec`."""
    output = parse_quantize_spec(quantize_job_spec(spec, commit, dataset_path)).output_dir
    return str(output.relative_to(ENGINES_MOUNT))


def quantize_job_name(spec: LLMEngineSpec, commit: str, dataset_path: str | None = None) -> str:
    """``trtllm-quantize-<12 hex>``: one Job per (model, commit, format, KV dtype, calibration,
    storage), whichever LLMEngines and targets share it; deterministic, so a restarted operator
    finds the Job it started."""
    key = "\0".join((quantized_path(spec, commit, dataset_path), spec.storage.claim_name))
    return QUANTIZE_JOB_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12]


def quantize_job_spec(spec: LLMEngineSpec, commit: str,
                      dataset_path: str | None = None) -> dict[str, Any]:
    """The quantize spec JSON ``python3 -m trtllm_jobs.quantize`` reads from
    TRTLLM_QUANTIZE_SPEC: the cached checkpoint of ``commit`` (the download Job's entry on the
    storage claim), the format, and the calibration samples, always on the claim: the
    LLMEngine's calibration.datasetPath, or ``dataset_path`` (the cache entry of the dataset
    the CPU download Job fetched for calibration.downloadDataset). No calibration named lets
    the job fail with CalibrationDataMissing, which validation refuses before it gets that
    far."""
    hf = spec.model.hugging_face
    quant = spec.build.quantization
    if hf is None or quant is None or quant.format is None:
        raise ValueError("a quantize Job needs a Hugging Face model and "
                         "spec.build.quantization.format")
    calibration: dict[str, Any] | None = None
    calib = quant.calibration
    where = (f"{ENGINES_MOUNT}/{calib.dataset_path}" if calib is not None
             and calib.dataset_path is not None else dataset_path)
    if calib is not None and where is not None:
        calibration = {"datasetPath": where, "size": calib.size,
                       "maxSeqLength": calib.max_seq_length, "batchSize": calib.batch_size,
                       "textField": calib.text_field}
        if calib.files:
            calibration["files"] = list(calib.files)
    root = Path(ENGINES_MOUNT)
    return {
        "version": 1, "kind": "quantize",
        "model": {"repo": hf.repo, "commit": commit,
                  "cachedPath": str(_jobcache.entry_dir(root, hf.repo, commit))},
        "format": quant.format, "kvCacheDtype": quant.kv_cache_dtype,
        "calibration": calibration, "cacheRoot": ENGINES_MOUNT,
    }
