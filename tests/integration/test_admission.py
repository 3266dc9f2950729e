"""The generated CRDs on a real API server: what admission accepts, refuses, and shows.

Uses the shared fixtures of ``tests/conftest.py``: ``crds`` (CRDs applied and Established),
``namespace`` (a fresh namespace per test), ``kubectl`` and ``api_client``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from trtllm_operator import trtllm_facts
from trtllm_operator.api import (
    API_GROUP,
    API_VERSION,
    LLMDeploymentStatus,
    LLMEngineStatus,
)
from trtllm_operator.api.engine import MAX_PARALLELISM, EngineTargetStatus
from trtllm_operator.conditions import set_condition

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ENGINE_SAMPLE = "llmengine-llama-3-8b.yaml"
DEPLOYMENT_SAMPLE = "llmdeployment-llama-3-8b-h100.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

Kubectl = Callable[..., Any]
_REMOVE = object()


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return loaded


def changed(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``doc`` with dotted paths (``spec__build__dtype``) set, or removed."""
    result = copy.deepcopy(doc)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        if value is _REMOVE:
            node.pop(last, None)
        else:
            node[last] = value
    return result


def apply(kubectl: Kubectl, namespace: str, doc: dict[str, Any], *, check: bool = True) -> Any:
    return kubectl("apply", "--validate=strict", "-n", namespace, "-f", "-",
                   input=yaml.safe_dump(doc), check=check)


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    loaded: dict[str, Any] = json.loads(out)
    return loaded


def custom_objects(api_client: Any) -> Any:
    """The custom objects API (untyped: it answers plain dicts)."""
    return client.CustomObjectsApi(api_client)


ENGINE = sample(ENGINE_SAMPLE)
DEPLOYMENT = sample(DEPLOYMENT_SAMPLE)
CALIBRATED = changed(ENGINE, spec__build__quantization={"format": "int8_sq"})
INT32_MAX = trtllm_facts.INT32_MAX

# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.yaml")))
def test_every_sample_is_accepted(kubectl: Kubectl, namespace: str, name: str) -> None:
    doc = sample(name)
    apply(kubectl, namespace, doc)
    stored = get(kubectl, namespace, doc["kind"], doc["metadata"]["name"])
    assert stored["spec"]["engineRef" if doc["kind"] == "LLMDeployment" else "targets"]


def test_defaults_are_filled_in_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, namespace, sample(ENGINE_SAMPLE))
    apply(kubectl, namespace, sample("llmdeployment-llama-3-8b-l40s.yaml"))

    engine = get(kubectl, namespace, "llmengine", "llama-3-8b")["spec"]
    assert engine["build"]["image"] == trtllm_facts.DEFAULT_TRTLLM_IMAGE
    assert engine["build"]["parallelism"] == {"tensor": 1, "pipeline": 1}
    assert engine["storage"]["pathPrefix"] == "engines"
    deployment = get(kubectl, namespace, "llmdeployment", "llama-3-8b-l40s")["spec"]
    assert deployment["replicas"] == 1
    assert deployment["serve"]["port"] == trtllm_facts.DEFAULT_SERVE_PORT
    assert deployment["strategy"] == {"type": "RollingUpdate"}


def test_extra_args_the_operator_does_not_write_are_accepted(kubectl: Kubectl,
                                                              namespace: str) -> None:
    doc = changed(ENGINE, spec__build__extraArgs=["--strip_plan", "--logits_dtype", "float32"])

    apply(kubectl, namespace, doc)

    stored = get(kubectl, namespace, "llmengine", "llama-3-8b")
    assert stored["spec"]["build"]["extraArgs"] == ["--strip_plan", "--logits_dtype", "float32"]


# --------------------------------------------------------------------------- refused

# (id, object, field path the error must name, words the message must contain)
INVALID: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("no-model-source", changed(ENGINE, spec__model={}),
     "spec.model", ["exactly one source"]),
    ("two-model-sources",
     changed(ENGINE, spec__model__volume={"claimName": "models", "path": "llama"}),
     "spec.model", ["exactly one source"]),
    ("tensor-zero", changed(ENGINE, spec__build__parallelism={"tensor": 0}),
     "spec.build.parallelism.tensor", ["greater than or equal to 1"]),
    ("pipeline-zero", changed(ENGINE, spec__build__parallelism={"pipeline": 0}),
     "spec.build.parallelism.pipeline", ["greater than or equal to 1"]),
    ("input-longer-than-sequence",
     changed(ENGINE, spec__build__limits={"maxInputLen": 9000, "maxSeqLen": 8192}),
     "spec.build.limits.maxInputLen", ["must not exceed", "maxSeqLen"]),
    ("duplicate-target", changed(ENGINE, spec__targets=[H100, H100]),
     "spec.targets", ["each GPU type once", "remove the duplicate"]),
    ("no-target", changed(ENGINE, spec__targets=[]),
     "spec.targets", ["at least 1"]),
    ("target-not-a-label-value", changed(ENGINE, spec__targets=["NVIDIA H100"]),
     "spec.targets", ["nvidia.com/gpu.product label values", "kubectl get nodes"]),
    ("unknown-quantization-format",
     changed(ENGINE, spec__build__quantization={"format": "fp16"}),
     "spec.build.quantization.format", ["Unsupported value", '"fp8"', '"int4_awq"']),
    ("unknown-kv-cache-dtype",
     changed(ENGINE, spec__build__quantization={"kvCacheDtype": "fp4"}),
     "spec.build.quantization.kvCacheDtype", ["Unsupported value", '"fp8"']),
    ("empty-quantization", changed(ENGINE, spec__build__quantization={}),
     "spec.build.quantization", ["format or kvCacheDtype"]),
    ("unknown-dtype", changed(ENGINE, spec__build__dtype="bf16"),
     "spec.build.dtype", ["Unsupported value", '"bfloat16"']),
    ("unknown-plugin-value", changed(ENGINE, spec__build__plugins={"gemmPlugin": "fp16"}),
     "spec.build.plugins.gemmPlugin", ["Unsupported value"]),
    ("more-build-gpus-than-ranks", changed(ENGINE, spec__build__gpus=2),
     "spec.build.gpus", ["must not exceed", "tensor x pipeline"]),
    ("extra-arg-repeats-managed-flag",
     changed(ENGINE, spec__build__extraArgs=["--output_dir=/tmp/x"]),
     "spec.build.extraArgs", ["flags the operator writes", "--output_dir"]),
    ("extra-args-begin-with-a-value",
     changed(ENGINE, spec__build__extraArgs=["strip_plan", "--fast_build"]),
     "spec.build.extraArgs", ["must begin with a flag", "--strip_plan"]),
    ("extra-arg-repeats-typed-plugin",
     changed(ENGINE, spec__build__extraArgs=["--gemm_plugin", "fp8"]),
     "spec.build.extraArgs", ["or a plugin flag", "spec.build.plugins"]),
    ("build-resources-ask-for-gpus",
     changed(ENGINE, spec__build__resources={"limits": {"nvidia.com/gpu": 2}}),
     "spec.build.resources", ["must not set nvidia.com/gpu", "spec.build.gpus"]),
    ("absolute-path-prefix", changed(ENGINE, spec__storage__pathPrefix="/engines"),
     "spec.storage.pathPrefix", ["relative to the volume root"]),
    ("volume-path-escapes-claim",
     changed(ENGINE, spec__model={"volume": {"claimName": "models", "path": "a/../../etc"}}),
     "spec.model.volume.path", ["'..'"]),
    ("no-storage", changed(ENGINE, spec__storage=_REMOVE),
     "spec.storage", ["Required value"]),
    ("hf-repo-with-space",
     changed(ENGINE, spec__model__huggingFace__repo="meta llama/Meta-Llama-3-8B"),
     "spec.model.huggingFace.repo", ["should match"]),
    ("misspelt-field", changed(ENGINE, spec__build__quantisation={"format": "fp8"}),
     "spec.build.quantisation", ["unknown field"]),
    ("engine-name-too-long", changed(ENGINE, metadata__name="llama-" + "x" * 60),
     "metadata.name", ["at most 63 characters"]),
    ("negative-replicas", changed(DEPLOYMENT, spec__replicas=-1),
     "spec.replicas", ["greater than or equal to 0"]),
    ("no-engine-ref", changed(DEPLOYMENT, spec__engineRef=_REMOVE),
     "spec.engineRef", ["Required value"]),
    ("gpu-not-a-label-value", changed(DEPLOYMENT, spec__gpu="H100 80GB"),
     "spec.gpu", ["nvidia.com/gpu.product label value", "NVIDIA-H100-80GB-HBM3"]),
    ("rolling-update-with-recreate",
     changed(DEPLOYMENT, spec__strategy={"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
     "spec.strategy.rollingUpdate", ["only allowed with", "RollingUpdate"]),
    ("negative-max-unavailable",
     changed(DEPLOYMENT, spec__strategy={"rollingUpdate": {"maxUnavailable": -2**31}}),
     "spec.strategy.rollingUpdate.maxUnavailable", ["number of pods", "use e.g. 1 or 25%"]),
    ("max-surge-not-a-percentage",
     changed(DEPLOYMENT, spec__strategy={"rollingUpdate": {"maxSurge": "lots"}}),
     "spec.strategy.rollingUpdate.maxSurge", ["number of pods", "use e.g. 1 or 25%"]),
    ("rolling-update-that-cannot-progress",
     changed(DEPLOYMENT, spec__strategy={"rollingUpdate": {"maxUnavailable": 0}}),
     "spec.strategy.rollingUpdate.maxUnavailable", ["while maxSurge is 0", "set maxUnavailable"]),
    ("unknown-service-type", changed(DEPLOYMENT, spec__service={"type": "Ingress"}),
     "spec.service.type", ["Unsupported value", '"LoadBalancer"']),
    ("gpu-and-slices", changed(DEPLOYMENT, spec__slices=[{"gpu": "NVIDIA-L40S"}]),
     "spec.slices", ["spec.slices and spec.gpu both name GPU types", "not both"]),
    ("slice-gpu-twice",
     changed(DEPLOYMENT, spec__gpu=_REMOVE, spec__slices=[{"gpu": H100}, {"gpu": H100}]),
     "spec.slices", ["names a GPU type twice", "one slice"]),
    ("slice-weight-zero",
     changed(DEPLOYMENT, spec__gpu=_REMOVE, spec__slices=[{"gpu": H100, "weight": 0}]),
     "spec.slices[0].weight", ["greater than or equal to 1"]),
    ("inference-pool-picker-without-port",
     changed(DEPLOYMENT, spec__inferencePool={"endpointPickerRef": {"name": "epp"}}),
     "spec.inferencePool.endpointPickerRef.port", ["Required value"]),
    ("service-port-out-of-range", changed(DEPLOYMENT, spec__service={"port": 70000}),
     "spec.service.port", ["less than or equal to 65535"]),
    ("kv-cache-fraction-above-one",
     changed(DEPLOYMENT, spec__serve={"kvCacheFreeGpuMemoryFraction": 1.5}),
     "spec.serve.kvCacheFreeGpuMemoryFraction", ["less than or equal to 1"]),
    ("serve-extra-arg-repeats-port",
     changed(DEPLOYMENT, spec__serve={"extraArgs": ["--port", "9000"]}),
     "spec.serve.extraArgs", ["flags the operator writes", "--port"]),
    ("serving-resources-ask-for-gpus",
     changed(DEPLOYMENT, spec__resources={"requests": {"nvidia.com/gpu": 1}}),
     "spec.resources", ["must not set nvidia.com/gpu"]),
    ("env-value-and-value-from",
     changed(DEPLOYMENT, spec__env=[{"name": "A", "value": "1",
                                     "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]),
     "spec.env", ["spec.env entries take either value or valueFrom"]),
    ("image-with-space", changed(DEPLOYMENT, spec__image="nvcr.io/nvidia/tensorrt-llm release"),
     "spec.image", ["should match"]),
    ("deployment-name-not-a-service-name", changed(DEPLOYMENT, metadata__name="8b-llama"),
     "metadata.name", ["DNS-1035 label", "rename"]),
    *[  # Upper bounds: one value just over each, from trtllm_facts (what TensorRT-LLM accepts).
        (f"{name}-over-bound", changed(doc, **{path.replace(".", "__"): bound + 1}),
         path, [f"less than or equal to {bound}"])
        for name, doc, path, bound in (
            ("max-batch-size", ENGINE, "spec.build.limits.maxBatchSize", INT32_MAX),
            ("max-input-len", ENGINE, "spec.build.limits.maxInputLen", INT32_MAX),
            ("max-seq-len", ENGINE, "spec.build.limits.maxSeqLen", INT32_MAX),
            ("max-num-tokens", ENGINE, "spec.build.limits.maxNumTokens", INT32_MAX),
            ("max-beam-width", ENGINE, "spec.build.limits.maxBeamWidth",
             trtllm_facts.MAX_BEAM_WIDTH),
            ("tensor", ENGINE, "spec.build.parallelism.tensor", MAX_PARALLELISM),
            ("pipeline", ENGINE, "spec.build.parallelism.pipeline", MAX_PARALLELISM),
            ("build-gpus", ENGINE, "spec.build.gpus", MAX_PARALLELISM),
            ("tokens-per-block", ENGINE, "spec.build.plugins.tokensPerBlock",
             trtllm_facts.MAX_TOKENS_PER_BLOCK),
            ("calibration-size", CALIBRATED, "spec.build.quantization.calibration.size",
             trtllm_facts.MAX_CALIBRATION_SAMPLES),
            ("calibration-batch-size", CALIBRATED,
             "spec.build.quantization.calibration.batchSize",
             trtllm_facts.MAX_CALIBRATION_SAMPLES),
            ("calibration-max-seq-length", CALIBRATED,
             "spec.build.quantization.calibration.maxSeqLength", INT32_MAX),
            ("replicas", DEPLOYMENT, "spec.replicas", INT32_MAX),
            ("serve-max-batch-size", DEPLOYMENT, "spec.serve.maxBatchSize", INT32_MAX),
            ("serve-max-num-tokens", DEPLOYMENT, "spec.serve.maxNumTokens", INT32_MAX),
            ("serve-max-seq-len", DEPLOYMENT, "spec.serve.maxSeqLen", INT32_MAX),
            ("serve-max-beam-width", DEPLOYMENT, "spec.serve.maxBeamWidth",
             trtllm_facts.MAX_BEAM_WIDTH),
        )
    ],
    # The values the issue reported as accepted: 2^40 and 2^63-1.
    ("max-batch-size-2-to-the-40", changed(ENGINE, spec__build__limits={"maxBatchSize": 2**40}),
     "spec.build.limits.maxBatchSize", ["less than or equal to"]),
    ("max-batch-size-int64-max",
     changed(ENGINE, spec__build__limits={"maxBatchSize": 2**63 - 1}),
     "spec.build.limits.maxBatchSize", ["less than or equal to"]),
    ("tensor-times-pipeline-over-one-node",
     changed(ENGINE, spec__build__parallelism={"tensor": 8, "pipeline": 4}),
     "spec.build.parallelism", [f"tensor x pipeline must be at most {MAX_PARALLELISM}"]),
    ("autoscaling-max-below-min",
     changed(DEPLOYMENT, spec__autoscaling={"minReplicas": 3, "maxReplicas": 2}),
     "spec.autoscaling.maxReplicas", ["is below minReplicas"]),
    ("autoscaling-zero-with-hpa",
     changed(DEPLOYMENT, spec__autoscaling={"minReplicas": 0, "maxReplicas": 2,
                                            "provider": "hpa"}),
     "spec.autoscaling.minReplicas", ["needs KEDA"]),
    ("autoscaling-unknown-metric",
     changed(DEPLOYMENT, spec__autoscaling={"maxReplicas": 2, "metrics": [{"type": "GPUs"}]}),
     "spec.autoscaling.metrics[0].type", ["Unsupported value"]),
]


def test_the_table_of_refused_objects_is_large_enough() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize(("doc", "field", "words"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_object_is_refused_naming_the_field(
    kubectl: Kubectl, namespace: str, doc: dict[str, Any], field: str, words: list[str]
) -> None:
    result = apply(kubectl, namespace, doc, check=False)
    assert result.returncode != 0, f"accepted: {yaml.safe_dump(doc)}"
    error = result.stderr
    assert field in error, error
    for word in words:
        assert word in error, error
    assert kubectl("get", doc["kind"], "-n", namespace, "-o", "name").stdout.strip() == ""


def test_storage_cannot_change_after_creation(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, namespace, ENGINE)

    moved = apply(kubectl, namespace,
                  changed(ENGINE, spec__storage={"claimName": "other-claim"}), check=False)

    assert moved.returncode != 0
    assert "spec.storage is immutable" in moved.stderr
    assert "create a new LLMEngine" in moved.stderr
    stored = get(kubectl, namespace, "llmengine", "llama-3-8b")
    assert stored["spec"]["storage"]["claimName"] == "trtllm-engines"
    # Other build settings stay editable: a change is a rebuild, not an orphaned engine.
    apply(kubectl, namespace, changed(ENGINE, spec__build__dtype="float16"))


# --------------------------------------------------------------------------- what users see


def _retry(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """OpenAPI publishing for kubectl explain trails CRD establishment by a few seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def test_kubectl_explain_shows_field_docs(kubectl: Kubectl) -> None:
    def explains(resource: str, words: str) -> bool:
        result = kubectl("explain", resource, check=False)
        return result.returncode == 0 and words in result.stdout

    assert _retry(lambda: explains("llmengine.spec.build.quantization.format",
                                   "quantize.py --qformat"))
    assert explains("llmengine.spec.targets", "nvidia.com/gpu.product")
    assert explains("llmdeployment.spec.replicas", "scale subresource")
    assert explains("llmdeployment.status.endpoint", "OpenAI-compatible")


def _write_engine_status(api: Any, namespace: str, name: str,
                         generation: int) -> None:
    conditions = set_condition((), "Ready", "True", "Built", "All 2 targets are built.",
                               observed_generation=generation, now=NOW)
    status = LLMEngineStatus(
        observed_generation=generation,
        conditions=conditions,
        targets=(EngineTargetStatus(gpu=H100, state="Built", fingerprint="a" * 64),),
        built_targets="2/2",
        model="meta-llama/Meta-Llama-3-8B-Instruct@8afb486",
    )
    api.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, "llmengines",
                                              name, {"status": status.to_wire()})


def _write_deployment_status(api: Any, namespace: str, name: str) -> None:
    conditions = set_condition((), "Ready", "False", "RollingOut",
                               "1 of 2 replicas run the current engine.",
                               observed_generation=1, now=NOW)
    status = LLMDeploymentStatus(
        observed_generation=1, conditions=conditions, replicas=2, ready_replicas=1,
        replica_summary="1/2", selector="app.kubernetes.io/instance=" + name, gpu=H100,
        endpoint=f"http://{name}.{namespace}.svc:8000/v1",
    )
    api.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace,
                                              "llmdeployments", name, {"status": status.to_wire()})


def test_kubectl_get_llm_prints_the_columns(kubectl: Kubectl, namespace: str,
                                            api_client: Any) -> None:
    api = custom_objects(api_client)
    apply(kubectl, namespace, ENGINE)
    apply(kubectl, namespace, DEPLOYMENT)
    _write_engine_status(api, namespace, "llama-3-8b", generation=1)
    _write_deployment_status(api, namespace, "llama-3-8b-h100")

    table = kubectl("get", "llm", "-n", namespace).stdout
    wide = kubectl("get", "llm", "-n", namespace, "-o", "wide").stdout

    for header in ("READY", "BUILT", "MODEL", "AGE", "REPLICAS", "ENGINE", "GPU"):
        assert header in table, table
    assert "REASON" not in table
    assert "MESSAGE" not in table
    engine_row = next(line for line in table.splitlines() if "llmengine" in line)
    assert engine_row.split()[1:4] == ["True", "2/2", "meta-llama/Meta-Llama-3-8B-Instruct@8afb486"]
    deployment_row = next(line for line in table.splitlines() if "llmdeployment" in line)
    assert deployment_row.split()[1:5] == ["False", "1/2", "llama-3-8b", H100]
    for header in ("REASON", "MESSAGE", "ENDPOINT"):
        assert header in wide, wide
    assert "RollingOut" in wide
    assert "1 of 2 replicas run the current engine." in wide


def test_kubectl_scale_changes_spec_replicas(kubectl: Kubectl, namespace: str,
                                             api_client: Any) -> None:
    api = custom_objects(api_client)
    apply(kubectl, namespace, DEPLOYMENT)
    _write_deployment_status(api, namespace, "llama-3-8b-h100")

    kubectl("scale", "llmdeployment/llama-3-8b-h100", "--replicas=5", "-n", namespace)

    assert get(kubectl, namespace, "llmd", "llama-3-8b-h100")["spec"]["replicas"] == 5
    scale = api.get_namespaced_custom_object_scale(API_GROUP, API_VERSION, namespace,
                                                   "llmdeployments", "llama-3-8b-h100")
    assert scale["spec"]["replicas"] == 5
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "app.kubernetes.io/instance=llama-3-8b-h100"


def test_status_survives_spec_edits_and_spec_edits_bump_generation(
    kubectl: Kubectl, namespace: str, api_client: Any
) -> None:
    api = custom_objects(api_client)
    apply(kubectl, namespace, ENGINE)
    _write_engine_status(api, namespace, "llama-3-8b", generation=1)
    after_status = get(kubectl, namespace, "llme", "llama-3-8b")
    assert after_status["metadata"]["generation"] == 1, "a status write is not a spec change"

    # A spec edit that also carries a status: the main resource ignores the status part.
    edited = changed(ENGINE, spec__build__dtype="float16",
                     status={"builtTargets": "0/2", "model": "overwritten"})
    apply(kubectl, namespace, edited)

    stored = get(kubectl, namespace, "llme", "llama-3-8b")
    assert stored["metadata"]["generation"] == 2
    assert stored["status"]["builtTargets"] == "2/2"
    assert stored["status"]["conditions"][0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert stored["status"]["observedGeneration"] == 1
