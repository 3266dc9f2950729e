"""How a job reports: progress lines on stdout, step timings, and the JSON summary in the pod's
termination message (what the operator reads; the job pod needs no API access).

:func:`run_job` is the shared ``main`` frame of every job kind: redaction on, SIGTERM turned
into a ``Terminated`` failure, any failure turned into a reason and an exit code, and the
summary always written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from . import contract
from .contract import (
    ENV_TERMINATION_LOG,
    TERMINATION_LIMIT,
    TERMINATION_LOG_DEFAULT,
    JobFailure,
    Phase,
    Reason,
    exit_code,
)
from .redaction import install_redaction, redact, set_secrets

_job_kind = "build"
_emit_lock = threading.Lock()


def emit(line: str) -> None:
    """One whole line on stdout (redacted), never interleaved with another thread's."""
    with _emit_lock:
        sys.stdout.write(redact(line) + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    """One human-readable progress line on stdout."""
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    emit(f"[{_job_kind}-job {stamp}] {message}")


PROGRESS_KEY = "progress"


def progress_line(done: int, total: int) -> str:
    """The machine-readable progress line: ``{"progress": {"doneBytes": N, "totalBytes": M}}``.
    One per interval on stdout; the operator reads the last one from the pod log."""
    return json.dumps({PROGRESS_KEY: {"doneBytes": done, "totalBytes": total}})


def last_progress(log_text: str) -> tuple[int, int] | None:
    """(doneBytes, totalBytes) of the last progress line in a job's log, if there is one (for
    the operator, which imports this rather than restating the format)."""
    for line in reversed(log_text.splitlines()):
        if not line.startswith(f'{{"{PROGRESS_KEY}"'):
            continue
        try:
            data = json.loads(line)[PROGRESS_KEY]
            done, total = data["doneBytes"], data["totalBytes"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(done, int) and isinstance(total, int):
            return done, total
    return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


@dataclasses.dataclass
class Report:
    """What a run found out, for the termination message. Job kinds subclass it and list
    their own fields in :meth:`summary`."""

    DROPPABLE: ClassVar[tuple[str, ...]] = ()
    """Summary fields that may be left out, first first, when the message is too long."""

    started_at: str
    started: float
    phase: str = Phase.FAILED
    reason: Reason | None = None
    message: str = ""
    log_tail: str = ""
    steps: dict[str, float] = dataclasses.field(default_factory=dict)

    def fail(self, failure: JobFailure) -> None:
        self.phase = Phase.FAILED
        self.reason = failure.reason
        self.message = failure.message
        self.log_tail = failure.log_tail

    def summary(self) -> dict[str, Any]:
        """The termination message's fields (unknown ones left out)."""
        return {k: v for k, v in self.common().items() if v not in (None, "")}

    def common(self) -> dict[str, Any]:
        return {"phase": self.phase, "reason": self.reason.value if self.reason else None,
                "message": self.message,
                "durationSeconds": round(time.monotonic() - self.started, 3),
                "logTail": self.log_tail}


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


def fit_summary(fields: Mapping[str, Any], limit: int = TERMINATION_LIMIT,
                droppable: tuple[str, ...] = ()) -> str:
    """JSON of ``fields`` in at most ``limit`` bytes: the log tail gives way first (its newest
    lines are kept), then the message (its start is kept), then the ``droppable`` fields."""
    data = dict(fields)
    drop = list(droppable)

    def size() -> int:
        return len(json.dumps(data, ensure_ascii=False).encode())

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
        elif drop:
            data.pop(drop.pop(0), None)
        else:
            data = {k: str(data[k])[:1000] for k in ("phase", "reason", "fingerprint")
                    if k in data}
            break
    return json.dumps(data, ensure_ascii=False)


def write_termination_message(report: Report) -> str:
    """Write the JSON summary where Kubernetes reads the termination message; also log it."""
    text = redact(fit_summary(report.summary(), droppable=report.DROPPABLE))
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
    raise JobFailure(Reason.TERMINATED, f"the {_job_kind} pod was stopped (SIGTERM): the Job's "
                     "activeDeadlineSeconds passed or the pod was deleted")


def start(kind: str) -> None:
    """Set up a job process: its log prefix, redaction of secrets, SIGTERM handling."""
    global _job_kind
    _job_kind = kind
    contract.spec_name = f"{kind} spec"
    set_secrets(os.environ)
    install_redaction()
    signal.signal(signal.SIGTERM, _on_sigterm)


def run_job(kind: str, report: Report, body: Callable[[], None], *, disk_advice: str) -> int:
    """Run ``body`` (which sets ``report.phase`` and ``report.message`` on success), turn any
    failure into a reason, write the summary and return the exit code. Call :func:`start`
    first."""
    try:
        try:
            body()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            raise JobFailure(Reason.DISK_FULL,
                             f"no space left on device{where}: {disk_advice}") from exc
    except JobFailure as failure:
        report.fail(failure)
    except Exception as exc:
        report.fail(JobFailure(Reason.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}"
                               f" -- a bug in the {kind} entrypoint; please report it",
                               traceback.format_exc()[-3000:]))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the summary is written, whatever comes
    summary = write_termination_message(report)
    if report.reason is not None:
        log(f"FAILED ({report.reason.value}): {report.message}")
    else:
        log(f"{report.phase}: {report.message}")
    emit(f"summary: {summary}")
    return exit_code(report.reason)
