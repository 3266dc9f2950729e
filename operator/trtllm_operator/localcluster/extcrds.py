"""Third-party CRDs for the local control plane, taken pinned from their Go modules.

The operator integrates with KEDA, the Prometheus Operator and the Gateway API Inference
Extension only through their custom resources. Tests need those CRDs installed (and removed
again) but none of the controllers behind them, so the local cluster installs the CRD files
that each project publishes inside its Go module, fetched through the Go module proxy like the
cluster's own binaries. Nothing here runs a third-party controller.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trtllm_operator.localcluster.binaries import BinaryError


@dataclass(frozen=True)
class CRDSource:
    """CRD files inside one pinned Go module."""

    name: str
    module: str
    version: str
    files: tuple[str, ...]
    """Paths of the CRD manifests inside the module."""
    crd_names: tuple[str, ...]
    """``plural.group`` of each CRD, for waiting and deleting."""


KEDA = CRDSource(
    name="keda",
    module="github.com/kedacore/keda/v2",
    version="v2.18.1",
    files=("config/crd/bases/keda.sh_scaledobjects.yaml",
           "config/crd/bases/keda.sh_triggerauthentications.yaml"),
    crd_names=("scaledobjects.keda.sh", "triggerauthentications.keda.sh"),
)

INFERENCE_EXTENSION = CRDSource(
    name="inference-extension",
    module="sigs.k8s.io/gateway-api-inference-extension",
    version="v1.6.2",
    files=("config/crd/bases/inference.networking.k8s.io_inferencepools.yaml",),
    crd_names=("inferencepools.inference.networking.k8s.io",),
)


def module_dir(module: str, version: str) -> Path:
    """The unpacked module from the Go module cache (downloaded through the proxy once)."""
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                          capture_output=True, text=True, check=False)
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BinaryError(f"{module}@{version}: {proc.stderr.strip() or exc}") from exc
    if info.get("Error"):
        raise BinaryError(f"{module}@{version}: {info['Error']}")
    return Path(info["Dir"])


def crd_files(source: CRDSource) -> list[Path]:
    """The CRD manifests of ``source``, checked to exist in the pinned module."""
    root = module_dir(source.module, source.version)
    paths = [root / f for f in source.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BinaryError(f"{source.module}@{source.version} lacks {', '.join(missing)}")
    return paths
