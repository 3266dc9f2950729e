"""Stand-in for nvidia-smi: answers only the query the build job makes, with the GPUs in
STANDIN_GPUS ("<NVML name>, <compute capability>, <memory MiB>" entries separated by '|'), or
fails like a broken driver when STANDIN_NVSMI_FAIL is set. Real nvidia-smi prints memory.total
with nounits as a bare MiB number, or "[N/A]" when it cannot tell."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.environ["STANDIN_HOME"])
import flagcheck

EXPECTED = ["--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"]

flagcheck.record("nvidia_smi", sys.argv[1:])
if sys.argv[1:] != EXPECTED:
    flagcheck.reject("nvidia-smi", f"expected {EXPECTED}, got {sys.argv[1:]}")
if os.environ.get("STANDIN_NVSMI_FAIL"):
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    sys.exit(9)
for gpu in os.environ.get("STANDIN_GPUS", "NVIDIA H100 80GB HBM3, 9.0, 81559").split("|"):
    print(gpu)
