#!/usr/bin/env python3
"""trtllm-operator build job: compile one TensorRT-LLM engine for one GPU type and publish it.

Runs inside the stock NVIDIA TensorRT-LLM 1.2.x release image
(``nvcr.io/nvidia/tensorrt-llm/release:1.2.x``). The operator mounts this file from a ConfigMap
it owns, so it is one self-contained file using only the standard library; TensorRT-LLM,
TensorRT and huggingface_hub exist only in that image and are looked up lazily.

Contract with the operator (see build-jobs/README.md):

- input: a JSON build spec in env ``TRTLLM_BUILD_SPEC`` (or ``--spec FILE``); a Hugging Face
  token, if any, in env ``HF_TOKEN``. The token is never printed, logged or written: stdout and
  stderr of this process pass through a redactor, and so does every tool's output.
- steps: validate the spec -> cache hit? -> trtllm-build present? -> the GPU the spec names?
  -> resolve the checkpoint (Hugging Face commit and file sizes, or a volume folder) -> do its
  weights fit the GPU's memory? -> enough disk? -> download ->
  ``convert_checkpoint.py`` or ``quantize.py`` -> ``trtllm-build`` into a staging folder ->
  copy the tokenizer -> ``build-manifest.json`` -> fsync -> rename into place.
- output: the engine folder at ``outputDir`` (a folder without a valid manifest is never an
  engine), a JSON summary of at most 4096 bytes in the pod's termination message, and an exit
  code per failure reason (:data:`EXIT_CODES`) so the Job's podFailurePolicy can tell a
  permanent failure from one worth retrying.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatch
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Final, NamedTuple, NoReturn, TextIO, cast

# --------------------------------------------------------------------------- contract

SPEC_VERSION: Final = 1
MANIFEST_NAME: Final = "build-manifest.json"
MANIFEST_SCHEMA_VERSION: Final = 1
"""Bumped when the manifest's meaning changes; a manifest of another schema is no engine."""

TERMINATION_LOG_DEFAULT: Final = "/dev/termination-log"
TERMINATION_LIMIT: Final = 4096
"""Kubernetes keeps at most 4096 bytes of a container's termination message."""
EXAMPLES_DIR_DEFAULT: Final = "/app/tensorrt_llm/examples"
LOG_TAIL_LINES: Final = 60
MAX_LINE_CHARS: Final = 2000
STALE_SIBLING_SECONDS: Final = 24 * 3600
"""A staging folder untouched this long belongs to a build pod that died without cleaning up
(the operator's Jobs have a 6 h deadline), so the next build of that engine removes it."""

ENV_SPEC: Final = "TRTLLM_BUILD_SPEC"
ENV_TERMINATION_LOG: Final = "TRTLLM_TERMINATION_LOG"
ENV_EXAMPLES_DIR: Final = "TRTLLM_EXAMPLES_DIR"
ENV_FREE_BYTES: Final = "TRTLLM_BUILD_FREE_BYTES"
"""Testing aid: pretend every filesystem has this many free bytes."""
SECRET_ENV: Final = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

NO_SPACE_MARKERS: Final = ("No space left on device", "ENOSPC")


class Reason(StrEnum):
    """Why a build ended the way it did: the termination message's ``reason``."""

    INVALID_SPEC = "InvalidSpec"
    TRTLLM_BUILD_MISSING = "TrtllmBuildMissing"
    GPU_MISMATCH = "GpuMismatch"
    DISK_FULL = "DiskFull"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_DOES_NOT_FIT = "ModelDoesNotFit"
    GPU_UNAVAILABLE = "GpuUnavailable"
    EXAMPLES_NOT_FOUND = "ExamplesNotFound"
    DOWNLOAD_FAILED = "DownloadFailed"
    CONVERT_FAILED = "ConvertFailed"
    QUANTIZE_FAILED = "QuantizeFailed"
    BUILD_FAILED = "BuildFailed"
    PUBLISH_FAILED = "PublishFailed"
    TERMINATED = "Terminated"
    INTERNAL_ERROR = "InternalError"


EXIT_CODES: Final[Mapping[Reason, int]] = {
    Reason.INVALID_SPEC: 2,
    Reason.TRTLLM_BUILD_MISSING: 3,
    Reason.GPU_MISMATCH: 4,
    Reason.DISK_FULL: 5,
    Reason.MODEL_NOT_FOUND: 6,
    Reason.MODEL_DOES_NOT_FIT: 7,
}
"""The one reason -> exit code map. These six cannot be fixed by retrying the same pod
(the operator fails the Job at once on them); every other failure exits 1; success exits 0."""


def exit_code(reason: Reason | None) -> int:
    """0 for success (no reason), the mapped code for a permanent failure, else 1."""
    if reason is None:
        return 0
    return EXIT_CODES.get(reason, 1)


class BuildFailure(Exception):
    """A failure with a reason, a message saying what to do, and the failing tool's log tail."""

    def __init__(self, reason: Reason, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.log_tail = log_tail


def invalid(field: str, problem: str) -> NoReturn:
    """Refuse the spec, naming the field (a JSON path inside the spec)."""
    raise BuildFailure(Reason.INVALID_SPEC, f"build spec field {field}: {problem}")


# --------------------------------------------------------------------------- TensorRT-LLM facts
# Copied from operator/trtllm_operator/trtllm_facts.py and build-jobs/trtllm_flags_1_2.json
# (this file cannot import the operator's package); tests/unit/test_build_job.py proves the
# copies equal their sources.

DTYPES: Final = ("auto", "float16", "bfloat16", "float32")
QUANT_FORMATS: Final = ("fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "nvfp4")
KV_CACHE_DTYPES: Final = ("fp8", "int8")
QUANT_FORMAT_MIN_SM: Final[Mapping[str, int]] = {
    "fp8": 89,
    "w4a8_awq": 89,
    "nvfp4": 100,
    "int8_sq": 80,
    "int4_awq": 80,
    "int8_wo": 80,
    "int4_wo": 80,
}
CALIBRATION_DEFAULTS: Final[Mapping[str, str | int]] = {
    "dataset": "cnn_dailymail",
    "size": 512,
    "batchSize": 1,
    "maxSeqLength": 512,
}
BUILD_FLAGS_SET_BY_OPERATOR: Final = (
    "--checkpoint_dir",
    "--model_config",
    "--build_config",
    "--output_dir",
    "--workers",
    "--max_batch_size",
    "--max_input_len",
    "--max_seq_len",
    "--max_decoder_seq_len",
    "--max_num_tokens",
    "--max_beam_width",
)
BUILD_OPTIONS_REFUSED: Final[Mapping[str, str]] = {
    "--dry_run": "it makes trtllm-build write no engine",
}
"""Real trtllm-build flags that are not the operator's to set yet make no sense in a build Job."""

WEIGHT_BYTES_FACTOR: Final[Mapping[str, float]] = {
    "auto": 1.0,
    "float16": 1.0,
    "bfloat16": 1.0,
    "float32": 2.0,
    "fp8": 0.5,
    "int8_sq": 0.5,
    "int8_wo": 0.5,
    "int4_awq": 0.2578125,
    "w4a8_awq": 0.2578125,
    "int4_wo": 0.2578125,
    "nvfp4": 0.28125,
}
"""Engine weight bytes per checkpoint byte at 16 bits per parameter, by weight format (the
quantization format, else the dtype). Why these numbers: trtllm_facts.py."""
FIT_HEADROOM_FRACTION: Final = 0.10
FIT_HEADROOM_BYTES: Final = 2 << 30


def fit_need_bytes(checkpoint_bytes: int, weights: str, world_size: int) -> int:
    """GPU memory each of ``world_size`` GPUs needs at least: its share of the weights plus
    headroom (the operator's formula, trtllm_facts.fit_need_bytes)."""
    per_gpu = checkpoint_bytes * WEIGHT_BYTES_FACTOR[weights] / world_size
    return int(per_gpu * (1 + FIT_HEADROOM_FRACTION)) + FIT_HEADROOM_BYTES


class Flag(NamedTuple):
    """One trtllm-build flag: argparse type, choices (a tuple, a note when not enumerated, or
    None), other names, and whether this entrypoint writes it itself."""

    type: str
    choices: tuple[str, ...] | str | None = None
    aliases: tuple[str, ...] = ()
    emitted: bool = False


_PLUGIN_DTYPE: Final = ("auto", "float16", "float32", "bfloat16", "int32", "disable")
_GEMM_PLUGIN_DTYPE: Final = ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4",
                             "disable")
_TOGGLE: Final = ("enable", "disable")
_FP8_OR_DISABLE: Final = ("fp8", "disable")
_LOG_LEVELS: Final = ("internal_error", "error", "warning", "info", "verbose", "debug", "trace")
_SPECULATIVE_MODES: Final = ("draft_tokens_external", "lookahead_decoding", "medusa",
                             "explicit_draft_tokens", "eagle")

TRTLLM_BUILD_FLAGS: Final[Mapping[str, Flag]] = {
    "--checkpoint_dir": Flag("str", None, emitted=True),
    "--model_cls_file": Flag("str"),
    "--model_cls_name": Flag("str"),
    "--output_dir": Flag("str", None, emitted=True),
    "--max_batch_size": Flag("int", None, emitted=True),
    "--max_input_len": Flag("int", None, emitted=True),
    "--max_seq_len": Flag("int", None, aliases=("--max_decoder_seq_len",), emitted=True),
    "--max_beam_width": Flag("int", None, emitted=True),
    "--max_num_tokens": Flag("int", None, emitted=True),
    "--opt_num_tokens": Flag("int"),
    "--max_encoder_input_len": Flag("int"),
    "--max_prompt_embedding_table_size": Flag("int", None, aliases=("--max_multimodal_len",)),
    "--kv_cache_type": Flag("enum KVCacheType", ("continuous", "paged", "disabled")),
    "--paged_kv_cache": Flag("str"),
    "--input_timing_cache": Flag("str"),
    "--output_timing_cache": Flag("str"),
    "--profiling_verbosity": Flag("str", ("layer_names_only", "detailed", "none")),
    "--strip_plan": Flag("flag"),
    "--weight_sparsity": Flag("flag"),
    "--weight_streaming": Flag("flag"),
    "--fast_build": Flag("flag"),
    "--workers": Flag("int", None, emitted=True),
    "--log_level": Flag("str", _LOG_LEVELS),
    "--enable_debug_output": Flag("flag"),
    "--visualize_network": Flag("str"),
    "--monitor_memory": Flag("flag"),
    "--logits_dtype": Flag("str", ("float16", "float32")),
    "--gather_context_logits": Flag("flag"),
    "--gather_generation_logits": Flag("flag"),
    "--gather_all_token_logits": Flag("flag"),
    "--lora_dir": Flag("str nargs+"),
    "--lora_ckpt_source": Flag("str", ("hf", "nemo")),
    "--lora_target_modules": Flag("str nargs+",
                                  "LoraManager.LORA_MODULE_IDS keys (not enumerated)"),
    "--max_lora_rank": Flag("int"),
    "--speculative_decoding_mode": Flag("str", _SPECULATIVE_MODES),
    "--max_draft_len": Flag("int"),
    "--bert_attention_plugin": Flag("str", _PLUGIN_DTYPE),
    "--gpt_attention_plugin": Flag("str", _PLUGIN_DTYPE),
    "--gemm_plugin": Flag("str", _GEMM_PLUGIN_DTYPE),
    "--gemm_swiglu_plugin": Flag("str", _FP8_OR_DISABLE),
    "--fp8_rowwise_gemm_plugin": Flag("str", _PLUGIN_DTYPE),
    "--lora_plugin": Flag("str", _PLUGIN_DTYPE),
    "--dora_plugin": Flag("str", _TOGGLE),
    "--moe_plugin": Flag("str", _PLUGIN_DTYPE),
    "--mamba_conv1d_plugin": Flag("str", _PLUGIN_DTYPE),
    "--nccl_plugin": Flag("str", _PLUGIN_DTYPE),
    "--low_latency_gemm_plugin": Flag("str", _FP8_OR_DISABLE),
    "--low_latency_gemm_swiglu_plugin": Flag("str", _FP8_OR_DISABLE),
    "--gemm_allreduce_plugin": Flag("str", ("float16", "bfloat16", "disable")),
    "--context_fmha": Flag("str", _TOGGLE),
    "--bert_context_fmha_fp32_acc": Flag("str", _TOGGLE),
    "--remove_input_padding": Flag("str", _TOGGLE),
    "--tokens_per_block": Flag("int"),
    "--use_paged_context_fmha": Flag("str", _TOGGLE),
    "--use_fp8_context_fmha": Flag("str", _TOGGLE),
    "--fuse_fp4_quant": Flag("str", _TOGGLE),
    "--multiple_profiles": Flag("str", _TOGGLE),
    "--paged_state": Flag("str", _TOGGLE),
    "--streamingllm": Flag("str", _TOGGLE),
    "--norm_quant_fusion": Flag("str", _TOGGLE),
    "--reduce_fusion": Flag("str", _TOGGLE),
    "--user_buffer": Flag("str", _TOGGLE),
    "--use_fused_mlp": Flag("str", _TOGGLE),
    "--pp_reduce_scatter": Flag("str", _TOGGLE),
}
"""trtllm-build 1.2 flags this entrypoint writes (``emitted``) or accepts in ``buildOptions``:
the ``trtllm_build`` section of trtllm_flags_1_2.json."""

LIMIT_FLAGS: Final[Mapping[str, str]] = {
    "maxBatchSize": "--max_batch_size",
    "maxInputLen": "--max_input_len",
    "maxSeqLen": "--max_seq_len",
    "maxNumTokens": "--max_num_tokens",
    "maxBeamWidth": "--max_beam_width",
}
"""Spec ``limits`` keys and the trtllm-build flags they become (unset = trtllm-build default)."""

TOKENIZER_FILES: Final = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
"""Files trtllm-serve's tokenizer loader reads from the engine folder. trtllm-build writes no
tokenizer, and config.json is deliberately absent: the engine has its own."""

WEIGHT_SUFFIXES: Final = (".safetensors", ".bin", ".pt", ".pth")
HF_SKIPPED_WHEN_SAFETENSORS: Final = ("*.bin", "*.pt", "*.pth")
HF_ALWAYS_SKIPPED: Final = ("original/*", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot")
"""Hub files the converter never reads: Meta's original consolidated weights, TensorFlow, Flax,
ONNX and GGUF exports, and pickled duplicates of safetensors weights. Skipping them roughly
halves the download of a typical Llama repository."""

# --------------------------------------------------------------------------- output hygiene

_secrets: tuple[str, ...] = ()


def set_secrets(environ: Mapping[str, str]) -> None:
    """Remember the values that must never be shown (the Hugging Face token)."""
    global _secrets
    _secrets = tuple(v for k in SECRET_ENV if len(v := environ.get(k, "").strip()) >= 4)


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


class RedactingStream:
    """A text stream that redacts secrets before passing whole lines to ``target``.

    Installed as sys.stdout and sys.stderr so that nothing in this process -- including
    huggingface_hub's own logging and warnings -- can print the token. Output is held until a
    line ends (a token never spans lines), so a token split over two writes is still caught.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r"))
        if cut >= 0:
            self._target.write(redact(self._pending[: cut + 1]))
            self._pending = self._pending[cut + 1:]
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(redact(self._pending))
            self._pending = ""
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def install_redaction() -> None:
    """Route this process's stdout and stderr through :class:`RedactingStream`."""
    if _secrets:
        sys.stdout = cast(TextIO, RedactingStream(sys.stdout))
        sys.stderr = cast(TextIO, RedactingStream(sys.stderr))


def log(message: str) -> None:
    """One human-readable progress line on stdout."""
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"[build-job {stamp}] {redact(message)}", flush=True)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


# --------------------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the checkpoint comes from: a Hugging Face repo at a revision, or a folder."""

    source: str
    repo: str | None = None
    revision: str | None = None
    path: Path | None = None

    def describe(self) -> str:
        return f"{self.repo}@{self.revision}" if self.repo else f"volume {self.path}"


@dataclasses.dataclass(frozen=True)
class Quantization:
    """quantize.py settings: ``format`` None keeps the weights (KV-cache-only quantization)."""

    format: str | None
    kv_cache_dtype: str | None
    dataset: str
    size: int
    batch_size: int
    max_seq_length: int


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """A validated build spec."""

    raw: Mapping[str, Any]
    fingerprint: str
    gpu_product: str
    output_dir: Path
    work_dir: Path
    model: ModelSource
    model_family: str | None
    dtype: str
    quantization: Quantization | None
    tensor_parallel: int
    pipeline_parallel: int
    limits: Mapping[str, int]
    build_options: tuple[str, ...]
    """buildOptions rendered as trtllm-build arguments."""
    gpu_memory_mib: int | None = None
    """Memory of one GPU of the target type (its nvidia.com/gpu.memory label), if known."""

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def weights(self) -> str:
        """The engine's weight format: the quantization format, else the dtype."""
        quant = self.quantization
        return quant.format if quant is not None and quant.format else self.dtype


_FIELDS: Final = frozenset({
    "version", "fingerprint", "gpuProduct", "outputDir", "workDir", "model", "modelFamily",
    "dtype", "quantization", "tensorParallel", "pipelineParallel", "limits", "buildOptions",
    "gpuMemoryMiB",
})


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        invalid(field, f"must be a JSON object, got {json.dumps(value)[:80]}")
    return cast(Mapping[str, Any], value)


def _known_keys(obj: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        prefix = f"{field}." if field else ""
        invalid(prefix + unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _string(obj: Mapping[str, Any], key: str, field: str, *, pattern: str | None = None,
            choices: Sequence[str] | None = None, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        invalid(field, "is required (a non-empty string)" if value is None
                else f"must be a non-empty string, got {json.dumps(value)[:80]}")
    if pattern is not None and not re.fullmatch(pattern, value):
        invalid(field, f"{value!r} does not match {pattern}")
    if choices is not None and value not in choices:
        invalid(field, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _required_string(obj: Mapping[str, Any], key: str, field: str, **kwargs: Any) -> str:
    value = _string(obj, key, field, **kwargs)
    assert value is not None
    return value


def _positive_int(value: Any, field: str, *, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        invalid(field, f"must be an integer >= 1, got {json.dumps(value)[:80]}")
    return value


def _absolute_path(obj: Mapping[str, Any], key: str, field: str) -> Path:
    value = _required_string(obj, key, field)
    path = Path(value)
    if not path.is_absolute() or ".." in path.parts or path == Path("/"):
        invalid(field, f"must be an absolute path without '..' (not /), got {value!r}")
    return path


def parse_model(value: Any) -> ModelSource:
    """``model``: ``{"source": "huggingFace", "repo", "revision"}`` or ``{"source": "volume",
    "path"}``."""
    obj = _object(value, "model")
    source = _required_string(obj, "source", "model.source", choices=("huggingFace", "volume"))
    if source == "huggingFace":
        _known_keys(obj, ("source", "repo", "revision"), "model")
        repo = _required_string(obj, "repo", "model.repo",
                                pattern=r"([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9][-A-Za-z0-9_.]*")
        revision = _string(obj, "revision", "model.revision", pattern=r"\S+", optional=True)
        return ModelSource(source, repo=repo, revision=revision or "main")
    _known_keys(obj, ("source", "path"), "model")
    return ModelSource(source, path=_absolute_path(obj, "path", "model.path"))


def parse_quantization(value: Any) -> Quantization | None:
    """``quantization``: null, or format / kvCacheDtype / calibration (defaults filled in)."""
    if value is None:
        return None
    obj = _object(value, "quantization")
    _known_keys(obj, ("format", "kvCacheDtype", "calibration"), "quantization")
    fmt = _string(obj, "format", "quantization.format", choices=QUANT_FORMATS, optional=True)
    kv = _string(obj, "kvCacheDtype", "quantization.kvCacheDtype", choices=KV_CACHE_DTYPES,
                 optional=True)
    if fmt is None and kv is None:
        invalid("quantization", "set format or kvCacheDtype, or make quantization null to "
                                "build unquantized")
    calib = _object(obj.get("calibration") or {}, "quantization.calibration")
    _known_keys(calib, CALIBRATION_DEFAULTS, "quantization.calibration")
    dataset = _string(calib, "dataset", "quantization.calibration.dataset", optional=True)
    ints = {key: _positive_int(calib.get(key), f"quantization.calibration.{key}",
                               default=int(CALIBRATION_DEFAULTS[key]))
            for key in ("size", "batchSize", "maxSeqLength")}
    return Quantization(fmt, kv, dataset or str(CALIBRATION_DEFAULTS["dataset"]),
                        ints["size"], ints["batchSize"], ints["maxSeqLength"])


def parse_limits(value: Any) -> dict[str, int]:
    """``limits``: each key optional; null or absent keeps trtllm-build's default."""
    obj = _object(value if value is not None else {}, "limits")
    _known_keys(obj, LIMIT_FLAGS, "limits")
    return {key: _positive_int(obj[key], f"limits.{key}")
            for key in LIMIT_FLAGS if obj.get(key) is not None}


def _flag_names() -> dict[str, str]:
    """Every accepted trtllm-build name (aliases included) -> its canonical flag."""
    names = {name: name for name in TRTLLM_BUILD_FLAGS}
    for name, flag in TRTLLM_BUILD_FLAGS.items():
        names.update(dict.fromkeys(flag.aliases, name))
    return names


def render_build_option(name: str, value: Any) -> list[str]:
    """One ``buildOptions`` entry as trtllm-build arguments, checked against the flag table.

    Refused: names that are not trtllm-build 1.2 flags, flags this entrypoint writes from typed
    fields (output dir, limits, ...), and a few that cannot work in a build Job. A switch takes
    a boolean (true = present); other flags take a string (int flags also an integer), checked
    against the flag's choices.
    """
    field = f"buildOptions.{name}"
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        invalid(field, "an option is a trtllm-build flag name without the leading '--', "
                       "e.g. gemm_plugin")
    flag = f"--{name}"
    canonical = _flag_names().get(flag)
    if flag in BUILD_FLAGS_SET_BY_OPERATOR or (canonical and TRTLLM_BUILD_FLAGS[canonical].emitted):
        invalid(field, f"{flag} is set by the operator (from outputDir, limits and parallelism); "
                       "remove it from the build options")
    if flag in BUILD_OPTIONS_REFUSED:
        invalid(field, f"{flag} is refused: {BUILD_OPTIONS_REFUSED[flag]}")
    if canonical is None:
        invalid(field, f"{flag} is not a trtllm-build flag of TensorRT-LLM 1.2")
    spec = TRTLLM_BUILD_FLAGS[canonical]
    if spec.type == "flag":
        if not isinstance(value, bool):
            invalid(field, f"{flag} is a switch: give true (set) or false (unset)")
        return [flag] if value else []
    if isinstance(value, bool) or value is None:
        invalid(field, f"{flag} takes a value, not {json.dumps(value)}")
    values = value if spec.type.endswith("nargs+") and isinstance(value, list) else [value]
    return [flag, *(_flag_value(flag, spec, v, field) for v in values)]


def _flag_value(flag: str, spec: Flag, value: Any, field: str) -> str:
    if spec.type == "int":
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            invalid(field, f"{flag} takes an integer, got {json.dumps(value)[:80]}")
        return str(value)
    if not isinstance(value, str | int) or isinstance(value, bool):
        invalid(field, f"{flag} takes a string, got {json.dumps(value)[:80]}")
    text = str(value)
    if isinstance(spec.choices, tuple) and text not in spec.choices:
        invalid(field, f"{text!r} is not a valid {flag}; choices: {', '.join(spec.choices)}")
    return text


def parse_spec(raw: Any) -> BuildSpec:
    """Validate the whole spec; the first problem found is reported with its field."""
    obj = _object(raw, "(spec)")
    _known_keys(obj, _FIELDS, "")
    version = obj.get("version")
    if version != SPEC_VERSION:
        invalid("version", f"this entrypoint reads spec version {SPEC_VERSION}, got "
                           f"{json.dumps(version)}: the operator and the entrypoint differ")
    options = _object(obj.get("buildOptions") or {}, "buildOptions")
    rendered: list[str] = []
    for name, value in options.items():
        rendered += render_build_option(name, value)
    return BuildSpec(
        raw=obj,
        fingerprint=_required_string(obj, "fingerprint", "fingerprint", pattern=r"[0-9a-f]{64}"),
        gpu_product=_required_string(obj, "gpuProduct", "gpuProduct", pattern=r"[A-Za-z0-9_.-]+"),
        output_dir=_absolute_path(obj, "outputDir", "outputDir"),
        work_dir=_absolute_path(obj, "workDir", "workDir"),
        model=parse_model(obj.get("model")),
        model_family=_string(obj, "modelFamily", "modelFamily", pattern=r"[a-z0-9_]+",
                             optional=True),
        dtype=_string(obj, "dtype", "dtype", choices=DTYPES, optional=True) or "auto",
        quantization=parse_quantization(obj.get("quantization")),
        tensor_parallel=_positive_int(obj.get("tensorParallel"), "tensorParallel", default=1),
        pipeline_parallel=_positive_int(obj.get("pipelineParallel"), "pipelineParallel",
                                        default=1),
        limits=parse_limits(obj.get("limits")),
        build_options=tuple(rendered),
        gpu_memory_mib=(None if obj.get("gpuMemoryMiB") is None
                        else _positive_int(obj["gpuMemoryMiB"], "gpuMemoryMiB")),
    )


def load_spec_text(spec_file: str | None, environ: Mapping[str, str]) -> Any:
    """The spec as JSON data: from ``--spec FILE`` if given, else from env TRTLLM_BUILD_SPEC."""
    if spec_file:
        try:
            text = Path(spec_file).read_text()
        except OSError as exc:
            invalid("(spec)", f"cannot read --spec {spec_file}: {exc.strerror}")
        where = spec_file
    else:
        text = environ.get(ENV_SPEC, "")
        where = f"env {ENV_SPEC}"
        if not text.strip():
            invalid("(spec)", f"no build spec: set env {ENV_SPEC} or pass --spec FILE")
    try:
        return json.loads(text)
    except ValueError as exc:
        invalid("(spec)", f"{where} is not valid JSON: {exc}")


# --------------------------------------------------------------------------- run state


@dataclasses.dataclass
class Report:
    """What the run found out, for the termination message and the manifest."""

    started_at: str
    started: float
    fingerprint: str | None = None
    path: str | None = None
    phase: str = "Failed"
    reason: Reason | None = None
    message: str = ""
    log_tail: str = ""
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
    steps: dict[str, float] = dataclasses.field(default_factory=dict)

    def fail(self, failure: BuildFailure) -> None:
        self.phase = "Failed"
        self.reason = failure.reason
        self.message = failure.message
        self.log_tail = failure.log_tail

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
        fields: dict[str, Any] = {
            "phase": self.phase,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
            "fingerprint": self.fingerprint,
            "path": self.path,
            "engineBytes": self.engine_bytes,
            "totalBytes": self.total_bytes,
            "durationSeconds": round(time.monotonic() - self.started, 3),
            "tensorrtLlmVersion": self.tensorrt_llm_version,
            "tensorrtVersion": self.tensorrt_version,
            "gpu": ({"name": self.gpu_name, "computeCapability": self.compute_capability}
                    if self.gpu_name else None),
            "resolvedRevision": self.resolved_revision,
            "limits": self.limits,
            "checkpointBytes": self.checkpoint_bytes,
            "fit": self.fit,
            "logTail": self.log_tail,
        }
        return {k: v for k, v in fields.items() if v not in (None, "")}


class Steps:
    """Times each step and logs one line per step when it ends."""

    def __init__(self, report: Report) -> None:
        self.report = report

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[list[str]]:
        """``with steps.run("convert") as notes: notes.append("...")``: the notes end up on the
        step's log line."""
        notes: list[str] = []
        start = time.monotonic()
        try:
            yield notes
        except BaseException:
            seconds = time.monotonic() - start
            self.report.steps[name] = round(seconds, 3)
            log(f"step {name}: FAILED after {seconds:.1f}s")
            raise
        seconds = time.monotonic() - start
        self.report.steps[name] = round(seconds, 3)
        detail = f" -- {'; '.join(notes)}" if notes else ""
        log(f"step {name}: done in {seconds:.1f}s{detail}")


# --------------------------------------------------------------------------- external tools


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = (" -- usually the kernel's out-of-memory killer: give the build pod more memory"
                if name == "SIGKILL" else "")
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def _stop(proc: subprocess.Popen[str]) -> None:
    """End a tool's whole process group (it may have started workers), politely first."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tool_env(*, keep_secrets: bool) -> dict[str, str]:
    """The environment for a tool: the token only for tools that may fetch gated data."""
    env = dict(os.environ)
    env.pop(ENV_SPEC, None)
    if not keep_secrets:
        for key in SECRET_ENV:
            env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_tool(label: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
             reason: Reason, advice: str) -> None:
    """Run one tool, echoing its output line by line (redacted) and keeping the last lines.

    A failure raises ``reason`` with those lines as the log tail, except that running out of
    disk space -- whichever tool hit it -- is always DiskFull.
    """
    log(f"{label}: {shlex.join(argv)}")
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace", start_new_session=True)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip("\n"))[:MAX_LINE_CHARS]
            tail.append(line)
            print(f"  [{label}] {line}", flush=True)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            _stop(proc)
    if returncode != 0:
        text = "\n".join(tail)
        if any(marker in text for marker in NO_SPACE_MARKERS):
            raise BuildFailure(Reason.DISK_FULL, f"{label} ran out of disk space: give the "
                               "build pod more scratch space or grow the engines volume", text)
        raise BuildFailure(reason, f"{label} {_describe_exit(returncode)}: {advice}", text)


# --------------------------------------------------------------------------- preflight


def require_trtllm_build() -> str:
    """Path of trtllm-build, which NVIDIA removed from TensorRT-LLM releases after 1.2."""
    found = shutil.which("trtllm-build")
    if found is None:
        raise BuildFailure(Reason.TRTLLM_BUILD_MISSING,
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
        raise BuildFailure(Reason.GPU_UNAVAILABLE, "nvidia-smi is not on PATH: this pod sees "
                           "no GPU; check the node's NVIDIA container runtime and device "
                           "plugin") from None
    except subprocess.TimeoutExpired:
        raise BuildFailure(Reason.GPU_UNAVAILABLE, "nvidia-smi did not answer within 120s: "
                           "the node's GPU driver is unhealthy") from None
    if done.returncode != 0:
        raise BuildFailure(Reason.GPU_UNAVAILABLE, f"nvidia-smi {_describe_exit(done.returncode)}:"
                           " the pod has no usable GPU", redact(done.stdout + done.stderr)[-3000:])
    gpus = []
    for line in done.stdout.splitlines():
        if line.strip():
            # The name comes first and is the only field that could hold a comma.
            name, cap, memory = ([f.strip() for f in line.rsplit(",", 2)] + ["", ""])[:3]
            gpus.append(Gpu(name, cap, int(memory) if memory.isdigit() else None))
    if not gpus:
        raise BuildFailure(Reason.GPU_UNAVAILABLE, "nvidia-smi lists no GPU: the build pod "
                           "needs nvidia.com/gpu resources")
    return gpus


def check_gpus(spec: BuildSpec, gpus: Sequence[Gpu]) -> None:
    """Refuse to build on another GPU type than the one the engine is for: a TensorRT engine
    only loads on the GPU type it was built on, so a mislabeled node must not publish one."""
    for gpu in gpus:
        if not product_matches(gpu.product, spec.gpu_product):
            raise BuildFailure(Reason.GPU_MISMATCH,
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
        raise BuildFailure(Reason.EXAMPLES_NOT_FOUND, f"{script} not found: the image has no "
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
        raise BuildFailure(Reason.EXAMPLES_NOT_FOUND, f"{core} not found: the image has no "
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


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    override = os.environ.get(ENV_FREE_BYTES)
    if override:
        return int(override)
    return shutil.disk_usage(_existing(path)).free


def _need(n: int) -> int:
    """A safety margin on an estimate: 10% plus 1 GiB."""
    return int(n * 1.1) + (1 << 30)


def check_disk(spec: BuildSpec, download_bytes: int, weight_bytes: int) -> str:
    """Refuse to start when scratch or engine storage cannot hold the build.

    Estimate: the converted checkpoint and the engine are each about the size of the weights
    (twice that when building float32), the download is what the hub lists. Converting first
    and failing an hour later on a full disk is what this avoids.
    """
    converted = weight_bytes * (2 if spec.dtype == "float32" else 1)
    needs = {spec.work_dir: _need(download_bytes + converted), spec.output_dir: _need(converted)}
    work_dev = os.stat(_existing(spec.work_dir)).st_dev
    out_dev = os.stat(_existing(spec.output_dir)).st_dev
    if work_dev == out_dev:
        needs = {spec.work_dir: needs[spec.work_dir] + needs[spec.output_dir] - (1 << 30)}
    for where, need in needs.items():
        free = free_bytes(where)
        if free < need:
            what = "scratch (workDir)" if where == spec.work_dir else "engine storage (outputDir)"
            raise BuildFailure(Reason.DISK_FULL,
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
              report: Report) -> str:
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
    raise BuildFailure(Reason.MODEL_DOES_NOT_FIT,
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


def weight_bytes(files: Iterable[tuple[str, int]]) -> int:
    """Bytes of the weights the converter reads: safetensors when present, else pickles."""
    weights = [(n, s) for n, s in files if n.endswith(WEIGHT_SUFFIXES)]
    safetensors = [(n, s) for n, s in weights if n.endswith(".safetensors")]
    return sum(s for _, s in (safetensors or weights))


def hub_bytes_at_16_bits(files: Sequence[tuple[str, int]], parameters: int | None) -> int:
    """A hub checkpoint's weights at 16 bits per parameter, before anything is downloaded: 2 x
    the parameter count when the hub reports one; else the safetensors' bytes (published in 16
    bits almost always); else half the pickles' bytes, since those are often float32 (gpt2-era
    repositories) and the fit check must not refuse what could fit."""
    if parameters:
        return 2 * parameters
    stored = weight_bytes(files)
    return stored if any(n.endswith(".safetensors") for n, _ in files) else stored // 2


def hub_ignore_patterns(filenames: Iterable[str]) -> tuple[str, ...]:
    names = list(filenames)
    if any(n.endswith(".safetensors") and not n.startswith("original/") for n in names):
        return HF_ALWAYS_SKIPPED + HF_SKIPPED_WHEN_SAFETENSORS
    return HF_ALWAYS_SKIPPED


def hub() -> ModuleType:
    """huggingface_hub, imported only when a checkpoint comes from the hub."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError as exc:
        raise BuildFailure(Reason.DOWNLOAD_FAILED, f"huggingface_hub is not importable in this "
                           f"image ({exc}): use a TensorRT-LLM release image, or put the "
                           "checkpoint on a volume (spec.model.volume)") from None


def _hub_failure(exc: Exception, repo: str, revision: str) -> BuildFailure:
    """Map huggingface_hub's errors (by class name: its module layout moves between releases)
    to a reason: a missing or forbidden repo or revision cannot be fixed by retrying."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = redact(f"{type(exc).__name__}: {exc}")[:1500]
    if "GatedRepoError" in names:
        return BuildFailure(Reason.MODEL_NOT_FOUND, f"{repo} is gated: the token in "
                            "spec.model.huggingFace.tokenSecretRef must belong to an account "
                            "that accepted the model's license on huggingface.co", detail)
    if "RevisionNotFoundError" in names:
        return BuildFailure(Reason.MODEL_NOT_FOUND, f"revision {revision!r} does not exist in "
                            f"{repo}: fix spec.model.huggingFace.revision", detail)
    if "RepositoryNotFoundError" in names:
        return BuildFailure(Reason.MODEL_NOT_FOUND, f"{repo} does not exist on the Hugging Face "
                            "Hub or is private: fix spec.model.huggingFace.repo, or set "
                            "tokenSecretRef to a token that can read it", detail)
    return BuildFailure(Reason.DOWNLOAD_FAILED, f"could not reach the Hugging Face Hub for "
                        f"{repo}: a network or hub problem; the Job retries once", detail)


def hf_token() -> str | None:
    for key in SECRET_ENV:
        if os.environ.get(key, "").strip():
            return os.environ[key].strip()
    return None


class HubModel(NamedTuple):
    sha: str
    """The commit ``revision`` resolved to: pinning it makes the download consistent even if the
    branch moves meanwhile, and the manifest records it."""
    files: list[tuple[str, int]]
    """(file, bytes) of every file in the repository at that commit."""
    parameters: int | None
    """Parameter count of the safetensors weights, when the hub reports it."""


def resolve_hub_model(repo: str, revision: str, token: str | None) -> HubModel:
    """Pin ``revision`` to a commit and list the files, without downloading anything."""
    api = hub().HfApi()
    try:
        info = api.model_info(repo, revision=revision, token=token, files_metadata=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise _hub_failure(exc, repo, revision) from None
    except Exception as exc:
        raise _hub_failure(exc, repo, revision) from None
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not sha:
        raise BuildFailure(Reason.DOWNLOAD_FAILED, f"the hub returned no commit for "
                           f"{repo}@{revision}")
    files = [(str(s.rfilename), int(getattr(s, "size", None) or 0))
             for s in (getattr(info, "siblings", None) or [])]
    # ModelInfo.safetensors.parameters: {"BF16": 8030261248, ...}, counted by the hub from the
    # safetensors headers; absent for repositories without safetensors weights.
    counts = getattr(getattr(info, "safetensors", None), "parameters", None)
    parameters = None
    if isinstance(counts, dict) and all(isinstance(n, int) for n in counts.values()):
        parameters = sum(counts.values()) or None
    return HubModel(sha, files, parameters)


def download_hub_model(repo: str, sha: str, token: str | None, dest: Path,
                       ignore: Sequence[str]) -> Path:
    """Download ``repo`` at commit ``sha`` into ``dest`` (scratch)."""
    try:
        folder = hub().snapshot_download(repo_id=repo, revision=sha, token=token,
                                         local_dir=str(dest), ignore_patterns=list(ignore))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise _hub_failure(exc, repo, sha) from None
    except Exception as exc:
        raise _hub_failure(exc, repo, sha) from None
    return Path(folder)


def locate_checkpoint(spec: BuildSpec) -> Checkpoint:
    """Find the checkpoint (without downloading it) and how big it is."""
    model = spec.model
    if model.repo is not None:
        assert model.revision is not None
        hub_model = resolve_hub_model(model.repo, model.revision, hf_token())
        ignore = hub_ignore_patterns(n for n, _ in hub_model.files)
        kept = [(n, s) for n, s in hub_model.files if not any(fnmatch(n, p) for p in ignore)]
        folder = spec.work_dir / "download" / model.repo.replace("/", "--")
        stored = weight_bytes(kept)
        return Checkpoint(folder, hub_model.sha, sum(s for _, s in kept), stored,
                          hub_bytes_at_16_bits(kept, hub_model.parameters), ignore)
    assert model.path is not None
    folder = model.path
    if not folder.is_dir():
        raise BuildFailure(Reason.MODEL_NOT_FOUND, f"checkpoint folder {folder} does not exist: "
                           "check spec.model.volume (claim and path)")
    if not (folder / "config.json").is_file():
        raise BuildFailure(Reason.MODEL_NOT_FOUND, f"{folder} has no config.json: "
                           "spec.model.volume.path must be a Hugging Face checkpoint folder")
    files = [(p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()]
    stored = weight_bytes(files)
    return Checkpoint(folder, None, 0, stored, stored // stored_bytes_per_16_bit(folder))


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
        raise BuildFailure(reason, f"{tool} exited 0 but {folder} lacks {', '.join(missing[:4])}"
                           f" (expected {world_size} rank(s))")


# --------------------------------------------------------------------------- the engine folder


def read_manifest(folder: Path, fingerprint: str) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``folder`` is a complete engine of ``fingerprint``, else (None, why).

    Complete means: a manifest of this schema and fingerprint, and every file it lists present
    with its recorded size. Checksums are not re-read: a cache hit must stay fast, and a
    published folder is only ever written by a rename of a finished staging folder.
    """
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return None, f"no {MANIFEST_NAME}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable {MANIFEST_NAME} ({exc})"
    if not isinstance(manifest, dict):
        return None, f"{MANIFEST_NAME} is not an object"
    if manifest.get("schemaVersion") != MANIFEST_SCHEMA_VERSION:
        return None, f"manifest schemaVersion {manifest.get('schemaVersion')!r}"
    if manifest.get("fingerprint") != fingerprint:
        return None, "manifest of another fingerprint"
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        return None, "manifest lists no files"
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            return None, f"manifest has a bad file entry {entry!r}"
        try:
            size = (folder / rel).stat().st_size
        except OSError:
            return None, f"{rel} is missing"
        if size != entry.get("bytes"):
            return None, f"{rel} has {size} bytes, the manifest says {entry.get('bytes')}"
    return manifest, ""


def _aside(path: Path, tag: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return path.with_name(f"{path.name}.{tag}-{stamp}-{secrets.token_hex(3)}")


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or folder; a leftover is not worth failing a build over."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def clear_non_engine(folder: Path, why: str) -> None:
    """Take a folder that is not a valid engine out of the way: renamed first (one atomic step,
    so no reader sees it at the engine path any longer), then deleted."""
    aside = _aside(folder, "stale")
    log(f"{folder} is not a valid engine ({why}): moving it to {aside.name} and removing it")
    os.rename(folder, aside)
    remove_tree(aside)


def sweep_stale_siblings(output_dir: Path) -> None:
    """Remove staging/stale folders of this engine left by pods that died without cleanup."""
    parent = output_dir.parent
    if not parent.is_dir():
        return
    cutoff = time.time() - STALE_SIBLING_SECONDS
    for pattern in (f"{output_dir.name}.staging-*", f"{output_dir.name}.stale-*"):
        for path in parent.glob(pattern):
            with contextlib.suppress(OSError):
                newest = max([path.lstat().st_mtime,
                              *(p.lstat().st_mtime for p in path.iterdir())]
                             if path.is_dir() else [path.lstat().st_mtime])
                if newest < cutoff:
                    log(f"removing {path.name}: left by a build that ended without cleanup")
                    remove_tree(path)


def staging_dir(output_dir: Path) -> Path:
    """``<outputDir>.staging-<pod name or random>``: beside the engine folder, hence on the same
    filesystem, so publishing is one rename."""
    pod = re.sub(r"[^A-Za-z0-9_.-]", "", os.environ.get("POD_NAME", ""))[:63]
    return output_dir.with_name(f"{output_dir.name}.staging-{pod or secrets.token_hex(4)}")


def copy_tokenizer(model_dir: Path, engine_dir: Path) -> list[str]:
    """Copy the tokenizer files the checkpoint has into the engine folder."""
    copied = []
    for name in TOKENIZER_FILES:
        source = model_dir / name
        if source.is_file():
            shutil.copyfile(source, engine_dir / name)
            copied.append(name)
    return copied


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` but the manifest: relative path, size, sha256."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST_NAME:
            entries.append({"path": rel, "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
    return entries


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


def write_manifest(spec: BuildSpec, engine_dir: Path, report: Report, *, gpus: Sequence[Gpu],
                   tokenizer: Sequence[str], commands: Mapping[str, Sequence[str]]) -> dict[str,
                                                                                            Any]:
    """build-manifest.json: what the engine is (every file with size and sha256), what it was
    built from (the spec, the resolved revision) and with what (versions, GPU, node, times)."""
    files = list_files(engine_dir)
    ours = set(tokenizer)
    engine_bytes = sum(f["bytes"] for f in files if f["path"] not in ours)
    total = sum(f["bytes"] for f in files)
    model: dict[str, Any] = {"source": spec.model.source}
    if spec.model.repo:
        model |= {"repo": spec.model.repo, "revision": spec.model.revision}
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


def _fsync_path(path: Path, *, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (NFS among them) refuse fsync on a directory; file data is what
        # matters, and those errors are surfaced.
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file, then every folder bottom-up, before the rename makes them visible."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync_path(Path(root) / name, directory=False)
        for name in dirs:
            _fsync_path(Path(root) / name, directory=True)
    _fsync_path(folder, directory=True)


def publish(staging: Path, output_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """Rename the finished staging folder to the engine path.

    Returns None when published, or the manifest of an engine another build published at the
    same path meanwhile (then ours is discarded: same fingerprint, same engine). Whatever else
    is at the path is no engine and is moved out of the way.
    """
    fsync_tree(staging)
    for attempt in range(3):
        existing, why = read_manifest(output_dir, fingerprint)
        if existing is not None:
            remove_tree(staging)
            return existing
        if os.path.lexists(output_dir):
            clear_non_engine(output_dir, why)
        try:
            os.rename(staging, output_dir)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and attempt < 2:
                continue  # another build renamed first; look again
            raise
        with contextlib.suppress(OSError):
            _fsync_path(output_dir.parent, directory=True)
        return None
    raise BuildFailure(Reason.PUBLISH_FAILED, f"could not rename {staging} to {output_dir}")


# --------------------------------------------------------------------------- the build


def find_cached(spec: BuildSpec, report: Report, steps: Steps) -> bool:
    """True if the engine is already published; otherwise clear the path for a rebuild."""
    with steps.run("cache") as notes:
        manifest, why = read_manifest(spec.output_dir, spec.fingerprint)
        if manifest is not None:
            report.take_manifest(manifest)
            notes.append(f"engine already published at {spec.output_dir}")
            return True
        if os.path.lexists(spec.output_dir):
            clear_non_engine(spec.output_dir, why)
        sweep_stale_siblings(spec.output_dir)
        notes.append(f"no engine at {spec.output_dir}: building")
        return False


def preflight(spec: BuildSpec, report: Report, steps: Steps) -> tuple[str, list[Gpu]]:
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


def fetch_checkpoint(spec: BuildSpec, report: Report, steps: Steps,
                     gpus: Sequence[Gpu]) -> Path:
    """Locate the checkpoint, check it fits the GPU and the disk, then download it if it is on
    the hub."""
    with steps.run("resolve") as notes:
        found = locate_checkpoint(spec)
        report.resolved_revision = found.resolved_revision
        report.checkpoint_bytes = found.checkpoint_bytes
        notes.append(f"{spec.model.describe()}"
                     + (f" = commit {found.resolved_revision}" if found.resolved_revision else "")
                     + f", weights {human_bytes(found.weight_bytes)}")
    with steps.run("fit") as notes:
        notes.append(check_fit(spec, found.checkpoint_bytes, gpus, report))
    with steps.run("disk") as notes:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        notes.append(check_disk(spec, found.download_bytes, found.weight_bytes))
    if spec.model.repo is None:
        return found.folder
    assert found.resolved_revision is not None
    with steps.run("download") as notes:
        folder = download_hub_model(spec.model.repo, found.resolved_revision, hf_token(),
                                    found.folder, found.ignore_patterns)
        notes.append(f"{human_bytes(found.download_bytes)} into {folder}")
    if not (folder / "config.json").is_file():
        raise BuildFailure(Reason.MODEL_NOT_FOUND, f"{spec.model.describe()} has no config.json:"
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


def execute(spec: BuildSpec, report: Report, steps: Steps) -> str:
    """Run every step; returns the phase: Built or CacheHit. Raises BuildFailure."""
    log(f"engine {spec.fingerprint[:16]} for {spec.gpu_product}: {spec.model.describe()}, "
        f"dtype {spec.dtype}, tp {spec.tensor_parallel} x pp {spec.pipeline_parallel}"
        + (f", quantization {spec.quantization.format or 'full_prec'}"
           f"/kv {spec.quantization.kv_cache_dtype or '-'}" if spec.quantization else ""))
    if find_cached(spec, report, steps):
        return "CacheHit"
    trtllm_build, gpus = preflight(spec, report, steps)
    try:
        return build_and_publish(spec, report, steps, trtllm_build, gpus)
    finally:
        # The pod (and its scratch emptyDir) outlives the build: the Job is kept for its
        # termination message. Free the node's disk now; a volume checkpoint is not ours.
        remove_tree(spec.work_dir / "download")
        remove_tree(checkpoint_dir(spec))


def build_and_publish(spec: BuildSpec, report: Report, steps: Steps, trtllm_build: str,
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
            other = publish(staging, spec.output_dir, spec.fingerprint)
            notes.append(f"published at {spec.output_dir}" if other is None else
                         "another build published the same engine first; kept that one")
    finally:
        remove_tree(staging)
    if other is not None:
        report.take_manifest(other)
        return "CacheHit"
    return "Built"


# --------------------------------------------------------------------------- termination


def fit_summary(fields: Mapping[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """JSON of ``fields`` in at most ``limit`` bytes: the log tail gives way first (its newest
    lines are kept), then the message (its start is kept), then optional fields."""
    data = dict(fields)

    def size() -> int:
        return len(json.dumps(data, ensure_ascii=False).encode())

    droppable = ["fit", "limits", "gpu", "resolvedRevision", "tensorrtVersion",
                 "tensorrtLlmVersion", "path", "totalBytes", "engineBytes", "durationSeconds",
                 "checkpointBytes"]
    while (over := size() - limit) > 0:
        tail = data.get("logTail", "")
        message = data.get("message", "")
        if tail:
            kept = tail[over + 16:]
            kept = kept[kept.find("\n") + 1:] if "\n" in kept else kept
            data["logTail"] = "...\n" + kept if kept else ""
            if not kept:
                del data["logTail"]
        elif len(message) > 200:
            data["message"] = message[: max(200, len(message) - over - 16)] + " ..."
        elif droppable:
            data.pop(droppable.pop(0), None)
        else:
            data = {k: str(data[k])[:1000] for k in ("phase", "reason", "fingerprint")
                    if k in data}
            break
    return json.dumps(data, ensure_ascii=False)


def write_termination_message(report: Report) -> str:
    """Write the JSON summary where Kubernetes reads the termination message; also log it."""
    text = redact(fit_summary(report.summary()))
    path = os.environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG_DEFAULT
    try:
        Path(path).write_text(text)
    except OSError as exc:
        print(f"could not write the termination message to {path}: {exc}", file=sys.stderr)
    return text


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Kubernetes stops the pod (deadline, deletion): unwind so that the running tool is
    stopped, staging is removed and the termination message says so."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise BuildFailure(Reason.TERMINATED, "the build pod was stopped (SIGTERM): the Job's "
                       "activeDeadlineSeconds passed or the pod was deleted")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spec", metavar="FILE",
                        help=f"read the build spec from FILE instead of env {ENV_SPEC}")
    args = parser.parse_args(argv)
    set_secrets(os.environ)
    install_redaction()
    signal.signal(signal.SIGTERM, _on_sigterm)
    report = Report(started_at=now_iso(), started=time.monotonic())
    steps = Steps(report)
    try:
        try:
            raw = load_spec_text(args.spec, os.environ)
            if isinstance(raw, dict) and isinstance(raw.get("fingerprint"), str):
                report.fingerprint = raw["fingerprint"][:64]  # worth reporting even if invalid
            spec = parse_spec(raw)
            report.fingerprint, report.path = spec.fingerprint, str(spec.output_dir)
            report.phase = execute(spec, report, steps)
            report.message = (f"engine published at {spec.output_dir}" if report.phase == "Built"
                              else f"engine already published at {spec.output_dir}")
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            raise BuildFailure(Reason.DISK_FULL, f"no space left on device{where}: give the "
                               "build pod more scratch space or grow the engines volume") from exc
    except BuildFailure as failure:
        report.fail(failure)
    except Exception as exc:
        report.fail(BuildFailure(Reason.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}"
                                 " -- a bug in the build entrypoint; please report it",
                                 traceback.format_exc()[-3000:]))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the summary is written, whatever comes
    summary = write_termination_message(report)
    if report.reason is not None:
        log(f"FAILED ({report.reason.value}): {report.message}")
    else:
        log(f"{report.phase}: {report.message}")
    print(f"summary: {summary}", flush=True)
    return exit_code(report.reason)


if __name__ == "__main__":
    sys.exit(main())
