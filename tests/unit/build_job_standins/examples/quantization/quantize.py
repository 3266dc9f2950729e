"""Stand-in for examples/quantization/quantize.py (no GPU, no ModelOpt)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["STANDIN_HOME"])
import flagcheck

TOOL = "quantize_py"

args = flagcheck.parse(TOOL, sys.argv[1:])
flagcheck.record(TOOL, sys.argv[1:])
for required in ("--model_dir", "--output_dir", "--qformat"):
    if required not in args:
        flagcheck.reject(TOOL, f"{required} missing")
if os.environ.get("STANDIN_QUANTIZE_MODE") == "fail":
    print("torch.OutOfMemoryError: CUDA out of memory during calibration", file=sys.stderr)
    sys.exit(1)
qformat = args["--qformat"]
kv = args.get("--kv_cache_dtype")
flagcheck.write_checkpoint(Path(args["--output_dir"]), args, {
    "quant_algo": None if qformat == "full_prec" else qformat.upper(),
    "kv_cache_quant_algo": kv.upper() if kv else None,
})
print(f"Quantized model exported to {args['--output_dir']}")
