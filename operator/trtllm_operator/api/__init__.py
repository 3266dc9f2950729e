"""The typed API of trtllm-operator (group ``trtllm.dev``, version ``v1alpha1``).

Handlers parse ``body`` into :class:`LLMEngine` / :class:`LLMDeployment` and work on typed
objects; :mod:`trtllm_operator.crdgen` generates the CRDs in ``crds/`` from the same models.
"""

from trtllm_operator.api.common import (
    API_GROUP,
    API_GROUP_VERSION,
    API_VERSION,
    Condition,
    ConditionStatus,
    KindInfo,
)
from trtllm_operator.api.deployment import (
    DEPLOYMENT_KIND,
    DeploymentConditionType,
    LLMDeployment,
    LLMDeploymentSpec,
    LLMDeploymentStatus,
)
from trtllm_operator.api.engine import (
    ENGINE_KIND,
    EngineConditionType,
    EngineTargetStatus,
    LLMEngine,
    LLMEngineSpec,
    LLMEngineStatus,
)

KINDS: tuple[KindInfo, ...] = (ENGINE_KIND, DEPLOYMENT_KIND)
"""Every kind of the API, in the order the CRDs are generated."""

__all__ = [
    "API_GROUP",
    "API_GROUP_VERSION",
    "API_VERSION",
    "DEPLOYMENT_KIND",
    "ENGINE_KIND",
    "KINDS",
    "Condition",
    "ConditionStatus",
    "DeploymentConditionType",
    "EngineConditionType",
    "EngineTargetStatus",
    "KindInfo",
    "LLMDeployment",
    "LLMDeploymentSpec",
    "LLMDeploymentStatus",
    "LLMEngine",
    "LLMEngineSpec",
    "LLMEngineStatus",
]
