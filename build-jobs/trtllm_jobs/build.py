"""trtllm-operator build job: compile one TensorRT-LLM engine for one GPU type and publish it.

Run as ``python3 -m trtllm_jobs.build`` inside the stock NVIDIA TensorRT-LLM 1.2.x release image
(``nvcr.io/nvidia/tensorrt-llm/release:1.2.x``). The operator mounts the ``trtllm_jobs`` package
from a ConfigMap it owns, so it uses only the standard library; TensorRT-LLM, TensorRT and
huggingface_hub exist only in that image and are looked up lazily.

Contract with the operator (see build-jobs/README.md):

- input: a JSON build spec in env ``TRTLLM_BUILD_SPEC`` (or ``--spec FILE``); a Hugging Face
  token, if any, in env ``HF_TOKEN``. The token is never printed, logged or written: stdout and
  stderr of this process pass through a redactor, and so does every tool's output.
- steps: validate the spec -> cache hit? -> trtllm-build present? -> the GPU the spec names?
  -> resolve the checkpoint (the model cache's manifest, Hugging Face commit and file sizes, or
  a volume folder) -> do its weights fit the GPU's memory? -> enough disk? -> download (hub
  only, never with a cached checkpoint) -> ``convert_checkpoint.py`` or ``quantize.py`` ->
  ``trtllm-build`` into a staging folder -> copy the tokenizer -> ``build-manifest.json`` ->
  fsync -> rename into place.
- output: the engine folder at ``outputDir`` (a folder without a valid manifest is never an
  engine), a JSON summary of at most 4096 bytes in the pod's termination message, and an exit
  code per failure reason (:data:`trtllm_jobs.contract.EXIT_CODES`) so the Job's
  podFailurePolicy can tell a permanent failure from one worth retrying.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, NamedTuple

from . import cache
from . import publish as publish_
from .contract import (
    JobFailure,
    Phase,
    Reason,
    invalid,
    load_spec_text,
)
from .facts import (
    FIT_HEADROOM_BYTES,
    FIT_HEADROOM_FRACTION,
    LIMIT_FLAGS,
    QUANT_FORMAT_MIN_SM,
    QUANT_FORMATS,
    TOKENIZER_FILES,
    WEIGHT_BYTES_FACTOR,
    fit_need_bytes,
)
from .hub import (
    download_hub_model,
    hf_token,
    hub_bytes_at_16_bits,
    kept_files,
    resolve_hub_model,
    weight_bytes,
)
from .publish import (
    clear_aside,
    free_bytes,
    list_files,
    publish,
    remove_tree,
    same_filesystem,
    staging_dir,
    sweep_stale_siblings,
    with_margin,
)
from .redaction import redact
from .reporting import Report, Steps, human_bytes, log, now_iso, run_job, start
from .spec import ENV_BUILD_SPEC, BuildSpec, Quantization, is_commit, parse_spec
from .tools import describe_exit, run_tool, tool_env

MANIFEST_NAME: Final = "build-manifest.json"
MANIFEST_SCHEMA_VERSION: Final = 1
"""Bumped when the manifest's meaning changes; a manifest of another schema is no engine."""
EXAMPLES_DIR_DEFAULT: Final = "/app/tensorrt_llm/examples"
ENV_EXAMPLES_DIR: Final = "TRTLLM_EXAMPLES_DIR"
ENV_SPEC: Final = ENV_BUILD_SPEC

# --------------------------------------------------------------------------- run state


@dataclasses.dataclass
class BuildReport(Report):
    """What the build found out, for the termination message and the manifest."""

    DROPPABLE: ClassVar[tuple[str, ...]] = (
        "fit", "limits", "gpu", "resolvedRevision", "tensorrtVersion", "tensorrtLlmVersion",
        "path", "totalBytes", "engineBytes", "durationSeconds", "checkpointBytes")

    fingerprint: str | None = None
    path: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    tensorrt_llm_version: str | None = None
    tensorrt_version: str | None = None
    resolved_revision: str | None = None
    engine_bytes: int | None = None
    total_bytes: int | None = None
    limits: dict[str, Any] | None = None
    checkpoint_bytes: int | None = None
    """Weight bytes of the checkpoint at 16 bits per parameter (the fit check's input)."""
    fit: dict[str, Any] | None = None
    """The fit check's numbers, see :func:`check_fit`."""

    def take_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Fill in what an already published engine says about itself (cache hits)."""
        gpu = manifest.get("gpu") or {}
        versions = manifest.get("versions") or {}
        self.gpu_name = gpu.get("name")
        self.compute_capability = gpu.get("computeCapability")
        self.tensorrt_llm_version = versions.get("tensorrtLlm")
        self.tensorrt_version = versions.get("tensorrt")
        self.resolved_revision = (manifest.get("model") or {}).get("resolvedRevision")
        self.engine_bytes = manifest.get("engineBytes")
        self.total_bytes = manifest.get("totalBytes")
        self.limits = manifest.get("limits")
        self.checkpoint_bytes = manifest.get("checkpointBytes")
        self.fit = manifest.get("fit")

    def summary(self) -> dict[str, Any]:
        """The termination message's fields (unknown ones left out)."""
        common = self.common()
        fields: dict[str, Any] = {
            "phase": common["phase"],
            "reason": common["reason"],
            "message": common["message"],
            "fingerprint": self.fingerprint,
            "path": self.path,
            "engineBytes": self.engine_bytes,
            "totalBytes": self.total_bytes,
            "durationSeconds": common["durationSeconds"],
            "tensorrtLlmVersion": self.tensorrt_llm_version,
            "tensorrtVersion": self.tensorrt_version,
            "gpu": ({"name": self.gpu_name, "computeCapability": self.compute_capability}
                    if self.gpu_name else None),
            "resolvedRevision": self.resolved_revision,
            "limits": self.limits,
            "checkpointBytes": self.checkpoint_bytes,
            "fit": self.fit,
            "logTail": common["logTail"],
        }
        return {k: v for k, v in fields.items() if v not in (None, "")}


# --------------------------------------------------------------------------- preflight


def require_trtllm_build() -> str:
    """Path of trtllm-build, which NVIDIA removed from TensorRT-LLM releases after 1.2."""
    found = shutil.which("trtllm-build")
    if found is None:
        raise JobFailure(Reason.TRTLLM_BUILD_MISSING,
                           "this image's TensorRT-LLM release has no trtllm-build (removed "
                           "after 1.2); use a 1.2.x release image "
                           "(nvcr.io/nvidia/tensorrt-llm/release:1.2.x) in spec.build.image")
    return found


class Gpu(NamedTuple):
    name: str
    """NVML name, e.g. ``NVIDIA H100 80GB HBM3``."""
    compute_capability: str
    """e.g. ``9.0``."""
    memory_mib: int | None = None
    """Total memory (NVML), None when nvidia-smi does not say (``[N/A]``)."""

    @property
    def product(self) -> str:
        return gfd_product(self.name)

    @property
    def sm(self) -> int | None:
        """Compute capability as an SM number (8.9 -> 89), None if nvidia-smi gave none."""
        match = re.fullmatch(r"(\d+)\.(\d+)", self.compute_capability)
        return int(match[1]) * 10 + int(match[2]) if match else None


def gfd_product(nvml_name: str) -> str:
    """The ``nvidia.com/gpu.product`` label GPU Feature Discovery derives from an NVML name:
    whitespace runs become '-', characters outside [A-Za-z0-9-_.] are dropped."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", "-".join(nvml_name.split()))


def product_matches(actual: str, wanted: str) -> bool:
    """GFD also labels shared GPUs ``<product>-SHARED`` and MIG slices ``<product>-MIG-<profile>``:
    both run the same silicon, so an engine built here loads there."""
    return wanted in (actual, f"{actual}-SHARED") or wanted.startswith(f"{actual}-MIG-")


def probe_gpus() -> list[Gpu]:
    """The GPUs this pod sees, from nvidia-smi."""
    argv = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total",
            "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise JobFailure(Reason.GPU_UNAVAILABLE, "nvidia-smi is not on PATH: this pod sees "
                           "no GPU; check the node's NVIDIA container runtime and device "
                           "plugin") from None
    except subprocess.TimeoutExpired:
        raise JobFailure(Reason.GPU_UNAVAILABLE, "nvidia-smi did not answer within 120s: "
                           "the node's GPU driver is unhealthy") from None
    if done.returncode != 0:
        raise JobFailure(Reason.GPU_UNAVAILABLE, f"nvidia-smi {describe_exit(done.returncode)}:"
                           " the pod has no usable GPU", redact(done.stdout + done.stderr)[-3000:])
    gpus = []
    for line in done.stdout.splitlines():
        if line.strip():
            # The name comes first and is the only field that could hold a comma.
            name, cap, memory = ([f.strip() for f in line.rsplit(",", 2)] + ["", ""])[:3]
            gpus.append(Gpu(name, cap, int(memory) if memory.isdigit() else None))
    if not gpus:
        raise JobFailure(Reason.GPU_UNAVAILABLE, "nvidia-smi lists no GPU: the build pod "
                           "needs nvidia.com/gpu resources")
    return gpus


def check_gpus(spec: BuildSpec, gpus: Sequence[Gpu]) -> None:
    """Refuse to build on another GPU type than the one the engine is for: a TensorRT engine
    only loads on the GPU type it was built on, so a mislabeled node must not publish one."""
    for gpu in gpus:
        if not product_matches(gpu.product, spec.gpu_product):
            raise JobFailure(Reason.GPU_MISMATCH,
                               f"this pod runs on {gpu.name} (nvidia.com/gpu.product="
                               f"{gpu.product}, compute {gpu.compute_capability}) but the engine "
                               f"is for {spec.gpu_product}: check the node's GPU Feature "
                               "Discovery labels and the Job's nodeSelector")
    quant = spec.quantization
    fmt = quant.format if quant else None
    sm = gpus[0].sm
    if fmt is not None and sm is not None and sm < QUANT_FORMAT_MIN_SM[fmt]:
        need = QUANT_FORMAT_MIN_SM[fmt]
        invalid("quantization.format", f"{fmt} needs compute capability {need // 10}."
                f"{need % 10} or newer but {spec.gpu_product} has {gpus[0].compute_capability}:"
                " choose another format or remove this GPU type from the targets")


def examples_dir() -> Path:
    return Path(os.environ.get(ENV_EXAMPLES_DIR) or EXAMPLES_DIR_DEFAULT)


def quantize_script() -> Path:
    script = examples_dir() / "quantization" / "quantize.py"
    if not script.is_file():
        raise JobFailure(Reason.EXAMPLES_NOT_FOUND, f"{script} not found: the image has no "
                           f"TensorRT-LLM examples there (set env {ENV_EXAMPLES_DIR})")
    return script


def converter_script(family: str, field: str) -> Path:
    """examples/models/core/<family>/convert_checkpoint.py, or InvalidSpec listing the
    families this image can convert."""
    core = examples_dir() / "models" / "core"
    script = core / family / "convert_checkpoint.py"
    if script.is_file():
        return script
    if not core.is_dir():
        raise JobFailure(Reason.EXAMPLES_NOT_FOUND, f"{core} not found: the image has no "
                           f"TensorRT-LLM examples there (set env {ENV_EXAMPLES_DIR})")
    known = sorted(p.parent.name for p in core.glob("*/convert_checkpoint.py"))
    invalid(field, f"no converter for model family {family!r} in this image (no {script}); "
                   f"families with a convert_checkpoint.py: {', '.join(known) or 'none'}")


def _dist_version(names: Sequence[str]) -> str | None:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError, ValueError):
            return importlib.metadata.version(name)
    return None


def tensorrt_llm_version() -> str:
    """From the installed package's metadata or its version.py -- never by importing
    tensorrt_llm, which takes long and initializes CUDA."""
    found = _dist_version(("tensorrt_llm", "tensorrt-llm"))
    if found:
        return found
    with contextlib.suppress(ImportError, ValueError, OSError):
        spec = importlib.util.find_spec("tensorrt_llm")
        for location in (spec.submodule_search_locations or []) if spec else []:
            text = (Path(location) / "version.py").read_text()
            match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
            if match:
                return match[1]
    return "unknown"


def tensorrt_version() -> str:
    """From package metadata, else ``tensorrt.__version__`` (a light import)."""
    found = _dist_version(("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-libs"))
    if found:
        return found
    try:
        module = importlib.import_module("tensorrt")
        return str(getattr(module, "__version__", "unknown"))
    except Exception:
        return "unknown"

# --------------------------------------------------------------------------- disk


def check_disk(spec: BuildSpec, download_bytes: int, weight_bytes: int) -> str:
    """Refuse to start when scratch or engine storage cannot hold the build.

    Estimate: the converted checkpoint and the engine are each about the size of the weights
    (twice that when building float32), the download is what the hub lists. Converting first
    and failing an hour later on a full disk is what this avoids.
    """
    converted = weight_bytes * (2 if spec.dtype == "float32" else 1)
    needs = {spec.work_dir: with_margin(download_bytes + converted),
             spec.output_dir: with_margin(converted)}
    if same_filesystem(spec.work_dir, spec.output_dir):
        needs = {spec.work_dir: needs[spec.work_dir] + needs[spec.output_dir] - (1 << 30)}
    for where, need in needs.items():
        free = free_bytes(where)
        if free < need:
            what = "scratch (workDir)" if where == spec.work_dir else "engine storage (outputDir)"
            raise JobFailure(Reason.DISK_FULL,
                               f"{what} at {where} has {human_bytes(free)} free but this build "
                               f"needs about {human_bytes(need)} (weights "
                               f"{human_bytes(weight_bytes)}): give the build pod more scratch "
                               "space or grow the engines volume")
    return ", ".join(f"{w}: {human_bytes(n)} needed, {human_bytes(free_bytes(w))} free"
                     for w, n in needs.items())

# --------------------------------------------------------------------------- memory fit

MAX_SUGGESTED_TENSOR_PARALLEL: Final = 64


def gpu_memory_mib(spec: BuildSpec, gpus: Sequence[Gpu]) -> tuple[int | None, str]:
    """(memory of one GPU in MiB, where that came from): the spec's gpuMemoryMiB (the GPU type's
    nvidia.com/gpu.memory label, which for a MIG slice is the slice's), else the smallest GPU
    nvidia-smi reports, else (None, "")."""
    if spec.gpu_memory_mib is not None:
        return spec.gpu_memory_mib, "spec"
    known = [g.memory_mib for g in gpus if g.memory_mib is not None]
    if gpus and len(known) == len(gpus):
        return min(known), "nvidia-smi"
    return None, ""


def check_fit(spec: BuildSpec, checkpoint_bytes: int, gpus: Sequence[Gpu],
              report: BuildReport) -> str:
    """Refuse (ModelDoesNotFit) a build whose weights cannot fit the GPU memory, before any
    download. The numbers go into the report either way; returns the step's note."""
    memory, source = gpu_memory_mib(spec, gpus)
    if memory is None:
        return "GPU memory unknown (no gpuMemoryMiB, nvidia-smi gave none): not checked"
    gpu_bytes = memory << 20
    need = fit_need_bytes(checkpoint_bytes, spec.weights, spec.world_size)
    report.fit = {"weights": spec.weights, "weightFactor": WEIGHT_BYTES_FACTOR[spec.weights],
                  "worldSize": spec.world_size, "needBytesPerGpu": need,
                  "gpuMemoryBytes": gpu_bytes, "gpuMemorySource": source, "fits": need <= gpu_bytes}
    numbers = (f"{human_bytes(need)} per GPU (checkpoint weights {human_bytes(checkpoint_bytes)}"
               f" at 16 bits x {WEIGHT_BYTES_FACTOR[spec.weights]:g} for {spec.weights} / "
               f"{spec.world_size} GPU(s), + {FIT_HEADROOM_FRACTION:.0%} + "
               f"{human_bytes(FIT_HEADROOM_BYTES)} headroom)")
    where = ("gpuMemoryMiB, the GPU type's nvidia.com/gpu.memory label" if source == "spec"
             else "nvidia-smi")
    if need <= gpu_bytes:
        return f"needs {numbers}; {spec.gpu_product} has {human_bytes(gpu_bytes)} ({where})"
    raise JobFailure(Reason.MODEL_DOES_NOT_FIT,
                       f"{spec.model.describe()} does not fit {spec.gpu_product}: the engine "
                       f"needs at least {numbers} but one GPU has {human_bytes(gpu_bytes)} "
                       f"({where}). Fix: " + "; or ".join(fit_fixes(spec, checkpoint_bytes,
                                                                     gpu_bytes, gpus)))


def fit_fixes(spec: BuildSpec, checkpoint_bytes: int, gpu_bytes: int,
              gpus: Sequence[Gpu]) -> list[str]:
    """What would make the build fit: more tensor parallelism, a smaller weight format this GPU
    runs, a bigger GPU type."""
    fixes = []
    pp = spec.pipeline_parallel
    tp = spec.tensor_parallel * 2
    # A MIG slice is one GPU to a pod: engines of several ranks cannot run on slices.
    while tp <= MAX_SUGGESTED_TENSOR_PARALLEL and "-MIG-" not in spec.gpu_product:
        if fit_need_bytes(checkpoint_bytes, spec.weights, tp * pp) <= gpu_bytes:
            fixes.append(f"spec.build.parallelism.tensor: {tp} ({tp * pp} GPUs per engine)")
            break
        tp *= 2
    sm = gpus[0].sm if gpus else None
    formats = [f for f in QUANT_FORMATS
               if WEIGHT_BYTES_FACTOR[f] < WEIGHT_BYTES_FACTOR[spec.weights]
               and (sm is None or sm >= QUANT_FORMAT_MIN_SM[f])
               and fit_need_bytes(checkpoint_bytes, f, spec.world_size) <= gpu_bytes]
    if formats:
        fixes.append(f"quantize the weights (spec.build.quantization.format: "
                     f"{' or '.join(formats)})")
    need_one = fit_need_bytes(checkpoint_bytes, spec.weights, spec.world_size)
    fixes.append(f"build for a GPU type with at least {human_bytes(need_one)} per GPU")
    return fixes

# --------------------------------------------------------------------------- checkpoint


@dataclasses.dataclass
class Checkpoint:
    """A located checkpoint: its folder (downloaded later for the hub), revision and sizes."""

    folder: Path
    resolved_revision: str | None
    download_bytes: int
    weight_bytes: int
    """Bytes of the weight files as stored (what the disk holds)."""
    checkpoint_bytes: int
    """The weights at 16 bits per parameter: what the fit check's format factors apply to."""
    ignore_patterns: tuple[str, ...] = ()


def locate_checkpoint(spec: BuildSpec) -> Checkpoint:
    """Find the checkpoint (without downloading it) and how big it is."""
    model = spec.model
    if model.cached_path is not None:
        return cached_checkpoint(spec)
    if model.repo is not None:
        assert model.revision is not None
        hub_model = resolve_hub_model(model.repo, model.revision, hf_token())
        ignore, kept = kept_files(hub_model)
        folder = spec.work_dir / "download" / model.repo.replace("/", "--")
        stored = weight_bytes(kept)
        return Checkpoint(folder, hub_model.sha, sum(s for _, s in kept), stored,
                          hub_bytes_at_16_bits(kept, hub_model.parameters), ignore)
    assert model.path is not None
    folder = model.path
    if not folder.is_dir():
        raise JobFailure(Reason.MODEL_NOT_FOUND, f"checkpoint folder {folder} does not exist: "
                           "check spec.model.volume (claim and path)")
    if not (folder / "config.json").is_file():
        raise JobFailure(Reason.MODEL_NOT_FOUND, f"{folder} has no config.json: "
                           "spec.model.volume.path must be a Hugging Face checkpoint folder")
    files = [(p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()]
    stored = weight_bytes(files)
    return Checkpoint(folder, None, 0, stored, stored // stored_bytes_per_16_bit(folder))


def cached_checkpoint(spec: BuildSpec) -> Checkpoint:
    """The model cache entry the spec names (``model.cachedPath``), checked against its
    manifest: nothing is downloaded, and its ``checkpointBytes`` feed the fit check."""
    model = spec.model
    assert model.cached_path is not None
    assert model.repo is not None
    assert model.revision is not None
    folder = model.cached_path
    pinned = model.revision if is_commit(model.revision) else None
    manifest, why = cache.read_entry(folder, model.repo, pinned)
    if manifest is None:
        raise JobFailure(Reason.CACHED_MODEL_INVALID,
                         f"{folder} is not a complete model cache entry of {model.repo}"
                         + (f" at {pinned}" if pinned else "") + f" ({why}): download the "
                         "model into the cache again, or drop model.cachedPath")
    if not (folder / "config.json").is_file():
        raise JobFailure(Reason.MODEL_NOT_FOUND, f"{spec.model.describe()} has no config.json:"
                         " not a Hugging Face transformers checkpoint")
    files = [(str(f["path"]), int(f["bytes"])) for f in manifest["files"]]
    return Checkpoint(folder, str(manifest["commit"]), 0, weight_bytes(files),
                      int(manifest["checkpointBytes"]))


def stored_bytes_per_16_bit(folder: Path) -> int:
    """2 for a float32 checkpoint (config.json ``torch_dtype``, ``dtype`` in newer transformers),
    else 1: checkpoints are published in 16 bits almost always, and guessing low keeps the fit
    check from refusing what could fit."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return 1
    if not isinstance(config, dict):
        return 1
    return 2 if (config.get("torch_dtype") or config.get("dtype")) == "float32" else 1


def model_family(spec: BuildSpec, folder: Path) -> tuple[str, str]:
    """(family, field that named it): the spec's modelFamily, else the checkpoint's model_type."""
    if spec.model_family:
        return spec.model_family, "modelFamily"
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if not isinstance(model_type, str) or not re.fullmatch(r"[a-z0-9_]+", model_type):
        invalid("modelFamily", f"not set, and {folder}/config.json names no usable model_type: "
                               "set modelFamily (e.g. llama)")
    return model_type, f"modelFamily (from config.json model_type {model_type!r})"


def convert_command(spec: BuildSpec, script: Path, model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, str(script), "--model_dir", str(model_dir), "--output_dir", str(out),
            "--dtype", spec.dtype, "--tp_size", str(spec.tensor_parallel),
            "--pp_size", str(spec.pipeline_parallel)]


def quantize_command(spec: BuildSpec, quant: Quantization, script: Path, model_dir: Path,
                     out: Path) -> list[str]:
    """quantize.py arguments; no format means full_prec with only the KV cache quantized."""
    argv = [sys.executable, str(script), "--model_dir", str(model_dir), "--output_dir", str(out),
            "--dtype", spec.dtype, "--qformat", quant.format or "full_prec"]
    if quant.kv_cache_dtype:
        argv += ["--kv_cache_dtype", quant.kv_cache_dtype]
    argv += ["--calib_dataset", quant.dataset, "--calib_size", str(quant.size),
             "--batch_size", str(quant.batch_size),
             "--calib_max_seq_length", str(quant.max_seq_length)]
    return [*argv, "--tp_size", str(spec.tensor_parallel),
            "--pp_size", str(spec.pipeline_parallel)]


def build_command(spec: BuildSpec, trtllm_build: str, checkpoint: Path, out: Path,
                  workers: int) -> list[str]:
    """trtllm-build arguments: limits from the spec, one worker per visible GPU (ranks build in
    parallel), then the validated buildOptions."""
    argv = [trtllm_build, "--checkpoint_dir", str(checkpoint), "--output_dir", str(out)]
    for key, flag in LIMIT_FLAGS.items():
        if key in spec.limits:
            argv += [flag, str(spec.limits[key])]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return argv + list(spec.build_options)


def require_ranks(folder: Path, world_size: int, pattern: str, tool: str, reason: Reason) -> None:
    """A tool that exits 0 without its outputs must not reach the next step (or a publish)."""
    wanted = ["config.json", *(pattern.format(rank=r) for r in range(world_size))]
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        raise JobFailure(reason, f"{tool} exited 0 but {folder} lacks {', '.join(missing[:4])}"
                           f" (expected {world_size} rank(s))")

# --------------------------------------------------------------------------- the engine folder


def read_manifest(folder: Path, fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``folder`` is a complete engine of ``fingerprint``, else (None, why):
    a manifest of this schema and fingerprint, and every file it lists present with its
    recorded size."""
    return publish_.read_manifest(folder, MANIFEST_NAME, MANIFEST_SCHEMA_VERSION,
                                  {"fingerprint": fingerprint})


def copy_tokenizer(model_dir: Path, engine_dir: Path) -> list[str]:
    """Copy the tokenizer files the checkpoint has into the engine folder."""
    copied = []
    for name in TOKENIZER_FILES:
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, engine_dir / name)
            copied.append(name)
    return copied


def engine_limits(engine_dir: Path) -> tuple[dict[str, Any], str | None]:
    """(the limits the engine was built with, the TensorRT-LLM version it records), from the
    engine's config.json: unset spec limits are resolved there (defaults, model maximum)."""
    try:
        config = json.loads((engine_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}, None
    build = config.get("build_config") if isinstance(config, dict) else None
    if not isinstance(build, dict):
        return {}, None
    limits = {key: build.get(flag[2:]) for key, flag in LIMIT_FLAGS.items()}
    version = config.get("version")
    return ({k: v for k, v in limits.items() if isinstance(v, int)},
            version if isinstance(version, str) else None)


def write_manifest(spec: BuildSpec, engine_dir: Path, report: BuildReport, *, gpus: Sequence[Gpu],
                   tokenizer: Sequence[str], commands: Mapping[str, Sequence[str]]) -> dict[str,
                                                                                            Any]:
    """build-manifest.json: what the engine is (every file with size and sha256), what it was
    built from (the spec, the resolved revision) and with what (versions, GPU, node, times)."""
    files = list_files(engine_dir, MANIFEST_NAME)
    ours = set(tokenizer)
    engine_bytes = sum(f["bytes"] for f in files if f["path"] not in ours)
    total = sum(f["bytes"] for f in files)
    model: dict[str, Any] = {"source": spec.model.source}
    if spec.model.repo:
        model |= {"repo": spec.model.repo, "revision": spec.model.revision}
        if spec.model.cached_path is not None:
            model["cachedPath"] = str(spec.model.cached_path)
    else:
        model |= {"path": str(spec.model.path)}
    model["resolvedRevision"] = report.resolved_revision
    manifest: dict[str, Any] = {
        "schemaVersion": MANIFEST_SCHEMA_VERSION,
        "fingerprint": spec.fingerprint,
        "gpuProduct": spec.gpu_product,
        "spec": spec.raw,
        "model": model,
        "versions": {"tensorrtLlm": report.tensorrt_llm_version,
                     "tensorrt": report.tensorrt_version,
                     "python": ".".join(map(str, sys.version_info[:3]))},
        "gpu": {"name": report.gpu_name, "computeCapability": report.compute_capability,
                "count": len(gpus)},
        "node": os.environ.get("NODE_NAME") or None,
        "pod": os.environ.get("POD_NAME") or None,
        "startedAt": report.started_at,
        "finishedAt": now_iso(),
        "durationSeconds": round(time.monotonic() - report.started, 3),
        "steps": dict(report.steps),
        "commands": {k: [Path(a).name if i == 0 else a for i, a in enumerate(v)]
                     for k, v in commands.items()},
        "limits": report.limits,
        "checkpointBytes": report.checkpoint_bytes,
        "fit": report.fit,
        "tokenizerFiles": list(tokenizer),
        "engineBytes": engine_bytes,
        "totalBytes": total,
        "files": files,
    }
    text = redact(json.dumps(manifest, indent=2)) + "\n"
    (engine_dir / MANIFEST_NAME).write_text(text)
    report.engine_bytes, report.total_bytes = engine_bytes, total
    return manifest


# --------------------------------------------------------------------------- the build


def find_cached(spec: BuildSpec, report: BuildReport, steps: Steps) -> bool:
    """True if the engine is already published; otherwise clear the path for a rebuild."""
    with steps.run("cache") as notes:
        manifest, why = read_manifest(spec.output_dir, spec.fingerprint)
        if manifest is not None:
            report.take_manifest(manifest)
            notes.append(f"engine already published at {spec.output_dir}")
            return True
        if os.path.lexists(spec.output_dir):
            clear_aside(spec.output_dir, why)
        sweep_stale_siblings(spec.output_dir)
        notes.append(f"no engine at {spec.output_dir}: building")
        return False


def preflight(spec: BuildSpec, report: BuildReport, steps: Steps) -> tuple[str, list[Gpu]]:
    """Checks that need no download: trtllm-build present, the right GPU, tool versions."""
    with steps.run("preflight") as notes:
        trtllm_build = require_trtllm_build()
        gpus = probe_gpus()
        report.gpu_name, report.compute_capability = gpus[0].name, gpus[0].compute_capability
        check_gpus(spec, gpus)
        if spec.quantization is not None:
            quantize_script()
        elif spec.model_family:
            converter_script(spec.model_family, "modelFamily")
        report.tensorrt_llm_version = tensorrt_llm_version()
        report.tensorrt_version = tensorrt_version()
        notes.append(f"{len(gpus)} x {gpus[0].name} (compute {gpus[0].compute_capability}), "
                     f"TensorRT-LLM {report.tensorrt_llm_version}, "
                     f"TensorRT {report.tensorrt_version}")
    return trtllm_build, gpus


def fetch_checkpoint(spec: BuildSpec, report: BuildReport, steps: Steps,
                     gpus: Sequence[Gpu]) -> Path:
    """Locate the checkpoint, check it fits the GPU and the disk, then download it if it is on
    the hub."""
    with steps.run("resolve") as notes:
        found = locate_checkpoint(spec)
        report.resolved_revision = found.resolved_revision
        report.checkpoint_bytes = found.checkpoint_bytes
        notes.append(f"{spec.model.describe()}"
                     + (f" = commit {found.resolved_revision}" if found.resolved_revision else "")
                     + (f", cached at {spec.model.cached_path}" if spec.model.cached_path
                        else "")
                     + f", weights {human_bytes(found.weight_bytes)}")
    with steps.run("fit") as notes:
        notes.append(check_fit(spec, found.checkpoint_bytes, gpus, report))
    with steps.run("disk") as notes:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        notes.append(check_disk(spec, found.download_bytes, found.weight_bytes))
    if spec.model.repo is None or spec.model.cached_path is not None:
        return found.folder  # a volume or the model cache: read where it is
    assert found.resolved_revision is not None
    with steps.run("download") as notes:
        folder = download_hub_model(spec.model.repo, found.resolved_revision, hf_token(),
                                    found.folder, found.ignore_patterns)
        notes.append(f"{human_bytes(found.download_bytes)} into {folder}")
    if not (folder / "config.json").is_file():
        raise JobFailure(Reason.MODEL_NOT_FOUND, f"{spec.model.describe()} has no config.json:"
                           " not a Hugging Face transformers checkpoint")
    return folder


def checkpoint_dir(spec: BuildSpec) -> Path:
    """Where the TensorRT-LLM checkpoint is converted to, in scratch."""
    return spec.work_dir / f"checkpoint-{spec.fingerprint[:16]}"


def make_checkpoint(spec: BuildSpec, model_dir: Path, steps: Steps) -> tuple[Path, list[str]]:
    """convert_checkpoint.py (unquantized) or quantize.py into a TensorRT-LLM checkpoint."""
    out = checkpoint_dir(spec)
    remove_tree(out)
    quant = spec.quantization
    env = tool_env(keep_secrets=True)  # calibration datasets may be gated
    if quant is not None:
        argv = quantize_command(spec, quant, quantize_script(), model_dir, out)
        name, reason = "quantize", Reason.QUANTIZE_FAILED
        advice = ("check the format is supported for this model, and the pod's memory (the "
                  "whole model is loaded for calibration)")
    else:
        family, field = model_family(spec, model_dir)
        argv = convert_command(spec, converter_script(family, field), model_dir, out)
        name, reason = "convert", Reason.CONVERT_FAILED
        advice = "check modelFamily matches the checkpoint, and the pod's memory"
    with steps.run(name) as notes:
        run_tool(name, argv, cwd=spec.work_dir, env=env, reason=reason, advice=advice)
        require_ranks(out, spec.world_size, "rank{rank}.safetensors", name, reason)
        notes.append(f"checkpoint with {spec.world_size} rank(s) in {out}")
    return out, argv


def build_engine(spec: BuildSpec, trtllm_build: str, checkpoint: Path, staging: Path,
                 gpus: Sequence[Gpu], steps: Steps) -> list[str]:
    """trtllm-build into the staging folder; it must leave config.json and every rank."""
    remove_tree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    argv = build_command(spec, trtllm_build, checkpoint, staging,
                         workers=min(len(gpus), spec.world_size))
    with steps.run("build") as notes:
        run_tool("trtllm-build", argv, cwd=spec.work_dir, env=tool_env(keep_secrets=False),
                 reason=Reason.BUILD_FAILED,
                 advice="see the log tail; check limits and build options against the model and "
                        "the GPU's memory")
        require_ranks(staging, spec.world_size, "rank{rank}.engine", "trtllm-build",
                      Reason.BUILD_FAILED)
        notes.append(f"{spec.world_size} rank engine(s) in {staging.name}")
    return argv


def execute(spec: BuildSpec, report: BuildReport, steps: Steps) -> str:
    """Run every step; returns the phase: Built or CacheHit. Raises JobFailure."""
    log(f"engine {spec.fingerprint[:16]} for {spec.gpu_product}: {spec.model.describe()}, "
        f"dtype {spec.dtype}, tp {spec.tensor_parallel} x pp {spec.pipeline_parallel}"
        + (f", quantization {spec.quantization.format or 'full_prec'}"
           f"/kv {spec.quantization.kv_cache_dtype or '-'}" if spec.quantization else ""))
    if find_cached(spec, report, steps):
        return Phase.CACHE_HIT
    trtllm_build, gpus = preflight(spec, report, steps)
    try:
        return build_and_publish(spec, report, steps, trtllm_build, gpus)
    finally:
        # The pod (and its scratch emptyDir) outlives the build: the Job is kept for its
        # termination message. Free the node's disk now; a volume checkpoint is not ours.
        remove_tree(spec.work_dir / "download")
        remove_tree(checkpoint_dir(spec))


def build_and_publish(spec: BuildSpec, report: BuildReport, steps: Steps, trtllm_build: str,
                      gpus: Sequence[Gpu]) -> str:
    """Checkpoint -> engine in staging -> tokenizer -> manifest -> rename into place."""
    model_dir = fetch_checkpoint(spec, report, steps, gpus)
    checkpoint, convert_argv = make_checkpoint(spec, model_dir, steps)
    staging = staging_dir(spec.output_dir)
    try:
        build_argv = build_engine(spec, trtllm_build, checkpoint, staging, gpus, steps)
        with steps.run("tokenizer") as notes:
            tokenizer = copy_tokenizer(model_dir, staging)
            notes.append(", ".join(tokenizer) or
                         "WARNING: no tokenizer files in the checkpoint; trtllm-serve will "
                         "need --tokenizer")
        report.limits, recorded = engine_limits(staging)
        if report.tensorrt_llm_version == "unknown" and recorded:
            report.tensorrt_llm_version = recorded
        with steps.run("manifest") as notes:
            write_manifest(spec, staging, report, gpus=gpus, tokenizer=tokenizer,
                           commands={"checkpoint": convert_argv, "build": build_argv})
            notes.append(f"{human_bytes(report.total_bytes or 0)} in "
                         f"{len(list(staging.rglob('*')))} files")
        with steps.run("publish") as notes:
            other = publish(staging, spec.output_dir,
                            lambda folder: read_manifest(folder, spec.fingerprint))
            notes.append(f"published at {spec.output_dir}" if other is None else
                         "another build published the same engine first; kept that one")
    finally:
        remove_tree(staging)
    if other is not None:
        report.take_manifest(other)
        return Phase.CACHE_HIT
    return Phase.BUILT



# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m trtllm_jobs.build",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spec", metavar="FILE",
                        help=f"read the build spec from FILE instead of env {ENV_SPEC}")
    args = parser.parse_args(argv)
    start("build")
    report = BuildReport(started_at=now_iso(), started=time.monotonic())
    steps = Steps(report)

    def body() -> None:
        raw = load_spec_text(args.spec, os.environ, ENV_SPEC)
        if isinstance(raw, dict) and isinstance(raw.get("fingerprint"), str):
            report.fingerprint = raw["fingerprint"][:64]  # worth reporting even if invalid
        spec = parse_spec(raw)
        report.fingerprint, report.path = spec.fingerprint, str(spec.output_dir)
        report.phase = execute(spec, report, steps)
        report.message = (f"engine published at {spec.output_dir}" if report.phase == Phase.BUILT
                          else f"engine already published at {spec.output_dir}")

    return run_job("build", report, body, disk_advice="give the build pod more scratch space "
                   "or grow the engines volume")


if __name__ == "__main__":
    sys.exit(main())
