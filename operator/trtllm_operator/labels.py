"""Label and annotation keys the operator puts on what it creates.

Children get the standard ``app.kubernetes.io/*`` labels plus a few ``trtllm.dev/*`` keys that
the operator's watches filter on (so memory stays flat in objects it does not own). The
owner's own labels are never copied: GitOps tracking labels on a custom resource must not leak
onto its children.
"""

from __future__ import annotations

from typing import Final

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "trtllm-operator"
PART_OF: Final = "app.kubernetes.io/part-of"
COMPONENT: Final = "app.kubernetes.io/component"
NAME: Final = "app.kubernetes.io/name"
INSTANCE: Final = "app.kubernetes.io/instance"

ENGINE: Final = "trtllm.dev/engine"
DEPLOYMENT: Final = "trtllm.dev/deployment"
FINGERPRINT: Final = "trtllm.dev/fingerprint"
GPU_PRODUCT: Final = "trtllm.dev/gpu-product"
ENGINE_PATH: Final = "trtllm.dev/engine-path"

MANAGED_SELECTOR: Final = f"{MANAGED_BY}={MANAGER}"


def common(component: str) -> dict[str, str]:
    """Labels every child of a given component carries."""
    return {MANAGED_BY: MANAGER, PART_OF: "trtllm-operator", COMPONENT: component}
