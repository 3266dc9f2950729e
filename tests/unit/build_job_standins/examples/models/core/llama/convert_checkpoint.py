"""Stand-in for examples/models/core/llama/convert_checkpoint.py (no GPU, no torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["STANDIN_HOME"])
import flagcheck

TOOL = "convert_checkpoint_llama"

args = flagcheck.parse(TOOL, sys.argv[1:])
flagcheck.record(TOOL, sys.argv[1:])
for required in ("--model_dir", "--output_dir"):
    if required not in args:
        flagcheck.reject(TOOL, f"{required} missing")
if not (Path(args["--model_dir"]) / "config.json").is_file():
    print(f"OSError: {args['--model_dir']} has no config.json", file=sys.stderr)
    sys.exit(1)
# A careless tool that prints its environment: the build job must redact the token.
print(f"converting with HF_TOKEN={os.environ.get('HF_TOKEN', '')}")
if os.environ.get("STANDIN_CONVERT_MODE") == "fail":
    print("RuntimeError: shape mismatch in layer 0", file=sys.stderr)
    sys.exit(1)
flagcheck.write_checkpoint(Path(args["--output_dir"]), args, {"quant_algo": None})
print("Total time of converting checkpoints: 00:00:00")
