"""Stand-in modelopt.torch.quantization: the configs by name (each carries its name, so the
stand-in can tell which one it was given), and quantize(), which refuses a config the table
does not map a PyTorch-line format to and runs the forward loop like the real calibration."""

from __future__ import annotations

from typing import Any

from standin_log import mode, record, reject, table


def _config(name: str, quant_cfg: dict[str, Any]) -> dict[str, Any]:
    return {"quant_cfg": {**quant_cfg, "default": {"enable": False}}, "algorithm": "max",
            "_name": name}


FP8_DEFAULT_CFG = _config("FP8_DEFAULT_CFG", {"*weight_quantizer": {"num_bits": (4, 3)}})
NVFP4_DEFAULT_CFG = _config("NVFP4_DEFAULT_CFG", {"*weight_quantizer": {"num_bits": (2, 1)}})
INT4_AWQ_CFG = _config("INT4_AWQ_CFG", {"*weight_quantizer": {"num_bits": 4}})
W4A8_AWQ_BETA_CFG = _config("W4A8_AWQ_BETA_CFG", {"*weight_quantizer": [{"num_bits": 4}]})
INT8_SMOOTHQUANT_CFG = _config("INT8_SMOOTHQUANT_CFG", {"*weight_quantizer": {"num_bits": 8}})
FP8_KV_CFG = _config("FP8_KV_CFG", {"*[kv]_bmm_quantizer": {"num_bits": (4, 3)}})

KV_KEY = "*[kv]_bmm_quantizer"


def quantize(model: Any, config: dict[str, Any], forward_loop: Any) -> Any:
    rules = table()["quantize"]
    name = config.get("_name")
    if name not in rules["configs"].values():
        reject("quantize", f"config {name!r} is not one the table maps a format to")
    kv = KV_KEY in config["quant_cfg"]
    if not callable(forward_loop):
        reject("quantize", "no forward_loop: calibration needs one")
    if mode() == "oom":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    forward_loop(model)
    if model.forwards == 0:
        reject("quantize", "the forward loop ran no batch: nothing was calibrated")
    model.quantized_with = name
    model.kv_quantized = kv
    record("quantize", config=name, kv=kv, forwards=model.forwards, samples=model.samples)
    return model
