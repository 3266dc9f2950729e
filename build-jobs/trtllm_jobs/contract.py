"""What every job kind and the operator agree on: failure reasons, exit codes, environment
names, and the primitives that validate a spec field by field.

The operator imports this module (it is the single source of the exit-code map its Jobs'
podFailurePolicy uses); the jobs cannot import the operator, since they run in a stock image
with only the standard library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, NoReturn, cast

SPEC_VERSION: Final = 1

TERMINATION_LOG_DEFAULT: Final = "/dev/termination-log"
TERMINATION_LIMIT: Final = 4096
"""Kubernetes keeps at most 4096 bytes of a container's termination message."""

ENV_TERMINATION_LOG: Final = "TRTLLM_TERMINATION_LOG"
ENV_FREE_BYTES: Final = "TRTLLM_BUILD_FREE_BYTES"
"""Testing aid: pretend every filesystem has this many free bytes."""
SECRET_ENV: Final = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

NO_SPACE_MARKERS: Final = ("No space left on device", "ENOSPC")


class Phase(StrEnum):
    """How a job ended: the termination message's ``phase``."""

    BUILT = "Built"
    DOWNLOADED = "Downloaded"
    QUANTIZED = "Quantized"
    CACHE_HIT = "CacheHit"
    """The artifact was already published (by an earlier job, or by another one meanwhile)."""
    FAILED = "Failed"


class Reason(StrEnum):
    """Why a job ended the way it did: the termination message's ``reason``."""

    INVALID_SPEC = "InvalidSpec"
    TRTLLM_BUILD_MISSING = "TrtllmBuildMissing"
    GPU_MISMATCH = "GpuMismatch"
    DISK_FULL = "DiskFull"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_DOES_NOT_FIT = "ModelDoesNotFit"
    MODEL_ACCESS_DENIED = "ModelAccessDenied"
    CACHED_MODEL_INVALID = "CachedModelInvalid"
    MODELOPT_MISSING = "ModelOptMissing"
    CALIBRATION_DATA_MISSING = "CalibrationDataMissing"
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
    Reason.MODEL_ACCESS_DENIED: 8,
    Reason.CACHED_MODEL_INVALID: 9,
    Reason.MODELOPT_MISSING: 10,
    Reason.CALIBRATION_DATA_MISSING: 11,
}
"""The one reason -> exit code map of every job kind. These cannot be fixed by retrying the
same pod (the operator fails the Job at once on them); every other failure exits 1; success
exits 0."""

PERMANENT_EXIT_CODES: Final = tuple(sorted(set(EXIT_CODES.values())))
"""What a Job's podFailurePolicy fails at once on (the operator imports this)."""


def exit_code(reason: Reason | None) -> int:
    """0 for success (no reason), the mapped code for a permanent failure, else 1."""
    if reason is None:
        return 0
    return EXIT_CODES.get(reason, 1)


class JobFailure(Exception):
    """A failure with a reason, a message saying what to do, and the failing tool's log tail."""

    def __init__(self, reason: Reason, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.log_tail = log_tail


spec_name = "build spec"
"""What the running job calls its spec in messages (set by reporting.start)."""


def invalid(field: str, problem: str, what: str | None = None) -> NoReturn:
    """Refuse the spec, naming the field (a JSON path inside the spec)."""
    raise JobFailure(Reason.INVALID_SPEC, f"{what or spec_name} field {field}: {problem}")


# --------------------------------------------------------------------------- field checks


def as_object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        invalid(field, f"must be a JSON object, got {json.dumps(value)[:80]}")
    return cast(Mapping[str, Any], value)


def known_keys(obj: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        prefix = f"{field}." if field else ""
        invalid(prefix + unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")


def string(obj: Mapping[str, Any], key: str, field: str, *, pattern: str | None = None,
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


def required_string(obj: Mapping[str, Any], key: str, field: str, **kwargs: Any) -> str:
    value = string(obj, key, field, **kwargs)
    assert value is not None
    return value


def positive_int(value: Any, field: str, *, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        invalid(field, f"must be an integer >= 1, got {json.dumps(value)[:80]}")
    return value


def absolute_path(obj: Mapping[str, Any], key: str, field: str) -> Path:
    value = required_string(obj, key, field)
    path = Path(value)
    if not path.is_absolute() or ".." in path.parts or path == Path("/"):
        invalid(field, f"must be an absolute path without '..' (not /), got {value!r}")
    return path


def load_spec_text(spec_file: str | None, environ: Mapping[str, str], env_name: str) -> Any:
    """The spec as JSON data: from ``--spec FILE`` if given, else from env ``env_name``."""
    what = spec_name
    if spec_file:
        try:
            text = Path(spec_file).read_text()
        except OSError as exc:
            invalid("(spec)", f"cannot read --spec {spec_file}: {exc.strerror}", what)
        where = spec_file
    else:
        text = environ.get(env_name, "")
        where = f"env {env_name}"
        if not text.strip():
            invalid("(spec)", f"no {what}: set env {env_name} or pass --spec FILE", what)
    try:
        return json.loads(text)
    except ValueError as exc:
        invalid("(spec)", f"{where} is not valid JSON: {exc}", what)
