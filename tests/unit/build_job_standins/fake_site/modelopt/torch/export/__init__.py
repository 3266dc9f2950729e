"""Stand-in modelopt.torch.export.export_hf_checkpoint: keyword arguments from the table only;
writes what the unified export writes (config.json, weights, hf_quant_config.json)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from standin_log import mode, record, reject, table

ALGOS = {"FP8_DEFAULT_CFG": "FP8", "NVFP4_DEFAULT_CFG": "NVFP4", "INT4_AWQ_CFG": "W4A16_AWQ",
         "W4A8_AWQ_BETA_CFG": "W4A8_AWQ"}


def export_hf_checkpoint(model: Any, **kwargs: Any) -> None:
    allowed = set(table()["export"]["arguments"]) - {"model"}
    if set(kwargs) - allowed:
        reject("export_hf_checkpoint", f"keyword(s) {sorted(set(kwargs) - allowed)} not in "
                                       f"the table")
    if "export_dir" not in kwargs:
        reject("export_hf_checkpoint", "no export_dir: it would export into /tmp")
    if model.quantized_with is None:
        reject("export_hf_checkpoint", "the model was never quantized")
    out = Path(kwargs["export_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if mode() == "slow":
        time.sleep(float(os.environ.get("FAKE_QUANT_SECONDS", "30")))
    if mode() == "diskfull":
        raise OSError(errno.ENOSPC, "No space left on device",
                      str(out / "model.safetensors"))
    (out / "model.safetensors").write_bytes(b"q" * 1024)
    if mode() != "unquantized":
        (out / "hf_quant_config.json").write_text(json.dumps({"quantization": {
            "quant_algo": ALGOS[model.quantized_with],
            "kv_cache_quant_algo": "FP8" if model.kv_quantized else None}}))
    record("export_hf_checkpoint", export_dir=str(out))
