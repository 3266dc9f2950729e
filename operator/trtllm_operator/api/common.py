"""Building blocks shared by both kinds: base models, Kubernetes sub-objects, CEL rule helpers.

The CRDs are generated from these models (:mod:`trtllm_operator.crdgen`), so what a field
accepts is written once, here, as a type: its description is the attribute docstring, its
bounds are ``Field``/``StringConstraints`` arguments, and its admission rules (CEL) sit next to
it through :func:`cel`. Kubernetes sub-objects are typed where that is cheap (tolerations,
resources, env) and kept open where a full schema would be huge (affinity, ``valueFrom``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_serializer,
)
from pydantic.alias_generators import to_camel

from trtllm_operator.trtllm_facts import RELEASE_PATTERN

API_GROUP: Final = "trtllm.dev"
API_VERSION: Final = "v1alpha1"
API_GROUP_VERSION: Final = f"{API_GROUP}/{API_VERSION}"
CATEGORY: Final = "llm"

# --------------------------------------------------------------------------- base models


class SpecModel(BaseModel):
    """Base of every object a user writes: camelCase on the wire, unknown fields refused.

    ``extra="forbid"`` turns a schema/model mismatch into a loud parse error in the handler
    instead of a silently ignored setting (the API server has already pruned what the CRD does
    not declare, so a stray field here means the models and the CRD disagree).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(SpecModel):
    """Base of what the operator writes under ``status``.

    Unknown fields are ignored rather than refused: a status written by a newer operator must
    not stop an older one (during a rollback) from reading the rest.
    """

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- CEL rules


def cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry: a CEL rule and the message a user sees.

    ``field_path`` (relative to where the rule sits, e.g. ``.maxInputLen``) makes the API server
    report the error on that field rather than on the object holding the rule. No ``reason``
    is set on purpose: with the default (FieldValueInvalid) the API server prints the message;
    with e.g. FieldValueDuplicate it prints only "Duplicate value" and the fix is lost.
    """
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules, for a model's config or a ``Field``."""
    return {"x-kubernetes-validations": list(rules)}


def default_empty_object() -> dict[str, Any]:
    """``json_schema_extra`` that makes the CRD default a nested object to ``{}``.

    The API server then fills in that object's own field defaults, so a reader of the stored
    object (and every CEL rule) sees e.g. ``parallelism.tensor: 1`` even when the user wrote no
    ``parallelism`` at all. The model gives the same default through ``default_factory``.
    """
    return {"default": {}}


# --------------------------------------------------------------------------- scalar types

_PERCENT = r"^[0-9]{1,9}%$"


def _pod_count_or_percent(value: int | str) -> int | str:
    """The rule the API server applies to a Deployment's maxSurge/maxUnavailable."""
    ok = (0 <= value <= 2**31 - 1 if isinstance(value, int)
          else re.match(_PERCENT, value) is not None)
    if not ok:
        raise ValueError("must be a number of pods (0 or more) or a percentage such as 25%")
    return value


def pod_count_rule(path: str) -> dict[str, Any]:
    """``json_schema_extra`` checking an :data:`IntOrString` at admission (the Deployment it
    becomes would refuse it on every reconcile)."""
    return validations(cel(
        f"type(self) == int ? self >= 0 && self <= 2147483647 "
        f": string(self).matches('{_PERCENT}')",
        f"{path} is neither a number of pods (0 or more) nor a percentage: use e.g. 1 or "
        f"25%, as in a Deployment's rolling update"))


IntOrString = Annotated[
    int | str,
    AfterValidator(_pod_count_or_percent),
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }),
]
"""A pod count or a percentage (``25%``), as in a Deployment's ``maxSurge``."""

_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    int | str,
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": _QUANTITY_PATTERN,
    }),
]
"""A Kubernetes resource quantity: ``4``, ``500m``, ``64Gi``."""

FreeformObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""An object passed through as written (its own API validates it where it ends up)."""

DNSSubdomain = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]
"""The name of a namespaced object (Secret, PersistentVolumeClaim, LLMEngine)."""

GPUProduct = Annotated[str, StringConstraints(min_length=1, max_length=63)]
"""A GPU type: the exact ``nvidia.com/gpu.product`` label value GPU Feature Discovery writes.

Its shape is checked by :func:`gpu_product_rule` (CEL) rather than a schema ``pattern``, so
the most common mistake -- the NVML name with spaces -- gets a message that says what to do.
"""

_LABEL_VALUE = "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

ImageReference = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")]
"""A container image reference, e.g. ``nvcr.io/nvidia/tensorrt-llm/release:1.2.0``."""

ImageRelease = Annotated[str, StringConstraints(max_length=32, pattern=RELEASE_PATTERN)]
"""A TensorRT-LLM release as its version string, e.g. ``1.2.0`` or ``1.3.0rc20``."""

RelativePath = Annotated[str, StringConstraints(max_length=512)]
"""A folder inside a volume, relative to its root (checked by :data:`RELATIVE_PATH_RULE`)."""

CliArgument = Annotated[str, StringConstraints(min_length=1, max_length=256)]
"""One command-line argument, passed as its own argv entry (no shell involved)."""

LabelMap = Annotated[
    dict[str, Annotated[str, StringConstraints(max_length=63)]],
    Field(max_length=16),
]
"""Node labels to match (``nodeSelector``)."""


def relative_path_rule(path: str, example: str) -> dict[str, str]:
    """The CEL rule keeping a volume path inside its volume: not absolute, no ``..``."""
    return cel(
        "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
        f"{path} must be a path relative to the volume root without '..' segments: "
        f"write it like {example}",
    )


def gpu_product_rule(path: str, *, each: bool = False) -> dict[str, str]:
    """The CEL rule that a GPU type (or, with ``each``, every entry of a list) is a label value."""
    if each:
        rule = f"self.all(p, p.matches('{_LABEL_VALUE}'))"
        subject = f"{path} entries must be nvidia.com/gpu.product label values"
    else:
        rule = f"self.matches('{_LABEL_VALUE}')"
        subject = f"{path} must be an nvidia.com/gpu.product label value"
    return cel(
        rule,
        f"{subject} such as NVIDIA-H100-80GB-HBM3 (GPU Feature Discovery writes spaces as '-'): "
        "copy them from kubectl get nodes -L nvidia.com/gpu.product",
    )


def no_gpu_resources_rule(path: str, gpu_field: str) -> dict[str, str]:
    """The CEL rule keeping ``nvidia.com/gpu`` out of user resources: the operator sets it."""
    return cel(
        "(!has(self.limits) || !('nvidia.com/gpu' in self.limits))"
        " && (!has(self.requests) || !('nvidia.com/gpu' in self.requests))",
        f"{path} must not set nvidia.com/gpu: the operator requests the GPUs; "
        f"remove it and use {gpu_field} instead",
    )


def no_operator_flags_rule(path: str, flags: tuple[str, ...], instead: str,
                           typed_flags: tuple[str, ...] = ()) -> dict[str, str]:
    """The CEL rule refusing extra arguments that repeat flags the operator writes itself.

    ``flags`` are written from other settings and listed in the message; ``typed_flags`` have
    a typed field of their own (named in ``instead``). A flag may appear as ``--flag`` or
    ``--flag=value``; either spelling is refused, so a setting has one place to live instead
    of two whose order on the command line decides which wins.
    """
    names = "|".join(flag.removeprefix("--") for flag in (*flags, *typed_flags))
    return cel(
        f"self.all(arg, !arg.matches('^--({names})(=.*)?$'))",
        f"{path} must not set flags the operator writes ({', '.join(flags)}"
        f"{', or a plugin flag' if typed_flags else ''}): remove them and use {instead} instead",
    )


# --------------------------------------------------------------------------- references


class LocalObjectReference(SpecModel):
    """A reference to an object in the same namespace."""

    name: DNSSubdomain
    """Name of the object."""


class SecretKeyReference(SpecModel):
    """A key of a Secret in the same namespace."""

    name: DNSSubdomain
    """Name of the Secret."""
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    ] = "HF_TOKEN"
    """Key inside the Secret holding the value. Defaults to HF_TOKEN, the variable name the
    Hugging Face tools read, so one Secret works for both."""


# --------------------------------------------------------------------------- pod settings


class ResourceRequirements(SpecModel):
    """CPU, memory and other resources of a container (GPUs are set by the operator)."""

    limits: Annotated[dict[str, Quantity], Field(max_length=16)] | None = None
    """Most of each resource the container may use, e.g. {cpu: "16", memory: 128Gi}."""
    requests: Annotated[dict[str, Quantity], Field(max_length=16)] | None = None
    """Resources reserved for the container when it is scheduled, e.g. {cpu: "8"}."""


class Toleration(SpecModel):
    """Lets pods land on nodes with a matching taint (GPU pools are often tainted)."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = None
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists matches any value; Equal (the Kubernetes default) matches value exactly."""
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; unset matches all effects."""
    toleration_seconds: int | None = None
    """With effect NoExecute: how long the pod stays bound after the taint appears."""


class EnvVar(SpecModel):
    """An environment variable of the container."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """Variable name, e.g. HF_HUB_ENABLE_HF_TRANSFER."""
    value: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """Literal value."""
    value_from: FreeformObject | None = None
    """Source of the value, as in a Pod (secretKeyRef, configMapKeyRef, fieldRef...)."""


ENV_LIST_SCHEMA: Final = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
MAX_ENV: Final = 64


def env_rule(path: str) -> dict[str, str]:
    """The CEL rule that each env entry has a value or a valueFrom, not both (as in a Pod)."""
    return cel(
        "self.all(e, !(has(e.value) && has(e.valueFrom)))",
        f"{path} entries take either value or valueFrom, not both: remove one of them",
    )


TolerationList = Annotated[tuple[Toleration, ...], Field(max_length=32)]
PullSecretList = Annotated[
    tuple[LocalObjectReference, ...],
    Field(max_length=8, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
    }),
]

# --------------------------------------------------------------------------- status

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state, as Kubernetes API conventions (KEP-1623) define it."""

    type: Annotated[
        str,
        StringConstraints(
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ]
    """Condition type in CamelCase, e.g. Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation of the spec this condition was computed from."""
    last_transition_time: datetime
    """When status last changed (not when reason or message did)."""
    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ]
    """One CamelCase word a program can match on, e.g. QuantizationUnsupported."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """What a human needs to know: what is wrong and how to fix it."""

    @field_serializer("last_transition_time")
    def _rfc3339_seconds(self, value: datetime) -> str:
        """Kubernetes times are RFC 3339 in UTC with whole seconds."""
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")


ConditionList = Annotated[
    tuple[Condition, ...],
    Field(max_length=16, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
    }),
]

# --------------------------------------------------------------------------- whole objects


class ObjectMeta(BaseModel):
    """The parts of ``metadata`` handlers use; everything else is ignored, not refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              frozen=True)

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    deletion_timestamp: datetime | None = None
    finalizers: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ResourceModel(BaseModel):
    """Base of a whole custom object as a handler receives it (``body``)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              frozen=True)

    metadata: ObjectMeta


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get`` (``additionalPrinterColumns``)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0
    """0 shows in ``kubectl get``; 1 only with ``-o wide``."""


@dataclass(frozen=True)
class ScaleSubresource:
    """Where the ``/scale`` subresource (kubectl scale, HPA) reads and writes replicas."""

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD of one kind says besides the schema: names, columns, subresources."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[SpecModel]
    status_model: type[StatusModel]
    printer_columns: tuple[PrinterColumn, ...]
    scale: ScaleSubresource | None = None
    name_rules: tuple[dict[str, str], ...] = field(default_factory=tuple)
    """CEL rules on ``metadata.name`` (the only metadata a CRD may constrain): names become
    labels and Service names, which are shorter and stricter than object names."""
    categories: tuple[str, ...] = (CATEGORY,)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


def ready_columns(condition: str = "Ready") -> tuple[PrinterColumn, PrinterColumn, PrinterColumn]:
    """The Ready status column and its reason/message columns (the latter at ``-o wide``)."""
    path = f'.status.conditions[?(@.type=="{condition}")]'
    return (
        PrinterColumn(condition, "string", f"{path}.status", f"Whether the {condition} "
                      "condition is True."),
        PrinterColumn("Reason", "string", f"{path}.reason", f"Why {condition} is what it is.",
                      priority=1),
        PrinterColumn("Message", "string", f"{path}.message", "What to do about it, if anything.",
                      priority=1),
    )


AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")
