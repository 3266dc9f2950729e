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
from dataclasses import dataclass
from functools import total_ordering
from typing import Final, Literal, NamedTuple

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

QUANT_FORMATS_NEEDING_CALIBRATION: Final[frozenset[QuantFormat]] = frozenset(
    {"fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"}
)
"""Formats whose scales come from running calibration data through the model."""

DEFAULT_CALIBRATION_DATASET: Final = "cnn_dailymail"
DEFAULT_CALIBRATION_SIZE: Final = 512
DEFAULT_CALIBRATION_MAX_SEQ_LENGTH: Final = 512
DEFAULT_CALIBRATION_BATCH_SIZE: Final = 1

# --------------------------------------------------------------------------- memory fit

WEIGHT_BYTES_FACTOR: Final[dict[str, float]] = {
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


# --------------------------------------------------------------------------- trtllm-build

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

BUILD_FLAGS_SET_BY_OPERATOR: Final[tuple[str, ...]] = (
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
"""Flags the build Job writes from typed fields; ``spec.build.extraArgs`` may not repeat them."""

BUILD_FLAGS_REFUSED: Final[dict[str, str]] = {
    "--dry_run": "it makes trtllm-build write no engine",
}
"""Real trtllm-build flags that are not the operator's to set yet make no sense in a build Job,
and why (the build job refuses them too)."""

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

RELEASE_PATTERN: Final = (
    r"^v?(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})(?:\.(0|[1-9][0-9]{0,3}))?"
    r"(?:[.-]?rc\.?(0|[1-9][0-9]{0,3}))?(?:[.-]?post\.?(0|[1-9][0-9]{0,3}))?$"
)
"""A TensorRT-LLM version as image tags and ``spec.*.imageRelease`` spell it: ``1.2.0``,
``v1.2.1``, ``1.3.0rc20``, ``1.2.0rc6.post2``, ``1.2.0.post1``. Also the CRD pattern of the
imageRelease fields, so the API server and the operator read the same grammar."""

_RELEASE = re.compile(RELEASE_PATTERN)


@total_ordering
@dataclass(frozen=True)
class Release:
    """A TensorRT-LLM release: ``1.3.0rc20`` -> major 1, minor 3, patch 0, rc 20.

    Ordered as versions: every release candidate of 1.3.0 comes before the final 1.3.0
    (``rc`` None), and a ``.postN`` rebuild after what it rebuilds.
    """

    major: int
    minor: int
    patch: int = 0
    rc: int | None = None
    post: int | None = None

    @property
    def line(self) -> tuple[int, int]:
        """(major, minor), e.g. to name a flag table; never enough to tell what a release has
        (1.3.0rc20 builds engines, 1.3.0rc21 does not)."""
        return (self.major, self.minor)

    @property
    def _key(self) -> tuple[int, int, int, float, int]:
        return (self.major, self.minor, self.patch,
                float("inf") if self.rc is None else self.rc, self.post or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Release):
            return NotImplemented
        return self._key < other._key

    def __str__(self) -> str:
        rc = "" if self.rc is None else f"rc{self.rc}"
        post = "" if self.post is None else f".post{self.post}"
        return f"{self.major}.{self.minor}.{self.patch}{rc}{post}"


def parse_release(text: str) -> Release | None:
    """The release a version string names (``1.3.0rc20``), or None if it names none.

    The one parser of release text: image tags and the imageRelease fields both go through it.
    A development or nightly tag (``1.3.0.dev2026``, ``nightly``) is no release: where it falls
    among the release candidates cannot be told.
    """
    match = _RELEASE.match(text)
    if match is None:
        return None
    major, minor, patch, rc, post = match.groups()
    return Release(int(major), int(minor), int(patch or 0),
                   None if rc is None else int(rc), None if post is None else int(post))


def release_of_image(image: str) -> Release | None:
    """The TensorRT-LLM release an image reference names by its tag, if the tag is a version.

    ``nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc1`` -> ``1.2.0rc1``; a registry port
    (``host:5000/img:1.2.0``) is not a tag, and ``img:1.2.0@sha256:...`` is read by its tag. A
    digest alone, an untagged name (= ``latest``) or a tag that is not a version (``latest``,
    ``nightly``) gives ``None``: the release cannot be told from the name alone.
    """
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    return parse_release(last.rsplit(":", 1)[1])


def effective_release(image: str, image_release: str | None) -> Release | None:
    """The release of an image: what its imageRelease field states, else what its tag says."""
    return parse_release(image_release) if image_release is not None else release_of_image(
        image)


class ReleaseRange(NamedTuple):
    """Releases from ``first`` (included) up to ``end`` (excluded; None = no end yet)."""

    first: Release
    end: Release | None

    def __contains__(self, release: object) -> bool:
        return (isinstance(release, Release) and self.first <= release
                and (self.end is None or release < self.end))


FIRST_RELEASE_WITH_TENSORRT_BACKEND_FLAG: Final = Release(1, 0, 0, rc=0)
"""``trtllm-serve --backend tensorrt`` (how an engine folder is served) exists from the 1.0
line on; in 0.17 to 0.21 ``--backend`` offered only pytorch."""

FIRST_RELEASE_WITHOUT_TRTLLM_BUILD: Final = Release(1, 3, 0, rc=21)
"""NVIDIA removed ``trtllm-build`` and the TensorRT engine backend in 1.3.0rc21: the release
notes of 1.3.0rc20 call it the last release with the TensorRT backend."""

ENGINE_RELEASES: Final = ReleaseRange(FIRST_RELEASE_WITH_TENSORRT_BACKEND_FLAG,
                                      FIRST_RELEASE_WITHOUT_TRTLLM_BUILD)
"""Releases that build engines with ``trtllm-build`` and serve them with ``--backend
tensorrt``: the releases the operator accepts (a later backend choice may add another range)."""
