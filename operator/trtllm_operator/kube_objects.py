"""Free-form Kubernetes sub-objects of our specs, checked against the Kubernetes types. Pure.

The CRDs keep ``spec.affinity`` and ``env[].valueFrom`` open (their full schemas are large), so
the API server admits any object there. A wrong type (``weight: 2.5``, ``secretKeyRef: 5``, a
missing required field) would otherwise surface only when the operator builds the Deployment
or Job -- and fail there on every retry. Converting them to lightkube's models of the same
Kubernetes types finds it first, and the finding names the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from lightkube.models.core_v1 import Affinity, EnvVarSource

from trtllm_operator.api import LLMDeploymentSpec, LLMEngineSpec
from trtllm_operator.api.common import EnvVar
from trtllm_operator.validation import Finding, Reason, Severity

# msgspec's "... - at `$.a.b[0].c`": where inside the object the problem is.
_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def check_object(model: Any, value: Mapping[str, Any] | None, field_name: str,
                 type_name: str) -> list[Finding]:
    """One free-form object against its Kubernetes type (a lightkube model)."""
    if value is None:
        return []
    try:
        model.from_dict(dict(value))
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        m = _AT.match(str(exc))
        problem = m["problem"] if m else str(exc)
        where = field_name + ((m["path"] or "") if m else "")
        return [Finding(Reason.POD_FIELD_INVALID, Severity.ERROR, where, (
            f"{where}: {problem}; {field_name} must be a Kubernetes {type_name} "
            f"(kubectl explain pod.spec.{type_name[0].lower()}{type_name[1:]}): correct it"))]
    return []


def _env(env: Iterable[EnvVar], field_name: str) -> list[Finding]:
    found: list[Finding] = []
    for i, var in enumerate(env):
        found += check_object(EnvVarSource, var.value_from, f"{field_name}[{i}].valueFrom",
                              "EnvVarSource")
    return found


def check_engine_objects(spec: LLMEngineSpec) -> list[Finding]:
    """The build pod's free-form parts: ``spec.build.env[].valueFrom``."""
    return _env(spec.build.env, "spec.build.env")


def check_deployment_objects(spec: LLMDeploymentSpec) -> list[Finding]:
    """The serving pod's free-form parts: ``spec.affinity`` and ``spec.env[].valueFrom``."""
    return [*check_object(Affinity, spec.affinity, "spec.affinity", "Affinity"),
            *_env(spec.env, "spec.env")]
