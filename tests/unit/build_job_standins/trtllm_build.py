"""Stand-in for trtllm-build. STANDIN_BUILD_MODE picks a behaviour:

ok (default) engine files for every rank of the checkpoint's mapping
fail         an error and exit 1, after writing part of an engine
enospc       "No space left on device" and exit 1
die          part of an engine, then SIGKILL to itself (as the OOM killer would)
hang         part of an engine, its pid in STANDIN_PID_FILE, then sleep (to be stopped)
hugelog      ~6 MB of output, then exit 1; the last line is FINAL LINE
noengine     config.json only, exit 0
race         first publish STANDIN_RACE_SOURCE at STANDIN_RACE_TARGET (another pod winning
             the race to the same engine path), then build normally
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ["STANDIN_HOME"])
import flagcheck

TOOL = "trtllm_build"

args = flagcheck.parse(TOOL, sys.argv[1:])
flagcheck.record(TOOL, sys.argv[1:], hf_token_in_env="HF_TOKEN" in os.environ)
for required in ("--checkpoint_dir", "--output_dir"):
    if required not in args:
        flagcheck.reject(TOOL, f"{required} missing")
mode = os.environ.get("STANDIN_BUILD_MODE", "ok")
checkpoint = json.loads((Path(args["--checkpoint_dir"]) / "config.json").read_text())
world = checkpoint["mapping"]["world_size"]
out = Path(args["--output_dir"])
out.mkdir(parents=True, exist_ok=True)
print(f"[TRT-LLM] [I] Building {world} rank(s) into {out}")

if mode == "race":
    shutil.copytree(os.environ["STANDIN_RACE_SOURCE"], os.environ["STANDIN_RACE_TARGET"])
if mode in ("fail", "die", "hang", "enospc"):
    (out / "rank0.engine").write_bytes(b"partial")
if mode == "fail":
    print("[TRT] [E] 4: [network.cpp::validate::3162] Error Code 4: Internal Error (invalid shape)")
    sys.exit(1)
if mode == "enospc":
    print("OSError: [Errno 28] No space left on device: 'rank0.engine'", file=sys.stderr)
    sys.exit(1)
if mode == "die":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "hang":
    Path(os.environ["STANDIN_PID_FILE"]).write_text(str(os.getpid()))
    time.sleep(120)
    sys.exit(0)
if mode == "hugelog":
    for i in range(20000):
        print(f"[TRT] [V] tactic {i:05d} " + "x" * 300)
    print("FINAL LINE")
    sys.exit(1)

build_config = {
    "max_batch_size": args.get("--max_batch_size", 2048),
    "max_input_len": args.get("--max_input_len", 1024),
    "max_seq_len": args.get("--max_seq_len", 8192),
    "max_num_tokens": args.get("--max_num_tokens", 8192),
    "max_beam_width": args.get("--max_beam_width", 1),
    "plugin_config": {"gemm_plugin": args.get("--gemm_plugin")},
}
engine_config = {"version": "1.2.0", "pretrained_config": checkpoint, "build_config": build_config}
(out / "config.json").write_text(json.dumps(engine_config, indent=2))
if mode != "noengine":
    for rank in range(world):
        (out / f"rank{rank}.engine").write_bytes(f"engine plan of rank {rank}\n".encode() * 256)
print("[TRT-LLM] [I] Total time of building all engines: 00:00:00")
