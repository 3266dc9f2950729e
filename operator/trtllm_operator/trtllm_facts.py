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
from collections.abc import Mapping
from dataclasses import dataclass
from functools import total_ordering
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

BUILD_FLAGS_REFUSED: Final[Mapping[str, str]] = _jobfacts.BUILD_OPTIONS_REFUSED
"""Real trtllm-build flags that are not the operator's to set yet make no sense in a build Job,
and why (the build job refuses them too). The job package holds the one list."""

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
    "--gpus_per_node",  # multi-node groups: GPUs of each pod (deployments.multinode)
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

FIRST_RELEASE_OF_PYTORCH_LINE: Final = FIRST_RELEASE_WITHOUT_TRTLLM_BUILD
"""The first release the project's PyTorch-line flag table (``trtllm_flags_1_3.json``) covers:
read from NVIDIA's sources after the TensorRT backend was removed. Earlier releases also had a
PyTorch backend, but their serve options were not read, so the operator does not serve it there."""

PYTORCH_RELEASES: Final = ReleaseRange(FIRST_RELEASE_OF_PYTORCH_LINE, None)
"""Releases that serve Hugging Face checkpoints with ``trtllm-serve --backend pytorch`` as the
operator writes it (1.3.0rc21 on, 1.4.x)."""

# --------------------------------------------------------------------------- backends

Backend = Literal["tensorrt", "pytorch"]
"""``spec.backend`` of an LLMEngine: ``tensorrt`` compiles one engine per GPU type with
trtllm-build; ``pytorch`` serves the Hugging Face checkpoint (or its ModelOpt-quantized export)
directly."""

BACKEND_RELEASES: Final[Mapping[Backend, ReleaseRange]] = {
    "tensorrt": ENGINE_RELEASES,
    "pytorch": PYTORCH_RELEASES,
}
"""The releases each backend works with (builder and serving image alike)."""


def backend_of_release(release: Release | None) -> Backend:
    """The backend an image's release implies when spec.backend is unset: pytorch from
    1.3.0rc21 on (trtllm-build is gone), tensorrt before and when the release is unknown (then
    the image check refuses the spec anyway, with ImageReleaseUnknown)."""
    if release is not None and release in PYTORCH_RELEASES:
        return "pytorch"
    return "tensorrt"


PYTORCH_QUANT_FORMATS: Final[tuple[QuantFormat, ...]] = ("fp8", "nvfp4", "int4_awq", "w4a8_awq")
"""Formats the pytorch backend offers: ModelOpt exports them as Hugging Face (unified)
checkpoints that trtllm-serve loads (``modelopt_hf_ptq.operator_formats`` of the 1.3 table).
int8_sq is not one: ModelOpt still exports it as a legacy TensorRT-LLM checkpoint, which only
trtllm-build reads."""

PYTORCH_KV_CACHE_DTYPES: Final[tuple[KvCacheDtype, ...]] = ("fp8",)
"""KV-cache dtypes the quantize Job writes scales for (ModelOpt's fp8 KV-cache config)."""
