"""Free-form Kubernetes sub-objects (affinity, env valueFrom) checked against the Kubernetes
types, each problem naming the field inside the spec."""

from __future__ import annotations

from trtllm_operator.api import LLMDeploymentSpec, LLMEngineSpec
from trtllm_operator.kube_objects import check_deployment_objects, check_engine_objects
from trtllm_operator.validation import Reason, Severity

ENGINE = {"model": {"huggingFace": {"repo": "meta-llama/Meta-Llama-3-8B-Instruct"}},
          "targets": ["NVIDIA-H100-80GB-HBM3"], "storage": {"claimName": "engines"}}


def _deployment(**spec: object) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate({"engineRef": {"name": "e"}, **spec})


def test_well_formed_objects_pass() -> None:
    spec = _deployment(
        affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": "k", "operator": "In", "values": ["v"]}]}}]}},
        env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    assert check_deployment_objects(spec) == []


def test_wrong_type_deep_in_affinity_names_the_path() -> None:
    (f,) = check_deployment_objects(_deployment(affinity={"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": -3.5,
                                                             "preference": {}}]}}))
    assert (f.reason, f.severity) == (Reason.POD_FIELD_INVALID, Severity.ERROR)
    assert f.field == ("spec.affinity.nodeAffinity."
                       "preferredDuringSchedulingIgnoredDuringExecution[0].weight")
    assert f.message.startswith(f"{f.field}: Expected `int`, got `float`")
    assert "a Kubernetes Affinity" in f.message


def test_missing_required_field_and_wrong_type_of_value_from() -> None:
    spec = _deployment(env=[
        {"name": "A", "value": "x"},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s"}}},
        {"name": "C", "valueFrom": {"configMapKeyRef": 5}}])
    fields = [(f.field, f.message.split(";")[0]) for f in check_deployment_objects(spec)]
    assert fields == [
        ("spec.env[1].valueFrom.secretKeyRef",
         "spec.env[1].valueFrom.secretKeyRef: Object missing required field `key`"),
        ("spec.env[2].valueFrom.configMapKeyRef",
         "spec.env[2].valueFrom.configMapKeyRef: Expected `object | null`, got `int`")]


def test_engine_build_env_value_from() -> None:
    spec = LLMEngineSpec.model_validate({**ENGINE, "build": {"env": [
        {"name": "T", "valueFrom": {"fieldRef": {}}}]}})
    (f,) = check_engine_objects(spec)
    assert f.field == "spec.build.env[0].valueFrom.fieldRef"
    assert "missing required field `fieldPath`" in f.message
