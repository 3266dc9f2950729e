"""Shared by the ModelOpt / transformers / torch stand-ins: the project's table of what the
quantize job may call (build-jobs/trtllm_flags_1_3.json, modelopt_python_api), a refusal that
fails the job like a wrong call to the real library would, and a JSON-lines record of every
call in FAKE_MODELOPT_LOG for the tests to read.

FAKE_QUANT_MODE: ok (default) | oom (quantize raises CUDA out of memory) | unquantized (the
export writes no hf_quant_config.json) | diskfull (ENOSPC while exporting) | slow (the export
writes its first file, then sleeps FAKE_QUANT_SECONDS, default 30, before the rest).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TABLE = Path(__file__).resolve().parents[4] / "build-jobs" / "trtllm_flags_1_3.json"


def table() -> dict[str, Any]:
    section: dict[str, Any] = json.loads(TABLE.read_text())["modelopt_python_api"]
    return section


def record(call: str, **fields: Any) -> None:
    log = os.environ.get("FAKE_MODELOPT_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"call": call, **fields}, default=str) + "\n")


def reject(call: str, problem: str) -> None:
    record(call, rejected=problem)
    raise TypeError(f"STAND-IN {call} REJECTED ITS ARGUMENTS: {problem}")


def check_values(call: str, given: dict[str, Any], expected: dict[str, Any],
                 also: tuple[str, ...] = ()) -> None:
    """Every keyword in the table's values, with that value; nothing else but ``also``."""
    for key, value in expected.items():
        if given.get(key, object()) != value:
            reject(call, f"{key}={given.get(key)!r}, the table says {value!r}")
    extra = sorted(set(given) - set(expected) - set(also))
    if extra:
        reject(call, f"keyword(s) {extra} not in the table")


def mode() -> str:
    return os.environ.get("FAKE_QUANT_MODE", "ok")
