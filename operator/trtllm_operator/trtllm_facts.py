"""TensorRT-LLM facts the API and its validation depend on, in one place.

Every value here was read from NVIDIA's sources for the 1.2.x releases (the project keeps the
full flag table it was taken from in ``shared/reference/trtllm-cli-1.2.json``): the choices of
``quantize.py`` / ``convert_checkpoint.py`` / ``trtllm-build`` / ``trtllm-serve`` flags, the
defaults ``trtllm-build`` applies when a limit is not given, and the lowest compute capability
each quantization format runs on. The API models take their enums from the ``Literal`` types
below, so the CRD schema, the validation module and the command builders cannot disagree.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

from trtllm_jobs import facts as _jobfacts

# --------------------------------------------------------------------------- checkpoint

Dtype = Literal["auto", "float16", "bfloat16", "float32"]
"""``--dtype`` of ``convert_checkpoint.py`` and ``quantize.py``: the weights' compute type."""

QuantFormat = Literal["fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "nvfp4"]
"""``quantize.py --qformat`` choices, minus ``full_prec`` (no quantization = no format)."""

KvCacheDtype = Literal["fp8", "int8"]
"""``quantize.py --kv_cache_dtype`` choices."""

QUANT_FORMAT_MIN_SM: Final[dict[QuantFormat, int]] = {
    "fp8": 89,
    "w4a8_awq": 89,
    "nvfp4": 100,
    "int8_sq": 80,
    "int4_awq": 80,
    "int8_wo": 80,
    "int4_wo": 80,
}
"""Lowest compute capability (as SM number, 8.9 -> 89) each format runs on (arch_support)."""

KV_CACHE_DTYPE_MIN_SM: Final[dict[KvCacheDtype, int]] = {
    # TensorRT-LLM's precompiled FP8 (e4m3) KV-cache attention kernels (XQA) exist for SM89 and
    # SM90 only, and FP8 is an Ada/Hopper precision in its support matrix (Ampere: FP32, FP16,
    # BF16, INT8, INT4). The 1.x docs list FP8 KV on Ampere for the PyTorch backend, which the
    # engine (TensorRT) workflow does not use.
    "fp8": 89,
    # INT8 KV-cache kernels are built for SM80, SM86, SM89 and SM90 alike.
    "int8": 80,
}
"""Lowest compute capability (SM number) each ``--kv_cache_dtype`` runs on."""

QUANT_FORMATS_NEEDING_CALIBRATION: Final[frozenset[QuantFormat]] = frozenset(
    {"fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"}
)
"""Formats whose scales come from running calibration data through the model."""

DEFAULT_CALIBRATION_DATASET: Final = "cnn_dailymail"
DEFAULT_CALIBRATION_SIZE: Final = 512
DEFAULT_CALIBRATION_MAX_SEQ_LENGTH: Final = 512
DEFAULT_CALIBRATION_BATCH_SIZE: Final = 1

# --------------------------------------------------------------------------- memory fit

# The memory-fit estimate (the weight-format factors, the headroom and the formula) is shared
# with the build job, which runs it before downloading: its one definition is in the job
# package, where it is explained.
WEIGHT_BYTES_FACTOR: Final = _jobfacts.WEIGHT_BYTES_FACTOR
FIT_HEADROOM_FRACTION: Final = _jobfacts.FIT_HEADROOM_FRACTION
FIT_HEADROOM_BYTES: Final = _jobfacts.FIT_HEADROOM_BYTES
fit_need_bytes: Final = _jobfacts.fit_need_bytes


# --------------------------------------------------------------------------- trtllm-build

# Upper bounds of the integer settings, so admission refuses values nothing can run. Each says
# where it comes from; the API models take them as ``le=`` (the CRD's ``maximum``).
INT32_MAX: Final = 2**31 - 1
"""Batch sizes, sequence lengths and token counts are ``SizeType32`` (int32) in TensorRT-LLM's
C++ runtime (``runtime/common.h``), and a Deployment's replicas are int32 in Kubernetes: a
larger value cannot even be represented there."""
MAX_BEAM_WIDTH: Final = 1024
"""``kMaxBeamWidth`` of TensorRT-LLM's beam-search kernels (``kernels/beamSearchKernels.h``)."""
MAX_NODE_GPUS: Final = 16
"""Most GPUs tensor x pipeline may span. An engine runs on one node (the operator does not
build multi-node engines), and the largest GPU nodes sold hold 16 (DGX-2, 16-GPU cloud
shapes); common HGX nodes hold 8, and the operator checks the real node size per target."""
MAX_TOKENS_PER_BLOCK: Final = 1024
"""No hard limit in trtllm-build; its default is 32 or 64 and the XQA kernels are built for 16
to 128 tokens per block. 1024 is a generous cap: a block that large wastes most of its memory
on short requests."""
MAX_CALIBRATION_SAMPLES: Final = 65536
"""No hard limit in ``quantize.py``; NVIDIA's default is 512 samples, and calibrating on more
than a few thousand changes the scales little while costing GPU hours. A generous cap that
also bounds the calibration batch size."""

BUILD_DEFAULT_MAX_BATCH_SIZE: Final = 2048
BUILD_DEFAULT_MAX_INPUT_LEN: Final = 1024
BUILD_DEFAULT_MAX_NUM_TOKENS: Final = 8192
BUILD_DEFAULT_MAX_BEAM_WIDTH: Final = 1
"""What ``trtllm-build`` uses when a limit is not given (``max_seq_len`` comes from the model)."""

PluginDtype = Literal["auto", "float16", "float32", "bfloat16", "int32", "disable"]
GemmPluginDtype = Literal[
    "auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", "disable"
]
Fp8OrDisable = Literal["fp8", "disable"]
GemmAllreduceDtype = Literal["float16", "bfloat16", "disable"]
Toggle = Literal["enable", "disable"]

# trtllm-build flags the build job writes itself: defined in the job package, which refuses them
# in buildOptions; the operator refuses them in extraArgs.
BUILD_FLAGS_SET_BY_OPERATOR: Final[tuple[str, ...]] = _jobfacts.BUILD_FLAGS_SET_BY_OPERATOR
"""Flags the build Job writes from typed fields; ``spec.build.extraArgs`` may not repeat them."""

# --------------------------------------------------------------------------- trtllm-serve

ServeLogLevel = Literal["internal_error", "error", "warning", "info", "verbose", "debug", "trace"]

SERVE_FLAGS_SET_BY_OPERATOR: Final[tuple[str, ...]] = (
    "--host",
    "--port",
    "--backend",
    "--tokenizer",
    "--tp_size",
    "--tensor_parallel_size",
    "--pp_size",
    "--pipeline_parallel_size",
    "--max_batch_size",
    "--max_num_tokens",
    "--max_seq_len",
    "--max_beam_width",
    "--kv_cache_free_gpu_memory_fraction",
    "--free_gpu_memory_fraction",
    "--log_level",
    "--extra_llm_api_options",
    "--config",
)
"""Flags the serving pod writes from typed fields; ``spec.serve.extraArgs`` may not repeat them."""

DEFAULT_SERVE_PORT: Final = 8000

# --------------------------------------------------------------------------- releases

DEFAULT_TRTLLM_IMAGE: Final = "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"
"""The builder and serving image when a resource names none: the newest release line that still
ships ``trtllm-build``. The only place the default is written."""

FIRST_RELEASE_WITH_TENSORRT_BACKEND_FLAG: Final = (1, 0)
"""``trtllm-serve --backend tensorrt`` (how an engine folder is served) exists from 1.0."""

FIRST_RELEASE_WITHOUT_TRTLLM_BUILD: Final = (1, 3)
"""NVIDIA removed the TensorRT engine backend (and ``trtllm-build``) after the 1.2.x line."""

_RELEASE_TAG = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?([.-]?(?:rc|post|dev)\.?\d*)?$")


class Release(NamedTuple):
    """A TensorRT-LLM release as an image tag names it: ``1.2.0rc1`` -> (1, 2, 0, "rc1")."""

    major: int
    minor: int
    patch: int
    suffix: str = ""

    @property
    def line(self) -> tuple[int, int]:
        """(major, minor): what decides which features a release has."""
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}{self.suffix}"


def release_of_image(image: str) -> Release | None:
    """The TensorRT-LLM release an image reference names by its tag, if the tag is a version.

    ``nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc1`` -> ``1.2.0rc1``. A digest reference, an
    untagged name or a tag that is not a version (``latest``, ``my-build``) gives ``None``: the
    release cannot be told from the name alone.
    """
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    match = _RELEASE_TAG.match(last.rsplit(":", 1)[1])
    if match is None:
        return None
    major, minor, patch, suffix = match.groups()
    return Release(int(major), int(minor), int(patch or 0), suffix or "")
