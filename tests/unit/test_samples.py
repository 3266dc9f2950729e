"""samples/: every file parses into its model and passes the operator's own checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trtllm_operator import gpus
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.validation import (
    ClusterFacts,
    GPUPool,
    effective_backend,
    validate_deployment,
    validate_engine,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
FILES = sorted(SAMPLES.glob("*.yaml"))

# A cluster with a typical node of every catalog GPU type.
CATALOG_CLUSTER = ClusterFacts(pools={
    g.product: GPUPool(node_gpus=(g.gpus_per_node,), compute_capability=g.compute_capability)
    for g in gpus.CATALOG
})


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def engines() -> dict[str, LLMEngine]:
    return {e.metadata.name: e for e in (LLMEngine.model_validate(load(p)) for p in FILES
                                         if load(p)["kind"] == "LLMEngine")}


def deployments() -> list[LLMDeployment]:
    return [LLMDeployment.model_validate(load(p)) for p in FILES
            if load(p)["kind"] == "LLMDeployment"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_sample_parses_into_its_model(path: Path) -> None:
    body = load(path)

    parsed: LLMEngine | LLMDeployment = (
        LLMEngine.model_validate(body) if body["kind"] == "LLMEngine"
        else LLMDeployment.model_validate(body)
    )

    assert parsed.metadata.name in path.name
    wire = parsed.spec.to_wire()
    assert body["spec"].keys() <= wire.keys(), "nothing the sample sets is lost"
    assert type(parsed.spec).model_validate(wire) == parsed.spec


def test_gpu_products_are_exact_catalog_labels() -> None:
    products = {g.product for g in gpus.CATALOG}
    for engine in engines().values():
        assert set(engine.spec.targets) <= products
    for deployment in deployments():
        assert deployment.spec.gpu in products


@pytest.mark.parametrize("name", sorted(engines()))
def test_engine_sample_passes_every_check_on_a_cluster_with_its_gpus(name: str) -> None:
    assert validate_engine(engines()[name].spec, CATALOG_CLUSTER) == ()


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d.metadata.name)
def test_deployment_sample_serves_a_sample_engine_without_findings(
    deployment: LLMDeployment,
) -> None:
    engine = engines().get(deployment.spec.engine_ref.name)

    assert engine is not None
    assert validate_deployment(deployment.spec, engine.spec, CATALOG_CLUSTER) == ()


def test_the_samples_cover_the_documented_scenarios() -> None:
    shapes = set()
    for engine in engines().values():
        build = engine.spec.build
        fmt = build.quantization.format if build.quantization else build.dtype
        shapes.add((fmt, build.parallelism.tensor, tuple(engine.spec.targets)))

    assert ("bfloat16", 1, ("NVIDIA-H100-80GB-HBM3", "NVIDIA-L40S")) in shapes
    assert ("fp8", 4, ("NVIDIA-H100-80GB-HBM3",)) in shapes
    assert ("int4_awq", 1, ("NVIDIA-A100-SXM4-80GB",)) in shapes
    served = {d.spec.engine_ref.name for d in deployments()}
    assert served == set(engines()), "every sample engine has a sample deployment"


def test_samples_use_the_default_builder_image() -> None:
    for engine in engines().values():
        build = load(SAMPLES / f"llmengine-{engine.metadata.name}.yaml")["spec"]["build"]
        if engine.spec.backend == "pytorch":
            # The default image is of the engine line; the PyTorch line needs its own.
            assert effective_backend(engine.spec) == "pytorch"
            continue
        assert "image" not in build, "the default lives in one constant"


def test_one_engine_of_each_backend_is_sampled() -> None:
    backends = {effective_backend(e.spec) for e in engines().values()}
    assert backends == {"tensorrt", "pytorch"}
    pytorch = next(e for e in engines().values() if effective_backend(e.spec) == "pytorch")
    quant = pytorch.spec.build.quantization
    assert quant is not None
    assert quant.format == "fp8"
    assert quant.calibration is not None
    assert quant.calibration.download_dataset  # named by the spec, fetched by the CPU Job
