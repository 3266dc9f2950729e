"""Serving builders and target choice: pure, tested on exact output."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import ROOT
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.api.engine import BuiltLimits, EngineTargetStatus
from trtllm_operator.deployments import builders
from trtllm_operator.deployments.controller import choose_target, serving_for

H100 = "NVIDIA-H100-80GB-HBM3"
L40S = "NVIDIA-L40S"


def _load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "samples" / name).read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u-2", "generation": 1}
    return body


def _engine(states: dict[str, str] | None = None) -> LLMEngine:
    body = _load("llmengine-llama-3-8b.yaml")
    body["status"] = {"targets": [
        {"gpu": gpu, "state": state, "fingerprint": f"{gpu[:7]}f" * 4, "path": f"engines/x/{gpu}"}
        for gpu, state in (states or {H100: "Built", L40S: "Built"}).items()]}
    return LLMEngine.model_validate(body)


def _llmd(**spec: Any) -> LLMDeployment:
    body = _load("llmdeployment-llama-3-8b-h100.yaml")
    body["metadata"]["labels"] = {"argocd.argoproj.io/instance": "team"}
    body["spec"] |= spec
    return LLMDeployment.model_validate(body)


def test_serve_command_passes_the_engines_limits_and_only_known_flags() -> None:
    d = _llmd(serve={"port": 8000, "maxBatchSize": 32, "kvCacheFreeGpuMemoryFraction": 0.85,
                     "extraArgs": ["--num_postprocess_workers", "2"]})
    serving = builders.Serving(gpu=H100, fingerprint="f" * 64, path="engines/x",
                               limits=BuiltLimits(max_batch_size=64, max_num_tokens=8192,
                                                  max_seq_len=8192),
                               world_size=2, tensor=2, pipeline=1)
    assert builders.serve_command(d, serving) == [
        "trtllm-serve", "/engine", "--backend", "tensorrt", "--host", "0.0.0.0",
        "--port", "8000", "--tp_size", "2", "--pp_size", "1",
        "--max_batch_size", "32",  # lowered by serve, within the engine's 64
        "--max_num_tokens", "8192", "--max_seq_len", "8192", "--max_beam_width", "1",
        "--kv_cache_free_gpu_memory_fraction", "0.85",
        "--num_postprocess_workers", "2",
    ]


def test_deployment_manifest_places_by_engine_and_owns_nothing_of_the_users_labels() -> None:
    engine = _engine()
    d = _llmd()
    target = next(t for t in engine.status.targets if t.gpu == H100)
    manifest = builders.deployment(d, engine, serving_for(engine, target), "trtllm-engines")
    meta, spec = manifest["metadata"], manifest["spec"]
    assert "argocd.argoproj.io/instance" not in meta["labels"]
    assert meta["ownerReferences"][0] == {
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
        "name": "llama-3-8b-h100", "uid": "u-2", "controller": True, "blockOwnerDeletion": True}
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {
        "app.kubernetes.io/name": "trtllm-serve", "app.kubernetes.io/instance": "llama-3-8b-h100"}}
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": H100}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "32Gi"}
    assert {"name": "engine", "mountPath": "/engine", "subPath": f"engines/x/{H100}",
            "readOnly": True} in c["volumeMounts"]
    assert {"name": "engine", "persistentVolumeClaim": {"claimName": "trtllm-engines",
                                                        "readOnly": True}} in pod["volumes"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] == 1800
    assert c["image"] == engine.spec.build.image  # the builder's release by default
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["trtllm.dev/fingerprint"] == target.fingerprint


def test_strategy_and_options_configmap() -> None:
    engine = _engine()
    d = _llmd(strategy={"type": "Recreate"},
              serve={"extraLlmApiOptions": {"kv_cache_config": {"enable_block_reuse": True}}})
    target = next(t for t in engine.status.targets if t.gpu == H100)
    manifest = builders.deployment(d, engine, serving_for(engine, target), "c")
    assert manifest["spec"]["strategy"] == {"type": "Recreate"}
    command = manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--extra_llm_api_options",
                            "/etc/trtllm-serve/extra-llm-api-options.yaml"]
    cm = builders.options_configmap(d, "llama-3-8b")
    assert cm is not None
    assert yaml.safe_load(cm["data"]["extra-llm-api-options.yaml"]) == {
        "kv_cache_config": {"enable_block_reuse": True}}
    assert builders.options_configmap(_llmd(), "llama-3-8b") is None


def test_service_and_endpoint() -> None:
    d = _llmd(service={"type": "LoadBalancer", "port": 80,
                       "annotations": {"example.com/internal": "true"}})
    svc = builders.service(d, "llama-3-8b")
    assert svc["spec"] == {"type": "LoadBalancer", "selector": builders.selector(d),
                           "ports": [{"name": "http", "port": 80, "targetPort": "http",
                                      "protocol": "TCP"}]}
    assert svc["metadata"]["annotations"] == {"example.com/internal": "true"}
    assert builders.endpoint(d) == "http://llama-3-8b-h100.ml.svc.cluster.local:80/v1"


def test_target_choice() -> None:
    d_any = _llmd(gpu=None)
    engine = _engine({H100: "Building", L40S: "Built"})
    choice = choose_target(d_any, engine, ())
    assert choice.target is not None
    assert (choice.target.gpu, choice.ready) == (L40S, "True")  # the only Built target
    pinned = choose_target(_llmd(gpu=H100), engine, ())
    assert (pinned.target, pinned.ready, pinned.reason) == (None, "False", "EngineBuilding")
    nothing = choose_target(d_any, _engine({H100: "Pending", L40S: "Failed"}), ())
    assert (nothing.ready, nothing.reason) == ("False", "EngineNotBuilt")
    missing = choose_target(d_any, None, ())
    assert missing.reason == "EngineNotFound"


def test_serving_limits_come_from_what_the_engine_reported_first() -> None:
    engine = _engine()
    target = engine.status.targets[0].model_copy(update={"limits": BuiltLimits(
        max_batch_size=48, max_seq_len=4096)})
    serving = serving_for(engine, EngineTargetStatus.model_validate(target.model_dump()))
    assert (serving.limits.max_batch_size, serving.limits.max_seq_len) == (48, 4096)
    from_spec = serving_for(engine, engine.status.targets[0])
    assert from_spec.limits.max_batch_size == 64  # the engine spec's limits otherwise


def test_every_flag_the_operator_emits_for_trtllm_serve_is_in_the_flag_table() -> None:
    import json

    table = json.loads((ROOT / "build-jobs/trtllm_flags_1_2.json").read_text())["trtllm_serve"]
    d = _llmd(serve={"port": 8000, "maxBatchSize": 32, "maxNumTokens": 4096, "maxSeqLen": 4096,
                     "maxBeamWidth": 1, "kvCacheFreeGpuMemoryFraction": 0.5, "logLevel": "debug",
                     "extraLlmApiOptions": {"a": 1}})
    serving = builders.Serving(gpu=H100, fingerprint="f" * 64, path="p", limits=BuiltLimits(),
                               world_size=8, tensor=4, pipeline=2)
    cmd = builders.serve_command(d, serving)
    assert cmd[0] == "trtllm-serve"
    assert "MODEL" in table  # the engine folder is the positional argument
    args = cmd[2:]
    checked = 0
    for flag, value in zip(args[::2], args[1::2], strict=True):
        spec = table[flag]  # KeyError: a flag the 1.2 table does not have
        if spec["choices"]:
            assert value in spec["choices"], (flag, value)
        elif spec["type"] == "int":
            int(value)
        elif spec["type"] == "float":
            float(value)
        checked += 1
    assert checked == len(args) // 2 == 12
