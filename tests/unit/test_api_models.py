"""The API models as a handler uses them: parse ``body``, read typed fields, write status."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from trtllm_operator import trtllm_facts
from trtllm_operator.api import (
    API_GROUP_VERSION,
    LLMDeployment,
    LLMDeploymentSpec,
    LLMEngine,
    LLMEngineSpec,
    LLMEngineStatus,
)
from trtllm_operator.api.engine import EngineTargetStatus

ENGINE_BODY: dict[str, Any] = {
    "apiVersion": "trtllm.dev/v1alpha1",
    "kind": "LLMEngine",
    "metadata": {
        "name": "llama-3-8b",
        "namespace": "team-a",
        "uid": "0b6a",
        "generation": 3,
        "resourceVersion": "42",
        "managedFields": [{"manager": "kubectl"}],
        "labels": {"argocd.argoproj.io/instance": "llm"},
    },
    "spec": {
        "model": {"huggingFace": {"repo": "meta-llama/Meta-Llama-3-8B-Instruct",
                                  "tokenSecretRef": {"name": "hf-token"}}},
        "build": {"parallelism": {"tensor": 2, "pipeline": 2},
                  "quantization": {"format": "fp8", "kvCacheDtype": "fp8"},
                  "limits": {"maxInputLen": 2048, "maxSeqLen": 4096}},
        "targets": ["NVIDIA-H100-80GB-HBM3"],
        "storage": {"claimName": "trtllm-engines"},
    },
}

DEPLOYMENT_BODY: dict[str, Any] = {
    "apiVersion": "trtllm.dev/v1alpha1",
    "kind": "LLMDeployment",
    "metadata": {"name": "chat", "namespace": "team-a", "generation": 1},
    "spec": {"engineRef": {"name": "llama-3-8b"}},
}


def test_a_handler_reads_camel_case_body_as_typed_snake_case_fields() -> None:
    engine = LLMEngine.model_validate(ENGINE_BODY)

    assert engine.metadata.name == "llama-3-8b"
    assert engine.metadata.generation == 3
    hf = engine.spec.model.hugging_face
    assert hf is not None
    assert hf.token_secret_ref is not None
    assert hf.token_secret_ref.key == "HF_TOKEN"
    assert engine.spec.build.parallelism.world_size == 4
    assert engine.spec.build.quantization is not None
    assert engine.spec.build.quantization.kv_cache_dtype == "fp8"
    assert engine.spec.build.limits is not None
    assert engine.spec.build.limits.max_seq_len == 4096
    assert engine.status == LLMEngineStatus()


def test_defaults_match_what_users_are_promised() -> None:
    spec = LLMEngine.model_validate(ENGINE_BODY).spec
    deployment = LLMDeployment.model_validate(DEPLOYMENT_BODY).spec

    assert spec.build.image == trtllm_facts.DEFAULT_TRTLLM_IMAGE
    assert spec.build.dtype == "auto"
    assert spec.storage.path_prefix == "engines"
    assert deployment.replicas == 1
    assert deployment.image is None, "unset: the engine's builder image is used"
    assert deployment.serve.port == 8000
    assert deployment.service.type == "ClusterIP"
    assert deployment.strategy.type == "RollingUpdate"


def test_default_image_is_a_release_that_still_builds_engines() -> None:
    release = trtllm_facts.release_of_image(trtllm_facts.DEFAULT_TRTLLM_IMAGE)

    assert release in trtllm_facts.ENGINE_RELEASES


def test_spec_round_trips_through_the_wire_form() -> None:
    spec = LLMEngine.model_validate(ENGINE_BODY).spec

    wire = spec.to_wire()

    assert wire["model"]["huggingFace"]["tokenSecretRef"] == {"name": "hf-token",
                                                             "key": "HF_TOKEN"}
    assert wire["build"]["quantization"] == {"format": "fp8", "kvCacheDtype": "fp8"}
    assert "gpus" not in wire["build"], "unset fields are left out, never sent as null"
    assert LLMEngineSpec.model_validate(wire) == spec


def test_models_accept_python_names_too() -> None:
    spec = LLMDeploymentSpec(engine_ref={"name": "llama"}, replicas=3)

    assert spec.to_wire()["engineRef"] == {"name": "llama"}


def test_an_unknown_spec_field_is_refused_by_name() -> None:
    body = {**DEPLOYMENT_BODY, "spec": {**DEPLOYMENT_BODY["spec"], "replica": 2}}

    with pytest.raises(ValidationError, match="replica"):
        LLMDeployment.model_validate(body)


def test_unknown_enum_values_are_refused() -> None:
    spec = {**ENGINE_BODY["spec"], "build": {"quantization": {"format": "fp16"}}}

    with pytest.raises(ValidationError, match="fp8"):
        LLMEngineSpec.model_validate(spec)


def test_models_are_frozen() -> None:
    spec = LLMEngine.model_validate(ENGINE_BODY).spec

    with pytest.raises(ValidationError):
        spec.targets = ("NVIDIA-L40S",)  # type: ignore[misc]


def test_status_from_a_newer_operator_still_parses() -> None:
    body = {**ENGINE_BODY, "status": {"builtTargets": "1/1", "someFutureField": True,
                                      "targets": [{"gpu": "NVIDIA-H100-80GB-HBM3",
                                                   "state": "Built", "newDetail": 1}]}}

    status = LLMEngine.model_validate(body).status

    assert status.built_targets == "1/1"
    assert status.targets[0].state == "Built"


def test_status_serializes_camel_case_without_nulls() -> None:
    status = LLMEngineStatus(
        observed_generation=2,
        targets=(EngineTargetStatus(gpu="NVIDIA-L40S", state="Building",
                                    job="trtllm-build-0123456789ab"),),
        built_targets="0/1",
    )

    assert status.to_wire() == {
        "observedGeneration": 2,
        "conditions": [],
        "targets": [{"gpu": "NVIDIA-L40S", "state": "Building",
                     "job": "trtllm-build-0123456789ab"}],
        "builtTargets": "0/1",
    }


def test_built_versions_use_the_product_spelling() -> None:
    target = EngineTargetStatus.model_validate(
        {"gpu": "NVIDIA-L40S", "state": "Built", "versions": {"tensorrtLLM": "1.2.0"}})

    assert target.versions is not None
    assert target.versions.tensorrt_llm == "1.2.0"
    assert target.to_wire()["versions"] == {"tensorrtLLM": "1.2.0"}


def test_api_version_constant_matches_the_models() -> None:
    assert LLMEngine.model_validate(ENGINE_BODY).api_version == API_GROUP_VERSION
    assert LLMDeployment.model_validate(DEPLOYMENT_BODY).api_version == API_GROUP_VERSION


@pytest.mark.parametrize("value", [-1, -2**31, 2**31, "lots", "25", "-5%", ""])
def test_rolling_update_amounts_are_pod_counts_or_percentages(value: int | str) -> None:
    # What the Deployment would refuse on every reconcile is refused up front.
    with pytest.raises(ValidationError, match="maxUnavailable"):
        LLMDeploymentSpec.model_validate(
            {"engineRef": {"name": "e"}, "strategy": {"rollingUpdate": {"maxUnavailable": value}}})


def test_rolling_update_amounts_accept_counts_and_percentages() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {"engineRef": {"name": "e"}, "strategy": {"rollingUpdate": {"maxSurge": 0,
                                                                     "maxUnavailable": "25%"}}})
    assert spec.strategy.rolling_update is not None
    assert (spec.strategy.rolling_update.max_surge,
            spec.strategy.rolling_update.max_unavailable) == (0, "25%")


@pytest.mark.parametrize("update", [{"maxUnavailable": 0},
                                    {"maxSurge": "0%", "maxUnavailable": "0%"}])
def test_a_rolling_update_that_can_replace_no_pod_is_refused(update: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="maxSurge is 0"):
        LLMDeploymentSpec.model_validate(
            {"engineRef": {"name": "e"}, "strategy": {"rollingUpdate": update}})
