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

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from trtllm_operator import gpus
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api.deployment import LLMDeploymentSpec
from trtllm_operator.api.engine import BuildLimits, LLMEngineSpec, Parallelism

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
    UNPINNED_REVISION = "UnpinnedRevision"
    QUANTIZATION_UNSUPPORTED = "QuantizationUnsupported"
    PARALLELISM_EXCEEDS_NODE = "ParallelismExceedsNode"
    GPU_NOT_IN_CLUSTER = "GPUNotInCluster"
    ENGINE_NOT_FOUND = "EngineNotFound"
    GPU_NOT_A_TARGET = "GPUNotATarget"
    SERVE_LIMIT_EXCEEDS_ENGINE = "ServeLimitExceedsEngine"
    # A free-form Kubernetes sub-object (affinity, env valueFrom) of the wrong shape.
    POD_FIELD_INVALID = "PodFieldInvalid"


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


# --------------------------------------------------------------------------- LLMEngine


def validate_engine(spec: LLMEngineSpec, cluster: ClusterFacts) -> tuple[Finding, ...]:
    """Every finding about an LLMEngine spec, in spec order (image, model, then each target)."""
    found: list[Finding] = []
    found += check_image(spec.build.image, "spec.build.image",
                         Reason.BUILDER_IMAGE_UNSUPPORTED)
    found += check_revision(spec)
    for target in spec.targets:
        found += check_gpu_present(target, cluster)
        found += check_quantization(spec, target, cluster)
        found += check_parallelism_fits(spec.build.parallelism, target, cluster,
                                        field_name="spec.build.parallelism",
                                        fix=f"or remove {target} from spec.targets")
    return tuple(found)


def check_image(image: str, field_name: str, reason: Reason) -> list[Finding]:
    """An image whose tag names a release that cannot build or serve engines.

    Below 1.0, ``trtllm-serve`` has no ``--backend tensorrt``; from 1.3 on, ``trtllm-build``
    and the TensorRT backend are gone. A tag that is not a version (a digest, ``latest``)
    cannot be judged and passes.
    """
    release = facts.release_of_image(image)
    if release is None:
        return []
    use = f"use a 1.0 to 1.2.x release such as {facts.DEFAULT_TRTLLM_IMAGE}"
    if release.line >= facts.FIRST_RELEASE_WITHOUT_TRTLLM_BUILD:
        problem = ("which no longer ships trtllm-build or the TensorRT engine backend "
                   "(removed after 1.2)")
    elif release.line < facts.FIRST_RELEASE_WITH_TENSORRT_BACKEND_FLAG:
        problem = "which is older than 1.0: trtllm-serve cannot serve engines there"
    else:
        return []
    return [Finding(reason, Severity.ERROR, field_name,
                    f"{field_name} {image} is TensorRT-LLM {release}, {problem}: {use}")]


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


def _format_alternative(sm: int) -> str:
    supported = [f for f in _FORMAT_PREFERENCE if facts.QUANT_FORMAT_MIN_SM[f] <= sm]
    return f" or choose {supported[0]}" if supported else ""


def _capability(sm: int) -> str:
    return f"{sm // 10}.{sm % 10}"


def check_parallelism_fits(parallelism: Parallelism, gpu: str, cluster: ClusterFacts, *,
                           field_name: str, fix: str) -> list[Finding]:
    """tensor x pipeline GPUs must fit on one node of the GPU type (engines run on one node)."""
    pool = cluster.pools.get(gpu)
    needed = parallelism.world_size
    if pool is None or not pool.node_gpus or needed <= pool.largest_node:
        return []
    return [Finding(
        Reason.PARALLELISM_EXCEEDS_NODE, Severity.ERROR, field_name,
        f"{field_name}: tensor {parallelism.tensor} x pipeline {parallelism.pipeline} needs "
        f"{needed} GPUs on one node, but the largest {gpu} node has {pool.largest_node}: "
        f"lower spec.build.parallelism {fix}",
        gpu=gpu,
    )]


# --------------------------------------------------------------------------- LLMDeployment


def validate_deployment(spec: LLMDeploymentSpec, engine: LLMEngineSpec | None,
                        cluster: ClusterFacts) -> tuple[Finding, ...]:
    """Every finding about an LLMDeployment spec, given its engine's spec (None if missing)."""
    name = spec.engine_ref.name
    if engine is None:
        return (Finding(
            Reason.ENGINE_NOT_FOUND, Severity.ERROR, "spec.engineRef.name",
            f"spec.engineRef.name {name}: there is no LLMEngine of that name in this "
            f"namespace; create it or correct the name",
        ),)
    found: list[Finding] = []
    if spec.image is not None:
        found += check_image(spec.image, "spec.image", Reason.SERVING_IMAGE_UNSUPPORTED)
        found += check_same_release(spec.image, engine.build.image, name)
    found += check_gpu_is_target(spec.gpu, engine, name)
    found += check_serve_limits(spec, engine, name)
    if spec.gpu is not None and spec.gpu in engine.targets:
        found += check_parallelism_fits(
            engine.build.parallelism, spec.gpu, cluster, field_name="spec.gpu",
            fix=f"of LLMEngine {name}, or choose another GPU type in spec.gpu")
    return tuple(found)


def check_same_release(image: str, builder_image: str, engine_name: str) -> list[Finding]:
    """A serving image of another release than the one that built the engine.

    An engine loads only in the TensorRT(-LLM) version that built it.
    """
    serving, building = facts.release_of_image(image), facts.release_of_image(builder_image)
    if serving is None or building is None or serving == building:
        return []
    return [Finding(
        Reason.IMAGE_RELEASE_MISMATCH, Severity.ERROR, "spec.image",
        f"spec.image {image} is TensorRT-LLM {serving}, but LLMEngine {engine_name} is built "
        f"with {building} ({builder_image}): an engine only loads in the release that built "
        f"it; use a {building} image or leave spec.image unset",
    )]


def check_gpu_is_target(gpu: str | None, engine: LLMEngineSpec,
                        engine_name: str) -> list[Finding]:
    """A GPU type the engine is not built for."""
    if gpu is None or gpu in engine.targets:
        return []
    return [Finding(
        Reason.GPU_NOT_A_TARGET, Severity.ERROR, "spec.gpu",
        f"spec.gpu {gpu} is not a target of LLMEngine {engine_name} (targets: "
        f"{', '.join(engine.targets)}): choose one of them, or add {gpu} to the engine's "
        f"spec.targets",
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
