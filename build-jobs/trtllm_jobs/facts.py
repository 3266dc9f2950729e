"""TensorRT-LLM facts the jobs need, for the 1.2 (TensorRT engine) line.

Copied from operator/trtllm_operator/trtllm_facts.py and build-jobs/trtllm_flags_1_2.json where
the operator cannot take them from here (its API enums are ``Literal`` types);
tests/unit/test_build_job.py proves the copies equal their sources. The memory-fit numbers
(:data:`WEIGHT_BYTES_FACTOR`, :func:`fit_need_bytes`) live here only: the operator imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

DTYPES: Final = ("auto", "float16", "bfloat16", "float32")
QUANT_FORMATS: Final = ("fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "nvfp4")
KV_CACHE_DTYPES: Final = ("fp8", "int8")
QUANT_FORMAT_MIN_SM: Final[Mapping[str, int]] = {
    "fp8": 89,
    "w4a8_awq": 89,
    "nvfp4": 100,
    "int8_sq": 80,
    "int4_awq": 80,
    "int8_wo": 80,
    "int4_wo": 80,
}
CALIBRATION_DEFAULTS: Final[Mapping[str, str | int]] = {
    "dataset": "cnn_dailymail",
    "size": 512,
    "batchSize": 1,
    "maxSeqLength": 512,
}
BUILD_FLAGS_SET_BY_OPERATOR: Final = (
    "--checkpoint_dir",
    "--model_config",
    "--build_config",
    "--output_dir",
    "--workers",
    "--max_batch_size",
    "--max_input_len",
    "--max_seq_len",
    "--max_decoder_seq_len",
    "--max_num_tokens",
    "--max_beam_width",
)
BUILD_OPTIONS_REFUSED: Final[Mapping[str, str]] = {
    "--dry_run": "it makes trtllm-build write no engine",
}
"""Real trtllm-build flags that are not the operator's to set yet make no sense in a build Job."""

WEIGHT_BYTES_FACTOR: Final[Mapping[str, float]] = {
    "auto": 1.0,
    "float16": 1.0,
    "bfloat16": 1.0,
    "float32": 2.0,
    "fp8": 0.5,
    "int8_sq": 0.5,
    "int8_wo": 0.5,
    "int4_awq": 0.2578125,
    "w4a8_awq": 0.2578125,
    "int4_wo": 0.2578125,
    "nvfp4": 0.28125,
}
"""Engine weight bytes per checkpoint byte at 16 bits per parameter, by the engine's weight
format: its quantization format, else its ``dtype``. Bytes per parameter: fp16/bf16 2, fp32 4
(``auto`` turns a float32 checkpoint into float16, so 2), fp8 and int8 1, int4 0.5 plus one
16-bit scale per group of 128 (AWQ's default group size) = 0.515625, nvfp4 0.5 plus one fp8
scale per block of 16 = 0.5625. The factor is that divided by 2. Quantized engines keep the
embedding and output layers in 16 bits, so for them the estimate is a floor, never more than the
engine needs: the fit check refuses only what cannot fit."""

FIT_HEADROOM_FRACTION: Final = 0.10
"""Extra memory per GPU as a share of the weights: activation buffers and allocator slack grow
with the layers' size."""
FIT_HEADROOM_BYTES: Final = 2 << 30
"""Fixed memory per GPU besides the weights: the CUDA context, cuBLAS and TensorRT workspaces
and a minimal KV cache (about 2 GiB on Ampere and newer)."""


def fit_need_bytes(checkpoint_bytes: int, weights: str, world_size: int) -> int:
    """GPU memory each of ``world_size`` GPUs needs at least for an engine of a checkpoint of
    ``checkpoint_bytes`` (at 16 bits per parameter) with ``weights`` (a quantization format or
    a dtype, a key of :data:`WEIGHT_BYTES_FACTOR`): its share of the weights plus headroom."""
    per_gpu = checkpoint_bytes * WEIGHT_BYTES_FACTOR[weights] / world_size
    return int(per_gpu * (1 + FIT_HEADROOM_FRACTION)) + FIT_HEADROOM_BYTES


class Flag(NamedTuple):
    """One trtllm-build flag: argparse type, choices (a tuple, a note when not enumerated, or
    None), other names, and whether this entrypoint writes it itself."""

    type: str
    choices: tuple[str, ...] | str | None = None
    aliases: tuple[str, ...] = ()
    emitted: bool = False


_PLUGIN_DTYPE: Final = ("auto", "float16", "float32", "bfloat16", "int32", "disable")
_GEMM_PLUGIN_DTYPE: Final = ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4",
                             "disable")
_TOGGLE: Final = ("enable", "disable")
_FP8_OR_DISABLE: Final = ("fp8", "disable")
_LOG_LEVELS: Final = ("internal_error", "error", "warning", "info", "verbose", "debug", "trace")
_SPECULATIVE_MODES: Final = ("draft_tokens_external", "lookahead_decoding", "medusa",
                             "explicit_draft_tokens", "eagle")

TRTLLM_BUILD_FLAGS: Final[Mapping[str, Flag]] = {
    "--checkpoint_dir": Flag("str", None, emitted=True),
    "--model_cls_file": Flag("str"),
    "--model_cls_name": Flag("str"),
    "--output_dir": Flag("str", None, emitted=True),
    "--max_batch_size": Flag("int", None, emitted=True),
    "--max_input_len": Flag("int", None, emitted=True),
    "--max_seq_len": Flag("int", None, aliases=("--max_decoder_seq_len",), emitted=True),
    "--max_beam_width": Flag("int", None, emitted=True),
    "--max_num_tokens": Flag("int", None, emitted=True),
    "--opt_num_tokens": Flag("int"),
    "--max_encoder_input_len": Flag("int"),
    "--max_prompt_embedding_table_size": Flag("int", None, aliases=("--max_multimodal_len",)),
    "--kv_cache_type": Flag("enum KVCacheType", ("continuous", "paged", "disabled")),
    "--paged_kv_cache": Flag("str"),
    "--input_timing_cache": Flag("str"),
    "--output_timing_cache": Flag("str"),
    "--profiling_verbosity": Flag("str", ("layer_names_only", "detailed", "none")),
    "--strip_plan": Flag("flag"),
    "--weight_sparsity": Flag("flag"),
    "--weight_streaming": Flag("flag"),
    "--fast_build": Flag("flag"),
    "--workers": Flag("int", None, emitted=True),
    "--log_level": Flag("str", _LOG_LEVELS),
    "--enable_debug_output": Flag("flag"),
    "--visualize_network": Flag("str"),
    "--monitor_memory": Flag("flag"),
    "--logits_dtype": Flag("str", ("float16", "float32")),
    "--gather_context_logits": Flag("flag"),
    "--gather_generation_logits": Flag("flag"),
    "--gather_all_token_logits": Flag("flag"),
    "--lora_dir": Flag("str nargs+"),
    "--lora_ckpt_source": Flag("str", ("hf", "nemo")),
    "--lora_target_modules": Flag("str nargs+",
                                  "LoraManager.LORA_MODULE_IDS keys (not enumerated)"),
    "--max_lora_rank": Flag("int"),
    "--speculative_decoding_mode": Flag("str", _SPECULATIVE_MODES),
    "--max_draft_len": Flag("int"),
    "--bert_attention_plugin": Flag("str", _PLUGIN_DTYPE),
    "--gpt_attention_plugin": Flag("str", _PLUGIN_DTYPE),
    "--gemm_plugin": Flag("str", _GEMM_PLUGIN_DTYPE),
    "--gemm_swiglu_plugin": Flag("str", _FP8_OR_DISABLE),
    "--fp8_rowwise_gemm_plugin": Flag("str", _PLUGIN_DTYPE),
    "--lora_plugin": Flag("str", _PLUGIN_DTYPE),
    "--dora_plugin": Flag("str", _TOGGLE),
    "--moe_plugin": Flag("str", _PLUGIN_DTYPE),
    "--mamba_conv1d_plugin": Flag("str", _PLUGIN_DTYPE),
    "--nccl_plugin": Flag("str", _PLUGIN_DTYPE),
    "--low_latency_gemm_plugin": Flag("str", _FP8_OR_DISABLE),
    "--low_latency_gemm_swiglu_plugin": Flag("str", _FP8_OR_DISABLE),
    "--gemm_allreduce_plugin": Flag("str", ("float16", "bfloat16", "disable")),
    "--context_fmha": Flag("str", _TOGGLE),
    "--bert_context_fmha_fp32_acc": Flag("str", _TOGGLE),
    "--remove_input_padding": Flag("str", _TOGGLE),
    "--tokens_per_block": Flag("int"),
    "--use_paged_context_fmha": Flag("str", _TOGGLE),
    "--use_fp8_context_fmha": Flag("str", _TOGGLE),
    "--fuse_fp4_quant": Flag("str", _TOGGLE),
    "--multiple_profiles": Flag("str", _TOGGLE),
    "--paged_state": Flag("str", _TOGGLE),
    "--streamingllm": Flag("str", _TOGGLE),
    "--norm_quant_fusion": Flag("str", _TOGGLE),
    "--reduce_fusion": Flag("str", _TOGGLE),
    "--user_buffer": Flag("str", _TOGGLE),
    "--use_fused_mlp": Flag("str", _TOGGLE),
    "--pp_reduce_scatter": Flag("str", _TOGGLE),
}
"""trtllm-build 1.2 flags this entrypoint writes (``emitted``) or accepts in ``buildOptions``:
the ``trtllm_build`` section of trtllm_flags_1_2.json."""

LIMIT_FLAGS: Final[Mapping[str, str]] = {
    "maxBatchSize": "--max_batch_size",
    "maxInputLen": "--max_input_len",
    "maxSeqLen": "--max_seq_len",
    "maxNumTokens": "--max_num_tokens",
    "maxBeamWidth": "--max_beam_width",
}
"""Spec ``limits`` keys and the trtllm-build flags they become (unset = trtllm-build default)."""

TOKENIZER_FILES: Final = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
"""Files trtllm-serve's tokenizer loader reads from the engine folder. trtllm-build writes no
tokenizer, and config.json is deliberately absent: the engine has its own."""


# --------------------------------------------------------------------------- quantize job

MODELOPT_CONFIGS: Final[Mapping[str, str]] = {
    "fp8": "FP8_DEFAULT_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "w4a8_awq": "W4A8_AWQ_BETA_CFG",
}
"""The PyTorch line's quantization formats and the ModelOpt config each is quantized with
(``modelopt_python_api.quantize.configs`` of trtllm_flags_1_3.json; a test keeps them equal).
No int8_sq: ModelOpt exports it as a legacy TensorRT-LLM checkpoint, which trtllm-serve of that
line cannot load."""
MODELOPT_KV_CONFIGS: Final[Mapping[str, str]] = {"fp8": "FP8_KV_CFG"}
"""KV-cache dtypes the quantize job calibrates scales for, and their ModelOpt config."""
HF_QUANT_CONFIG: Final = "hf_quant_config.json"
"""What ``export_hf_checkpoint`` writes beside the weights and trtllm-serve recognises a
ModelOpt checkpoint by: an export without it is not quantized."""

