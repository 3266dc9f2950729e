"""Checks the API server cannot make, because they need facts about the cluster or TensorRT-LLM.

Admission (the CRD schema and its CEL rules) refuses what is wrong in the object alone. What
is left needs to know which GPUs exist and what they can do: FP8 on an A100, tensor x pipeline
larger than any node of that GPU type, a builder image from a release without
``trtllm-build``. Those checks live here, as pure functions of the typed spec and the observed
cluster facts; the operator turns each finding into a condition (reason, message) and an
Event. No I/O: the caller passes everything in.

Severity decides what the operator does:

- ``Error``: the spec cannot work as written (for that target, if ``gpu`` is set); the
  operator does not start the build or the rollout, and says why.
- ``Warning``: it can work but is risky or has to wait (an unpinned revision; no node of a GPU
  type yet, which a cluster autoscaler may fix once the build Job asks for one).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from trtllm_jobs.spec import REPO_PATTERN
from trtllm_operator import flag_tables, gpus
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api.common import EnvVar
from trtllm_operator.api.deployment import LLMDeploymentSpec
from trtllm_operator.api.engine import (
    MAX_PARALLELISM,
    BuildLimits,
    BuildPlugins,
    LLMEngineSpec,
    Parallelism,
    size_hint_bytes,
)

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


# When a format does not run on a GPU, suggest the first of these that does: the nearest in
# precision and memory saving, going from the newest formats to the most widely supported.
_FORMAT_PREFERENCE: tuple[facts.QuantFormat, ...] = (
    "nvfp4", "fp8", "w4a8_awq", "int4_awq", "int8_sq", "int8_wo", "int4_wo",
)


class Severity(StrEnum):
    """How bad a finding is; see the module docstring for what the operator does with each."""

    ERROR = "Error"
    WARNING = "Warning"


class Reason(StrEnum):
    """CamelCase reasons of findings: what conditions and Events carry as ``reason``."""

    # Observed cluster state (storage claims; see trtllm_operator.claims).
    CLAIM_NOT_FOUND = "ClaimNotFound"
    CLAIM_NOT_BOUND = "ClaimNotBound"
    CLAIM_NOT_SHARED = "ClaimNotShared"

    BUILDER_IMAGE_UNSUPPORTED = "BuilderImageUnsupported"
    SERVING_IMAGE_UNSUPPORTED = "ServingImageUnsupported"
    IMAGE_RELEASE_MISMATCH = "ImageReleaseMismatch"
    IMAGE_RELEASE_UNKNOWN = "ImageReleaseUnknown"
    UNKNOWN_FLAG = "UnknownFlag"
    FLAG_NOT_ALLOWED = "FlagNotAllowed"
    FLAG_VALUE_INVALID = "FlagValueInvalid"
    UNPINNED_REVISION = "UnpinnedRevision"
    QUANTIZATION_UNSUPPORTED = "QuantizationUnsupported"
    KV_CACHE_DTYPE_UNSUPPORTED = "KvCacheDtypeUnsupported"
    MIG_PARALLELISM = "ParallelismOnMIG"
    PLAIN_TEXT_SECRET = "PlainTextSecret"
    PARALLELISM_EXCEEDS_NODE = "ParallelismExceedsNode"
    MULTI_NODE_SHAPE_UNEVEN = "MultiNodeShapeUneven"
    LEADER_WORKER_SET_REQUIRED = "LeaderWorkerSetRequired"
    GROUP_NODES_INSUFFICIENT = "GroupNodesInsufficient"
    GPU_NOT_IN_CLUSTER = "GPUNotInCluster"
    ENGINE_NOT_FOUND = "EngineNotFound"
    GPU_NOT_A_TARGET = "GPUNotATarget"
    SERVE_LIMIT_EXCEEDS_ENGINE = "ServeLimitExceedsEngine"
    MODEL_DOES_NOT_FIT = "ModelDoesNotFit"
    # A free-form Kubernetes sub-object (affinity, env valueFrom) of the wrong shape.
    POD_FIELD_INVALID = "PodFieldInvalid"
    # A slice's workload name (<name>-<gpu type>) held by another LLMDeployment's.
    WORKLOAD_NAME_TAKEN = "WorkloadNameTaken"
    BACKEND_UNSUPPORTED_BY_IMAGE = "BackendUnsupportedByImage"
    FIELD_NOT_FOR_BACKEND = "FieldNotForBackend"
    CALIBRATION_DATA_MISSING = "CalibrationDataMissing"
    OPTION_NOT_ALLOWED = "OptionNotAllowed"
    BACKEND_FEATURE_UNAVAILABLE = "BackendFeatureUnavailable"
    AUTOSCALING_NEEDS_METRICS = "AutoscalingNeedsMetrics"
    AUTOSCALING_METRIC_UNAVAILABLE = "AutoscalingMetricUnavailable"


@dataclass(frozen=True)
class Finding:
    """One problem with a spec, phrased for the person who has to fix it."""

    reason: Reason
    severity: Severity
    field: str
    """The spec field at fault, as a path: spec.build.quantization.format."""
    message: str
    """What is wrong and the fix, naming the field."""
    gpu: str | None = None
    """The GPU type (target) the finding is about, when it concerns only one."""


@dataclass(frozen=True)
class GPUPool:
    """The nodes of one GPU type, as observed (GPU Feature Discovery labels, allocatable)."""

    node_gpus: tuple[int, ...]
    """Allocatable nvidia.com/gpu of each node."""
    compute_capability: tuple[int, int] | None = None
    """From the nvidia.com/gpu.compute.major/minor labels, when the nodes carry them."""
    memory_mib: int | None = None
    """Memory of one GPU in MiB: the smallest nvidia.com/gpu.memory label of the nodes (an
    engine must fit wherever its pods may land), None when no node carries the label."""

    @property
    def largest_node(self) -> int:
        """Most GPUs one pod can get on a node of this type."""
        return max(self.node_gpus, default=0)


@dataclass(frozen=True)
class ClusterFacts:
    """What the cluster offers, by GPU type (nvidia.com/gpu.product value)."""

    pools: Mapping[str, GPUPool] = field(default_factory=dict)

    def compute_capability(self, product: str) -> tuple[int, int] | None:
        """Compute capability of a GPU type: from node labels, else from the GPU catalog.

        The catalog fallback lets a spec be judged before any node of that type exists (an
        FP8 engine for A100 is wrong whether or not the A100 nodes are up yet).
        """
        pool = self.pools.get(product)
        if pool is not None and pool.compute_capability is not None:
            return pool.compute_capability
        known = gpus.by_product(product)
        return known.compute_capability if known is not None else None

    def memory_mib(self, product: str) -> int | None:
        """Memory of one GPU of a type in MiB: the nodes' label, else the GPU catalog's (so a
        target can be judged before its nodes join), None for a type unknown to both."""
        pool = self.pools.get(product)
        if pool is not None and pool.memory_mib is not None:
            return pool.memory_mib
        return gpus.memory_mib(product)


# --------------------------------------------------------------------------- LLMEngine


def validate_engine(spec: LLMEngineSpec, cluster: ClusterFacts,
                    size: CheckpointSize | None = None) -> tuple[Finding, ...]:
    """Every finding about an LLMEngine spec, in spec order (image, build flags, model, then
    each target).

    ``size`` is the checkpoint's size when known (see :func:`checkpoint_size`)."""
    found: list[Finding] = []
    found += check_builder_image(spec)
    found += check_backend_fields(spec)
    found += check_pytorch_model_source(spec)
    if effective_backend(spec) == "tensorrt":
        found += check_build_extra_args(spec)
    found += check_revision(spec)
    found += check_plain_text_secrets(spec.build.env, "spec.build.env",
                                      hugging_face_fix=spec.model.hugging_face is not None)
    for target in spec.targets:
        found += check_gpu_present(target, cluster)
        found += check_quantization(spec, target, cluster)
        found += check_kv_cache_dtype(spec, target, cluster)
        found += check_mig_parallelism(spec.build.parallelism, target)
        found += check_parallelism_fits(spec.build.parallelism, target, cluster,
                                        field_name="spec.build.parallelism",
                                        fix=f"or set spec.build.gpus to build the ranks in "
                                            f"turn, or remove {target} from spec.targets",
                                        needed=spec.build.gpus)
        found += check_memory_fit(spec, target, cluster, size)
    return tuple(found)


def effective_backend(spec: LLMEngineSpec) -> facts.Backend:
    """The backend an LLMEngine uses: spec.backend, else the one its builder image's release
    implies (tensorrt up to 1.3.0rc20, pytorch from 1.3.0rc21 on). The one place this is
    decided: validation, status, planning and the serving builders all ask here."""
    if spec.backend is not None:
        return spec.backend
    build = spec.build
    return facts.backend_of_release(facts.effective_release(build.image, build.image_release))


_BACKEND_EXAMPLE: Mapping[facts.Backend, str] = {
    "tensorrt": facts.DEFAULT_TRTLLM_IMAGE,
    "pytorch": f"nvcr.io/nvidia/tensorrt-llm/release:{facts.FIRST_RELEASE_OF_PYTORCH_LINE}",
}


def check_builder_image(spec: LLMEngineSpec) -> list[Finding]:
    """spec.build.image against the backend: an explicit spec.backend its release cannot do is
    BackendUnsupportedByImage (on spec.backend); otherwise the image check of the backend the
    release implies (an unknown release, or one older than any backend)."""
    build = spec.build
    release = facts.effective_release(build.image, build.image_release)
    wanted = spec.backend
    if release is None or wanted is None:
        return check_image(build.image, build.image_release, "spec.build.image",
                           "spec.build.imageRelease", Reason.BUILDER_IMAGE_UNSUPPORTED,
                           facts.BACKEND_RELEASES[effective_backend(spec)])
    supported = facts.BACKEND_RELEASES[wanted]
    if release in supported:
        return []
    other: facts.Backend = "pytorch" if wanted == "tensorrt" else "tensorrt"
    why = {"tensorrt": f"trtllm-build and the TensorRT engine backend exist only from "
                       f"{_first(supported)} to {_before(supported)}",
           "pytorch": f"the operator serves Hugging Face checkpoints with --backend pytorch "
                      f"from {_first(supported)} on (the release line its flag table covers)"}
    switch = (f"set spec.backend {other} (or remove it: the image's release implies {other})"
              if release in facts.BACKEND_RELEASES[other] else "")
    stated = f" (spec.build.imageRelease {build.image_release})" if build.image_release else ""
    return [Finding(
        Reason.BACKEND_UNSUPPORTED_BY_IMAGE, Severity.ERROR, "spec.backend",
        f"spec.backend {wanted} cannot run in spec.build.image {build.image}, which is "
        f"TensorRT-LLM {release}{stated}: {why[wanted]}; use such a release, e.g. "
        f"{_BACKEND_EXAMPLE[wanted]}" + (f", or {switch}" if switch else ""),
    )]


def check_backend_fields(spec: LLMEngineSpec) -> list[Finding]:
    """Fields that mean nothing for the backend in effect, decided field by field:

    pytorch builds no engine, so what only trtllm-build reads is refused rather than silently
    ignored (spec.build.limits, plugins, extraArgs, a dtype other than auto); quantization is a
    ModelOpt export there, so only its formats (fp8, nvfp4, int4_awq, w4a8_awq; never int8_sq,
    which ModelOpt exports as a legacy engine checkpoint) and the fp8 KV cache it calibrates,
    with calibration data named by the spec. tensorrt's quantize.py reads neither
    calibration.datasetPath nor downloadDataset.
    """
    backend = effective_backend(spec)
    build = spec.build
    quant = build.quantization
    calibration = quant.calibration if quant is not None else None
    found: list[Finding] = []

    def refuse(field_name: str, message: str, reason: Reason = Reason.FIELD_NOT_FOR_BACKEND
               ) -> None:
        found.append(Finding(reason, Severity.ERROR, field_name,
                             f"{field_name} {message}"))

    if backend == "tensorrt":
        if calibration is None:
            return found
        if calibration.dataset_path is not None:
            refuse("spec.build.quantization.calibration.datasetPath",
                   "is read only by the pytorch backend's quantize Job; quantize.py of the "
                   "tensorrt backend takes calibration.dataset by name: remove datasetPath")
        if calibration.download_dataset:
            refuse("spec.build.quantization.calibration.downloadDataset",
                   "is read only by the pytorch backend's quantize Job: remove it")
        for name, set_ in (("revision", calibration.revision is not None),
                           ("files", bool(calibration.files)),
                           ("textField", calibration.text_field != "text")):
            if set_:
                refuse(f"spec.build.quantization.calibration.{name}",
                       "is read only by the pytorch backend's quantize Job; quantize.py of the "
                       "tensorrt backend takes calibration.dataset by name: remove it")
        return found
    serve_fields = "maxBatchSize, maxNumTokens, maxSeqLen, maxBeamWidth"
    if build.limits is not None:
        refuse("spec.build.limits",
               f"has no effect with the pytorch backend: nothing is built, trtllm-serve plans "
               f"memory when it starts; set the runtime limits in each LLMDeployment's "
               f"spec.serve ({serve_fields}) and remove spec.build.limits")
    if build.plugins is not None:
        refuse("spec.build.plugins", "are trtllm-build settings and the pytorch backend runs "
                                     "no trtllm-build: remove spec.build.plugins")
    if build.extra_args:
        refuse("spec.build.extraArgs", "are trtllm-build flags and the pytorch backend runs no "
                                       "trtllm-build: remove them (trtllm-serve flags go in "
                                       "an LLMDeployment's spec.serve.extraArgs)")
    if build.dtype != "auto":
        refuse("spec.build.dtype", f"{build.dtype}: the pytorch backend serves the "
                                   f"checkpoint in its own dtype; set it to auto or remove it")
    if quant is None:
        return found
    formats = ", ".join(facts.PYTORCH_QUANT_FORMATS)
    if quant.format is not None and quant.format not in facts.PYTORCH_QUANT_FORMATS:
        legacy = (" (ModelOpt exports it as a legacy TensorRT-LLM checkpoint, which only "
                  "trtllm-build reads)" if quant.format == "int8_sq" else "")
        refuse("spec.build.quantization.format",
               f"{quant.format} is not offered with the pytorch backend{legacy}: choose one of "
               f"{formats}, or set spec.backend tensorrt with a 1.2 image",
               Reason.QUANTIZATION_UNSUPPORTED)
    kv = quant.kv_cache_dtype
    if kv is not None and kv not in facts.PYTORCH_KV_CACHE_DTYPES:
        refuse("spec.build.quantization.kvCacheDtype",
               f"{kv} is not offered with the pytorch backend: use "
               f"{', '.join(facts.PYTORCH_KV_CACHE_DTYPES)} or remove it",
               Reason.KV_CACHE_DTYPE_UNSUPPORTED)
    elif kv is not None and quant.format is None:
        refuse("spec.build.quantization.kvCacheDtype",
               f"{kv} without a format: with the pytorch backend the KV-cache scales come from "
               f"the quantize Job, which runs for a format; add spec.build.quantization.format "
               f"({formats}), or drop quantization and pass --kv_cache_dtype {kv} in the "
               f"LLMDeployment's spec.serve.extraArgs")
    if quant.format in facts.QUANT_FORMATS_NEEDING_CALIBRATION:
        if calibration is None or (calibration.dataset_path is None
                                   and not calibration.download_dataset):
            refuse("spec.build.quantization.calibration",
                   f"must name the calibration data for {quant.format}: the quantize Job "
                   f"runs offline and never downloads by surprise; set calibration.datasetPath "
                   f"to a .jsonl file or folder on the storage claim, or set "
                   f"calibration.downloadDataset true to fetch calibration.dataset "
                   f"({calibration.dataset if calibration else facts.DEFAULT_CALIBRATION_DATASET}"
                   f") from the Hugging Face Hub",
                   Reason.CALIBRATION_DATA_MISSING)
        elif calibration.dataset_path is not None and calibration.download_dataset:
            refuse("spec.build.quantization.calibration",
                   "sets both datasetPath and downloadDataset: the quantize Job reads one "
                   "source; remove downloadDataset to calibrate offline from datasetPath, or "
                   "datasetPath to fetch calibration.dataset",
                   Reason.CALIBRATION_DATA_MISSING)
        elif calibration.download_dataset and not re.fullmatch(REPO_PATTERN, calibration.dataset):
            refuse("spec.build.quantization.calibration.dataset",
                   f"{calibration.dataset!r} is not a Hugging Face dataset repo id: with "
                   f"downloadDataset the CPU download Job fetches it from the Hub; write e.g. "
                   f"abisee/cnn_dailymail", Reason.CALIBRATION_DATA_MISSING)
        elif calibration.revision is not None and not calibration.download_dataset:
            refuse("spec.build.quantization.calibration.revision",
                   "names a revision of calibration.dataset, which is fetched only with "
                   "downloadDataset true: set downloadDataset, or remove revision")
    if calibration is not None:
        for index, pattern in enumerate(calibration.files):
            if ".." in pattern.split("/"):
                refuse(f"spec.build.quantization.calibration.files[{index}]",
                       f"{pattern!r} must stay inside the dataset: remove '..'")
    return found


def check_pytorch_model_source(spec: LLMEngineSpec) -> list[Finding]:
    """The pytorch backend serves a volume-sourced checkpoint where it is, but does not
    quantize one: an export is shared by key (repo, commit, format, calibration), and a
    folder on a volume carries no version, so an export of it could go stale without a word."""
    quant = spec.build.quantization
    if effective_backend(spec) != "pytorch" or spec.model.volume is None or quant is None \
            or quant.format is None:
        return []
    return [Finding(
        Reason.BACKEND_FEATURE_UNAVAILABLE, Severity.ERROR, "spec.build.quantization.format",
        f"spec.build.quantization.format {quant.format} with spec.model.volume: the pytorch "
        f"backend quantizes only Hugging Face checkpoints (the export is keyed by their "
        f"commit; a folder on a volume has none, so a shared export could go stale unseen). "
        f"Use spec.model.huggingFace, or put a ModelOpt export (a folder with "
        f"hf_quant_config.json) on the volume and remove spec.build.quantization: "
        f"trtllm-serve loads such a folder as the quantized checkpoint it is",
    )]


def check_image(image: str, image_release: str | None, field_name: str, release_field: str,
                reason: Reason,
                supported: facts.ReleaseRange = facts.ENGINE_RELEASES) -> list[Finding]:
    """An image whose release is unknown, or cannot build or serve engines.

    ``supported`` are the releases that work (a function of the backend once there is more than
    one). Below 1.0, ``trtllm-serve`` has no ``--backend tensorrt``; from 1.3.0rc21 on,
    ``trtllm-build`` and the TensorRT backend are gone. A tag that is not a version (none, so
    ``latest``; a digest; ``nightly``) says nothing about what the image can do: the user states
    the release in ``release_field`` or tags the image with it.
    """
    release = facts.effective_release(image, image_release)
    if release is None:
        return [Finding(
            Reason.IMAGE_RELEASE_UNKNOWN, Severity.ERROR, field_name,
            f"{field_name} {image} does not name its TensorRT-LLM release ({_unversioned(image)}), "
            f"so whether it can build and serve engines is unknown: tag the image with its "
            f"version, e.g. "
            f"{_repository(image)}:{facts.release_of_image(facts.DEFAULT_TRTLLM_IMAGE)}, or "
            f"set {release_field} to the release it contains",
        )]
    if release in supported:
        return []
    stated = f" ({release_field} {image_release})" if image_release is not None else ""
    if supported == facts.PYTORCH_RELEASES:
        return [Finding(reason, Severity.ERROR, field_name, (
            f"{field_name} {image} is TensorRT-LLM {release}{stated}, older than "
            f"{_first(supported)}, the first release the operator serves the pytorch backend "
            f"with: use a release from {_first(supported)} on, e.g. "
            f"{_BACKEND_EXAMPLE['pytorch']}"))]
    use = (f"use a release from {_first(supported)} to {_before(supported)}, e.g. "
           f"{facts.DEFAULT_TRTLLM_IMAGE}")
    if supported.end is not None and release >= supported.end:
        problem = ("which no longer ships trtllm-build or the TensorRT engine backend "
                   f"(removed in {facts.FIRST_RELEASE_WITHOUT_TRTLLM_BUILD})")
    else:
        problem = (f"which is older than {_first(supported)}: trtllm-serve cannot serve engines "
                   f"there")
    return [Finding(reason, Severity.ERROR, field_name,
                    f"{field_name} {image} is TensorRT-LLM {release}{stated}, {problem}: {use}")]


def _unversioned(image: str) -> str:
    """Why an image reference names no release, in words."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return f"its tag {last.rsplit(':', 1)[1]} is not a version"
    return "it is pinned by digest only" if "@" in image else "it has no tag, so it is latest"


def _repository(image: str) -> str:
    """The image reference without tag or digest: ``host:5000/img:tag`` -> ``host:5000/img``."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def _first(supported: facts.ReleaseRange) -> str:
    """The first release of a range, in words: ``1.0`` for 1.0.0rc0."""
    first = supported.first
    if first.patch == 0 and first.rc == 0 and first.post is None:
        return f"{first.major}.{first.minor}"
    return str(first)


def _before(supported: facts.ReleaseRange) -> str:
    """The last release of a range, in words: the release candidate before ``end``."""
    end = supported.end
    if end is None:
        return "the newest"
    if end.rc:
        return str(facts.Release(end.major, end.minor, end.patch, rc=end.rc - 1))
    return f"before {end}"


_BUILD_TYPED = ("the operator writes it from typed fields: use spec.build.limits, "
                "spec.build.parallelism or spec.build.plugins instead")
BUILD_FLAGS_NOT_ALLOWED: Mapping[str, str] = {
    **{flag: _BUILD_TYPED for flag in facts.BUILD_FLAGS_SET_BY_OPERATOR},
    **{f"--{name}": _BUILD_TYPED for name in BuildPlugins.model_fields},
    **{flag: f"{why}; remove it" for flag, why in facts.BUILD_FLAGS_REFUSED.items()},
}
"""Real trtllm-build flags spec.build.extraArgs may not carry, and why."""
SERVE_FLAGS_NOT_ALLOWED: Mapping[str, str] = {
    flag: "the operator writes it from the fields of spec.serve: use those instead"
    for flag in facts.SERVE_FLAGS_SET_BY_OPERATOR
}
"""Real trtllm-serve flags spec.serve.extraArgs may not carry, and why (1.2 line)."""


def serve_flags_not_allowed(flags: flag_tables.FlagTable) -> Mapping[str, str]:
    """The trtllm-serve flags spec.serve.extraArgs may not carry on a release line, and why:
    on the PyTorch line the table says it per flag (every use but extraArg)."""
    if flags.line == "1.2":
        return SERVE_FLAGS_NOT_ALLOWED
    written = "the operator writes it from the fields of spec.serve: use those instead"
    return {spelling: (written if spec.use == "emitted"
                       else f"{spec.note or 'the operator does not pass it'}; remove it")
            for spelling, spec in flags.flags.items() if spec.use != "extraArg"}


def check_build_extra_args(spec: LLMEngineSpec) -> list[Finding]:
    """spec.build.extraArgs against the trtllm-build flags of the builder image's release."""
    release = facts.effective_release(spec.build.image, spec.build.image_release)
    flags = flag_tables.for_release("trtllm-build", release) if release else None
    if flags is None:
        return []  # the image finding says why: no table applies to an unknown release
    return check_extra_args(spec.build.extra_args, flags, "spec.build.extraArgs",
                            BUILD_FLAGS_NOT_ALLOWED)


def check_serve_extra_args(spec: LLMDeploymentSpec, engine: LLMEngineSpec) -> list[Finding]:
    """spec.serve.extraArgs against the trtllm-serve flags of the serving image's release."""
    if spec.image is not None:
        release = facts.effective_release(spec.image, spec.image_release)
    else:
        release = facts.effective_release(engine.build.image, engine.build.image_release)
    flags = flag_tables.for_release("trtllm-serve", release) if release else None
    if flags is None:
        return []
    return check_extra_args(spec.serve.extra_args, flags, "spec.serve.extraArgs",
                            serve_flags_not_allowed(flags))


def check_serve_options(spec: LLMDeploymentSpec) -> list[Finding]:
    """Keys of spec.serve.extraLlmApiOptions the pytorch backend's options file must not take
    from the user: each repeats a flag the operator writes or a key it sets, and which side
    wins differs between releases (the 1.3 table's refused_user_keys)."""
    options = spec.serve.extra_llm_api_options or {}
    file = flag_tables.options_file("1.3")
    return [Finding(
        Reason.OPTION_NOT_ALLOWED, Severity.ERROR, f"spec.serve.extraLlmApiOptions.{key}",
        f"spec.serve.extraLlmApiOptions.{key} is set by the operator (from spec.serve or the "
        f"engine's parallelism, or for metrics) and the file is applied after the flags, so "
        f"yours would silently win in some releases and lose in others: remove it and use the "
        f"spec.serve field instead",
    ) for key in sorted(set(options) & set(file.refused_user_keys))]


def check_extra_args(args: Sequence[str], flags: flag_tables.FlagTable, field_name: str,
                     not_allowed: Mapping[str, str]) -> list[Finding]:
    """Each ``--flag`` of an extra-arguments list against a tool's flag table.

    A token starting with ``--`` is a flag (``--flag=value`` carries its value); the tokens up
    to the next flag are its values. Checked: the flag exists (else the closest real one is
    suggested), the operator lets it through, and it has as many values as it takes, among its
    choices and of its type when the table says so.
    """
    what = f"{flags.tool} {flags.line}"
    found: list[Finding] = []

    def bad(reason: Reason, message: str) -> None:
        found.append(Finding(reason, Severity.ERROR, field_name, f"{field_name} {message}"))

    for flag, values in _flag_groups(args):
        if flag is None:
            bad(Reason.FLAG_VALUE_INVALID,
                f"{' '.join(values)} follows no flag: each value belongs to the --flag before "
                f"it; put the flag first or remove the value")
            continue
        spec = flags.get(flag)
        if flag in not_allowed:
            bad(Reason.FLAG_NOT_ALLOWED, f"{flag} is not allowed here: {not_allowed[flag]}")
        elif spec is None:
            bad(Reason.UNKNOWN_FLAG, f"{flag} is not a {what} flag; "
                                     f"{_closest(flag, flags, not_allowed)}")
        else:
            problem = _value_problem(spec, values)
            if problem:
                bad(Reason.FLAG_VALUE_INVALID, f"{flag} {problem}")
    return found


def _flag_groups(args: Sequence[str]) -> list[tuple[str | None, list[str]]]:
    """``["--a", "1", "--b=2", "--c"]`` -> ``[("--a", ["1"]), ("--b", ["2"]), ("--c", [])]``;
    values before any flag come first with the flag None."""
    groups: list[tuple[str | None, list[str]]] = []
    for token in args:
        if token.startswith("--"):
            flag, eq, value = token.partition("=")
            groups.append((flag, [value] if eq else []))
        elif groups:
            groups[-1][1].append(token)
        else:
            groups.append((None, [token]))
    return groups


def _closest(flag: str, flags: flag_tables.FlagTable, not_allowed: Mapping[str, str]) -> str:
    """The fix for an unknown flag: the closest real one, or where to look."""
    match = difflib.get_close_matches(flag, list(flags.flags), n=1)
    if not match:
        return (f"remove it, or check the spelling against {flags.tool} --help of that "
                f"release")
    best = flags.flags[match[0]].name if match[0] not in not_allowed else match[0]
    if best in not_allowed:
        return f"did you mean {best}? That one is not allowed here: {not_allowed[best]}"
    return f"did you mean {best}?"


def _value_problem(spec: flag_tables.FlagSpec, values: list[str]) -> str | None:
    """What is wrong with the values given to a flag, and the fix, if anything is."""
    given = " ".join(values)
    if spec.arity == "none":
        return (f"is a switch and takes no value, but {given} follows it: remove {given}"
                if values else None)
    if not values:
        return f"needs a value ({spec.type}) after it: add one, or remove the flag"
    if spec.arity == "one" and len(values) > 1:
        return f"takes one value, but {len(values)} follow it ({given}): keep one"
    for value in values:
        if spec.choices is not None and value not in spec.choices:
            return f"value {value} is not one of {', '.join(spec.choices)}: choose one of them"
        if spec.type == "int" and not re.fullmatch(r"-?\d+", value):
            return f"needs an integer, not {value}"
        if spec.type == "float" and not _is_float(value):
            return f"needs a number, not {value}"
    return None


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def check_revision(spec: LLMEngineSpec) -> list[Finding]:
    """A Hugging Face revision that can move (a branch, a tag, or unset = main)."""
    source = spec.model.hugging_face
    if source is None or (source.revision and _COMMIT_SHA.match(source.revision)):
        return []
    what = f"is {source.revision}" if source.revision else "is unset (it follows main)"
    return [Finding(
        Reason.UNPINNED_REVISION, Severity.WARNING, "spec.model.huggingFace.revision",
        f"spec.model.huggingFace.revision {what}, which can move: engines built at different "
        f"times or for different GPU types may hold different weights; pin a 40-character "
        f"commit sha from https://huggingface.co/{source.repo}/commits/main",
    )]


def check_gpu_present(target: str, cluster: ClusterFacts) -> list[Finding]:
    """A target GPU type no node carries (yet): its build waits until one joins."""
    pool = cluster.pools.get(target)
    if pool is not None and pool.node_gpus:
        return []
    return [Finding(
        Reason.GPU_NOT_IN_CLUSTER, Severity.WARNING, "spec.targets",
        f"spec.targets lists {target} but no node has nvidia.com/gpu.product={target}: its "
        f"build waits until such a node joins; check the spelling against kubectl get nodes "
        f"-L nvidia.com/gpu.product, or remove it from spec.targets",
        gpu=target,
    )]


def check_quantization(spec: LLMEngineSpec, target: str,
                       cluster: ClusterFacts) -> list[Finding]:
    """A quantization format the target GPU's compute capability cannot run."""
    quantization = spec.build.quantization
    if quantization is None or quantization.format is None:
        return []
    capability = cluster.compute_capability(target)
    if capability is None:
        return []
    sm = capability[0] * 10 + capability[1]
    needed = facts.QUANT_FORMAT_MIN_SM[quantization.format]
    if sm >= needed:
        return []
    fix = f"remove it from spec.targets{_format_alternative(sm)}"
    return [Finding(
        Reason.QUANTIZATION_UNSUPPORTED, Severity.ERROR, "spec.build.quantization.format",
        f"spec.build.quantization.format {quantization.format} needs compute capability >= "
        f"{_capability(needed)}; target {target} is {capability[0]}.{capability[1]}: {fix}",
        gpu=target,
    )]


def check_kv_cache_dtype(spec: LLMEngineSpec, target: str,
                         cluster: ClusterFacts) -> list[Finding]:
    """A KV-cache dtype the target GPU's compute capability cannot run (fp8 before 8.9)."""
    quantization = spec.build.quantization
    if quantization is None or quantization.kv_cache_dtype is None:
        return []
    capability = cluster.compute_capability(target)
    if capability is None:
        return []
    sm = capability[0] * 10 + capability[1]
    dtype = quantization.kv_cache_dtype
    needed = facts.KV_CACHE_DTYPE_MIN_SM[dtype]
    if sm >= needed:
        return []
    others = [d for d, min_sm in facts.KV_CACHE_DTYPE_MIN_SM.items() if min_sm <= sm]
    choose = f"set it to {others[0]}, " if others else ""
    return [Finding(
        Reason.KV_CACHE_DTYPE_UNSUPPORTED, Severity.ERROR, "spec.build.quantization.kvCacheDtype",
        f"spec.build.quantization.kvCacheDtype {dtype} needs compute capability >= "
        f"{_capability(needed)}; target {target} is {capability[0]}.{capability[1]}: "
        f"{choose}remove it, or remove {target} from spec.targets",
        gpu=target,
    )]


def check_mig_parallelism(parallelism: Parallelism, target: str) -> list[Finding]:
    """A multi-GPU engine for a MIG slice: slices have no NVLink or peer-to-peer access to
    one another, which TensorRT-LLM's tensor and pipeline parallelism need."""
    profile = gpus.mig_profile(target)
    if profile is None or parallelism.world_size == 1:
        return []
    return [Finding(
        Reason.MIG_PARALLELISM, Severity.ERROR, "spec.build.parallelism",
        f"spec.build.parallelism: tensor {parallelism.tensor} x pipeline "
        f"{parallelism.pipeline} needs {parallelism.world_size} GPUs linked by NVLink or "
        f"peer-to-peer, but target {target} is a MIG slice ({profile}) and MIG slices have no "
        f"such link: set tensor and pipeline to 1, or remove {target} from spec.targets",
        gpu=target,
    )]


# Names that say "credential": the Hugging Face variables, and *_TOKEN, *_API_KEY, *_SECRET,
# *_SECRET_KEY, *_ACCESS_KEY and anything with PASSWORD/PASSWD in it.
_SECRET_NAME = re.compile(
    r"^(HF_TOKEN|HUGGING_FACE_HUB_TOKEN|TOKEN|API_KEY|SECRET)$"
    r"|_(TOKEN|API_KEY|SECRET|SECRET_KEY|ACCESS_KEY)$|PASSWORD|PASSWD",
    re.IGNORECASE)
# A Hugging Face access token: hf_ and (today) 34 letters and digits.
_HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}")


def check_plain_text_secrets(env: Sequence[EnvVar], path: str, *,
                             hugging_face_fix: bool = False) -> list[Finding]:
    """Env entries that carry a credential as a literal value, stored readable in the object.

    Judged by the name, or by a value that looks like a Hugging Face token. The message names
    the entry and the variable, never the value.
    """
    found = []
    for index, entry in enumerate(env):
        if not entry.value:
            continue
        by_name = _SECRET_NAME.search(entry.name) is not None
        if not by_name and _HF_TOKEN_VALUE.search(entry.value) is None:
            continue
        why = ("its name says it is a credential" if by_name
               else "its value looks like a Hugging Face access token")
        also = (" (for the Hugging Face token: spec.model.huggingFace.tokenSecretRef)"
                if hugging_face_fix else "")
        found.append(Finding(
            Reason.PLAIN_TEXT_SECRET, Severity.WARNING, f"{path}[{index}].value",
            f"{path}[{index}].value: {entry.name} is set as plain text and {why}; anyone "
            f"who can read this object sees it: put it in a Secret and use "
            f"{path}[{index}].valueFrom.secretKeyRef instead{also}",
        ))
    return found


def _format_alternative(sm: int) -> str:
    supported = [f for f in _FORMAT_PREFERENCE if facts.QUANT_FORMAT_MIN_SM[f] <= sm]
    return f" or choose {supported[0]}" if supported else ""


def _capability(sm: int) -> str:
    return f"{sm // 10}.{sm % 10}"


def check_parallelism_fits(parallelism: Parallelism, gpu: str, cluster: ClusterFacts, *,
                           field_name: str, fix: str, needed: int | None = None) -> list[Finding]:
    """The build pod's GPUs (``needed``, default tensor x pipeline) must fit on one node of the
    GPU type. Serving may span nodes (deployments.multinode); a build runs on one node."""
    pool = cluster.pools.get(gpu)
    needed = needed or parallelism.world_size
    if pool is None or not pool.node_gpus or needed <= pool.largest_node:
        return []
    return [Finding(
        Reason.PARALLELISM_EXCEEDS_NODE, Severity.ERROR, field_name,
        f"{field_name}: tensor {parallelism.tensor} x pipeline {parallelism.pipeline} needs "
        f"{needed} GPUs on one node, but the largest {gpu} node has {pool.largest_node}: "
        f"lower spec.build.parallelism {fix}",
        gpu=gpu,
    )]


@dataclass(frozen=True)
class CheckpointSize:
    """The checkpoint's weights at 16 bits per parameter, and where that number comes from."""

    bytes: int
    source: str
    """Phrased to follow "from": "spec.model.sizeHint"."""


def checkpoint_size(spec: LLMEngineSpec, built_bytes: int | None,
                    cached_bytes: int | None = None) -> CheckpointSize | None:
    """The best known size of an engine's checkpoint: the model cache's manifest of this very
    checkpoint (``cached_bytes``), else what a build of the same model and revision measured
    (``built_bytes``), else the spec's sizeHint, else None (then only the build Job, which
    lists the checkpoint's files before downloading, can judge the fit)."""
    if cached_bytes is not None:
        return CheckpointSize(cached_bytes, "the model cache's manifest of this checkpoint")
    if built_bytes is not None:
        return CheckpointSize(built_bytes, "the build of an engine of the same model and "
                                           "revision")
    hint = spec.model.size_hint
    if hint is not None:
        return CheckpointSize(size_hint_bytes(hint), f"spec.model.sizeHint {hint}")
    return None


def weight_format(spec: LLMEngineSpec) -> str:
    """The engine's weight format: its quantization format, else its dtype (a key of
    trtllm_facts.WEIGHT_BYTES_FACTOR)."""
    quant = spec.build.quantization
    return quant.format if quant is not None and quant.format else spec.build.dtype


def check_memory_fit(spec: LLMEngineSpec, target: str, cluster: ClusterFacts,
                     size: CheckpointSize | None) -> list[Finding]:
    """Weights that cannot fit one GPU of the target type, by trtllm_facts.fit_need_bytes (the
    build Job's formula too). Quiet when the size or the GPU's memory is unknown."""
    memory = cluster.memory_mib(target)
    if size is None or memory is None:
        return []
    weights = weight_format(spec)
    parallelism = spec.build.parallelism
    world = parallelism.world_size
    need = facts.fit_need_bytes(size.bytes, weights, world)
    have = memory << 20
    if need <= have:
        return []
    fixes = []
    tensor = _tensor_that_fits(size.bytes, weights, parallelism, have,
                               _gpus_per_node(target, cluster))
    if tensor is not None:
        fixes.append(f"raise spec.build.parallelism.tensor to {tensor}")
    capability = cluster.compute_capability(target)
    formats = [f for f in _FORMAT_PREFERENCE
               if facts.WEIGHT_BYTES_FACTOR[f] < facts.WEIGHT_BYTES_FACTOR[weights]
               and (capability is None
                    or capability[0] * 10 + capability[1] >= facts.QUANT_FORMAT_MIN_SM[f])
               and facts.fit_need_bytes(size.bytes, f, world) <= have]
    if formats:
        # The nearest two in precision: the list is a hint, not a catalogue.
        fixes.append(f"quantize (spec.build.quantization.format: {' or '.join(formats[:2])})")
    fixes.append(f"build for a GPU type with at least {_gib(need)} per GPU")
    fixes.append(f"remove {target} from spec.targets")
    field_name = "spec.build.parallelism" if tensor is not None else "spec.targets"
    return [Finding(
        Reason.MODEL_DOES_NOT_FIT, Severity.ERROR, field_name,
        f"{field_name}: the model does not fit {target}: it needs about {_gib(need)} per GPU "
        f"({_gib(size.bytes)} of weights at 16 bits, from {size.source}; x"
        f"{facts.WEIGHT_BYTES_FACTOR[weights]:g} as {weights}, split over {world} GPU(s) by "
        f"tensor {parallelism.tensor} x pipeline {parallelism.pipeline}, plus "
        f"{facts.FIT_HEADROOM_FRACTION:.0%} and {_gib(facts.FIT_HEADROOM_BYTES)} headroom) "
        f"but one {target} GPU has {_gib(have)}: " + "; or ".join(fixes),
        gpu=target,
    )]


def _gpus_per_node(gpu: str, cluster: ClusterFacts) -> int | None:
    """Most GPUs one node of the type offers: observed, else typical (catalog), else None."""
    pool = cluster.pools.get(gpu)
    if pool is not None and pool.node_gpus:
        return pool.largest_node
    known = gpus.by_product(gpu)
    return known.gpus_per_node if known is not None else None


def _tensor_that_fits(checkpoint_bytes: int, weights: str, parallelism: Parallelism,
                      have: int, node_gpus: int | None) -> int | None:
    """The smallest doubling of the tensor parallel size whose share of the weights fits one
    GPU, if the whole engine still fits one node (and the API's bound); else None."""
    tensor = parallelism.tensor * 2
    limit = min(MAX_PARALLELISM, node_gpus or MAX_PARALLELISM)
    while tensor * parallelism.pipeline <= limit:
        if facts.fit_need_bytes(checkpoint_bytes, weights,
                                tensor * parallelism.pipeline) <= have:
            return tensor
        tensor *= 2
    return None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


# --------------------------------------------------------------------------- LLMDeployment


def validate_deployment(spec: LLMDeploymentSpec, engine: LLMEngineSpec | None,
                        cluster: ClusterFacts, *,
                        resolved: Sequence[str] | None = None) -> tuple[Finding, ...]:
    """Every finding about an LLMDeployment spec, given its engine's spec (None if missing).

    ``resolved`` is what the engine's targets resolved to (its status.targets, ``auto``
    expanded), or None while the engine's status does not describe its current spec yet.
    """
    name = spec.engine_ref.name
    found: list[Finding] = []
    found += check_plain_text_secrets(spec.env, "spec.env")
    if engine is None:
        return (Finding(
            Reason.ENGINE_NOT_FOUND, Severity.ERROR, "spec.engineRef.name",
            f"spec.engineRef.name {name}: there is no LLMEngine of that name in this "
            f"namespace; create it or correct the name",
        ), *found)
    backend = effective_backend(engine)
    if spec.image is not None:
        found += check_image(spec.image, spec.image_release, "spec.image", "spec.imageRelease",
                             Reason.SERVING_IMAGE_UNSUPPORTED, facts.BACKEND_RELEASES[backend])
        found += check_same_release(spec, engine, name)
    found += check_serve_extra_args(spec, engine)
    found += check_gpu_is_target(spec.gpu, engine, name, resolved)
    if backend == "tensorrt":
        # The pytorch backend builds nothing: no engine limit to exceed.
        found += check_serve_limits(spec, engine, name)
    else:
        found += check_serve_options(spec)
    if spec.gpu is not None and (spec.gpu in engine.targets or spec.gpu in (resolved or ())):
        # An engine whose build does not fit one node of the type is never built for it.
        # Serving wider than a node is the serving preflight's to judge (LeaderWorkerSet).
        found += check_parallelism_fits(
            engine.build.parallelism, spec.gpu, cluster, field_name="spec.gpu",
            fix=f"of LLMEngine {name} or set its spec.build.gpus to build the ranks in turn, "
                f"or choose another GPU type in spec.gpu", needed=engine.build.gpus)
    return tuple(found)


def check_same_release(spec: LLMDeploymentSpec, engine: LLMEngineSpec,
                       engine_name: str) -> list[Finding]:
    """A serving image of another release than the one that built the engine.

    An engine loads only in the TensorRT(-LLM) version that built it. Each side's release is
    its effective one (imageRelease, else the tag); an unknown one is reported on its own.
    """
    if spec.image is None:
        return []
    build = engine.build
    serving = facts.effective_release(spec.image, spec.image_release)
    building = facts.effective_release(build.image, build.image_release)
    if serving is None or building is None or serving == building:
        return []
    return [Finding(
        Reason.IMAGE_RELEASE_MISMATCH, Severity.ERROR, "spec.image",
        f"spec.image {spec.image} is TensorRT-LLM {serving}, but LLMEngine {engine_name} is "
        f"built with {building} ({build.image}): an engine only loads in the release that "
        f"built it; use a {building} image or leave spec.image unset",
    )]


def check_gpu_is_target(gpu: str | None, engine: LLMEngineSpec, engine_name: str,
                        resolved: Sequence[str] | None = None) -> list[Finding]:
    """A GPU type the engine is not built for: neither listed in its spec.targets nor among
    what its ``auto`` entry resolved to (``resolved``, its status.targets).

    While ``auto`` has not been resolved for the current spec (``resolved`` None), nothing is
    refused: the engine's next status says which GPU types it builds for.
    """
    auto = "auto" in engine.targets  # engines.status.AUTO_TARGET (that module imports this one)
    if gpu is None or gpu in engine.targets or gpu in (resolved or ()):
        return []
    if auto and resolved is None:
        return []
    listed = ", ".join(engine.targets)
    if auto:
        built_for = sorted(set(resolved or ()) - set(engine.targets))
        listed += f"; auto resolved to {', '.join(built_for) or 'no GPU type'}"
        fix = (f"choose one of them, or add {gpu} to the engine's spec.targets (auto covers "
               f"only GPU types present in the cluster whose nodes can run the build; the "
               f"LLMEngine's status says why a type was left out)")
    else:
        fix = f"choose one of them, or add {gpu} to the engine's spec.targets"
    return [Finding(
        Reason.GPU_NOT_A_TARGET, Severity.ERROR, "spec.gpu",
        f"spec.gpu {gpu} is not a target of LLMEngine {engine_name} (targets: {listed}): "
        f"{fix}",
        gpu=gpu,
    )]


def check_serve_limits(spec: LLMDeploymentSpec, engine: LLMEngineSpec,
                       engine_name: str) -> list[Finding]:
    """Runtime limits above what the engine was built for (trtllm-serve cannot raise them)."""
    findings = []
    for wire, wanted, built in _limit_pairs(spec, engine):
        if wanted is not None and built is not None and wanted > built:
            findings.append(Finding(
                Reason.SERVE_LIMIT_EXCEEDS_ENGINE, Severity.ERROR, f"spec.serve.{wire}",
                f"spec.serve.{wire} {wanted} exceeds the {built} LLMEngine {engine_name} is "
                f"built for (its spec.build.limits.{wire}): lower spec.serve.{wire}, or raise "
                f"the engine's limit and let it rebuild",
            ))
    return findings


def _limit_pairs(spec: LLMDeploymentSpec,
                 engine: LLMEngineSpec) -> Iterable[tuple[str, int | None, int | None]]:
    """(wire name, serve value, engine limit) for each runtime limit.

    An unset engine limit is trtllm-build's default; ``maxSeqLen`` defaults to the model's own
    maximum, unknown until the build reads the checkpoint, so it is only compared when set.
    """
    limits = engine.build.limits or BuildLimits()
    serve = spec.serve
    yield ("maxBatchSize", serve.max_batch_size,
           _or_default(limits.max_batch_size, facts.BUILD_DEFAULT_MAX_BATCH_SIZE))
    yield ("maxNumTokens", serve.max_num_tokens,
           _or_default(limits.max_num_tokens, facts.BUILD_DEFAULT_MAX_NUM_TOKENS))
    yield ("maxBeamWidth", serve.max_beam_width,
           _or_default(limits.max_beam_width, facts.BUILD_DEFAULT_MAX_BEAM_WIDTH))
    yield ("maxSeqLen", serve.max_seq_len, limits.max_seq_len)


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


# --------------------------------------------------------------------------- helpers


def errors(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """The findings that stop the operator from acting."""
    return tuple(f for f in findings if f.severity is Severity.ERROR)


def for_gpu(findings: Sequence[Finding], gpu: str) -> tuple[Finding, ...]:
    """The findings that concern one GPU type, plus those that concern every target."""
    return tuple(f for f in findings if f.gpu in (None, gpu))
