"""Serving on both release lines: every generated trtllm-serve command line is checked against
the flag table of its image's release (1.2 for engines, 1.3 for the PyTorch line), and the
pytorch pod has what issue 11 asks for (options file, env, /dev/shm, probes, metrics)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_deployment_builders import H100, _engine, _llmd
from trtllm_operator import flag_tables
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api import LLMEngine
from trtllm_operator.api.engine import BuiltLimits, EngineTargetStatus
from trtllm_operator.deployments import builders
from trtllm_operator.deployments.controller import serving_for

PYTORCH_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"
GIB = 1 << 30


def check_against_table(cmd: list[str], release: facts.Release) -> dict[str, list[str]]:
    """Parse ``cmd`` as the serving release's trtllm-serve would: exactly one positional (the
    model folder), then flags only from that release's table, each given once, with the values
    its type and choices allow. On the PyTorch line, the operator's own flags must be ones the
    table marks emitted, in their emit_as spelling. Returns flag -> values."""
    line = flag_tables.line_of(release)
    assert line is not None, release
    table = flag_tables.table("trtllm-serve", line)
    assert cmd[0] == "trtllm-serve"
    assert not cmd[1].startswith("--"), cmd  # MODEL
    seen: dict[str, list[str]] = {}
    current: str | None = None
    for token in cmd[2:]:
        if token.startswith("--"):
            spec = table.get(token)
            assert spec is not None, f"{token} is not a trtllm-serve {line} flag"
            assert spec.name not in seen, f"{token} given twice"
            seen[spec.name] = []
            current = spec.name
            if spec.arity == "none":
                current = None
        else:
            assert current is not None, f"{token} follows no flag taking a value"
            seen[current].append(token)
    for name, values in seen.items():
        spec = table.flags[name]
        if spec.arity == "one":
            assert len(values) == 1, (name, values)
        for value in values:
            if spec.choices is not None:
                assert value in spec.choices, (name, value)
            if spec.type.startswith("int"):
                int(value)
            if spec.type.startswith("float"):
                float(value)
    return seen


def _pytorch_engine(tensor: int = 1, **model: Any) -> LLMEngine:
    body = _engine().model_dump(mode="json", by_alias=True, exclude_none=True)
    body["spec"]["build"] = {"image": PYTORCH_IMAGE, "parallelism": {"tensor": tensor}}
    if model:
        body["spec"]["model"] = model
    body["status"]["targets"][0]["checkpointBytes"] = 16 * GIB
    return LLMEngine.model_validate(body)


def _target(engine: LLMEngine) -> EngineTargetStatus:
    return next(t for t in engine.status.targets if t.gpu == H100)


serve_specs = st.fixed_dictionaries({}, optional={
    "port": st.integers(1, 65535),
    "maxBatchSize": st.integers(1, facts.INT32_MAX),
    "maxNumTokens": st.integers(1, facts.INT32_MAX),
    "maxSeqLen": st.integers(1, facts.INT32_MAX),
    "maxBeamWidth": st.integers(1, facts.MAX_BEAM_WIDTH),
    "logLevel": st.sampled_from(["internal_error", "error", "warning", "info", "verbose",
                                 "debug", "trace"]),
    "kvCacheFreeGpuMemoryFraction": st.floats(0.01, 1.0),
    "usageTelemetry": st.booleans(),
    "extraLlmApiOptions": st.just({"kv_cache_config": {"enable_block_reuse": True}}),
    "extraArgs": st.sampled_from([[], ["--num_postprocess_workers", "2"],
                                  ["--enable_chunked_prefill"]]),
})


@settings(max_examples=150, deadline=None)
@given(serve=serve_specs, tensor=st.sampled_from([1, 2, 4, 8]), pipeline=st.sampled_from([1, 2]),
       tag=st.sampled_from(["1.3.0rc21", "1.3.0rc29", "1.3.0", "1.4.0rc4", "1.4.1"]))
def test_every_pytorch_command_line_parses_against_the_1_3_table(
        serve: dict[str, Any], tensor: int, pipeline: int, tag: str) -> None:
    release = facts.parse_release(tag)
    assert release is not None
    serving = builders.Serving(gpu=H100, fingerprint="f" * 64, path="models/x/abc",
                               limits=BuiltLimits(), world_size=tensor * pipeline,
                               tensor=tensor, pipeline=pipeline, backend="pytorch",
                               release=release, served_model_name="meta-llama/Llama-3.1-8B")
    cmd = builders.serve_command(_llmd(serve=serve), serving)

    seen = check_against_table(cmd, release)
    table = flag_tables.table("trtllm-serve", "1.3")
    user = {table.flags[f].name for f in serve.get("extraArgs", []) if f.startswith("--")}
    for name in set(seen) - user:
        spec = table.flags[name]
        assert spec.use == "emitted", name
        assert spec.emit_as in cmd, name
    assert seen["--backend"] == ["pytorch"]
    assert seen["--tensor_parallel_size"] == [str(tensor)]
    assert seen["--config"] == ["/etc/trtllm-serve/extra-llm-api-options.yaml"]
    assert ("--telemetry" in seen) == (not serve.get("usageTelemetry", False))


@settings(max_examples=100, deadline=None)
@given(serve=serve_specs, tensor=st.sampled_from([1, 2, 4]),
       tag=st.sampled_from(["1.0.0", "1.2.0", "1.2.0rc6.post2", "1.3.0rc20"]))
def test_every_engine_command_line_parses_against_the_1_2_table(
        serve: dict[str, Any], tensor: int, tag: str) -> None:
    serve = {k: v for k, v in serve.items() if k != "usageTelemetry"}
    release = facts.parse_release(tag)
    assert release is not None
    serving = builders.Serving(gpu=H100, fingerprint="f" * 64, path="engines/x",
                               limits=BuiltLimits(max_batch_size=64), world_size=tensor,
                               tensor=tensor, pipeline=1, release=release)
    cmd = builders.serve_command(_llmd(serve=serve), serving)

    seen = check_against_table(cmd, release)
    assert seen["--backend"] == ["tensorrt"]
    # The options file also carries return_perf_metrics where the release serves metrics.
    metrics = serve.get("metrics", True) and release >= facts.Release(1, 1, 0, rc=0)
    assert ("--extra_llm_api_options" in seen) == ("extraLlmApiOptions" in serve or metrics)


def test_the_pytorch_command_line_in_full() -> None:
    engine = _pytorch_engine()
    d = _llmd(serve={"maxBatchSize": 32, "logLevel": "info"})
    serving = serving_for(engine, _target(engine))

    assert serving.backend == "pytorch"
    assert builders.serve_command(d, serving) == [
        "trtllm-serve", "/model", "--backend", "pytorch", "--host", "0.0.0.0",
        "--port", "8000", "--tp_size", "1", "--pp_size", "1", "--max_batch_size", "32",
        "--log_level", "info", "--served_model_name", "meta-llama/Meta-Llama-3-8B-Instruct",
        "--config", "/etc/trtllm-serve/extra-llm-api-options.yaml", "--no-telemetry",
    ]


def test_the_pytorch_options_file_turns_metrics_on_and_merges_the_kv_fraction() -> None:
    d = _llmd(serve={"kvCacheFreeGpuMemoryFraction": 0.8, "extraLlmApiOptions": {
        "kv_cache_config": {"enable_block_reuse": True}, "enable_chunked_prefill": True}})

    cm = builders.options_configmap(d, "llama", "pytorch")

    assert cm is not None
    assert yaml.safe_load(cm["data"][builders.OPTIONS_FILE]) == {
        "return_perf_metrics": True, "enable_iter_perf_stats": True,
        "enable_chunked_prefill": True,
        "kv_cache_config": {"enable_block_reuse": True, "free_gpu_memory_fraction": 0.8}}
    plain = builders.options_configmap(_llmd(serve={}), "llama", "pytorch")
    assert plain is not None
    assert yaml.safe_load(plain["data"][builders.OPTIONS_FILE]) == {
        "return_perf_metrics": True, "enable_iter_perf_stats": True}
    assert builders.options_configmap(_llmd(serve={}), "llama") is None  # tensorrt: if given


def test_the_pytorch_pod_runs_offline_with_metrics_shm_and_a_sized_startup_budget() -> None:
    engine = _pytorch_engine(tensor=4)
    d = _llmd(env=[{"name": "EXTRA", "value": "1"}])
    serving = serving_for(engine, _target(engine))

    manifest = builders.deployment(d, engine, serving, "trtllm-engines")

    template = manifest["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    assert container["env"] == [{"name": "HF_HUB_OFFLINE", "value": "1"},
                                {"name": "TRTLLM_NO_USAGE_STATS", "value": "1"},
                                {"name": "EXTRA", "value": "1"}]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod[
        "volumes"]
    assert {"name": "engine", "mountPath": "/model", "subPath": serving.path,
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "options", "mountPath": builders.OPTIONS_DIR, "readOnly": True} in (
        container["volumeMounts"])
    assert template["metadata"]["labels"][builders.METRICS_LABEL] == "prometheus"
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/prometheus/metrics"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert builders.METRICS_LABEL not in manifest["spec"]["selector"]["matchLabels"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == (
        builders.startup_budget_seconds(16 * GIB))


def test_telemetry_is_on_only_when_the_spec_says() -> None:
    engine = _pytorch_engine()
    d = _llmd(serve={"usageTelemetry": True})
    serving = serving_for(engine, _target(engine))

    manifest = builders.deployment(d, engine, serving, "trtllm-engines")

    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    assert "--no-telemetry" not in container["command"]


def test_the_startup_budget_follows_the_checkpoint_size() -> None:
    assert builders.startup_budget_seconds(None) == 60 * 60
    assert builders.startup_budget_seconds(16 * GIB) == 30 * 60  # the floor
    # 140 GB (a 70B model at 16 bits): 15 min + 1335 s at 100 MiB/s.
    assert builders.startup_budget_seconds(140 * 10**9) == 15 * 60 + 140 * 10**9 // (100 << 20)
    assert builders.startup_budget_seconds(10**13) == 4 * 60 * 60  # the cap


def test_an_engine_pod_is_unchanged_by_the_pytorch_additions() -> None:
    engine = _engine()
    d = _llmd()
    manifest = builders.deployment(d, engine, serving_for(engine, _target(engine)), "c")

    template = manifest["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["command"][:4] == ["trtllm-serve", "/engine", "--backend", "tensorrt"]
    assert container["env"] == []
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in template["spec"]["volumes"]
    # Metrics are on for the engine line too (1.2 serves them with return_perf_metrics).
    assert template["metadata"]["labels"][builders.METRICS_LABEL] == "prometheus"
