"""trtllm-operator download job: fetch one Hugging Face repo at one commit into the model cache.

Run as ``python3 -m trtllm_jobs.download`` in any image with Python 3.11+ and huggingface_hub
(the TensorRT-LLM release images have both); it needs no GPU. Every build target, both
backends and every LLMEngine naming the same model and commit read the one entry it publishes.

Contract with the operator (see build-jobs/README.md):

- input: a JSON download spec in env ``TRTLLM_DOWNLOAD_SPEC`` (or ``--spec FILE``):
  ``{"version": 1, "kind": "download", "model": {"source": "huggingFace", "repo": ...,
  "revision": ...}, "cacheRoot": "/engines"}``; a token, if any, in env ``HF_TOKEN`` (never
  printed, logged or written).
- steps: validate -> (revision already a commit and cached? done) -> resolve the revision to a
  commit and list its files -> cached? done -> enough disk? -> adopt a dead pod's staging
  folder, if any -> ``snapshot_download`` into ``<entry>.staging-<pod>`` (429, 5xx and network
  errors retried with backoff) -> check sizes and the hub's sha256 of the weights ->
  ``model-manifest.json`` -> fsync -> rename to ``<cacheRoot>/models/<org>--<name>/<commit>``.
- progress: one JSON line ``{"progress": {"doneBytes": N, "totalBytes": M}}`` on stdout every
  ``TRTLLM_PROGRESS_SECONDS`` (default 10) while downloading, so the operator can read it from
  the pod log without giving the pod API access.
- output: the cache entry, the JSON summary in the termination message, an exit code per
  reason (:data:`trtllm_jobs.contract.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from . import cache
from .contract import EXIT_CODES, JobFailure, Phase, Reason, load_spec_text
from .hub import (
    HubModel,
    download_hub_model,
    hf_token,
    hub_bytes_at_16_bits,
    is_retryable,
    kept_files,
    resolve_hub_model,
    status_code,
    weight_bytes,
)
from .publish import (
    clear_aside,
    free_bytes,
    list_files,
    publish,
    remove_tree,
    staging_dir,
    stale_siblings,
    sweep_stale_siblings,
    with_margin,
)
from .redaction import redact
from .reporting import (
    Report,
    Steps,
    emit,
    human_bytes,
    log,
    now_iso,
    progress_line,
    run_job,
    start,
)
from .spec import ENV_DOWNLOAD_SPEC, DownloadSpec, is_commit, parse_download_spec

ENV_PROGRESS_SECONDS: Final = "TRTLLM_PROGRESS_SECONDS"
PROGRESS_SECONDS_DEFAULT: Final = 10.0
ENV_RETRY_BACKOFF_SECONDS: Final = "TRTLLM_RETRY_BACKOFF_SECONDS"
RETRY_BACKOFF_SECONDS_DEFAULT: Final = 10.0
"""First wait before retrying a rate-limited, failing or unreachable hub; doubled each time."""
RETRY_ATTEMPTS: Final = 4
MAX_RETRY_AFTER_SECONDS: Final = 300.0
ENV_ADOPT_AFTER_SECONDS: Final = "TRTLLM_DOWNLOAD_ADOPT_AFTER_SECONDS"
ADOPT_AFTER_SECONDS_DEFAULT: Final = 120.0
"""A staging folder of this entry untouched this long belongs to a pod that is gone (a live
download writes constantly, and the operator runs one download Job per repo and commit): its
files are kept and the download resumes in it."""
HUB_BOOKKEEPING: Final = ".cache/"
"""What ``snapshot_download`` keeps inside ``local_dir`` to resume: not part of the entry."""

T = TypeVar("T")


@dataclasses.dataclass
class DownloadReport(Report):
    """What the download found out, for the termination message."""

    DROPPABLE: ClassVar[tuple[str, ...]] = (
        "fileCount", "checkpointBytes", "totalBytes", "durationSeconds", "path", "revision")

    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    path: str | None = None
    total_bytes: int | None = None
    checkpoint_bytes: int | None = None
    file_count: int | None = None

    def take_manifest(self, manifest: dict[str, Any]) -> None:
        self.commit = manifest.get("commit")
        self.total_bytes = manifest.get("totalBytes")
        self.checkpoint_bytes = manifest.get("checkpointBytes")
        self.file_count = len(manifest.get("files") or [])

    def summary(self) -> dict[str, Any]:
        common = self.common()
        fields: dict[str, Any] = {
            "phase": common["phase"], "reason": common["reason"], "message": common["message"],
            "repo": self.repo, "revision": self.revision, "commit": self.commit,
            "path": self.path, "totalBytes": self.total_bytes,
            "checkpointBytes": self.checkpoint_bytes, "fileCount": self.file_count,
            "durationSeconds": common["durationSeconds"], "logTail": common["logTail"],
        }
        return {k: v for k, v in fields.items() if v not in (None, "")}


# --------------------------------------------------------------------------- retries


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name) or default))
    except ValueError:
        return default


def _retry_after(exc: BaseException | None) -> float | None:
    """The hub's Retry-After (seconds) on a 429, if it sent one."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        value = float(str(headers.get("Retry-After")))
    except (TypeError, ValueError, AttributeError):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS)


def with_retries(what: str, call: Callable[[], T]) -> T:
    """``call()``, retried with exponential backoff while the hub rate-limits (429), fails
    (5xx) or cannot be reached; any other failure is final at once."""
    backoff = _env_seconds(ENV_RETRY_BACKOFF_SECONDS, RETRY_BACKOFF_SECONDS_DEFAULT)
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except JobFailure as failure:
            cause = failure.__cause__
            if (failure.reason != Reason.DOWNLOAD_FAILED or cause is None
                    or not is_retryable(cause) or attempt == RETRY_ATTEMPTS):
                raise
            code = status_code(cause)
            wait = _retry_after(cause) if code == 429 else None
            wait = backoff * 2 ** (attempt - 1) if wait is None else wait
            log(f"{what}: attempt {attempt}/{RETRY_ATTEMPTS} failed ("
                + (f"HTTP {code}" if code else type(cause).__name__)
                + f"); retrying in {wait:.0f}s")
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# --------------------------------------------------------------------------- progress


def tree_bytes(folder: Path) -> int:
    """Bytes downloaded into ``folder`` so far: its files and the partial ones
    (``*.incomplete``) snapshot_download keeps under ``.cache/``, not its bookkeeping."""
    total = 0
    for root, _, files in os.walk(folder):
        bookkeeping = HUB_BOOKKEEPING.rstrip("/") in Path(root).relative_to(folder).parts
        for name in files:
            if bookkeeping and not name.endswith(".incomplete"):
                continue
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


class Progress:
    """Prints ``{"progress": {"doneBytes", "totalBytes"}}`` every ``interval`` seconds from a
    background thread while the download runs, and once more at the end."""

    def __init__(self, folder: Path, total: int, interval: float) -> None:
        self.folder, self.total, self.interval = folder, total, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def line(self, done: int | None = None) -> None:
        done = min(tree_bytes(self.folder) if done is None else done, self.total)
        emit(progress_line(done, self.total))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.line()

    def __enter__(self) -> Progress:
        self.line()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- the download


def cached(spec: DownloadSpec, commit: str, report: DownloadReport) -> bool:
    """True if the entry of ``commit`` is published; otherwise clear its path."""
    entry = spec.entry(commit)
    manifest, why = cache.read_entry(entry, spec.repo, commit, spec.repo_type)
    if manifest is not None:
        report.take_manifest(manifest)
        return True
    if os.path.lexists(entry):
        clear_aside(entry, why, "model cache entry")
    return False


def resolve(spec: DownloadSpec, report: DownloadReport, steps: Steps) -> HubModel:
    with steps.run("resolve") as notes:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise JobFailure(Reason.MODEL_NOT_FOUND, f"{spec.describe()} is not in the model "
                             "cache and HF_HUB_OFFLINE is set: unset it, or copy the model "
                             "into the cache")
        model = with_retries("resolve", lambda: resolve_hub_model(
            spec.repo, spec.revision, hf_token(), spec.repo_type,
            access_reason=Reason.MODEL_ACCESS_DENIED,
            retry_note=f"gave up after {RETRY_ATTEMPTS} attempts; the Job retries"))
        report.commit = model.sha
        notes.append(f"{spec.describe()} = commit {model.sha}, {len(model.files)} files")
    return model


def check_disk(spec: DownloadSpec, staging: Path, need: int) -> str:
    have = free_bytes(spec.model_dir)
    missing = with_margin(max(need - tree_bytes(staging), 0))
    if have < missing:
        raise JobFailure(Reason.DISK_FULL, f"the model cache at {spec.cache_root} has "
                         f"{human_bytes(have)} free but {spec.describe()} needs about "
                         f"{human_bytes(missing)}: grow the engines volume or delete unused "
                         "cache entries")
    return f"{human_bytes(missing)} needed, {human_bytes(have)} free"


def take_over_staging(entry: Path, staging: Path) -> str:
    """Resume in the newest staging folder a dead pod left (renamed to ours), remove the
    others. Returns a note for the log."""
    adopt_after = _env_seconds(ENV_ADOPT_AFTER_SECONDS, ADOPT_AFTER_SECONDS_DEFAULT)
    left = [p for p in stale_siblings(entry, adopt_after, tags=("staging",)) if p != staging]
    note = "fresh staging folder"
    if staging.exists():
        note = f"resuming the download in {staging.name} (an earlier pod of this Job)"
    elif left:
        try:
            os.rename(left[0], staging)
            note = f"resuming the download left in {left[0].name}"
            left = left[1:]
        except OSError:
            pass  # taken by someone else meanwhile: start afresh
    for path in left:
        log(f"removing {path.name}: left by a download that ended without cleanup")
        remove_tree(path)
    sweep_stale_siblings(entry)  # .stale-* leftovers of a replaced entry
    return note


def verify(spec: DownloadSpec, staging: Path, model: HubModel,
           kept: Sequence[tuple[str, int]], files: list[dict[str, Any]]) -> None:
    """Every file the hub listed is there with its size, and the weights with the hub's
    sha256: a download that ends early or writes garbage is never published."""
    listed = {f["path"]: f for f in files}
    for name, size in kept:
        entry = listed.get(name)
        if entry is None or (size and entry["bytes"] != size):
            got = "missing" if entry is None else f"{entry['bytes']} bytes"
            raise JobFailure(Reason.DOWNLOAD_FAILED, f"{name} of {spec.describe()} is {got} "
                             f"after the download (the hub lists {size} bytes); the Job retries")
        expected = (model.lfs_sha256 or {}).get(name)
        if expected and entry["sha256"] != expected:
            remove_tree(staging / name)
            raise JobFailure(Reason.DOWNLOAD_FAILED, f"{name} of {spec.describe()} does not "
                             f"match the hub's sha256 {expected}: removed; the Job retries")
    if spec.repo_type == "model" and not (staging / "config.json").is_file():
        raise JobFailure(Reason.MODEL_NOT_FOUND, f"{spec.describe()} has no config.json: not a "
                         "Hugging Face transformers checkpoint")


def write_manifest(spec: DownloadSpec, staging: Path, model: HubModel, report: DownloadReport,
                   files: list[dict[str, Any]], ignore: Sequence[str],
                   kept: Sequence[tuple[str, int]]) -> dict[str, Any]:
    total = sum(int(f["bytes"]) for f in files)
    manifest: dict[str, Any] = {
        "schemaVersion": cache.MANIFEST_SCHEMA_VERSION,
        "source": "huggingFace",
        **({"repoType": spec.repo_type, "allowPatterns": list(spec.files)}
           if spec.repo_type != "model" else {}),
        "repo": spec.repo,
        "revision": spec.revision,
        "commit": model.sha,
        "totalBytes": total,
        "weightBytes": weight_bytes((f["path"], f["bytes"]) for f in files),
        "checkpointBytes": (hub_bytes_at_16_bits(list(kept), model.parameters)
                            if spec.repo_type == "model" else None),
        "ignorePatterns": list(ignore),
        "versions": {"huggingfaceHub": _hub_version(),
                     "python": ".".join(map(str, sys.version_info[:3]))},
        "node": os.environ.get("NODE_NAME") or None,
        "pod": os.environ.get("POD_NAME") or None,
        "startedAt": report.started_at,
        "finishedAt": now_iso(),
        "durationSeconds": round(time.monotonic() - report.started, 3),
        "files": files,
    }
    (staging / cache.MANIFEST_NAME).write_text(redact(json.dumps(manifest, indent=2)) + "\n")
    report.take_manifest(manifest)
    return manifest


def _hub_version() -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError, ValueError):
        return importlib.metadata.version("huggingface_hub")
    return None


def dataset_files(spec: DownloadSpec, model: HubModel
                  ) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """(no ignore patterns, the files of a dataset repo the spec's ``files`` select); none
    selected is ModelNotFound, naming what the repo holds."""
    kept = [(n, s) for n, s in model.files
            if not spec.files or any(fnmatch(n, p) for p in spec.files)]
    if not kept:
        listed = ", ".join(n for n, _ in model.files[:12])
        raise JobFailure(Reason.MODEL_NOT_FOUND, f"no file of {spec.describe()} matches "
                         f"{', '.join(spec.files)} (it holds {listed}): fix "
                         "spec.build.quantization.calibration.files")
    return (), kept


def execute(spec: DownloadSpec, report: DownloadReport, steps: Steps) -> str:
    """Every step; returns the phase: Downloaded or CacheHit. Raises JobFailure."""
    log(f"{spec.describe()} into the cache at {spec.model_dir}")
    if is_commit(spec.revision):
        with steps.run("cache") as notes:
            # A pinned commit needs no hub at all when it is cached (works offline).
            report.commit, report.path = spec.revision, str(spec.entry(spec.revision))
            if cached(spec, spec.revision, report):
                notes.append(f"already cached at {report.path}")
                return Phase.CACHE_HIT
            notes.append("not cached yet")
    model = resolve(spec, report, steps)
    entry = spec.entry(model.sha)
    report.path = str(entry)
    with steps.run("cache") as notes:
        if cached(spec, model.sha, report):
            notes.append(f"already cached at {entry}")
            return Phase.CACHE_HIT
        notes.append(f"not cached yet: downloading into {entry}")
    ignore, kept = kept_files(model) if spec.repo_type == "model" else dataset_files(spec, model)
    need = sum(s for _, s in kept)
    # Named after the Job: its next pod resumes here.
    staging = staging_dir(entry, os.environ.get("JOB_NAME"))
    entry.parent.mkdir(parents=True, exist_ok=True)
    keep = False
    try:
        with steps.run("staging") as notes:
            notes.append(take_over_staging(entry, staging))
        with steps.run("disk") as notes:
            notes.append(check_disk(spec, staging, need))
        with steps.run("download") as notes, \
                Progress(staging, need, _env_seconds(ENV_PROGRESS_SECONDS,
                                                     PROGRESS_SECONDS_DEFAULT)) as progress:
            with_retries("download", lambda: download_hub_model(
                spec.repo, model.sha, hf_token(), staging, ignore, spec.repo_type, spec.files,
                access_reason=Reason.MODEL_ACCESS_DENIED,
                retry_note=f"gave up after {RETRY_ATTEMPTS} attempts; the Job retries and "
                           "resumes"))
            progress.line(need)
            notes.append(f"{human_bytes(need)} in {len(kept)} files")
        remove_tree(staging / HUB_BOOKKEEPING.rstrip("/"))
        with steps.run("manifest") as notes:
            files = list_files(staging, cache.MANIFEST_NAME)
            verify(spec, staging, model, kept, files)
            write_manifest(spec, staging, model, report, files, ignore, kept)
            notes.append(f"{len(files)} files, {human_bytes(report.total_bytes or 0)}")
        with steps.run("publish") as notes:
            other = publish(staging, entry, lambda f: cache.read_entry(
                f, spec.repo, model.sha, spec.repo_type), "model cache entry")
            notes.append(f"published at {entry}" if other is None
                         else "another download published it first; kept that one")
        if other is not None:
            report.take_manifest(other)
            return Phase.CACHE_HIT
        return Phase.DOWNLOADED
    except JobFailure as failure:
        # A retry of this Job resumes what this pod downloaded (the staging folder is named
        # after the Job); a permanent failure leaves nothing behind.
        keep = failure.reason not in EXIT_CODES
        raise
    finally:
        if not keep:
            remove_tree(staging)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m trtllm_jobs.download",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spec", metavar="FILE",
                        help=f"read the download spec from FILE instead of env "
                             f"{ENV_DOWNLOAD_SPEC}")
    args = parser.parse_args(argv)
    start("download")
    report = DownloadReport(started_at=now_iso(), started=time.monotonic())
    steps = Steps(report)

    def body() -> None:
        raw = load_spec_text(args.spec, os.environ, ENV_DOWNLOAD_SPEC)
        spec = parse_download_spec(raw)
        report.repo, report.revision = spec.repo, spec.revision
        report.phase = execute(spec, report, steps)
        report.message = (f"{spec.describe()} downloaded into the model cache at {report.path}"
                          if report.phase == Phase.DOWNLOADED
                          else f"{spec.describe()} already cached at {report.path}")

    return run_job("download", report, body, disk_advice="grow the engines volume or delete "
                   "unused model cache entries")


if __name__ == "__main__":
    sys.exit(main())
