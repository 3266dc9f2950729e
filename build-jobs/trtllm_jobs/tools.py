"""Running an external tool (a converter, quantizer, compiler): output echoed line by line and
redacted, the last lines kept for the termination message, the whole process group stopped
on the way out."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from .contract import NO_SPACE_MARKERS, SECRET_ENV, JobFailure, Reason
from .redaction import redact
from .reporting import emit, log

LOG_TAIL_LINES: Final = 60
MAX_LINE_CHARS: Final = 2000
SPEC_ENVS: Final = ("TRTLLM_BUILD_SPEC", "TRTLLM_DOWNLOAD_SPEC", "TRTLLM_QUANTIZE_SPEC")
"""A tool gets no job spec: it has no use for it."""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = (" -- usually the kernel's out-of-memory killer: give the job pod more memory"
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
    for key in SPEC_ENVS:
        env.pop(key, None)
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
            emit(f"  [{label}] {line}")
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            _stop(proc)
    if returncode != 0:
        text = "\n".join(tail)
        if any(marker in text for marker in NO_SPACE_MARKERS):
            raise JobFailure(Reason.DISK_FULL, f"{label} ran out of disk space: give the "
                             "job pod more scratch space or grow the engines volume", text)
        raise JobFailure(reason, f"{label} {describe_exit(returncode)}: {advice}", text)

