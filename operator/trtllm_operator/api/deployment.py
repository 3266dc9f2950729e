"""LLMDeployment: serve a built LLMEngine with trtllm-serve behind a Service.

Pods land only on nodes of a GPU type the engine was built for, each with tensor x pipeline
GPUs. ``spec.replicas`` is exposed through the ``/scale`` subresource, so ``kubectl scale`` and
a HorizontalPodAutoscaler work on an LLMDeployment directly.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api.common import (
    AGE_COLUMN,
    ENV_LIST_SCHEMA,
    MAX_ENV,
    CliArgument,
    ConditionList,
    DNSSubdomain,
    EnvVar,
    FreeformObject,
    GPUProduct,
    ImageReference,
    ImageRelease,
    IntOrString,
    KindInfo,
    LabelMap,
    PrinterColumn,
    PullSecretList,
    ResourceModel,
    ResourceRequirements,
    ScaleSubresource,
    SpecModel,
    StatusModel,
    TolerationList,
    cel,
    default_empty_object,
    env_rule,
    gpu_product_rule,
    no_gpu_resources_rule,
    no_operator_flags_rule,
    pod_count_rule,
    ready_columns,
    validations,
)

Port = Annotated[int, Field(ge=1, le=65535)]
DEFAULT_REPLICAS: Final = 1


class EngineReference(SpecModel):
    """The LLMEngine an LLMDeployment serves."""

    name: DNSSubdomain
    """Name of the LLMEngine, in the LLMDeployment's namespace."""


class ServeSpec(SpecModel):
    """trtllm-serve settings. Runtime limits may be lower than the engine's built limits,
    never higher; unset limits use the engine's."""

    port: Port = facts.DEFAULT_SERVE_PORT
    """Container port trtllm-serve listens on."""
    kv_cache_free_gpu_memory_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    """Share of the GPU memory left after loading the engine that goes to the KV cache
    (--kv_cache_free_gpu_memory_fraction, default 0.9). Lower it if something else shares
    the GPU."""
    max_batch_size: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Most requests scheduled together (--max_batch_size)."""
    max_num_tokens: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Most tokens in one scheduled batch (--max_num_tokens)."""
    max_seq_len: Annotated[int, Field(ge=1, le=facts.INT32_MAX)] | None = None
    """Longest prompt plus output in tokens (--max_seq_len)."""
    max_beam_width: Annotated[int, Field(ge=1, le=facts.MAX_BEAM_WIDTH)] | None = None
    """Most beams for beam search (--max_beam_width)."""
    log_level: facts.ServeLogLevel | None = None
    """trtllm-serve log level (--log_level)."""
    extra_args: Annotated[
        tuple[CliArgument, ...],
        Field(max_length=32, json_schema_extra=validations(no_operator_flags_rule(
            "spec.serve.extraArgs", facts.SERVE_FLAGS_SET_BY_OPERATOR,
            "the fields of spec.serve"))),
    ] = ()
    """More trtllm-serve arguments, one per entry, e.g. ["--num_postprocess_workers", "2"]."""
    extra_llm_api_options: FreeformObject | None = None
    """LLM API options written to a YAML file for --extra_llm_api_options (--config on the
    pytorch backend), e.g. {kv_cache_config: {enable_block_reuse: true}}."""
    usage_telemetry: bool = False
    """pytorch backend: let trtllm-serve send NVIDIA its usage statistics (on by default in
    TensorRT-LLM). Off unless set: the pods get --no-telemetry and TRTLLM_NO_USAGE_STATS=1."""
    metrics: bool = True
    """Serve Prometheus metrics at /prometheus/metrics on the serving port (the options file
    turns trtllm-serve's return_perf_metrics on), label the pods for scraping and, where the
    Prometheus Operator is installed, keep a PodMonitor. Needed by spec.autoscaling."""


class ServiceSpec(SpecModel):
    """The Service in front of the serving pods (OpenAI-compatible HTTP API)."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: Port = facts.DEFAULT_SERVE_PORT
    """Port clients connect to."""
    annotations: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=32)
    ] | None = None
    """Annotations of the Service, e.g. for a cloud load balancer."""


def _zero(field: str) -> str:
    return f"(type(self.{field}) == int ? self.{field} == 0 : self.{field} == '0%')"


class RollingUpdate(SpecModel):
    """How many pods a rolling update may add or take away at a time."""

    # maxSurge defaults to 0 here (no spare GPUs assumed): a Deployment refuses both at 0.
    model_config = ConfigDict(json_schema_extra=validations(cel(
        f"!((!has(self.maxSurge) || {_zero('maxSurge')}) "
        f"&& has(self.maxUnavailable) && {_zero('maxUnavailable')})",
        "spec.strategy.rollingUpdate.maxUnavailable is 0 while maxSurge is 0 (its default "
        "here): no pod could ever be replaced; set maxUnavailable to 1 or more, or maxSurge "
        "to 1 or more", field_path=".maxUnavailable")))

    @model_validator(mode="after")
    def _can_progress(self) -> RollingUpdate:
        if self.max_surge in (None, 0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError("maxUnavailable is 0 while maxSurge is 0: no pod could ever be "
                             "replaced")
        return self

    max_surge: Annotated[IntOrString | None, Field(json_schema_extra=pod_count_rule(
        "spec.strategy.rollingUpdate.maxSurge"))] = None
    """Extra pods during an update (number or percentage; Kubernetes default 25%). Each needs
    a full set of GPUs: with no spare GPUs, use 0 and a non-zero maxUnavailable."""
    max_unavailable: Annotated[IntOrString | None, Field(json_schema_extra=pod_count_rule(
        "spec.strategy.rollingUpdate.maxUnavailable"))] = None
    """Pods that may be unavailable during an update (number or percentage; default 25%)."""


class Strategy(SpecModel):
    """How serving pods are replaced when the engine, image or settings change."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        "self.type == 'RollingUpdate' || !has(self.rollingUpdate)",
        "spec.strategy.rollingUpdate is only allowed with spec.strategy.type RollingUpdate: "
        "remove rollingUpdate or set type RollingUpdate",
        field_path=".rollingUpdate",
    )))

    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    """RollingUpdate replaces pods gradually (needs spare GPUs unless maxSurge is 0);
    Recreate stops every old pod first (downtime, no spare GPUs needed)."""
    rolling_update: RollingUpdate | None = None
    """Rolling update parameters."""


MAX_SLICES: Final = 8


class GPUSlice(SpecModel):
    """One GPU type of a fleet that serves on several (spec.slices)."""

    gpu: Annotated[
        GPUProduct, Field(json_schema_extra=validations(gpu_product_rule("spec.slices[].gpu")))
    ]
    """GPU type of this slice: one the engine is built for (its spec.targets, or what its auto
    entry resolved to)."""
    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    """This slice's share of spec.replicas: replicas x weight / the sum of the weights,
    rounded so the slices add up to spec.replicas (ties go to the earlier slice). For fixed
    counts per type, use the counts as weights and their sum as spec.replicas."""


class EndpointPickerRef(SpecModel):
    """The endpoint picker (EPP) Service the InferencePool sends routing decisions to."""

    name: DNSSubdomain
    """Name of the endpoint picker's Service, in the LLMDeployment's namespace."""
    port: Port
    """The Service port of the endpoint picker's gRPC ext-proc (9002 in the Inference
    Extension's charts)."""
    failure_mode: Literal["FailOpen", "FailClose"] | None = None
    """What the gateway does while the picker does not answer (InferencePool default
    FailClose: requests fail; FailOpen: the gateway picks an endpoint itself)."""


class InferencePoolSpec(SpecModel):
    """An InferencePool (Gateway API Inference Extension, inference.networking.k8s.io/v1) of
    this deployment's serving pods, for an HTTPRoute to send traffic through an endpoint
    picker."""

    endpoint_picker_ref: EndpointPickerRef
    """The endpoint picker serving this pool."""
AutoscalingMetricType = Literal["QueuedRequests", "KVCacheUtilization", "TimeToFirstToken"]


class AutoscalingMetric(SpecModel):
    """One serving metric the autoscaler keeps at a target."""

    type: AutoscalingMetricType
    """QueuedRequests: requests waiting per replica (trtllm_num_requests_waiting);
    KVCacheUtilization: share of KV-cache blocks in use, averaged over replicas, 0 to 1
    (trtllm_kv_cache_utilization); TimeToFirstToken: mean seconds to the first token over the
    last minute (trtllm_time_to_first_token_seconds). Which exist depends on the image's
    release line (see the README)."""
    target: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    """The value to hold: requests per replica, a fraction (0 < target <= 1) or seconds.
    Unset: 4 queued requests, 0.8 of the KV cache, 2 seconds to the first token."""


class AutoscalingSpec(SpecModel):
    """Scale the serving workload on trtllm-serve's own metrics (KEDA or a
    HorizontalPodAutoscaler). While set, the autoscaler owns the replica count, not
    spec.replicas."""

    model_config = ConfigDict(json_schema_extra=validations(
        cel("self.maxReplicas >= self.minReplicas",
            "spec.autoscaling.maxReplicas is below minReplicas: raise maxReplicas or lower "
            "minReplicas", field_path=".maxReplicas"),
        cel("self.minReplicas > 0 || self.provider != 'hpa'",
            "spec.autoscaling.minReplicas 0 (scale to zero) needs KEDA: set provider keda or "
            "auto, or minReplicas 1 or more", field_path=".minReplicas"),
    ))

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas is below minReplicas")
        if self.min_replicas == 0 and self.provider == "hpa":
            raise ValueError("minReplicas 0 (scale to zero) needs KEDA, not provider hpa")
        return self

    provider: Literal["auto", "keda", "hpa"] = "auto"
    """keda: a KEDA ScaledObject with Prometheus triggers; hpa: an autoscaling/v2
    HorizontalPodAutoscaler on Pods/External metrics served by a metrics adapter; auto: keda
    when the cluster serves ScaledObjects, else hpa."""
    min_replicas: Annotated[int, Field(ge=0, le=facts.INT32_MAX)] = 1
    """Fewest replicas. 0 (KEDA only) scales to zero when idle: the first request then waits
    for a pod to start and load the whole model (minutes for a large one)."""
    max_replicas: Annotated[int, Field(ge=1, le=facts.INT32_MAX)]
    """Most replicas (each needs a full set of GPUs)."""
    metrics: Annotated[tuple[AutoscalingMetric, ...], Field(max_length=3)] = ()
    """What to scale on (the highest demand of them wins). Unset: QueuedRequests on the
    PyTorch line, TimeToFirstToken on the engine line (the only one it serves)."""
    prometheus_address: Annotated[str, StringConstraints(
        max_length=1024, pattern=r"^https?://[^\s]+$")] | None = None
    """KEDA: the Prometheus server the triggers query, e.g.
    http://prometheus-operated.monitoring.svc:9090. Unset: the operator's setting
    (chart value autoscaling.prometheusAddress)."""
    cooldown_seconds: Annotated[int, Field(ge=0, le=86400)] | None = None
    """KEDA: seconds after the last active trigger before scaling to minReplicas (KEDA's
    default 300)."""


class LLMDeploymentSpec(SpecModel):
    """An engine to serve, how many replicas, and how to reach them."""

    model_config = ConfigDict(json_schema_extra=validations(cel(
        "!has(self.imageRelease) || has(self.image)",
        "spec.imageRelease names the release of spec.image: set spec.image too, or remove "
        "spec.imageRelease (without spec.image the engine's image and its release are used)",
        field_path=".imageRelease",
    ), cel(
        "!has(self.gpu) || !has(self.slices) || size(self.slices) == 0",
        "spec.slices and spec.gpu both name GPU types: use spec.gpu for one GPU type, or "
        "spec.slices for several, not both",
        field_path=".slices",
    )))

    @model_validator(mode="after")
    def _one_gpu_form(self) -> LLMDeploymentSpec:
        if self.gpu is not None and self.slices:
            raise ValueError("spec.gpu and spec.slices both name GPU types: use one")
        gpus = [s.gpu for s in self.slices]
        if len(set(gpus)) != len(gpus):
            raise ValueError("spec.slices names a GPU type twice: one slice per GPU type")
        return self

    engine_ref: EngineReference
    """The LLMEngine to serve, in the same namespace."""
    gpu: Annotated[
        GPUProduct, Field(json_schema_extra=validations(gpu_product_rule("spec.gpu")))
    ] | None = None
    """GPU type to run on: one of the engine's spec.targets, or a type its auto entry
    resolved to (status.targets). Unset: the GPU type it already serves on while that stays
    built and schedulable, else the built target with room for every replica and the most
    GPU memory (status.gpuReason says why)."""
    slices: Annotated[
        tuple[GPUSlice, ...],
        Field(max_length=MAX_SLICES, json_schema_extra=validations(cel(
            "self.all(a, self.exists_one(b, b.gpu == a.gpu))",
            "spec.slices names a GPU type twice: give each GPU type one slice (and its "
            "weight)"))),
    ] = ()
    """Serve on several GPU types at once, one workload per type, all behind one Service:
    each slice is placed and sized by the engine built for its type. spec.replicas is the
    total, split over the slices by weight. Instead of spec.gpu."""
    replicas: Annotated[int, Field(ge=0, le=facts.INT32_MAX)] = DEFAULT_REPLICAS
    """Number of serving pods (multi-node: groups), each with tensor x pipeline GPUs; with
    spec.slices the total over all slices, split by their weights. Also set through the scale
    subresource (kubectl scale, HorizontalPodAutoscaler): leave it out of GitOps manifests
    when an autoscaler owns it."""
    image: ImageReference | None = None
    """Serving image; defaults to the engine's build image. Must be the same TensorRT-LLM
    release the engine was built with, named by its tag (e.g. :1.2.0) or by imageRelease."""
    image_release: ImageRelease | None = None
    """The TensorRT-LLM release in spec.image (e.g. 1.2.0), for digests and private mirrors
    whose tags are not versions. When set, it is the release every check uses instead of the
    tag. Only with spec.image."""
    image_pull_secrets: PullSecretList = ()
    """Secrets for pulling the image from a private registry."""
    serve: Annotated[
        ServeSpec, Field(default_factory=ServeSpec, json_schema_extra=default_empty_object())
    ]
    """trtllm-serve settings."""
    resources: Annotated[
        ResourceRequirements,
        Field(json_schema_extra=validations(no_gpu_resources_rule(
            "spec.resources", "the engine's spec.build.parallelism"))),
    ] | None = None
    """CPU and memory of each serving pod. GPUs come from the engine's parallelism."""
    tolerations: TolerationList = ()
    """Tolerations of the serving pods (the operator adds nvidia.com/gpu itself)."""
    affinity: FreeformObject | None = None
    """Affinity of the serving pods, as in a Pod (e.g. spread replicas across zones)."""
    node_selector: LabelMap | None = None
    """More node labels the serving pods require, on top of the GPU type."""
    env: Annotated[
        tuple[EnvVar, ...],
        Field(max_length=MAX_ENV, json_schema_extra={
            **ENV_LIST_SCHEMA, **validations(env_rule("spec.env"))}),
    ] = ()
    """More environment variables for trtllm-serve."""
    service: Annotated[
        ServiceSpec, Field(default_factory=ServiceSpec, json_schema_extra=default_empty_object())
    ]
    """The Service in front of the pods."""
    strategy: Annotated[
        Strategy, Field(default_factory=Strategy, json_schema_extra=default_empty_object())
    ]
    """How pods are replaced on a change."""
    inference_pool: InferencePoolSpec | None = None
    """Also make an InferencePool of the serving pods (needs the Gateway API Inference
    Extension CRDs), named like the LLMDeployment, for a Gateway's HTTPRoute to reach them
    through the named endpoint picker."""
    autoscaling: AutoscalingSpec | None = None
    """Scale on serving metrics between minReplicas and maxReplicas; spec.replicas is then
    ignored (status.replicasOwner names the autoscaler)."""


# --------------------------------------------------------------------------- status


class DeploymentConditionType(StrEnum):
    """Condition types of an LLMDeployment."""

    ENGINE_READY = "EngineReady"
    """The engine is built for the chosen GPU type."""
    AVAILABLE = "Available"
    """At least the minimum number of replicas answer requests."""
    PROGRESSING = "Progressing"
    """A rollout is under way (new engine, image or settings)."""
    READY = "Ready"
    """All desired replicas run the current engine and spec, and answer requests (with
    spec.slices: in every slice)."""
    INFERENCE_POOL_READY = "InferencePoolReady"
    """spec.inferencePool: the InferencePool exists as specified (or why not)."""
    AUTOSCALING = "Autoscaling"
    """spec.autoscaling is in force: the autoscaler exists and, when it says so, can read its
    metrics (its own words and its last scale reason in the message)."""


class SliceStatus(StatusModel):
    """One GPU type of spec.slices, as observed."""

    gpu: GPUProduct
    """The slice's GPU type."""
    desired_replicas: Annotated[int, Field(ge=0)] = 0
    """Its share of spec.replicas (by weight)."""
    replicas: Annotated[int, Field(ge=0)] = 0
    """Its serving pods (multi-node: groups) that exist."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Those that answer requests."""
    engine_fingerprint: Annotated[str, StringConstraints(max_length=64)] | None = None
    """Fingerprint of the engine its pods serve."""
    ready: bool = False
    """Whether every desired replica of the slice runs the current engine and spec."""
    reason: Annotated[str, StringConstraints(max_length=128)] | None = None
    """Why it is (not) ready, as in the Ready condition."""
    message: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """What to do about it, if anything."""


class LLMDeploymentStatus(StatusModel):
    """What the operator observed about the serving pods."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation of the spec this status describes."""
    conditions: ConditionList = ()
    """EngineReady, Available, Progressing and Ready, with reason and message."""
    replicas: Annotated[int, Field(ge=0)] | None = None
    """Serving pods that exist (the scale subresource reads it)."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Serving pods that answer requests."""
    replica_summary: Annotated[str, StringConstraints(max_length=32)] | None = None
    """Ready over desired replicas, e.g. 2/3."""
    selector: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Label selector of the serving pods, for the scale subresource (autoscalers)."""
    gpu: GPUProduct | None = None
    """GPU type the pods run on."""
    gpu_reason: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Why status.gpu: named by spec.gpu, or chosen among the engine's built targets (kept
    where it already serves, else room for every replica, then most GPU memory), in words."""
    engine_fingerprint: Annotated[str, StringConstraints(max_length=64)] | None = None
    """Fingerprint of the engine the pods serve."""
    endpoint: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Base URL of the OpenAI-compatible API, e.g. http://llama.team-a.svc:8000/v1."""
    slices: Annotated[tuple[SliceStatus, ...], Field(max_length=MAX_SLICES)] = ()
    """With spec.slices: each GPU type's replicas, engine and readiness, in spec order."""
    replicas_owner: Annotated[str, StringConstraints(max_length=300)] | None = None
    """Who sets the serving workload's replicas: spec.replicas, or the autoscaler
    (ScaledObject/<name> or HorizontalPodAutoscaler/<name>)."""
    pod_monitor: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The PodMonitor the operator keeps for the serving pods, if any."""


class LLMDeployment(ResourceModel):
    """A whole LLMDeployment object, as a handler receives it."""

    api_version: Literal["trtllm.dev/v1alpha1"] = "trtllm.dev/v1alpha1"
    kind: Literal["LLMDeployment"] = "LLMDeployment"
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus = Field(default_factory=LLMDeploymentStatus)


DEPLOYMENT_KIND = KindInfo(
    kind="LLMDeployment",
    plural="llmdeployments",
    singular="llmdeployment",
    short_names=("llmd",),
    description=(
        "LLMDeployment serves a built LLMEngine with trtllm-serve on nodes of one of its GPU "
        "types, behind a Service with an OpenAI-compatible API."
    ),
    spec_model=LLMDeploymentSpec,
    status_model=LLMDeploymentStatus,
    printer_columns=(
        ready_columns()[0],
        PrinterColumn("Replicas", "string", ".status.replicaSummary",
                      "Ready replicas over desired replicas."),
        PrinterColumn("Engine", "string", ".spec.engineRef.name", "The LLMEngine served."),
        PrinterColumn("GPU", "string", ".status.gpu", "GPU type the pods run on."),
        AGE_COLUMN,
        PrinterColumn("Endpoint", "string", ".status.endpoint",
                      "Base URL of the OpenAI-compatible API.", priority=1),
        *ready_columns()[1:],
    ),
    scale=ScaleSubresource(
        spec_replicas_path=".spec.replicas",
        status_replicas_path=".status.replicas",
        label_selector_path=".status.selector",
    ),
    name_rules=(
        cel(
            "self.size() <= 63 && self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters): it names the Service; rename "
            "the LLMDeployment",
        ),
    ),
)
