"""Third-party CRDs for the local control plane, taken pinned from their Go modules.

The operator integrates with KEDA, the Prometheus Operator and the Gateway API Inference
Extension only through their custom resources. Tests need those CRDs installed (and removed
again) but none of the controllers behind them, so the local cluster installs the CRD files
that each project publishes inside its Go module, fetched through the Go module proxy like the
cluster's own binaries. Nothing here runs a third-party controller.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trtllm_operator.localcluster.binaries import BinaryError, _run, cache_root


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
    generated_from: str | None = None
    """A Go package of the module holding the kinds' API types: the module ships Go types but
    no CRD YAML, so controller-gen (CONTROLLER_TOOLS) generates ``files`` from the package."""


CONTROLLER_TOOLS = ("sigs.k8s.io/controller-tools", "v0.20.1")
"""controller-gen, pinned: what Go projects themselves generate their CRD YAML with."""


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


PROMETHEUS_OPERATOR = CRDSource(
    name="prometheus-operator",
    # The main module is not served by the proxy; its API types are their own module.
    module="github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring",
    version="v0.95.2",
    files=("monitoring.coreos.com_podmonitors.yaml",),
    crd_names=("podmonitors.monitoring.coreos.com",),
    generated_from="github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1",
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


def generated_dir(source: CRDSource) -> Path:
    """Generate ``source``'s CRDs with controller-gen into the cache (once; about two CPU
    minutes to build controller-gen): a wrapper module pins the types' module and the tool."""
    assert source.generated_from is not None
    tool, tool_version = CONTROLLER_TOOLS
    out = cache_root() / "crds" / f"{source.name}-{source.version}-cg{tool_version}"
    if all((out / f).is_file() for f in source.files):
        return out
    if shutil.which("go") is None:
        raise BinaryError(f"Go is needed to generate the {source.name} CRDs; install Go")
    src = cache_root() / "src" / f"crdgen-{source.name}-{source.version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(f"module trtllm-operator.local/crdgen-{source.name}\n\ngo 1.24\n")
    # A build-tagged file keeps both requirements in go.mod (go build never compiles it).
    (src / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        f'\t_ "{source.generated_from}"\n\t_ "{tool}/cmd/controller-gen"\n)\n')
    _run(["go", "get", f"{tool}/cmd/controller-gen@{tool_version}",
          f"{source.generated_from}@{source.version}"], cwd=src)
    _run(["go", "build", "-o", str(src / "controller-gen"), f"{tool}/cmd/controller-gen"],
         cwd=src)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run([str(src / "controller-gen"), "crd:crdVersions=v1,maxDescLen=0",
          f"paths={source.generated_from}", f"output:crd:dir={staging}"], cwd=src)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return out


def crd_files(source: CRDSource) -> list[Path]:
    """The CRD manifests of ``source``, checked to exist in the pinned module (or generated
    from it)."""
    root = (generated_dir(source) if source.generated_from is not None
            else module_dir(source.module, source.version))
    paths = [root / f for f in source.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BinaryError(f"{source.module}@{source.version} lacks {', '.join(missing)}")
    return paths
