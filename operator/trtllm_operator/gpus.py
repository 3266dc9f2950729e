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

from dataclasses import dataclass

PRODUCT_LABEL = "nvidia.com/gpu.product"
FAMILY_LABEL = "nvidia.com/gpu.family"
COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
COUNT_LABEL = "nvidia.com/gpu.count"
MEMORY_LABEL = "nvidia.com/gpu.memory"
PRESENT_LABEL = "nvidia.com/gpu.present"
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

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self.compute_major, self.compute_minor)

    @property
    def sm(self) -> int:
        """Compute capability as an SM number: 8.9 -> 89."""
        return self.compute_major * 10 + self.compute_minor

    def labels(self, gpus: int | None = None) -> dict[str, str]:
        """The GFD labels a node of this type carries."""
        return {
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


def gpu_type(key: str) -> GPUType:
    """Look a GPU type up by short name (``h100``) or product label (``NVIDIA-H100-80GB-HBM3``)."""
    try:
        return _BY_KEY[key]
    except KeyError:
        known = ", ".join(g.short for g in CATALOG)
        raise KeyError(f"unknown GPU type {key!r}; known: {known}") from None


def by_product(product: str) -> GPUType | None:
    """The catalog entry for an exact ``nvidia.com/gpu.product`` value, or None if unknown.

    Unlike :func:`gpu_type` this never matches a short name: a spec naming ``h100`` where a
    product label belongs must not be mistaken for an H100.
    """
    return _BY_PRODUCT.get(product)


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
