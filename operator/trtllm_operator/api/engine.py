"""LLMEngine: compile one checkpoint with TensorRT-LLM, once per GPU type.

A TensorRT engine only loads on the GPU type it was built on, so an LLMEngine lists GPU types
(``spec.targets``) and the operator runs one build Job per type. Each built engine is stored
under a content-derived folder of a shared ReadWriteMany volume, and reported per target in
``status.targets``.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api.common import (
    AGE_COLUMN,
    ENV_LIST_SCHEMA,
    MAX_ENV,
    CliArgument,
    ConditionList,
    DNSSubdomain,
    EnvVar,
    GPUProduct,
    ImageReference,
    ImageRelease,
    KindInfo,
    LabelMap,
    PrinterColumn,
    PullSecretList,
    RelativePath,
    ResourceModel,
    ResourceRequirements,
    SecretKeyReference,
    SpecModel,
    StatusModel,
    TolerationList,
    cel,
    default_empty_object,
    env_rule,
    gpu_product_rule,
    no_gpu_resources_rule,
    no_operator_flags_rule,
    ready_columns,
    relative_path_rule,
    validations,
)

MAX_TARGETS: Final = 16
MAX_PARALLELISM: Final = facts.MAX_NODE_GPUS
MAX_SKIPPED_TARGETS: Final = 64
"""auto weighs every GPU type of the cluster; more types than this are not reported."""

# --------------------------------------------------------------------------- spec.model


class HuggingFaceModel(SpecModel):
    """A checkpoint on the Hugging Face Hub, downloaded by the build Job."""

    repo: Annotated[
        str,
        StringConstraints(
            min_length=1,
            max_length=200,
            pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9][-A-Za-z0-9_.]*$",
        ),
    ]
    """Repository id, e.g. meta-llama/Meta-Llama-3-8B-Instruct."""
    revision: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")] | (
        None
    ) = None
    """Branch, tag or commit to download; unset follows main. Pin a 40-character commit sha:
    a branch can move, and then engines built at different times (or for different GPU types)
    would hold different weights."""
    token_secret_ref: SecretKeyReference | None = None
    """Secret key holding a Hugging Face access token, needed for gated models such as Llama."""


class VolumeModel(SpecModel):
    """A checkpoint already on a PersistentVolumeClaim (Hugging Face layout)."""

    claim_name: DNSSubdomain
    """Name of the PersistentVolumeClaim, in the LLMEngine's namespace."""
    path: Annotated[
        RelativePath,
        Field(min_length=1, json_schema_extra=validations(
            relative_path_rule("spec.model.volume.path", "models/llama-3-8b"))),
    ]
    """Folder of the checkpoint inside the claim, e.g. models/Meta-Llama-3-70B-Instruct."""


SIZE_HINT_PATTERN: Final = (
    r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)([KMGTPE]i|[kMGTPE])?$"
)
"""A positive quantity of bytes: digits with an optional fraction and binary or decimal
suffix (16Gi, 1.5Ti, 16G, 17179869184); no sign, no milli, no exponent."""


_SUFFIX_POWERS: Final = {"": 1} | {s: 1024 ** (i + 1) for i, s in enumerate(
    ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))} | {s: 1000 ** (i + 1) for i, s in enumerate(
    ("k", "M", "G", "T", "P", "E"))}


def size_hint_bytes(value: int | str) -> int:
    """Bytes a sizeHint stands for: ``16Gi`` -> 17179869184 (fractions of a byte dropped).

    The pattern admits only the quantity forms that make sense for a size, so this is a short
    parse rather than the full Kubernetes quantity grammar.
    """
    if isinstance(value, int):
        return value
    match = re.match(SIZE_HINT_PATTERN, value)
    if match is None:
        raise ValueError(f"spec.model.sizeHint {value!r} is not a positive quantity of bytes")
    number = value[: len(value) - len(match.group(3) or "")]
    return int(Decimal(number) * _SUFFIX_POWERS[match.group(3) or ""])


def _check_size_hint(value: int | str) -> int | str:
    bad = value < 1 if isinstance(value, int) else not re.match(SIZE_HINT_PATTERN, value)
    if bad:
        raise ValueError(f"spec.model.sizeHint {value!r} is not a positive quantity of bytes: "
                         f"write e.g. 16G")
    return value


SizeHint = Annotated[
    int | str,
    AfterValidator(_check_size_hint),
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": SIZE_HINT_PATTERN,
        **validations(cel(
            "type(self) != int || self > 0",
            "spec.model.sizeHint must be a positive quantity of bytes: write e.g. 16G for "
            "an 8B-parameter model (2 bytes per parameter at 16 bits)")),
    }),
]
"""A checkpoint size in bytes: an integer or a quantity string (see SIZE_HINT_PATTERN)."""


class ModelSource(SpecModel):
    """Where the checkpoint comes from: exactly one of huggingFace or volume."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        "has(self.huggingFace) != has(self.volume)",
        "spec.model needs exactly one source: set either spec.model.huggingFace or "
        "spec.model.volume, not both and not neither",
    )))

    hugging_face: HuggingFaceModel | None = None
    """Download the checkpoint from the Hugging Face Hub."""
    volume: VolumeModel | None = None
    """Read the checkpoint from a PersistentVolumeClaim."""
    size_hint: SizeHint | None = None
    """Size of the checkpoint's weights at 16 bits per parameter, as a quantity (16G for an
    8B model: 2 bytes per parameter). Lets the operator refuse a target whose GPUs cannot hold
    the weights before any build starts, and lets targets auto skip such GPU types. Optional:
    once one engine of the same model and revision is built, the size the build measured is
    used instead; without either, the build Job checks the fit itself before downloading."""


# --------------------------------------------------------------------------- spec.build


class Calibration(SpecModel):
    """Calibration run that computes quantization scales (quantize.py --calib_* flags)."""

    dataset: Annotated[str, StringConstraints(min_length=1, max_length=512)] = (
        facts.DEFAULT_CALIBRATION_DATASET
    )
    """Calibration dataset: a name quantize.py knows or a Hugging Face dataset id."""
    size: Annotated[int, Field(ge=1, le=facts.MAX_CALIBRATION_SAMPLES)] = (
        facts.DEFAULT_CALIBRATION_SIZE
    )
    """Number of calibration samples."""
    max_seq_length: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] = (
        facts.DEFAULT_CALIBRATION_MAX_SEQ_LENGTH
    )
    """Tokens per calibration sample."""
    batch_size: Annotated[int, Field(ge=1, le=facts.MAX_CALIBRATION_SAMPLES)] = (
        facts.DEFAULT_CALIBRATION_BATCH_SIZE
    )
    """Samples per calibration batch; raise it to calibrate faster when memory allows."""
    dataset_path: Annotated[
        RelativePath,
        Field(min_length=1, json_schema_extra=validations(relative_path_rule(
            "spec.build.quantization.calibration.datasetPath", "calibration/chat.jsonl"))),
    ] | None = None
    """pytorch backend: calibration samples on the storage claim (spec.storage.claimName), a
    JSON Lines file with one {"text": ...} object per line, or a folder of such files. The
    quantize Job reads them offline. The tensorrt backend does not read it."""
    download_dataset: bool = False
    """pytorch backend: fetch calibration.dataset, a Hugging Face dataset repo (e.g.
    abisee/cnn_dailymail), at calibration.revision into the model cache with the CPU download
    Job, before the quantize Job, which always runs offline. Off by default, so nothing is
    downloaded unless the spec says so; a format that calibrates needs datasetPath or this."""
    revision: Annotated[str, StringConstraints(min_length=1, max_length=256,
                                               pattern=r"^\S+$")] | None = None
    """pytorch backend, with downloadDataset: the dataset repo's branch, tag or commit; unset
    follows main. Pin a commit: other samples give other scales."""
    files: Annotated[
        tuple[Annotated[str, StringConstraints(min_length=1, max_length=256,
                                               pattern=r"^[^/].*$")], ...],
        Field(max_length=32),
    ] = ()
    """pytorch backend: glob patterns of the data files to read, relative to the dataset repo
    (with downloadDataset: only these are fetched) or to datasetPath, e.g.
    ["3.0.0/validation-*.parquet"]. Unset: every .jsonl, .json and .parquet file."""
    text_field: Annotated[str, StringConstraints(min_length=1, max_length=128,
                                                 pattern=r"^\S+$")] = "text"
    """pytorch backend: the field (column) of each record holding the sample text, e.g. article
    for cnn_dailymail."""


class Quantization(SpecModel):
    """How weights, activations and the KV cache are quantized before the build."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        "has(self.format) || has(self.kvCacheDtype)",
        "spec.build.quantization needs format or kvCacheDtype: set one of them, or remove "
        "spec.build.quantization to build unquantized",
    )))

    format: facts.QuantFormat | None = None
    """Quantization format (quantize.py --qformat). fp8 and w4a8_awq need compute capability
    8.9 or newer (L40S, H100), nvfp4 needs 10.0 (B200); the others run from 8.0 (A100).
    Unset keeps the weights in spec.build.dtype."""
    kv_cache_dtype: facts.KvCacheDtype | None = None
    """Store the KV cache as fp8 or int8 (quantize.py --kv_cache_dtype): about half the memory
    per token, so more concurrent requests fit."""
    calibration: Calibration | None = None
    """Calibration settings for formats that calibrate (fp8, int8_sq, int4_awq, w4a8_awq,
    nvfp4); unset uses quantize.py's defaults."""


class Parallelism(SpecModel):
    """How the model is split across GPUs. Fixed when the checkpoint is converted: serving
    uses exactly tensor x pipeline GPUs on one node."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        # has(): the CRD's default ({}) is checked against this rule before its fields' own
        # defaults are filled in.
        "(has(self.tensor) ? self.tensor : 1) * (has(self.pipeline) ? self.pipeline : 1)"
        f" <= {MAX_PARALLELISM}",
        f"spec.build.parallelism.tensor x pipeline must be at most {MAX_PARALLELISM}: an "
        f"engine runs on the GPUs of one node, and no GPU node has more; lower tensor or "
        f"pipeline",
    )))

    tensor: Annotated[int, Field(ge=1, le=MAX_PARALLELISM)] = 1
    """Tensor parallel size: GPUs each layer is split across."""
    pipeline: Annotated[int, Field(ge=1, le=MAX_PARALLELISM)] = 1
    """Pipeline parallel size: consecutive groups of layers on different GPUs."""

    @property
    def world_size(self) -> int:
        """GPUs one copy of the engine runs on."""
        return self.tensor * self.pipeline


class BuildLimits(SpecModel):
    """Largest shapes the engine accepts; memory is planned for them at build time. Unset
    limits take trtllm-build's defaults (maxBatchSize 2048, maxInputLen 1024, maxNumTokens
    8192, maxBeamWidth 1; maxSeqLen from the model's config)."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        "!has(self.maxInputLen) || !has(self.maxSeqLen) || self.maxInputLen <= self.maxSeqLen",
        "spec.build.limits.maxInputLen must not exceed spec.build.limits.maxSeqLen (the "
        "prompt is part of the sequence): lower maxInputLen or raise maxSeqLen",
        field_path=".maxInputLen",
    )))

    max_batch_size: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Most requests in one batch (--max_batch_size)."""
    max_input_len: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Longest prompt in tokens (--max_input_len)."""
    max_seq_len: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Longest prompt plus output in tokens (--max_seq_len)."""
    max_num_tokens: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Most tokens in one batch after padding is removed (--max_num_tokens)."""
    max_beam_width: Annotated[int, Field(ge=1, le=facts.MAX_BEAM_WIDTH)] | None = None
    """Most beams for beam search (--max_beam_width); 1 means greedy or sampling only."""


class BuildPlugins(SpecModel):
    """trtllm-build plugin settings (the flag of the same name in snake_case). Unset settings
    keep trtllm-build's defaults, which suit most decoder models."""

    gpt_attention_plugin: facts.PluginDtype | None = None
    """--gpt_attention_plugin: attention kernel precision (auto follows the model dtype)."""
    gemm_plugin: facts.GemmPluginDtype | None = None
    """--gemm_plugin: GEMM plugin precision; auto is usually fastest for small batches."""
    gemm_swiglu_plugin: facts.Fp8OrDisable | None = None
    """--gemm_swiglu_plugin: fuse GEMM and SwiGLU (fp8 only)."""
    fp8_rowwise_gemm_plugin: facts.PluginDtype | None = None
    """--fp8_rowwise_gemm_plugin: GEMM plugin for FP8 row-wise quantization."""
    low_latency_gemm_plugin: facts.Fp8OrDisable | None = None
    """--low_latency_gemm_plugin: FP8 GEMM tuned for small batches."""
    low_latency_gemm_swiglu_plugin: facts.Fp8OrDisable | None = None
    """--low_latency_gemm_swiglu_plugin: low-latency fused GEMM and SwiGLU (fp8 only)."""
    gemm_allreduce_plugin: facts.GemmAllreduceDtype | None = None
    """--gemm_allreduce_plugin: fuse GEMM and all-reduce for tensor parallelism."""
    moe_plugin: facts.PluginDtype | None = None
    """--moe_plugin: mixture-of-experts kernel precision."""
    nccl_plugin: facts.PluginDtype | None = None
    """--nccl_plugin: NCCL communication precision for multi-GPU engines."""
    context_fmha: facts.Toggle | None = None
    """--context_fmha: fused multi-head attention in the context phase."""
    remove_input_padding: facts.Toggle | None = None
    """--remove_input_padding: pack requests without padding."""
    tokens_per_block: Annotated[int, Field(ge=1, le=facts.MAX_TOKENS_PER_BLOCK)] | None = None
    """--tokens_per_block: tokens per paged KV cache block."""
    use_paged_context_fmha: facts.Toggle | None = None
    """--use_paged_context_fmha: paged context attention (needed for KV cache reuse and
    chunked prefill)."""
    use_fp8_context_fmha: facts.Toggle | None = None
    """--use_fp8_context_fmha: FP8 context attention with FP8 quantization."""
    fuse_fp4_quant: facts.Toggle | None = None
    """--fuse_fp4_quant: fuse FP4 quantization into attention (nvfp4)."""
    multiple_profiles: facts.Toggle | None = None
    """--multiple_profiles: build several optimization profiles; faster at runtime, slower
    to build."""
    norm_quant_fusion: facts.Toggle | None = None
    """--norm_quant_fusion: fuse normalization and quantization."""
    reduce_fusion: facts.Toggle | None = None
    """--reduce_fusion: fuse all-reduce with the following normalization."""
    user_buffer: facts.Toggle | None = None
    """--user_buffer: user buffers for all-reduce (with reduceFusion)."""
    use_fused_mlp: facts.Toggle | None = None
    """--use_fused_mlp: fuse the gate and up projections of the MLP."""
    pp_reduce_scatter: facts.Toggle | None = None
    """--pp_reduce_scatter: reduce-scatter between pipeline stages (Mixtral only)."""


class BuildSpec(SpecModel):
    """How the engine is built: image, precision, parallelism, limits, and the build pod."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        "!has(self.gpus) || self.gpus <= self.parallelism.tensor * self.parallelism.pipeline",
        "spec.build.gpus must not exceed spec.build.parallelism.tensor x pipeline: more GPUs "
        "than ranks sit idle; lower spec.build.gpus or leave it unset",
        field_path=".gpus",
    )))

    image: ImageReference = facts.DEFAULT_TRTLLM_IMAGE
    """TensorRT-LLM release image that runs the build (and, by default, serves the engine).
    Must be a release that ships trtllm-build: 1.0 up to 1.3.0rc20. Its tag must be that
    version (e.g. :1.2.0) unless imageRelease says it."""
    image_release: ImageRelease | None = None
    """The TensorRT-LLM release in spec.build.image (e.g. 1.2.0 or 1.3.0rc20), for digests and
    private mirrors whose tags are not versions. When set, it is the release every check uses
    instead of the tag."""
    image_pull_secrets: PullSecretList = ()
    """Secrets for pulling the image from a private registry."""
    dtype: facts.Dtype = "auto"
    """Data type of the unquantized weights and activations; auto follows the checkpoint."""
    quantization: Quantization | None = None
    """Quantize before building; unset builds in dtype."""
    parallelism: Annotated[
        Parallelism, Field(default_factory=Parallelism, json_schema_extra=default_empty_object())
    ]
    """Tensor and pipeline parallelism of the engine."""
    limits: BuildLimits | None = None
    """Largest batch and sequence shapes the engine accepts."""
    plugins: BuildPlugins | None = None
    """trtllm-build plugin settings."""
    extra_args: Annotated[
        tuple[CliArgument, ...],
        Field(max_length=32, json_schema_extra=validations(no_operator_flags_rule(
            "spec.build.extraArgs", facts.BUILD_FLAGS_SET_BY_OPERATOR,
            "spec.build.limits, spec.build.parallelism or spec.build.plugins",
            typed_flags=tuple(f"--{name}" for name in BuildPlugins.model_fields)),
            # The build Job passes these on as flag -> values, so a value before any flag
            # belongs to nothing and would be lost without a word.
            cel("size(self) == 0 || self[0].startsWith('--')",
                "spec.build.extraArgs must begin with a flag: each value belongs to the --flag "
                "before it; write e.g. [\"--strip_plan\"] or [\"--logits_dtype\", \"float32\"]"),
        )),
    ] = ()
    """More trtllm-build arguments, one per entry, e.g. ["--strip_plan"] or
    ["--logits_dtype", "float32"]."""
    gpus: Annotated[int, Field(ge=1, le=MAX_PARALLELISM)] | None = None
    """GPUs for the build pod; defaults to tensor x pipeline. Fewer builds the ranks one after
    another: slower, but fits a busier node."""
    resources: Annotated[
        ResourceRequirements,
        Field(json_schema_extra=validations(
            no_gpu_resources_rule("spec.build.resources", "spec.build.gpus"))),
    ] | None = None
    """CPU and memory of the build pod; quantizing a 70B model needs a lot of host memory."""
    tolerations: TolerationList = ()
    """Tolerations of the build pod (the operator adds nvidia.com/gpu itself)."""
    node_selector: LabelMap | None = None
    """More node labels the build pod requires, on top of the GPU type."""
    env: Annotated[
        tuple[EnvVar, ...],
        Field(max_length=MAX_ENV, json_schema_extra={
            **ENV_LIST_SCHEMA, **validations(env_rule("spec.build.env"))}),
    ] = ()
    """More environment variables for the build pod, e.g. proxy settings."""


class EngineStorage(SpecModel):
    """Where built engines are kept: a ReadWriteMany claim that build and serving pods mount."""

    claim_name: DNSSubdomain
    """Name of the ReadWriteMany PersistentVolumeClaim, in the LLMEngine's namespace."""
    path_prefix: Annotated[
        RelativePath,
        Field(json_schema_extra=validations(
            relative_path_rule("spec.storage.pathPrefix", "engines"))),
    ] = "engines"
    """Folder inside the claim holding engines, each in a subfolder named by its fingerprint.
    LLMEngines sharing claim and prefix share identical builds instead of repeating them."""


STORAGE_IMMUTABLE_RULE = cel(
    "self == oldSelf",
    "spec.storage is immutable: engines already built live on the old claim and path, and "
    "running LLMDeployments read them there; create a new LLMEngine to use other storage",
)


class LLMEngineSpec(SpecModel):
    """A checkpoint, how to build it, and the GPU types to build it for."""

    model: ModelSource
    """The checkpoint to build."""
    backend: facts.Backend | None = None
    """tensorrt compiles one engine per GPU type with trtllm-build (images 1.0 to 1.3.0rc20);
    pytorch serves the Hugging Face checkpoint itself, or its ModelOpt-quantized export, with
    trtllm-serve --backend pytorch (images 1.3.0rc21 and later). Unset: chosen from
    spec.build.image's release (status.backend shows the choice)."""
    build: Annotated[
        BuildSpec, Field(default_factory=BuildSpec, json_schema_extra=default_empty_object())
    ]
    """Build settings shared by every target."""
    targets: Annotated[
        tuple[GPUProduct, ...],
        Field(min_length=1, max_length=MAX_TARGETS, json_schema_extra=validations(
            gpu_product_rule("spec.targets", each=True),
            cel("self.all(t, self.exists_one(u, u == t))",
                "spec.targets must list each GPU type once: remove the duplicate entry"),
        )),
    ]
    """GPU types to build for, by nvidia.com/gpu.product label value, e.g.
    NVIDIA-H100-80GB-HBM3 or NVIDIA-L40S. One engine is built per entry, on a node of that
    type: an engine only loads on the GPU type it was built on. The entry auto stands for
    every GPU type present in the cluster whose nodes can run the build (re-evaluated as
    GPU node pools come and go)."""
    storage: Annotated[EngineStorage, Field(json_schema_extra=validations(STORAGE_IMMUTABLE_RULE))]
    """Volume and folder where built engines are kept. Immutable."""


# --------------------------------------------------------------------------- status


class EngineConditionType(StrEnum):
    """Condition types of an LLMEngine."""

    READY = "Ready"
    """Every target is built for the current spec: deployments can use any of them."""
    BUILT = "Built"
    """Every target has an engine (possibly for an older spec while a rebuild runs)."""
    BUILDING = "Building"
    """At least one build Job is running."""
    MODEL_CACHED = "ModelCached"
    """The Hugging Face checkpoint is in the model cache (absent for a volume-sourced model)."""


TargetState = Literal["Pending", "Building", "Built", "Failed", "Invalid", "Unschedulable"]


class BuildVersions(StatusModel):
    """Software versions an engine was built with, read from the build."""

    tensorrt_llm: str | None = Field(default=None, alias="tensorrtLLM")
    """TensorRT-LLM version, e.g. 1.2.0."""
    tensorrt: str | None = None
    """TensorRT version."""


class BuiltLimits(StatusModel):
    """Limits an engine was built with, read from its config.json: what serving may not exceed.

    A separate model from :class:`BuildLimits` because these are resolved values (trtllm-build
    defaults and the model's own maximum filled in), not requests.
    """

    max_batch_size: int | None = None
    """Most requests in one batch."""
    max_input_len: int | None = None
    """Longest prompt in tokens."""
    max_seq_len: int | None = None
    """Longest prompt plus output in tokens."""
    max_num_tokens: int | None = None
    """Most tokens in one batch."""
    max_beam_width: int | None = None
    """Most beams for beam search."""


class EngineTargetStatus(StatusModel):
    """The build of one GPU type."""

    gpu: GPUProduct
    """GPU type (nvidia.com/gpu.product)."""
    state: TargetState
    """Pending (waiting for a build to start), Building, Built, Failed, Invalid (this GPU
    type cannot run the spec), or Unschedulable (no node of this GPU type, or none with enough
    GPUs); see reason and message."""
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """One CamelCase word for the state, e.g. QuantizationUnsupported."""
    message: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """What happened and, if it failed, how to fix it."""
    fingerprint: Annotated[str, StringConstraints(max_length=64)] | None = None
    """sha256 of everything that determines the engine (model, build settings, image, GPU
    type): equal fingerprints mean interchangeable engines."""
    path: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Folder of the engine inside the storage claim."""
    job: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Name of the build Job."""
    image: Annotated[str, StringConstraints(max_length=512)] | None = None
    """Image the engine was built with; serving uses the same release."""
    model_revision: Annotated[str, StringConstraints(max_length=256)] | None = None
    """Commit of the checkpoint the engine was built from, as resolved by the build."""
    start_time: datetime | None = None
    """When the build Job started."""
    completion_time: datetime | None = None
    """When the engine was published."""
    engine_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the engine files (all ranks)."""
    total_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the published folder, tokenizer included."""
    checkpoint_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the checkpoint's weights at 16 bits per parameter, as the build measured it
    (before downloading; also reported by a build that failed later): what memory-fit checks
    of other targets and engines of the same model use."""
    versions: BuildVersions | None = None
    """Software versions the engine was built with."""
    limits: BuiltLimits | None = None
    """Limits the engine was actually built with (unset spec limits resolved)."""


class SkippedTarget(StatusModel):
    """A GPU type that spec.targets auto considered and left out, and why."""

    gpu: GPUProduct
    """GPU type (nvidia.com/gpu.product)."""
    reason: Annotated[str, StringConstraints(max_length=1024)]
    """One CamelCase word, e.g. ModelDoesNotFit or QuantizationUnsupported."""
    message: Annotated[str, StringConstraints(max_length=32768)]
    """Why this GPU type cannot run the spec."""


ModelCacheState = Literal["Pending", "Downloading", "Cached", "Failed"]


class DownloadProgress(StatusModel):
    """Bytes fetched so far, from the download pod's last progress line."""

    done_bytes: Annotated[int, Field(ge=0)]
    """Bytes in the staging folder (partial files count)."""
    total_bytes: Annotated[int, Field(ge=0)]
    """Bytes of every file to fetch."""


class ModelCacheStatus(StatusModel):
    """The Hugging Face checkpoint in the shared model cache: one download per repo and
    revision, shared by every target and every LLMEngine naming it."""

    state: ModelCacheState
    """Pending, Downloading, Cached or Failed."""
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Why, in one word (e.g. Downloaded, CacheHit, ModelNotFound, ModelAccessDenied)."""
    message: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """What happened and, on failure, how to retry."""
    job: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The download Job (shared by every LLMEngine naming this repo and revision)."""
    commit: Annotated[str, StringConstraints(max_length=64)] | None = None
    """The commit the revision resolved to."""
    path: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """The cache entry as build pods see it, e.g. /engines/models/org--name/<commit>."""
    total_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes of every file of the cache entry."""
    checkpoint_bytes: Annotated[int, Field(ge=0)] | None = None
    """The weights at 16 bits per parameter: the memory fit check's size source."""
    progress: DownloadProgress | None = None
    """While Downloading: bytes done and total, when the pod's log could be read."""


class LLMEngineStatus(StatusModel):
    """What the operator observed about the builds."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation of the spec this status describes."""
    conditions: ConditionList = ()
    """Ready, Built and Building, with reason and message."""
    targets: Annotated[
        tuple[EngineTargetStatus, ...],
        Field(max_length=MAX_TARGETS, json_schema_extra={
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpu"],
        }),
    ] = ()
    """One entry per GPU type in spec.targets."""
    skipped_targets: Annotated[
        tuple[SkippedTarget, ...],
        Field(max_length=MAX_SKIPPED_TARGETS, json_schema_extra={
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["gpu"],
        }),
    ] | None = None
    """GPU types present in the cluster that spec.targets auto did not build for, each with
    the reason (a model too big for its memory, a quantization format it cannot run). Absent
    when auto leaves none out."""
    built_targets: Annotated[str, StringConstraints(max_length=16)] | None = None
    """Built targets over all targets, e.g. 2/3."""
    model: Annotated[str, StringConstraints(max_length=512)] | None = None
    """The checkpoint in one line: repo@revision, or pvc://claim/path."""
    backend: facts.Backend | None = None
    """The backend in effect: spec.backend, or the one spec.build.image's release implies."""
    model_cache: ModelCacheStatus | None = None
    """The download of a Hugging Face checkpoint into the model cache (none for a volume)."""
    calibration_data: ModelCacheStatus | None = None
    """pytorch backend with calibration.downloadDataset: the download of the calibration
    dataset repo into the model cache, which the quantize Job reads offline."""


class LLMEngine(ResourceModel):
    """A whole LLMEngine object, as a handler receives it."""

    api_version: Literal["trtllm.dev/v1alpha1"] = "trtllm.dev/v1alpha1"
    kind: Literal["LLMEngine"] = "LLMEngine"
    spec: LLMEngineSpec
    status: LLMEngineStatus = Field(default_factory=LLMEngineStatus)


ENGINE_KIND = KindInfo(
    kind="LLMEngine",
    plural="llmengines",
    singular="llmengine",
    short_names=("llme",),
    description=(
        "LLMEngine compiles one checkpoint with TensorRT-LLM (trtllm-build) for each GPU type "
        "in spec.targets, and keeps the engines on a shared volume for LLMDeployments to serve."
    ),
    spec_model=LLMEngineSpec,
    status_model=LLMEngineStatus,
    printer_columns=(
        ready_columns()[0],
        PrinterColumn("Built", "string", ".status.builtTargets",
                      "Built targets over all targets."),
        PrinterColumn("Model", "string", ".status.model", "The checkpoint being built."),
        PrinterColumn("Backend", "string", ".status.backend",
                      "tensorrt (an engine per GPU type) or pytorch (the checkpoint served)."),
        PrinterColumn("Cache", "string", ".status.modelCache.state",
                      "The checkpoint's download into the model cache.", priority=1),
        AGE_COLUMN,
        *ready_columns()[1:],
    ),
    name_rules=(
        cel(
            "self.size() <= 63",
            "metadata.name must be at most 63 characters: it labels the build Jobs and "
            "deployments of this LLMEngine; choose a shorter name",
        ),
    ),
)
