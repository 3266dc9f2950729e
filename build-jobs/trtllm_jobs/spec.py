"""The spec contract: what the operator writes into a job's environment, parsed and validated.

One definition, shared: the operator's unit tests feed the specs its planning code writes
through these parsers (tests/unit/test_build_spec_seam.py), so the two cannot drift. Every
field is validated and unknown fields are refused, so an operator/entrypoint mismatch shows at
once, naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from . import cache
from .contract import (
    SPEC_VERSION,
    absolute_path,
    as_object,
    invalid,
    known_keys,
    positive_int,
    required_string,
    string,
)
from .facts import (
    BUILD_FLAGS_SET_BY_OPERATOR,
    BUILD_OPTIONS_REFUSED,
    CALIBRATION_DEFAULTS,
    DTYPES,
    KV_CACHE_DTYPES,
    LIMIT_FLAGS,
    MODELOPT_CONFIGS,
    MODELOPT_KV_CONFIGS,
    QUANT_FORMATS,
    TRTLLM_BUILD_FLAGS,
    Flag,
)

ENV_BUILD_SPEC: Final = "TRTLLM_BUILD_SPEC"
ENV_DOWNLOAD_SPEC: Final = "TRTLLM_DOWNLOAD_SPEC"
ENV_QUANTIZE_SPEC: Final = "TRTLLM_QUANTIZE_SPEC"
REPO_PATTERN: Final = r"([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9][-A-Za-z0-9_.]*"
COMMIT_PATTERN: Final = r"[0-9a-f]{40}"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the checkpoint comes from: a Hugging Face repo at a revision, or a folder."""

    source: str
    repo: str | None = None
    revision: str | None = None
    path: Path | None = None
    cached_path: Path | None = None
    """A published model-cache folder (``<root>/models/<org>--<name>/<commit>``) holding this
    repo: the build reads it and never downloads."""

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


def parse_model(value: Any) -> ModelSource:
    """``model``: ``{"source": "huggingFace", "repo", "revision", "cachedPath"?}`` or
    ``{"source": "volume", "path"}``."""
    obj = as_object(value, "model")
    source = required_string(obj, "source", "model.source", choices=("huggingFace", "volume"))
    if source == "huggingFace":
        known_keys(obj, ("source", "repo", "revision", "cachedPath"), "model")
        repo = required_string(obj, "repo", "model.repo", pattern=REPO_PATTERN)
        revision = string(obj, "revision", "model.revision", pattern=r"\S+", optional=True)
        cached = (absolute_path(obj, "cachedPath", "model.cachedPath")
                  if obj.get("cachedPath") is not None else None)
        return ModelSource(source, repo=repo, revision=revision or "main", cached_path=cached)
    known_keys(obj, ("source", "path"), "model")
    return ModelSource(source, path=absolute_path(obj, "path", "model.path"))


def parse_quantization(value: Any) -> Quantization | None:
    """``quantization``: null, or format / kvCacheDtype / calibration (defaults filled in)."""
    if value is None:
        return None
    obj = as_object(value, "quantization")
    known_keys(obj, ("format", "kvCacheDtype", "calibration"), "quantization")
    fmt = string(obj, "format", "quantization.format", choices=QUANT_FORMATS, optional=True)
    kv = string(obj, "kvCacheDtype", "quantization.kvCacheDtype", choices=KV_CACHE_DTYPES,
                 optional=True)
    if fmt is None and kv is None:
        invalid("quantization", "set format or kvCacheDtype, or make quantization null to "
                                "build unquantized")
    calib = as_object(obj.get("calibration") or {}, "quantization.calibration")
    known_keys(calib, CALIBRATION_DEFAULTS, "quantization.calibration")
    dataset = string(calib, "dataset", "quantization.calibration.dataset", optional=True)
    ints = {key: positive_int(calib.get(key), f"quantization.calibration.{key}",
                               default=int(CALIBRATION_DEFAULTS[key]))
            for key in ("size", "batchSize", "maxSeqLength")}
    return Quantization(fmt, kv, dataset or str(CALIBRATION_DEFAULTS["dataset"]),
                        ints["size"], ints["batchSize"], ints["maxSeqLength"])


def parse_limits(value: Any) -> dict[str, int]:
    """``limits``: each key optional; null or absent keeps trtllm-build's default."""
    obj = as_object(value if value is not None else {}, "limits")
    known_keys(obj, LIMIT_FLAGS, "limits")
    return {key: positive_int(obj[key], f"limits.{key}")
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
    obj = as_object(raw, "(spec)")
    known_keys(obj, _FIELDS, "")
    version = obj.get("version")
    if version != SPEC_VERSION:
        invalid("version", f"this entrypoint reads spec version {SPEC_VERSION}, got "
                           f"{json.dumps(version)}: the operator and the entrypoint differ")
    options = as_object(obj.get("buildOptions") or {}, "buildOptions")
    rendered: list[str] = []
    for name, value in options.items():
        rendered += render_build_option(name, value)
    return BuildSpec(
        raw=obj,
        fingerprint=required_string(obj, "fingerprint", "fingerprint", pattern=r"[0-9a-f]{64}"),
        gpu_product=required_string(obj, "gpuProduct", "gpuProduct", pattern=r"[A-Za-z0-9_.-]+"),
        output_dir=absolute_path(obj, "outputDir", "outputDir"),
        work_dir=absolute_path(obj, "workDir", "workDir"),
        model=parse_model(obj.get("model")),
        model_family=string(obj, "modelFamily", "modelFamily", pattern=r"[a-z0-9_]+",
                             optional=True),
        dtype=string(obj, "dtype", "dtype", choices=DTYPES, optional=True) or "auto",
        quantization=parse_quantization(obj.get("quantization")),
        tensor_parallel=positive_int(obj.get("tensorParallel"), "tensorParallel", default=1),
        pipeline_parallel=positive_int(obj.get("pipelineParallel"), "pipelineParallel",
                                        default=1),
        limits=parse_limits(obj.get("limits")),
        build_options=tuple(rendered),
        gpu_memory_mib=(None if obj.get("gpuMemoryMiB") is None
                        else positive_int(obj["gpuMemoryMiB"], "gpuMemoryMiB")),
    )


# --------------------------------------------------------------------------- download


@dataclasses.dataclass(frozen=True)
class DownloadSpec:
    """A validated download spec: one Hugging Face repo at one revision into the model cache."""

    raw: Mapping[str, Any]
    repo: str
    revision: str
    cache_root: Path
    """The shared volume's mount: the entry is ``<cacheRoot>/models/<org>--<name>/<commit>``
    (``datasets/...`` for a dataset repo)."""
    repo_type: str = "model"
    """model, or dataset: calibration samples, fetched here so the GPU Job runs offline."""
    files: tuple[str, ...] = ()
    """A dataset's files to fetch (glob patterns); empty: the whole repo."""

    @property
    def model_dir(self) -> Path:
        """The folder holding one entry per commit of the repo."""
        return self.entry("0" * 40).parent

    def entry(self, commit: str) -> Path:
        if self.repo_type == "dataset":
            return cache.dataset_entry_dir(self.cache_root, self.repo, commit, self.files)
        return cache.entry_dir(self.cache_root, self.repo, commit)

    def describe(self) -> str:
        what = "dataset " if self.repo_type == "dataset" else ""
        return f"{what}{self.repo}@{self.revision}"


_DOWNLOAD_FIELDS: Final = frozenset({"version", "kind", "model", "cacheRoot", "repoType",
                                     "files"})


def parse_download_spec(raw: Any) -> DownloadSpec:
    """``{"version": 1, "kind": "download", "model": {"source": "huggingFace", "repo",
    "revision"}, "cacheRoot": "/engines"}``."""
    obj = as_object(raw, "(spec)")
    unknown = sorted(set(obj) - _DOWNLOAD_FIELDS)
    if unknown:
        invalid(unknown[0], f"unknown field; allowed: {', '.join(sorted(_DOWNLOAD_FIELDS))}")
    if obj.get("version") != SPEC_VERSION:
        invalid("version", f"this entrypoint reads spec version {SPEC_VERSION}, got "
                           f"{json.dumps(obj.get('version'))}: the operator and the entrypoint "
                           "differ")
    if obj.get("kind") != "download":
        invalid("kind", f"must be \"download\", got {json.dumps(obj.get('kind'))}")
    model = parse_model(obj.get("model"))
    if model.repo is None or model.revision is None:
        invalid("model.source", "a download needs a Hugging Face model (source huggingFace); "
                                "a volume model is read where it is")
    if model.cached_path is not None:
        invalid("model.cachedPath", "not a download field: the download decides the path")
    repo_type = string(obj, "repoType", "repoType", choices=("model", "dataset"),
                       optional=True) or "model"
    files = parse_files(obj.get("files"), "files")
    if files and repo_type != "dataset":
        invalid("files", "only a dataset download takes a subset of files; a model download "
                         "fetches what the converter reads")
    return DownloadSpec(raw=obj, repo=model.repo, revision=model.revision,
                        cache_root=absolute_path(obj, "cacheRoot", "cacheRoot"),
                        repo_type=repo_type, files=files)


def parse_files(value: Any, field: str) -> tuple[str, ...]:
    """A list of relative glob patterns (no '..', not absolute), or null."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        invalid(field, f"must be a list of non-empty strings, got {json.dumps(value)[:80]}")
    for pattern in value:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            invalid(field, f"{pattern!r} must be relative to the repo, without '..'")
    return tuple(value)


def is_commit(revision: str) -> bool:
    """A full commit sha: the cache entry can be looked up without asking the hub."""
    return re.fullmatch(COMMIT_PATTERN, revision) is not None


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Where the quantize job's calibration samples come from: a file or folder on the claim,
    read offline: the user's own, or a dataset repo the CPU download Job put in the cache."""

    dataset_path: Path
    size: int
    max_seq_length: int
    batch_size: int
    files: tuple[str, ...] = ()
    """Glob patterns (relative to datasetPath) of the files to read; empty: every data file."""
    text_field: str = "text"
    """The field (column) of each record holding the sample text."""

    def describe(self) -> str:
        return (f"{self.size} samples of {self.max_seq_length} tokens from "
                f"{self.dataset_path} ({self.text_field})")

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the scales, defaults filled in: the export's key."""
        out: dict[str, Any] = {"size": self.size, "maxSeqLength": self.max_seq_length,
                               "batchSize": self.batch_size,
                               "datasetPath": str(self.dataset_path),
                               "textField": self.text_field}
        if self.files:
            out["files"] = list(self.files)
        return out


@dataclasses.dataclass(frozen=True)
class QuantizeSpec:
    """A validated quantize spec: one cached checkpoint, one format, one calibration."""

    raw: Mapping[str, Any]
    repo: str
    commit: str
    cached_path: Path
    format: str
    kv_cache_dtype: str | None
    calibration: Calibration | None
    """None: the spec named no calibration data (the job fails with CalibrationDataMissing,
    naming the fix, rather than fetching a default dataset)."""
    cache_root: Path

    @property
    def output_dir(self) -> Path:
        calibration = (cache.calibration_key(self.calibration.settings())
                       if self.calibration is not None else None)
        return cache.quantized_dir(self.cache_root, self.repo, self.commit, self.format,
                                   self.kv_cache_dtype, calibration)

    def describe(self) -> str:
        kv = f" (KV cache {self.kv_cache_dtype})" if self.kv_cache_dtype else ""
        return f"{self.repo}@{self.commit[:12]} as {self.format}{kv}"


_QUANTIZE_FIELDS: Final = frozenset({"version", "kind", "model", "format", "kvCacheDtype",
                                     "calibration", "cacheRoot"})
_CALIBRATION_FIELDS: Final = ("datasetPath", "files", "textField", "size", "maxSeqLength",
                               "batchSize")


def parse_quantize_spec(raw: Any) -> QuantizeSpec:
    """``{"version": 1, "kind": "quantize", "model": {"repo", "commit", "cachedPath"},
    "format": "fp8", "kvCacheDtype": null, "calibration": {"datasetPath" | "dataset", "size",
    "maxSeqLength", "batchSize"} | null, "cacheRoot": "/engines"}``."""
    obj = as_object(raw, "(spec)")
    known_keys(obj, _QUANTIZE_FIELDS, "")
    if obj.get("version") != SPEC_VERSION:
        invalid("version", f"this entrypoint reads spec version {SPEC_VERSION}, got "
                           f"{json.dumps(obj.get('version'))}: the operator and the entrypoint "
                           "differ")
    if obj.get("kind") != "quantize":
        invalid("kind", f"must be \"quantize\", got {json.dumps(obj.get('kind'))}")
    model = as_object(obj.get("model"), "model")
    known_keys(model, ("repo", "commit", "cachedPath"), "model")
    repo = required_string(model, "repo", "model.repo", pattern=REPO_PATTERN)
    commit = required_string(model, "commit", "model.commit", pattern=COMMIT_PATTERN)
    cached = absolute_path(model, "cachedPath", "model.cachedPath")
    legacy = " (int8_sq exports a legacy TensorRT-LLM checkpoint)" if obj.get(
        "format") == "int8_sq" else ""
    fmt = string(obj, "format", "format", optional=True)
    if fmt not in MODELOPT_CONFIGS:
        invalid("format", f"{json.dumps(fmt)} is not a format of the PyTorch line{legacy}; "
                          f"choose one of {', '.join(MODELOPT_CONFIGS)}")
    assert fmt is not None
    kv = string(obj, "kvCacheDtype", "kvCacheDtype", choices=tuple(MODELOPT_KV_CONFIGS),
                optional=True)
    calibration = None
    if obj.get("calibration") is not None:
        calib = as_object(obj["calibration"], "calibration")
        known_keys(calib, _CALIBRATION_FIELDS, "calibration")
        path = absolute_path(calib, "datasetPath", "calibration.datasetPath")
        ints = {key: positive_int(calib.get(key), f"calibration.{key}",
                                  default=int(CALIBRATION_DEFAULTS[key]))
                for key in ("size", "batchSize", "maxSeqLength")}
        calibration = Calibration(
            path, ints["size"], ints["maxSeqLength"], ints["batchSize"],
            files=parse_files(calib.get("files"), "calibration.files"),
            text_field=string(calib, "textField", "calibration.textField",
                              pattern=r"[^\s]+", optional=True) or "text")
    return QuantizeSpec(raw=obj, repo=repo, commit=commit, cached_path=cached, format=fmt,
                        kv_cache_dtype=kv, calibration=calibration,
                        cache_root=absolute_path(obj, "cacheRoot", "cacheRoot"))

