"""trtllm-operator quantize job: ModelOpt post-training quantization of a cached checkpoint.

Run as ``python3 -m trtllm_jobs.quantize`` in a TensorRT-LLM release image of the PyTorch line
(1.3.0rc21 on), on a GPU node: nvidia-modelopt, transformers and torch are in that image. It
calls ModelOpt's Python API (``mtq.quantize`` with the format's config, then
``export_hf_checkpoint``) rather than the ``hf_ptq.py`` example script, which the image does
not ship, whose options change between ModelOpt releases, and which exports an unquantized
model when given a format it does not know. The result is a Hugging Face (unified) checkpoint
that ``trtllm-serve <folder>`` recognises by its ``hf_quant_config.json``.

Contract with the operator (see build-jobs/README.md):

- input: a JSON quantize spec in env ``TRTLLM_QUANTIZE_SPEC`` (or ``--spec FILE``); the model
  is a published model-cache entry (``model.cachedPath``), never the hub.
- calibration: samples from ``calibration.datasetPath`` on the claim, offline: a JSON Lines,
  JSON or Parquet file, or a folder of them (a dataset repo the CPU download Job cached;
  ``calibration.files`` narrows it), each record's ``calibration.textField``. This job never
  downloads. No calibration named: CalibrationDataMissing.
- steps: cache (a valid export is a cache hit) -> the cached model checked -> calibration data
  -> disk -> load -> quantize -> export into ``<output>.staging-<job>`` -> manifest -> fsync ->
  rename to ``<cacheRoot>/quantized/<org>--<name>/<commit>/<format>[-kv<kvdtype>]``.
- output: that folder with ``quantize-manifest.json``, the JSON summary in the termination
  message, an exit code per reason (:data:`trtllm_jobs.contract.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Final

from . import cache
from .contract import JobFailure, Phase, Reason, load_spec_text
from .facts import HF_QUANT_CONFIG, MODELOPT_CONFIGS, MODELOPT_KV_CONFIGS
from .publish import (
    clear_aside,
    free_bytes,
    list_files,
    publish,
    read_manifest,
    remove_tree,
    staging_dir,
    sweep_stale_siblings,
    with_margin,
)
from .reporting import Report, Steps, human_bytes, log, now_iso, run_job, start
from .spec import ENV_QUANTIZE_SPEC, Calibration, QuantizeSpec, parse_quantize_spec

MANIFEST_NAME: Final = "quantize-manifest.json"
MANIFEST_SCHEMA_VERSION: Final = 1
CALIBRATION_SUFFIXES: Final = (".jsonl", ".json", ".parquet")
"""Data files read for samples: JSON Lines, JSON (a list of records), Parquet (through
pyarrow, which the image's ``datasets`` dependency brings)."""


@dataclasses.dataclass
class QuantizeReport(Report):
    """What the quantize job found out, for the termination message."""

    DROPPABLE: ClassVar[tuple[str, ...]] = ("totalBytes", "durationSeconds", "calibration",
                                           "path")

    format: str | None = None
    commit: str | None = None
    path: str | None = None
    total_bytes: int | None = None
    calibration: str | None = None

    def summary(self) -> dict[str, Any]:
        common = self.common()
        fields: dict[str, Any] = {
            "phase": common["phase"], "reason": common["reason"], "message": common["message"],
            "format": self.format, "commit": self.commit, "path": self.path,
            "totalBytes": self.total_bytes, "calibration": self.calibration,
            "durationSeconds": common["durationSeconds"], "logTail": common["logTail"],
        }
        return {k: v for k, v in fields.items() if v not in (None, "")}


def read_export(folder: Path, spec: QuantizeSpec) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``folder`` is a complete export of this model, commit and format."""
    return read_manifest(folder, MANIFEST_NAME, MANIFEST_SCHEMA_VERSION, {
        "repo": spec.repo, "commit": spec.commit, "format": spec.format,
        "kvCacheDtype": spec.kv_cache_dtype})


# --------------------------------------------------------------------------- calibration


def _calibration_files(calibration: Calibration) -> list[Path]:
    path = calibration.dataset_path
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found = []
    for p in sorted(path.rglob("*")):
        relative = p.relative_to(path).as_posix()
        if not p.is_file() or p.suffix not in CALIBRATION_SUFFIXES or p.name in (
                cache.MANIFEST_NAME,) or relative.startswith(".cache/"):
            continue
        if calibration.files and not any(fnmatch(relative, f) for f in calibration.files):
            continue
        found.append(p)
    return found


def _records(file: Path) -> Iterator[tuple[int, Any]]:
    """(position, record) of each record of a data file."""
    if file.suffix == ".parquet":
        try:
            parquet = importlib.import_module("pyarrow.parquet")
        except ImportError as exc:
            raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
                f"{file} is Parquet and pyarrow is not importable ({exc}): convert the "
                f"samples to JSON Lines, or set calibration.files to the repo's .jsonl "
                f"files")) from exc
        table = parquet.read_table(str(file))
        for number, record in enumerate(table.to_pylist(), 1):
            yield number, record
        return
    with file.open(encoding="utf-8", errors="strict") as handle:
        if file.suffix == ".json":
            try:
                data = json.loads("".join(_lines(handle, file)))
            except ValueError as exc:
                raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
                    f"{file} is not JSON ({exc}): a .json calibration file holds a list of "
                    f"records")) from exc
            yield from enumerate(data if isinstance(data, list) else [data], 1)
            return
        for number, line in enumerate(_lines(handle, file), 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
                    f"{file} line {number} is not JSON ({exc}): calibration files hold one "
                    f"JSON object per line")) from exc


def read_calibration_texts(calibration: Calibration) -> list[str]:
    """Up to ``size`` non-empty ``textField`` values from the data files at datasetPath."""
    path, field = calibration.dataset_path, calibration.text_field
    files = _calibration_files(calibration)
    if not files:
        only = f" matching {', '.join(calibration.files)}" if calibration.files else ""
        raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
            f"calibration.datasetPath {path} "
            f"{'holds no .jsonl, .json or .parquet file' + only if path.is_dir() else 'is missing'}"
            f": put a .jsonl file (one {{\"{field}\": ...}} object per line) there on the "
            f"claim, or point spec.build.quantization.calibration at one"))
    texts: list[str] = []
    seen: set[str] = set()
    for file in files:
        for _, record in _records(file):
            if isinstance(record, dict):
                seen.update(str(k) for k in record)
            text = record.get(field) if isinstance(record, dict) else None
            if isinstance(text, str) and text.strip():
                texts.append(text)
            if len(texts) >= calibration.size:
                return texts
    if not texts:
        fields = f" (the records have {', '.join(sorted(seen)[:12])})" if seen else ""
        raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
            f"no calibration sample in {path}: no record holds a non-empty \"{field}\" "
            f"string{fields}; set spec.build.quantization.calibration.textField"))
    return texts


def _lines(handle: Iterable[str], file: Path) -> Iterator[str]:
    try:
        yield from handle
    except UnicodeDecodeError as exc:
        raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
            f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}): calibration files "
            f"hold one JSON object per line")) from exc


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


# --------------------------------------------------------------------------- the tools


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise JobFailure(Reason.MODELOPT_MISSING, (
            f"cannot import {name} ({exc}): run the quantize Job in a TensorRT-LLM release "
            f"image of the PyTorch line (1.3.0rc21 or later), which ships nvidia-modelopt, "
            f"transformers and torch")) from exc


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def quant_config(mtq: ModuleType, fmt: str, kv_cache_dtype: str | None) -> Any:
    """A copy of the format's ModelOpt config, with the KV-cache config merged in when asked:
    through ModelOpt's own helper where it has one, else by merging ``quant_cfg`` (a dict in
    older ModelOpt releases, a list in newer ones)."""
    config = copy.deepcopy(getattr(mtq, MODELOPT_CONFIGS[fmt]))
    if kv_cache_dtype is None:
        return config
    kv = copy.deepcopy(getattr(mtq, MODELOPT_KV_CONFIGS[kv_cache_dtype])["quant_cfg"])
    merge = getattr(mtq, "update_quant_cfg_with_kv_cache_quant", None)
    if callable(merge):
        return merge(config, kv)
    if isinstance(config["quant_cfg"], dict):
        config["quant_cfg"].update(kv)
    else:
        config["quant_cfg"].extend(kv)
    return config


def forward_loop(spec: QuantizeSpec, tokenizer: Any, torch: ModuleType,
                 texts: list[str]) -> Callable[[Any], None]:
    """What mtq.quantize runs the model through to collect activation statistics."""
    calibration = spec.calibration
    assert calibration is not None

    def loop(model: Any) -> None:
        with torch.no_grad():
            for batch in _batches(texts, calibration.batch_size):
                encoded = tokenizer(batch, return_tensors="pt", padding=True,
                                    truncation=True, max_length=calibration.max_seq_length)
                model(**encoded.to(model.device))

    return loop


# --------------------------------------------------------------------------- the job


def execute(spec: QuantizeSpec, report: QuantizeReport, steps: Steps) -> Phase:
    """Quantize and publish (or find the export already there); raises JobFailure."""
    output = spec.output_dir
    report.path = str(output)
    with steps.run("cache") as notes:
        existing, why = read_export(output, spec)
        if existing is not None:
            report.total_bytes = existing.get("totalBytes")
            notes.append(f"{output} is already published")
            return Phase.CACHE_HIT
        if os.path.lexists(output):
            clear_aside(output, why, "quantized checkpoint")
        sweep_stale_siblings(output)
    with steps.run("model") as notes:
        model_manifest, why = cache.read_entry(spec.cached_path, spec.repo, spec.commit)
        if model_manifest is None:
            raise JobFailure(Reason.CACHED_MODEL_INVALID, (
                f"model.cachedPath {spec.cached_path} is not a complete model-cache entry of "
                f"{spec.repo}@{spec.commit} ({why}): let the download Job publish it first"))
        checkpoint_bytes = int(model_manifest["checkpointBytes"])
        notes.append(f"{spec.cached_path}, {human_bytes(checkpoint_bytes)} at 16 bits")
    with steps.run("calibration") as notes:
        calibration = spec.calibration
        if calibration is None:
            raise JobFailure(Reason.CALIBRATION_DATA_MISSING, (
                f"{spec.format} calibrates its scales on sample text, and the spec names none: "
                f"set spec.build.quantization.calibration.datasetPath to a .jsonl file on the "
                f"claim, or calibration.dataset with downloadDataset true (the CPU download "
                f"Job fetches it); this job runs offline and never downloads"))
        texts = read_calibration_texts(calibration)
        report.calibration = calibration.describe()
        notes.append(f"{len(texts)} samples from {calibration.dataset_path}")
    staging = staging_dir(output, os.environ.get("JOB_NAME") or None)
    with steps.run("disk") as notes:
        need = with_margin(checkpoint_bytes)
        have = free_bytes(output.parent)
        notes.append(f"need {human_bytes(need)}, have {human_bytes(have)}")
        if have < need:
            raise JobFailure(Reason.DISK_FULL, (
                f"{human_bytes(have)} free for the export at {output.parent}, about "
                f"{human_bytes(need)} needed (at most the checkpoint's size, plus a margin): "
                f"grow the volume or delete unused model cache entries"))
    if os.path.lexists(staging):
        # A pod of this Job that died mid-export: a half-written export cannot be resumed.
        log(f"removing {staging.name}: the export of an earlier pod of this Job")
        remove_tree(staging)
    try:
        _quantize_into(spec, staging, texts, steps)
        with steps.run("manifest") as notes:
            manifest = _manifest(spec, staging, report)
            notes.append(f"{len(manifest['files'])} files, "
                         f"{human_bytes(manifest['totalBytes'])}")
        with steps.run("publish"):
            other = publish(staging, output, lambda folder: read_export(folder, spec),
                            "quantized checkpoint")
    finally:
        remove_tree(staging)
    report.total_bytes = (other or manifest).get("totalBytes")
    return Phase.CACHE_HIT if other is not None else Phase.QUANTIZED


def _quantize_into(spec: QuantizeSpec, staging: Path, texts: list[str],
                   steps: Steps) -> None:
    with steps.run("load") as notes:
        mtq = _import("modelopt.torch.quantization")
        export = _import("modelopt.torch.export")
        transformers = _import("transformers")
        torch = _import("torch")
        path = str(spec.cached_path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False)
        if getattr(tokenizer, "pad_token", None) is None:
            # Calibration batches are padded; many causal-LM tokenizers define no pad token.
            tokenizer.pad_token = tokenizer.eos_token
        model = _tool_step("loading the model", lambda: transformers.AutoModelForCausalLM
                           .from_pretrained(path, torch_dtype="auto", device_map="auto",
                                            local_files_only=True, trust_remote_code=False))
        notes.append(f"ModelOpt {_version('nvidia-modelopt') or 'unknown'}, transformers "
                     f"{_version('transformers') or 'unknown'}")
    with steps.run("quantize") as notes:
        config = quant_config(mtq, spec.format, spec.kv_cache_dtype)
        loop = forward_loop(spec, tokenizer, torch, texts)
        model = _tool_step("quantizing", lambda: mtq.quantize(model, config, loop))
        notes.append(f"{MODELOPT_CONFIGS[spec.format]}"
                     + (f" + {MODELOPT_KV_CONFIGS[spec.kv_cache_dtype]}"
                        if spec.kv_cache_dtype else ""))
    with steps.run("export") as notes:
        staging.mkdir(parents=True)

        def write() -> None:
            with torch.inference_mode():
                export.export_hf_checkpoint(model, export_dir=str(staging))
            tokenizer.save_pretrained(str(staging))

        _tool_step("exporting", write)
        if not (staging / HF_QUANT_CONFIG).is_file():
            raise JobFailure(Reason.QUANTIZE_FAILED, (
                f"ModelOpt exported no {HF_QUANT_CONFIG}: the checkpoint is not quantized as "
                f"{spec.format} and trtllm-serve would load it as a plain one; check the log "
                f"for layers ModelOpt skipped (an architecture it does not support)"))
        notes.append(f"exported into {staging.name}")


def _tool_step(what: str, call: Callable[[], Any]) -> Any:
    """Run a ModelOpt / transformers call; its failure becomes QuantizeFailed (a full disk
    stays DiskFull)."""
    try:
        return call()
    except (JobFailure, OSError):
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        advice = ("the model and its calibration do not fit the GPU memory: give the Job more "
                  "GPUs of that type or lower calibration.batchSize / maxSeqLength"
                  if "out of memory" in text.lower() else
                  "see the log; a model architecture ModelOpt does not support fails here")
        raise JobFailure(Reason.QUANTIZE_FAILED, f"{what} failed ({text[:500]}): {advice}"
                         ) from exc


def _manifest(spec: QuantizeSpec, staging: Path, report: QuantizeReport) -> dict[str, Any]:
    files = list_files(staging, MANIFEST_NAME)
    calibration = spec.calibration
    assert calibration is not None
    manifest: dict[str, Any] = {
        "schemaVersion": MANIFEST_SCHEMA_VERSION, "repo": spec.repo, "commit": spec.commit,
        "format": spec.format, "kvCacheDtype": spec.kv_cache_dtype,
        "model": str(spec.cached_path),
        "calibration": calibration.settings(),
        "modelopt": {"config": MODELOPT_CONFIGS[spec.format],
                     "kvConfig": MODELOPT_KV_CONFIGS.get(spec.kv_cache_dtype or "")},
        "versions": {"modelopt": _version("nvidia-modelopt"),
                     "transformers": _version("transformers"), "torch": _version("torch"),
                     "python": ".".join(map(str, sys.version_info[:3]))},
        "node": os.environ.get("NODE_NAME"), "pod": os.environ.get("POD_NAME"),
        "startedAt": report.started_at, "finishedAt": now_iso(),
        "steps": dict(report.steps),
        "totalBytes": sum(f["bytes"] for f in files), "files": files,
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m trtllm_jobs.quantize",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spec", metavar="FILE",
                        help=f"read the quantize spec from FILE instead of env "
                             f"{ENV_QUANTIZE_SPEC}")
    args = parser.parse_args(argv)
    start("quantize")
    report = QuantizeReport(started_at=now_iso(), started=time.monotonic())
    steps = Steps(report)

    def body() -> None:
        spec = parse_quantize_spec(load_spec_text(args.spec, os.environ, ENV_QUANTIZE_SPEC))
        report.format, report.commit = spec.format, spec.commit
        report.phase = execute(spec, report, steps)
        report.message = (f"{spec.describe()} quantized into {report.path}"
                          if report.phase == Phase.QUANTIZED
                          else f"{spec.describe()} already quantized at {report.path}")

    return run_job("quantize", report, body, disk_advice="grow the engines volume or delete "
                   "unused model cache entries")


if __name__ == "__main__":
    sys.exit(main())
