"""What every stand-in shares: strict argument checking against the project's flag table, and
a record of each invocation the tests can read.

A stand-in refuses (exit 64, message on stderr) any flag that is not in
build-jobs/trtllm_flags_1_2.json for its tool, a missing or repeated value, a value of the wrong
type and a value outside the flag's choices: a test whose command line would not run against
the real tool fails.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
TABLE_PATH = REPO / "build-jobs" / "trtllm_flags_1_2.json"
REJECTED = 64


def reject(tool: str, problem: str) -> None:
    print(f"STAND-IN {tool} REJECTED ITS ARGUMENTS: {problem}", file=sys.stderr)
    sys.exit(REJECTED)


def _names(section: dict[str, Any]) -> dict[str, str]:
    names = {name: name for name in section}
    for name, entry in section.items():
        names.update(dict.fromkeys(entry.get("aliases") or [], name))
    return names


def _check_value(tool: str, flag: str, entry: dict[str, Any], value: str) -> Any:
    kind = entry["type"]
    try:
        typed: Any = int(value) if kind == "int" else float(value) if kind == "float" else value
    except ValueError:
        reject(tool, f"{flag} takes {kind}, got {value!r}")
    choices = entry.get("choices")
    if isinstance(choices, list) and typed not in choices:
        reject(tool, f"{flag} {value!r} is not one of {choices}")
    return typed


def parse(tool: str, argv: list[str]) -> dict[str, Any]:
    """``--flag value`` pairs (and bare switches) of ``tool``'s table section, by canonical
    flag name."""
    section = json.loads(TABLE_PATH.read_text())[tool]
    names = _names(section)
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token not in names:
            reject(tool, f"unknown argument {token!r}")
        flag = names[token]
        if flag in parsed:
            reject(tool, f"{flag} given twice")
        entry = section[flag]
        if entry["type"] == "flag":
            parsed[flag] = True
            i += 1
            continue
        values = []
        i += 1
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(_check_value(tool, flag, entry, argv[i]))
            i += 1
            if not entry["type"].endswith("nargs+"):
                break
        if not values:
            reject(tool, f"{flag} needs a value")
        parsed[flag] = values if entry["type"].endswith("nargs+") else values[0]
    return parsed


def record(tool: str, argv: list[str], **extra: Any) -> None:
    """Append this invocation to the file the tests read (env STANDIN_LOG)."""
    log = os.environ.get("STANDIN_LOG")
    if log:
        line = {"tool": tool, "argv": argv, "pid": os.getpid(), **extra}
        with open(log, "a") as handle:
            handle.write(json.dumps(line) + "\n")


def write_checkpoint(out: Path, args: dict[str, Any], quantization: dict[str, Any]) -> None:
    """A plausible TensorRT-LLM checkpoint: config.json with the mapping, one file per rank."""
    model_dir = Path(args["--model_dir"])
    hf_config = json.loads((model_dir / "config.json").read_text())
    tp, pp = args.get("--tp_size", 1), args.get("--pp_size", 1)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": hf_config.get("architectures", ["LlamaForCausalLM"])[0],
        "dtype": args.get("--dtype", "auto"),
        "num_hidden_layers": hf_config.get("num_hidden_layers", 2),
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
        "quantization": quantization,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for rank in range(tp * pp):
        (out / f"rank{rank}.safetensors").write_bytes(f"weights of rank {rank}\n".encode() * 64)
