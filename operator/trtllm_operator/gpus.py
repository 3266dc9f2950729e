"""The GPU catalog: facts about NVIDIA GPU types, keyed by their ``nvidia.com/gpu.product`` label.

This is the project's single source of GPU-type facts. The operator reads GPU types from node
labels written by NVIDIA GPU Feature Discovery (GFD); the catalog adds what a label alone does
not say (a short name for humans, typical GPUs per node) and lets the local simulated cluster
create nodes that carry exactly the labels GFD writes on real machines.

Label values follow GFD: the product is the NVML device name with spaces turned into ``-``;
the family follows the compute capability (8.0-8.8 ampere, 8.9 ada-lovelace, 9.x hopper,
10.x/12.x blackwell); memory is in MiB.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

PRODUCT_LABEL = "nvidia.com/gpu.product"
FAMILY_LABEL = "nvidia.com/gpu.family"
COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
COUNT_LABEL = "nvidia.com/gpu.count"
MEMORY_LABEL = "nvidia.com/gpu.memory"
PRESENT_LABEL = "nvidia.com/gpu.present"
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
GPU_RESOURCE = "nvidia.com/gpu"

# The taint GPU node pools commonly carry (GKE and EKS GPU pools, GPU Operator guides), so that
# only pods asking for GPUs land there. Workloads the operator creates tolerate it.
GPU_TAINT_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class GPUType:
    """One GPU SKU as GFD describes it, plus the shape of a typical node carrying it."""

    short: str  # a human-friendly handle: "h100", "l40s"
    product: str  # the nvidia.com/gpu.product label value
    family: str
    compute_major: int
    compute_minor: int
    memory_mib: int
    gpus_per_node: int
    node_cpus: int
    node_memory_gi: int
    mig_profile: str | None = None
    """The MIG profile (``1g.10gb``) when this "GPU" is one MIG slice of a larger GPU."""

    @property
    def is_mig(self) -> bool:
        """A MIG slice: no NVLink or peer-to-peer access to any other GPU or slice."""
        return self.mig_profile is not None

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self.compute_major, self.compute_minor)

    @property
    def sm(self) -> int:
        """Compute capability as an SM number: 8.9 -> 89."""
        return self.compute_major * 10 + self.compute_minor

    def labels(self, gpus: int | None = None) -> dict[str, str]:
        """The GFD labels a node of this type carries."""
        mig = {MIG_STRATEGY_LABEL: "single"} if self.is_mig else {}
        return mig | {
            PRODUCT_LABEL: self.product,
            FAMILY_LABEL: self.family,
            COMPUTE_MAJOR_LABEL: str(self.compute_major),
            COMPUTE_MINOR_LABEL: str(self.compute_minor),
            COUNT_LABEL: str(gpus if gpus is not None else self.gpus_per_node),
            MEMORY_LABEL: str(self.memory_mib),
            PRESENT_LABEL: "true",
        }


CATALOG: tuple[GPUType, ...] = (
    GPUType("h100", "NVIDIA-H100-80GB-HBM3", "hopper", 9, 0, 81559, 8, 224, 2048),
    GPUType("h200", "NVIDIA-H200", "hopper", 9, 0, 143771, 8, 224, 2048),
    GPUType("a100", "NVIDIA-A100-SXM4-80GB", "ampere", 8, 0, 81920, 8, 256, 2048),
    GPUType("l40s", "NVIDIA-L40S", "ada-lovelace", 8, 9, 46068, 4, 64, 512),
    GPUType("b200", "NVIDIA-B200", "blackwell", 10, 0, 183359, 8, 224, 4096),
)

_BY_KEY = {g.short: g for g in CATALOG} | {g.product: g for g in CATALOG}
_BY_PRODUCT = {g.product: g for g in CATALOG}


# MIG with GFD's "single" strategy: every GPU of the node is split into slices of one profile,
# the device plugin advertises each slice as one nvidia.com/gpu, and GFD writes the product as
# "<full GPU product>-MIG-<profile>", e.g. NVIDIA-A100-SXM4-80GB-MIG-1g.10gb. (With the "mixed"
# strategy slices are nvidia.com/mig-<profile> resources, which pods asking for nvidia.com/gpu
# never get, so the product label there names whole GPUs only.) A profile is
# [<compute slices>c.]<GPU slices>g.<memory>gb, optionally with a "+me"-style suffix.
_MIG_PRODUCT = re.compile(
    r"^(?P<base>.+)-MIG-(?P<profile>(?:\d+c\.)?(?P<slices>\d+)g\.(?P<gb>\d+)gb(?:\+[a-z]+)?)$")


def mig_profile(product: str) -> str | None:
    """The MIG profile a GPU type label names (``1g.10gb``), or None for a whole GPU."""
    match = _MIG_PRODUCT.match(product)
    return match["profile"] if match else None


def _mig_type(product: str) -> GPUType | None:
    """A catalog entry for a MIG slice of a catalog GPU: the GPU's compute capability, the
    profile's memory, and as many slices per node as the profile allows (7 GPU slices)."""
    match = _MIG_PRODUCT.match(product)
    base = _BY_PRODUCT.get(match["base"]) if match else None
    if match is None or base is None:
        return None
    per_gpu = max(1, 7 // int(match["slices"]))
    return dataclasses.replace(
        base, short=f"{base.short}-mig-{match['profile']}", product=product,
        memory_mib=int(match["gb"]) * 1024, gpus_per_node=base.gpus_per_node * per_gpu,
        mig_profile=match["profile"])


def memory_mib(product: str) -> int | None:
    """GPU memory one ``nvidia.com/gpu`` of this type has, in MiB: per GPU for a whole GPU in
    the catalog, per slice for a MIG product (from its profile: ``1g.10gb`` -> 10 GiB, even
    when the full GPU is not in the catalog). None when unknown."""
    known = by_product(product)
    if known is not None:
        return known.memory_mib
    match = _MIG_PRODUCT.match(product)
    return int(match["gb"]) * 1024 if match else None


def gpu_type(key: str) -> GPUType:
    """Look a GPU type up by short name (``h100``) or product label (``NVIDIA-H100-80GB-HBM3``)."""
    try:
        return _BY_KEY[key]
    except KeyError:
        mig = _mig_type(key)
        if mig is not None:
            return mig
        known = ", ".join(g.short for g in CATALOG)
        raise KeyError(f"unknown GPU type {key!r}; known: {known}") from None


def by_product(product: str) -> GPUType | None:
    """The catalog entry for an exact ``nvidia.com/gpu.product`` value, or None if unknown.

    Unlike :func:`gpu_type` this never matches a short name: a spec naming ``h100`` where a
    product label belongs must not be mistaken for an H100. A MIG product of a catalog GPU
    (``NVIDIA-A100-SXM4-80GB-MIG-1g.10gb``) gives that GPU's entry for one slice.
    """
    return _BY_PRODUCT.get(product) or _mig_type(product)


def family_for(compute_major: int, compute_minor: int) -> str:
    """GFD's family name for a compute capability."""
    if compute_major == 8:
        return "ada-lovelace" if compute_minor >= 9 else "ampere"
    if compute_major == 9:
        return "hopper"
    if compute_major in (10, 12):
        return "blackwell"
    if compute_major == 13:
        return "rubin"
    if compute_major == 7:
        return "turing" if compute_minor >= 5 else "volta"
    return "undefined"
