"""The build-job entrypoint (``python3 -m trtllm_jobs.build``), run for real as a subprocess.

Stand-ins take the place of what only the TensorRT-LLM image has (build_job_standins/):
``trtllm-build`` and ``nvidia-smi`` on PATH, ``convert_checkpoint.py`` / ``quantize.py`` in a
fake examples dir, and fake ``huggingface_hub`` / ``tensorrt_llm`` / ``tensorrt`` packages on
PYTHONPATH. Each tool stand-in checks every flag and value against
build-jobs/trtllm_flags_1_2.json and records its invocation, so a command line the real tool
would refuse fails the test. Nothing touches the network or a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trtllm_jobs import build as job
from trtllm_jobs import contract, hub, reporting
from trtllm_jobs import facts as jobfacts
from trtllm_operator import trtllm_facts as facts
from trtllm_operator.engines import jobs

REPO = Path(__file__).resolve().parents[2]
BUILD_JOBS = REPO / "build-jobs"
PACKAGE = BUILD_JOBS / "trtllm_jobs"
FLAG_TABLE = BUILD_JOBS / "trtllm_flags_1_2.json"
STANDINS = Path(__file__).resolve().parent / "build_job_standins"
REFERENCE = Path(os.environ.get("TRTLLM_CLI_REFERENCE")
                 or REPO.parent / "shared" / "reference" / "trtllm-cli-1.2.json")

FINGERPRINT = "3f" * 32
H100 = "NVIDIA-H100-80GB-HBM3"
H100_SMI = "NVIDIA H100 80GB HBM3, 9.0, 81559"
TOKEN = "hf_FakeTokenValue0123456789abcdefXYZ"
TOKENIZER = {
    "tokenizer.json": b'{"model": {"type": "BPE"}}',
    "tokenizer_config.json": b'{"bos_token": "<s>"}',
    "special_tokens_map.json": b'{"eos_token": "</s>"}',
    "generation_config.json": b'{"temperature": 0.6}',
}




# --------------------------------------------------------------------------- harness


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    summary_text: str
    invocations: list[dict[str, Any]]

    def calls(self, tool: str) -> list[dict[str, Any]]:
        return [i for i in self.invocations if i["tool"] == tool]

    def argv(self, tool: str) -> list[str]:
        (call,) = self.calls(tool)
        return list(call["argv"])


@dataclass
class Harness:
    """A build-job sandbox: engines volume, scratch, a checkpoint on a 'volume', stand-ins."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def engines(self) -> Path:
        return self.root / "engines"

    @property
    def model(self) -> Path:
        return self.root / "models" / "llama-3-8b"

    @property
    def output_dir(self) -> Path:
        return self.engines / "engines" / "llama-3-8b" / H100 / FINGERPRINT[:16]

    @property
    def termination_log(self) -> Path:
        return self.root / "termination-log"

    @property
    def invocation_log(self) -> Path:
        return self.root / "invocations.jsonl"

    def spec(self, **changes: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "version": 1,
            "fingerprint": FINGERPRINT,
            "gpuProduct": H100,
            "outputDir": str(self.output_dir),
            "workDir": str(self.root / "scratch"),
            "model": {"source": "volume", "path": str(self.model)},
            "modelFamily": "llama",
            "dtype": "bfloat16",
            "quantization": None,
            "tensorParallel": 1,
            "pipelineParallel": 1,
            "limits": {"maxBatchSize": 8, "maxInputLen": 4096, "maxSeqLen": 8192,
                       "maxNumTokens": 8192, "maxBeamWidth": None},
            "buildOptions": {"gemm_plugin": "auto", "use_paged_context_fmha": "enable",
                             "strip_plan": True, "weight_streaming": False,
                             "tokens_per_block": "64"},
        }
        spec.update(changes)
        return spec

    def popen(self, spec: dict[str, Any] | None, *, args: tuple[str, ...] = (),
              **env: str) -> subprocess.Popen[str]:
        environ = dict(self.env)
        if spec is not None:
            environ["TRTLLM_BUILD_SPEC"] = json.dumps(spec)
        environ.update(env)
        return subprocess.Popen([sys.executable, "-m", "trtllm_jobs.build", *args], env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> Result:
        stdout, stderr = proc.communicate(timeout=timeout)
        text = self.termination_log.read_text() if self.termination_log.exists() else ""
        invocations = ([json.loads(line) for line in self.invocation_log.read_text().splitlines()]
                       if self.invocation_log.exists() else [])
        summary = json.loads(text) if text else {}
        return Result(proc.returncode, stdout, stderr, summary, text, invocations)

    def run(self, spec: dict[str, Any] | None = None, *, args: tuple[str, ...] = (),
            **env: str) -> Result:
        if spec is None and not args:
            spec = self.spec()
        self.termination_log.unlink(missing_ok=True)
        return self.finish(self.popen(spec, args=args, **env))

    def without(self, tool: str) -> None:
        (self.root / "bin" / tool).unlink()

    def siblings(self) -> list[str]:
        """Whatever else sits beside the engine folder (staging or stale leftovers)."""
        parent = self.output_dir.parent
        if not parent.exists():
            return []
        return sorted(p.name for p in parent.iterdir() if p.name != self.output_dir.name)


def _wrapper(path: Path, script: Path) -> None:
    path.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{script}' \"$@\"\n")
    path.chmod(0o755)


def _checkpoint(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2}))
    (folder / "model.safetensors").write_bytes(b"w" * 10_000)
    for name, data in TOKENIZER.items():
        (folder / name).write_bytes(data)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _wrapper(bin_dir / "trtllm-build", STANDINS / "trtllm_build.py")
    _wrapper(bin_dir / "nvidia-smi", STANDINS / "nvidia_smi.py")
    h = Harness(tmp_path)
    _checkpoint(h.model)
    h.engines.mkdir()
    h.env = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin",
                                 "/bin"]),
        "PYTHONPATH": os.pathsep.join([str(BUILD_JOBS), str(STANDINS / "fake_site")]),
        "HOME": str(tmp_path),
        "STANDIN_HOME": str(STANDINS),
        "STANDIN_LOG": str(h.invocation_log),
        "STANDIN_GPUS": H100_SMI,
        "TRTLLM_EXAMPLES_DIR": str(STANDINS / "examples"),
        "TRTLLM_TERMINATION_LOG": str(h.termination_log),
        "NODE_NAME": "gpu-node-7",
        "POD_NAME": "trtllm-build-0123456789ab-x7k2p",
        "FAKE_HF_LOG": str(tmp_path / "hub.jsonl"),
    }
    return h


def flags_of(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def value_of(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def assert_built(h: Harness, result: Result) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.summary["phase"] == "Built", result.summary
    assert h.siblings() == []
    manifest: dict[str, Any] = json.loads((h.output_dir / "build-manifest.json").read_text())
    return manifest


def assert_failed(result: Result, reason: str, code: int) -> None:
    assert result.summary.get("reason") == reason, (result.summary, result.stdout[-3000:],
                                                     result.stderr[-3000:])
    assert result.summary["phase"] == "Failed"
    assert result.returncode == code


# --------------------------------------------------------------------------- successful builds


def test_volume_build_publishes_engine_tokenizer_and_manifest(harness: Harness) -> None:
    spec = harness.spec()
    result = harness.run(spec)
    manifest = assert_built(harness, result)
    out = harness.output_dir
    assert sorted(p.name for p in harness.model.iterdir()) == sorted(
        ["config.json", "model.safetensors", *TOKENIZER])  # the volume checkpoint is untouched

    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["build-manifest.json", "config.json", "rank0.engine", *TOKENIZER])
    for name, data in TOKENIZER.items():
        assert (out / name).read_bytes() == data
    engine_config = json.loads((out / "config.json").read_text())
    assert {"pretrained_config", "build_config"} <= engine_config.keys()  # not the HF config

    assert manifest["schemaVersion"] == 1
    assert manifest["fingerprint"] == FINGERPRINT
    assert manifest["gpuProduct"] == H100
    assert manifest["spec"] == spec
    assert manifest["model"] == {"source": "volume", "path": str(harness.model),
                                 "resolvedRevision": None}
    assert manifest["versions"]["tensorrtLlm"] == "1.2.0"
    assert manifest["versions"]["tensorrt"] == "10.99.0-standin"
    assert manifest["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "computeCapability": "9.0",
                               "count": 1}
    assert manifest["node"] == "gpu-node-7"
    assert manifest["pod"] == "trtllm-build-0123456789ab-x7k2p"
    assert manifest["startedAt"] <= manifest["finishedAt"]
    assert {"cache", "preflight", "resolve", "disk", "convert", "build", "tokenizer"} <= set(
        manifest["steps"])
    assert all(isinstance(s, float) and s >= 0 for s in manifest["steps"].values())
    assert manifest["limits"] == {"maxBatchSize": 8, "maxInputLen": 4096, "maxSeqLen": 8192,
                                  "maxNumTokens": 8192, "maxBeamWidth": 1}
    assert manifest["tokenizerFiles"] == [n for n in jobfacts.TOKENIZER_FILES if n in TOKENIZER]

    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {p.name for p in out.iterdir()} - {"build-manifest.json"}
    for name, entry in listed.items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["totalBytes"] == sum(f["bytes"] for f in listed.values())
    assert manifest["engineBytes"] == sum(
        f["bytes"] for n, f in listed.items() if n not in TOKENIZER)

    summary = result.summary
    assert summary["fingerprint"] == FINGERPRINT
    assert summary["path"] == str(out)
    assert summary["engineBytes"] == manifest["engineBytes"]
    assert summary["totalBytes"] == manifest["totalBytes"]
    assert summary["tensorrtLlmVersion"] == "1.2.0"
    assert summary["tensorrtVersion"] == "10.99.0-standin"
    assert summary["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "computeCapability": "9.0"}
    assert summary["limits"] == manifest["limits"]
    assert summary["durationSeconds"] >= 0
    assert "reason" not in summary
    assert "logTail" not in summary
    assert len(result.summary_text.encode()) <= 4096

    # One progress line per step, with its time.
    for step in ("cache", "preflight", "resolve", "disk", "convert", "build", "tokenizer",
                 "manifest", "publish"):
        assert re.search(rf"step {step}: done in \d+\.\ds", result.stdout), step


def test_volume_build_emits_exactly_the_tabled_flags(harness: Harness) -> None:
    result = harness.run()
    assert_built(harness, result)
    table = json.loads(FLAG_TABLE.read_text())

    convert = result.argv("convert_checkpoint_llama")
    assert flags_of(convert) == set(table["convert_checkpoint_llama"])
    assert value_of(convert, "--model_dir") == str(harness.model)
    assert value_of(convert, "--dtype") == "bfloat16"
    assert (value_of(convert, "--tp_size"), value_of(convert, "--pp_size")) == ("1", "1")
    assert result.calls("quantize_py") == []

    build = result.argv("trtllm_build")
    assert value_of(build, "--checkpoint_dir") == value_of(convert, "--output_dir")
    assert value_of(build, "--output_dir").startswith(f"{harness.output_dir}.staging-")
    assert value_of(build, "--max_batch_size") == "8"
    assert value_of(build, "--max_input_len") == "4096"
    assert value_of(build, "--max_seq_len") == "8192"
    assert value_of(build, "--max_num_tokens") == "8192"
    assert "--max_beam_width" not in build  # null = trtllm-build's default
    assert "--workers" not in build  # one GPU
    assert value_of(build, "--gemm_plugin") == "auto"
    assert value_of(build, "--use_paged_context_fmha") == "enable"
    assert value_of(build, "--tokens_per_block") == "64"
    assert "--strip_plan" in build
    assert "--weight_streaming" not in build
    assert result.calls("trtllm_build")[0]["hf_token_in_env"] is False


def test_tensor_and_pipeline_parallel_build_every_rank(harness: Harness) -> None:
    spec = harness.spec(tensorParallel=2, pipelineParallel=2)
    result = harness.run(spec, STANDIN_GPUS="|".join([H100_SMI] * 4))
    manifest = assert_built(harness, result)

    convert = result.argv("convert_checkpoint_llama")
    assert (value_of(convert, "--tp_size"), value_of(convert, "--pp_size")) == ("2", "2")
    assert value_of(result.argv("trtllm_build"), "--workers") == "4"
    assert {f"rank{r}.engine" for r in range(4)} <= {f["path"] for f in manifest["files"]}
    assert manifest["gpu"]["count"] == 4


@pytest.mark.parametrize(("visible", "workers"), [(8, "8"), (1, None)])
def test_more_ranks_than_gpus_are_built_in_turn(harness: Harness, visible: int,
                                                workers: str | None) -> None:
    # tp 8 x pp 2 = 16 ranks with spec.build.gpus 8 (or 1): trtllm-build gets one worker per
    # visible GPU and gives rank r GPU r % workers, so each GPU builds its ranks one after
    # another; every rank's engine must still be there.
    spec = harness.spec(tensorParallel=8, pipelineParallel=2)
    result = harness.run(spec, STANDIN_GPUS="|".join([H100_SMI] * visible))

    manifest = assert_built(harness, result)
    build = result.argv("trtllm_build")
    if workers is None:
        assert "--workers" not in build  # one GPU: trtllm-build's own sequential loop
    else:
        assert value_of(build, "--workers") == workers
    assert {f"rank{r}.engine" for r in range(16)} <= {f["path"] for f in manifest["files"]}
    assert manifest["gpu"]["count"] == visible


def test_quantized_build_runs_quantize_not_convert(harness: Harness) -> None:
    spec = harness.spec(quantization={
        "format": "fp8", "kvCacheDtype": "fp8",
        "calibration": {"dataset": "cnn_dailymail", "size": 256, "batchSize": 4,
                        "maxSeqLength": 1024}})
    result = harness.run(spec)
    assert_built(harness, result)

    assert result.calls("convert_checkpoint_llama") == []
    quantize = result.argv("quantize_py")
    assert flags_of(quantize) == set(json.loads(FLAG_TABLE.read_text())["quantize_py"])
    expected = {"--qformat": "fp8", "--kv_cache_dtype": "fp8", "--dtype": "bfloat16",
                "--calib_dataset": "cnn_dailymail", "--calib_size": "256", "--batch_size": "4",
                "--calib_max_seq_length": "1024", "--tp_size": "1", "--pp_size": "1",
                "--model_dir": str(harness.model)}
    assert {k: value_of(quantize, k) for k in expected} == expected
    assert value_of(result.argv("trtllm_build"), "--checkpoint_dir") == value_of(
        quantize, "--output_dir")


def test_kv_cache_only_quantization_keeps_full_precision_weights(harness: Harness) -> None:
    result = harness.run(harness.spec(quantization={"format": None, "kvCacheDtype": "int8",
                                                    "calibration": None}))
    assert_built(harness, result)

    quantize = result.argv("quantize_py")
    assert value_of(quantize, "--qformat") == "full_prec"
    assert value_of(quantize, "--kv_cache_dtype") == "int8"
    assert value_of(quantize, "--calib_size") == str(facts.DEFAULT_CALIBRATION_SIZE)


def test_model_family_defaults_to_the_checkpoints_model_type(harness: Harness) -> None:
    result = harness.run(harness.spec(modelFamily=None))
    assert_built(harness, result)
    assert len(result.calls("convert_checkpoint_llama")) == 1
    assert "/models/core/llama/convert_checkpoint.py --model_dir" in result.stdout


def test_spec_can_come_from_a_file(harness: Harness) -> None:
    spec_file = harness.root / "spec.json"
    spec_file.write_text(json.dumps(harness.spec()))

    result = harness.run(args=("--spec", str(spec_file)))

    assert_built(harness, result)


# --------------------------------------------------------------------------- Hugging Face


def test_hugging_face_build_pins_the_commit_and_never_shows_the_token(harness: Harness) -> None:
    spec = harness.spec(model={"source": "huggingFace", "repo": "meta-llama/Llama-3.1-8B",
                               "revision": "main"}, modelFamily=None)
    result = harness.run(spec, HF_TOKEN=TOKEN, FAKE_HF_EXPECTED_TOKEN=TOKEN)
    manifest = assert_built(harness, result)
    sha = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"

    hub_calls = [json.loads(line) for line in
                 (harness.root / "hub.jsonl").read_text().splitlines()]
    assert [c["call"] for c in hub_calls] == ["model_info", "snapshot_download"]
    assert hub_calls[0]["revision"] == "main"
    assert hub_calls[1]["revision"] == sha  # the download is pinned to the resolved commit
    assert all(c["token_ok"] for c in hub_calls)  # the token was used...
    assert manifest["model"] == {"source": "huggingFace", "repo": "meta-llama/Llama-3.1-8B",
                                 "revision": "main", "resolvedRevision": sha}
    assert result.summary["resolvedRevision"] == sha

    downloaded = Path(hub_calls[1]["local_dir"])
    assert downloaded.is_relative_to(harness.root / "scratch")
    written = hub_calls[1]["written"]
    assert "model-00001-of-00002.safetensors" in written
    assert "pytorch_model.bin" not in written  # pickled duplicates of safetensors skipped
    assert not any(n.startswith("original/") for n in written)  # Meta's original weights too
    assert value_of(result.argv("convert_checkpoint_llama"), "--model_dir") == str(downloaded)
    assert (harness.output_dir / "tokenizer.json").exists()
    assert list((harness.root / "scratch").iterdir()) == []  # node disk freed after the build

    # ...but never shown: not in logs (the fake hub and the convert stand-in both print it),
    # manifest, termination message or any published file.
    assert TOKEN not in result.stdout + result.stderr + result.summary_text
    assert "***" in result.stdout + result.stderr
    for path in harness.output_dir.iterdir():
        assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(("mode", "reason", "code", "words"), [
    ("missing", "ModelNotFound", 6, "does not exist"),
    ("gated", "ModelNotFound", 6, "accepted the model's license"),
    ("offline", "DownloadFailed", 1, "could not reach"),
])
def test_hugging_face_failures(harness: Harness, mode: str, reason: str, code: int,
                               words: str) -> None:
    spec = harness.spec(model={"source": "huggingFace", "repo": "meta-llama/Llama-3.1-8B"})
    result = harness.run(spec, HF_TOKEN=TOKEN, FAKE_HF_MODE=mode)

    assert_failed(result, reason, code)
    assert words in result.summary["message"]
    assert TOKEN not in result.stdout + result.stderr + result.summary_text
    assert result.calls("trtllm_build") == []


def test_hub_ignore_patterns_skip_duplicates_only_when_safetensors_exist() -> None:
    with_st = hub.hub_ignore_patterns(["model.safetensors", "pytorch_model.bin"])
    without = hub.hub_ignore_patterns(["pytorch_model.bin", "original/model.safetensors"])

    assert "*.bin" in with_st
    assert "original/*" in with_st
    assert "*.bin" not in without
    assert "original/*" in without
    assert hub.weight_bytes([("a.safetensors", 5), ("b.bin", 7), ("c.json", 1)]) == 5
    assert hub.weight_bytes([("b.bin", 7), ("c.json", 1)]) == 7


# --------------------------------------------------------------------------- memory fit

MIG_1G5 = "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
A100_40_SMI = "NVIDIA A100-SXM4-40GB, 8.0, 40960"
HUB_MODEL = {"source": "huggingFace", "repo": "meta-llama/Llama-3.1-8B", "revision": "main"}


def _hub_calls(h: Harness) -> list[str]:
    log = h.root / "hub.jsonl"
    return [json.loads(line)["call"] for line in log.read_text().splitlines()] if log.exists() \
        else []


def test_a_hub_model_too_big_for_the_gpu_fails_before_any_download(harness: Harness) -> None:
    # An 8B bf16 checkpoint (two 8 GB shards as the hub lists them) for a MIG slice of 4864 MiB:
    # the label-derived gpuMemoryMiB wins over nvidia-smi, which sees the whole 40 GB GPU.
    spec = harness.spec(model=HUB_MODEL, modelFamily=None, gpuProduct=MIG_1G5,
                        gpuMemoryMiB=4864)
    result = harness.run(spec, STANDIN_GPUS=A100_40_SMI,
                         FAKE_HF_LISTED_SHARD_BYTES=str(8_000_000_000))

    assert_failed(result, "ModelDoesNotFit", 7)
    assert _hub_calls(harness) == ["model_info"]  # listed, never downloaded
    assert not (harness.root / "scratch" / "download").exists()
    assert [i["tool"] for i in result.invocations] == ["nvidia_smi"]  # no converter, no build
    assert not harness.output_dir.exists()
    assert harness.siblings() == []
    checkpoint = 16_000_000_000
    need = facts.fit_need_bytes(checkpoint, "bfloat16", 1)
    assert result.summary["checkpointBytes"] == checkpoint
    assert result.summary["fit"] == {
        "weights": "bfloat16", "weightFactor": 1.0, "worldSize": 1, "needBytesPerGpu": need,
        "gpuMemoryBytes": 4864 << 20, "gpuMemorySource": "spec", "fits": False}
    message = result.summary["message"]
    assert f"does not fit {MIG_1G5}" in message
    assert "4.8 GiB" in message  # what one GPU has
    assert reporting.human_bytes(need) in message  # what the engine needs
    assert "nvidia.com/gpu.memory" in message
    # The fixes, with numbers: no 8- or 4-bit format fits 4.75 GiB; a bigger GPU does; more
    # tensor parallelism is no fix on MIG slices (one slice per pod).
    assert "spec.build.parallelism" not in message
    assert "quantize" not in message
    assert f"at least {reporting.human_bytes(need)} per GPU" in message
    assert re.search(r"step fit: FAILED", result.stdout)


def test_a_volume_model_is_checked_against_the_gpu_nvidia_smi_reports(harness: Harness) -> None:
    # A 70B bf16 checkpoint (140 GB, a sparse file) on one 80 GB H100; the spec names no memory.
    os.truncate(harness.model / "model.safetensors", 140_000_000_000)

    result = harness.run(harness.spec())

    assert_failed(result, "ModelDoesNotFit", 7)
    assert result.summary["fit"]["gpuMemorySource"] == "nvidia-smi"
    assert result.summary["fit"]["gpuMemoryBytes"] == 81559 << 20
    message = result.summary["message"]
    assert "(nvidia-smi)" in message
    assert "spec.build.parallelism.tensor: 2 (2 GPUs per engine)" in message
    # H100 is compute 9.0: fp8 and the 4-bit formats fit and run there, nvfp4 (10.0) does not.
    assert "spec.build.quantization.format: fp8 or int8_sq or int4_awq" in message
    assert "nvfp4" not in message
    assert result.calls("convert_checkpoint_llama") == []


def test_the_same_model_fits_with_enough_tensor_parallelism(harness: Harness) -> None:
    os.truncate(harness.model / "model.safetensors", 140_000_000_000)
    spec = harness.spec(tensorParallel=2, gpuMemoryMiB=81559)

    result = harness.run(spec, STANDIN_GPUS="|".join([H100_SMI] * 2),
                         TRTLLM_BUILD_FREE_BYTES=str(10**13))

    manifest = assert_built(harness, result)
    fit = {"weights": "bfloat16", "weightFactor": 1.0, "worldSize": 2,
           "needBytesPerGpu": facts.fit_need_bytes(140_000_000_000, "bfloat16", 2),
           "gpuMemoryBytes": 81559 << 20, "gpuMemorySource": "spec", "fits": True}
    assert result.summary["fit"] == manifest["fit"] == fit
    assert result.summary["checkpointBytes"] == manifest["checkpointBytes"] == 140_000_000_000
    assert re.search(r"step fit: done in \d+\.\ds -- needs .* per GPU", result.stdout)


@pytest.mark.parametrize(("parameters", "checkpoint"), [
    (None, 4096 + 2048),  # the listed safetensors shards
    ("F32=1000,I64=24", 2048),  # what the hub counted, at 2 bytes per parameter
])
def test_a_fitting_hub_model_is_built_and_reports_its_checkpoint_size(
        harness: Harness, parameters: str | None, checkpoint: int) -> None:
    spec = harness.spec(model=HUB_MODEL, modelFamily=None, gpuMemoryMiB=81559)
    env = {"FAKE_HF_PARAMETERS": parameters} if parameters else {}

    result = harness.run(spec, **env)

    manifest = assert_built(harness, result)
    assert _hub_calls(harness) == ["model_info", "snapshot_download"]
    assert result.summary["checkpointBytes"] == manifest["checkpointBytes"] == checkpoint
    assert result.summary["fit"]["fits"] is True
    assert result.summary["fit"]["needBytesPerGpu"] == facts.fit_need_bytes(checkpoint,
                                                                            "bfloat16", 1)


def test_a_float32_volume_checkpoint_is_sized_at_16_bits(harness: Harness) -> None:
    # 7.5B parameters stored in float32 (30 GB) on a 24 GB GPU: as bf16 weights they take
    # 15 GB and fit; taking the stored bytes as 16-bit weights would wrongly refuse the build.
    config = json.loads((harness.model / "config.json").read_text())
    (harness.model / "config.json").write_text(json.dumps(config | {"torch_dtype": "float32"}))
    os.truncate(harness.model / "model.safetensors", 30_000_000_000)

    result = harness.run(harness.spec(gpuMemoryMiB=23034), TRTLLM_BUILD_FREE_BYTES=str(10**13))

    assert_built(harness, result)
    assert result.summary["checkpointBytes"] == 15_000_000_000
    assert facts.fit_need_bytes(30_000_000_000, "bfloat16", 1) > 23034 << 20


def test_quantization_shrinks_the_weights_the_fit_check_counts(harness: Harness) -> None:
    os.truncate(harness.model / "model.safetensors", 140_000_000_000)
    spec = harness.spec(quantization={"format": "int4_awq"}, gpuMemoryMiB=81559)

    result = harness.run(spec, TRTLLM_BUILD_FREE_BYTES=str(10**13))

    assert_built(harness, result)
    assert result.summary["fit"]["weights"] == "int4_awq"
    assert result.summary["fit"]["needBytesPerGpu"] == facts.fit_need_bytes(
        140_000_000_000, "int4_awq", 1)


def test_unknown_gpu_memory_skips_the_check_and_says_so(harness: Harness) -> None:
    result = harness.run(harness.spec(), STANDIN_GPUS="NVIDIA H100 80GB HBM3, 9.0, [N/A]")

    assert_built(harness, result)
    assert "fit" not in result.summary
    assert "GPU memory unknown" in result.stdout
    assert result.summary["checkpointBytes"] == 10_000


# --------------------------------------------------------------------------- the model cache


def _cache_entry(h: Harness) -> Path:
    """Fill the model cache the way the operator will: the real download job, against the same
    hub stand-in. Returns the published entry."""
    env = h.env | {"TRTLLM_TERMINATION_LOG": str(h.root / "download-termination-log"),
                   "TRTLLM_DOWNLOAD_SPEC": json.dumps({
                       "version": 1, "kind": "download", "model": HUB_MODEL,
                       "cacheRoot": str(h.engines)}),
                   "TRTLLM_PROGRESS_SECONDS": "60"}
    done = subprocess.run([sys.executable, "-m", "trtllm_jobs.download"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((h.root / "download-termination-log").read_text())
    (h.root / "hub.jsonl").unlink()  # what the build does with the hub starts from here
    return Path(summary["path"])


def _cached_model(entry: Path, revision: str = "main") -> dict[str, Any]:
    return HUB_MODEL | {"revision": revision, "cachedPath": str(entry)}


def test_a_build_from_the_model_cache_never_touches_the_hub(harness: Harness) -> None:
    entry = _cache_entry(harness)
    before = {p: p.read_bytes() for p in entry.rglob("*") if p.is_file()}
    cached = json.loads((entry / "model-manifest.json").read_text())
    spec = harness.spec(model=_cached_model(entry), modelFamily=None)

    result = harness.run(spec, FAKE_HF_FORBIDDEN="1")

    manifest = assert_built(harness, result)
    assert _hub_calls(harness) == []  # the stand-in records (and fails) any call
    assert "step download" not in result.stdout
    convert = result.argv("convert_checkpoint_llama")
    assert value_of(convert, "--model_dir") == str(entry)  # read in place, not copied
    assert manifest["model"] == {"source": "huggingFace", "repo": HUB_MODEL["repo"],
                                 "revision": "main", "cachedPath": str(entry),
                                 "resolvedRevision": cached["commit"]}
    assert manifest["checkpointBytes"] == cached["checkpointBytes"]
    assert result.summary["resolvedRevision"] == cached["commit"]
    assert {p: p.read_bytes() for p in entry.rglob("*") if p.is_file()} == before
    assert not (harness.root / "scratch" / "download").exists()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (harness.output_dir / name).read_bytes() == (entry / name).read_bytes()


def test_the_fit_check_takes_the_cache_manifests_checkpoint_size(harness: Harness) -> None:
    entry = _cache_entry(harness)
    manifest_path = entry / "model-manifest.json"
    cached = json.loads(manifest_path.read_text())
    # An 8B model at 16 bits, as the download measured it: far more than a 1g.5gb MIG slice.
    manifest_path.write_text(json.dumps(cached | {"checkpointBytes": 16_000_000_000}))
    spec = harness.spec(model=_cached_model(entry, cached["commit"]), modelFamily=None,
                        gpuProduct=MIG_1G5, gpuMemoryMiB=4864)

    result = harness.run(spec, STANDIN_GPUS=A100_40_SMI, FAKE_HF_FORBIDDEN="1")

    assert_failed(result, "ModelDoesNotFit", 7)
    assert result.summary["checkpointBytes"] == 16_000_000_000
    assert result.summary["fit"]["needBytesPerGpu"] == facts.fit_need_bytes(
        16_000_000_000, "bfloat16", 1)
    assert _hub_calls(harness) == []
    assert [i["tool"] for i in result.invocations] == ["nvidia_smi"]


@pytest.mark.parametrize(("damage", "words"), [
    ("absent", "no model-manifest.json"),
    ("short-file", "has 1 bytes, the manifest says"),
    ("other-commit", "manifest of another commit"),
])
def test_an_unusable_cache_entry_is_refused_without_falling_back_to_the_hub(
        harness: Harness, damage: str, words: str) -> None:
    entry = _cache_entry(harness)
    revision = "main"
    if damage == "absent":
        entry = entry.with_name("0" * 40)
    elif damage == "short-file":
        (entry / "model-00002-of-00002.safetensors").write_bytes(b"t")
    else:
        revision = "0" * 40
    spec = harness.spec(model=_cached_model(entry, revision), modelFamily=None)

    result = harness.run(spec, FAKE_HF_FORBIDDEN="1")

    assert_failed(result, "CachedModelInvalid", 9)
    assert words in result.summary["message"]
    assert "model.cachedPath" in result.summary["message"]
    assert _hub_calls(harness) == []
    assert not harness.output_dir.exists()


def test_hub_checkpoint_size_at_16_bits_without_a_download() -> None:
    shards = [("model-00001-of-00002.safetensors", 8_000), ("model-00002-of-00002.safetensors",
                                                            2_000), ("config.json", 700)]
    assert hub.hub_bytes_at_16_bits(shards, 4_000) == 8_000  # the hub's count wins
    assert hub.hub_bytes_at_16_bits(shards, None) == 10_000
    # Pickles only and no count: maybe float32, so the lower bound.
    assert hub.hub_bytes_at_16_bits([("pytorch_model.bin", 10_000)], None) == 5_000


def test_the_operators_fit_facts_are_the_job_packages() -> None:
    # One definition: the operator re-exports the package's objects, it does not copy them.
    assert facts.WEIGHT_BYTES_FACTOR is jobfacts.WEIGHT_BYTES_FACTOR
    assert facts.fit_need_bytes is jobfacts.fit_need_bytes
    assert (facts.FIT_HEADROOM_FRACTION, facts.FIT_HEADROOM_BYTES) == (
        jobfacts.FIT_HEADROOM_FRACTION, jobfacts.FIT_HEADROOM_BYTES)
    # Every weight format the API can name has a factor.
    assert set(facts.WEIGHT_BYTES_FACTOR) == {*typing.get_args(facts.Dtype),
                                              *typing.get_args(facts.QuantFormat)}


def test_fit_need_is_weights_share_plus_headroom() -> None:
    gib = 1 << 30
    # 8B bf16 (16 GB): 17.6 GB + 2 GiB on one GPU; fp8 halves the weights; tp=2 halves again.
    assert facts.fit_need_bytes(16_000_000_000, "bfloat16", 1) == 17_600_000_000 + 2 * gib
    assert facts.fit_need_bytes(16_000_000_000, "fp8", 1) == 8_800_000_000 + 2 * gib
    assert facts.fit_need_bytes(16_000_000_000, "fp8", 2) == 4_400_000_000 + 2 * gib
    assert facts.fit_need_bytes(16_000_000_000, "float32", 1) == 35_200_000_000 + 2 * gib


# --------------------------------------------------------------------------- cache and publish


def test_second_run_is_a_cache_hit_without_building(harness: Harness) -> None:
    first = harness.run()
    assert_built(harness, first)
    harness.invocation_log.unlink()

    started = time.monotonic()
    second = harness.run()
    elapsed = time.monotonic() - started

    assert second.returncode == 0
    assert second.summary["phase"] == "CacheHit"
    assert second.invocations == []  # no trtllm-build, no converter, not even nvidia-smi
    assert second.summary["engineBytes"] == first.summary["engineBytes"]
    assert second.summary["tensorrtLlmVersion"] == "1.2.0"
    assert second.summary["path"] == str(harness.output_dir)
    assert "step preflight" not in second.stdout
    assert elapsed < 10


@pytest.mark.parametrize("damage", ["no manifest", "other fingerprint", "truncated file",
                                    "garbage manifest"])
def test_a_folder_that_is_not_a_complete_engine_is_rebuilt(harness: Harness,
                                                           damage: str) -> None:
    assert_built(harness, harness.run())
    out = harness.output_dir
    manifest_path = out / "build-manifest.json"
    if damage == "no manifest":
        manifest_path.unlink()
    elif damage == "other fingerprint":
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps(manifest | {"fingerprint": "0" * 64}))
    elif damage == "truncated file":
        (out / "rank0.engine").write_bytes(b"half")
    else:
        manifest_path.write_text("{not json")
    harness.invocation_log.unlink()

    result = harness.run()

    manifest = assert_built(harness, result)
    assert len(result.calls("trtllm_build")) == 1
    assert "is not a valid engine" in result.stdout
    engine = (out / "rank0.engine").read_bytes()
    assert hashlib.sha256(engine).hexdigest() == next(
        f["sha256"] for f in manifest["files"] if f["path"] == "rank0.engine")


def test_half_written_folder_from_elsewhere_is_replaced(harness: Harness) -> None:
    harness.output_dir.mkdir(parents=True)
    (harness.output_dir / "rank0.engine").write_bytes(b"copied halfway")

    result = harness.run()

    assert_built(harness, result)
    assert (harness.output_dir / "rank0.engine").read_bytes() != b"copied halfway"


@pytest.mark.parametrize(("mode", "words"), [
    ("fail", "exited with code 1"),
    ("die", "SIGKILL"),
    ("noengine", "lacks rank0.engine"),
])
def test_failed_build_publishes_nothing_and_leaves_no_staging(harness: Harness, mode: str,
                                                              words: str) -> None:
    result = harness.run(STANDIN_BUILD_MODE=mode)

    assert_failed(result, "BuildFailed", 1)
    assert words in result.summary["message"]
    assert not harness.output_dir.exists()
    assert harness.siblings() == []
    if mode == "fail":
        assert "Error Code 4: Internal Error (invalid shape)" in result.summary["logTail"]


def test_sigterm_stops_the_build_and_cleans_up(harness: Harness) -> None:
    pid_file = harness.root / "trtllm-build.pid"
    proc = harness.popen(harness.spec(), STANDIN_BUILD_MODE="hang",
                         STANDIN_PID_FILE=str(pid_file))
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists(), "trtllm-build stand-in never started"
    tool_pid = int(pid_file.read_text())

    proc.send_signal(signal.SIGTERM)
    result = harness.finish(proc)

    assert_failed(result, "Terminated", 1)
    assert not harness.output_dir.exists()
    assert harness.siblings() == []
    assert not Path(f"/proc/{tool_pid}").exists()  # the tool was stopped and reaped


def test_engine_published_meanwhile_by_another_build_wins(harness: Harness) -> None:
    assert_built(harness, harness.run())
    other = harness.root / "published-by-another-pod"
    shutil.move(harness.output_dir, other)

    result = harness.run(STANDIN_BUILD_MODE="race", STANDIN_RACE_SOURCE=str(other),
                         STANDIN_RACE_TARGET=str(harness.output_dir))

    assert result.returncode == 0
    assert result.summary["phase"] == "CacheHit"
    assert harness.siblings() == []  # our staging folder was discarded
    assert (harness.output_dir / "build-manifest.json").read_bytes() == (
        other / "build-manifest.json").read_bytes()


def test_staging_left_by_a_dead_pod_is_swept_but_a_live_one_is_kept(harness: Harness) -> None:
    parent = harness.output_dir.parent
    old = parent / f"{harness.output_dir.name}.staging-dead-pod"
    live = parent / f"{harness.output_dir.name}.staging-busy-pod"
    for folder in (old, live):
        folder.mkdir(parents=True)
        (folder / "rank0.engine").write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old / "rank0.engine", (two_days_ago, two_days_ago))
    os.utime(old, (two_days_ago, two_days_ago))

    result = harness.run()

    assert result.returncode == 0
    assert not old.exists()
    assert live.exists()


# --------------------------------------------------------------------------- failures


def test_missing_trtllm_build(harness: Harness) -> None:
    harness.without("trtllm-build")

    result = harness.run()

    assert_failed(result, "TrtllmBuildMissing", 3)
    assert "removed after 1.2" in result.summary["message"]
    assert "1.2.x release image" in result.summary["message"]


def test_gpu_mismatch(harness: Harness) -> None:
    result = harness.run(STANDIN_GPUS="NVIDIA L40S, 8.9, 46068")

    assert_failed(result, "GpuMismatch", 4)
    assert "NVIDIA-L40S" in result.summary["message"]
    assert H100 in result.summary["message"]
    assert result.summary["gpu"] == {"name": "NVIDIA L40S", "computeCapability": "8.9"}
    assert result.calls("convert_checkpoint_llama") == []


def test_broken_gpu_driver(harness: Harness) -> None:
    result = harness.run(STANDIN_NVSMI_FAIL="1")

    assert_failed(result, "GpuUnavailable", 1)
    assert "couldn't communicate with the NVIDIA driver" in result.summary["logTail"]


def test_quantization_format_the_gpu_cannot_run(harness: Harness) -> None:
    a100 = "NVIDIA-A100-SXM4-80GB"
    spec = harness.spec(gpuProduct=a100, quantization={"format": "fp8"})

    result = harness.run(spec, STANDIN_GPUS="NVIDIA A100-SXM4-80GB, 8.0, 81920")

    assert_failed(result, "InvalidSpec", 2)
    assert "quantization.format" in result.summary["message"]
    assert "8.9" in result.summary["message"]


def test_disk_too_small_for_the_estimate(harness: Harness) -> None:
    result = harness.run(TRTLLM_BUILD_FREE_BYTES="1000")

    assert_failed(result, "DiskFull", 5)
    assert "free" in result.summary["message"]
    assert result.calls("convert_checkpoint_llama") == []


def test_no_space_left_while_building(harness: Harness) -> None:
    result = harness.run(STANDIN_BUILD_MODE="enospc")

    assert_failed(result, "DiskFull", 5)
    assert "No space left on device" in result.summary["logTail"]
    assert not harness.output_dir.exists()
    assert harness.siblings() == []


@pytest.mark.parametrize("problem", ["missing", "no config.json"])
def test_model_not_found_on_the_volume(harness: Harness, problem: str) -> None:
    if problem == "missing":
        shutil.rmtree(harness.model)
    else:
        (harness.model / "config.json").unlink()

    result = harness.run()

    assert_failed(result, "ModelNotFound", 6)
    assert str(harness.model) in result.summary["message"]


def test_converter_failure_keeps_its_log_tail(harness: Harness) -> None:
    result = harness.run(STANDIN_CONVERT_MODE="fail")

    assert_failed(result, "ConvertFailed", 1)
    assert "shape mismatch in layer 0" in result.summary["logTail"]
    assert result.calls("trtllm_build") == []


def test_unknown_model_family_lists_the_known_ones(harness: Harness) -> None:
    result = harness.run(harness.spec(modelFamily="notamodel"))

    assert_failed(result, "InvalidSpec", 2)
    assert "modelFamily" in result.summary["message"]
    assert "llama" in result.summary["message"]


@pytest.mark.parametrize(("change", "field"), [
    ({"buildOptions": {"not_a_flag": "x"}}, "buildOptions.not_a_flag"),
    ({"buildOptions": {"output_dir": "/tmp/x"}}, "buildOptions.output_dir"),
    ({"buildOptions": {"checkpoint_dir": "/tmp/x"}}, "buildOptions.checkpoint_dir"),
    ({"buildOptions": {"max_batch_size": 4}}, "buildOptions.max_batch_size"),
    ({"buildOptions": {"max_decoder_seq_len": 4}}, "buildOptions.max_decoder_seq_len"),
    ({"buildOptions": {"model_config": "/x.json"}}, "buildOptions.model_config"),
    ({"buildOptions": {"build_config": "/x.json"}}, "buildOptions.build_config"),
    ({"buildOptions": {"workers": 8}}, "buildOptions.workers"),
    ({"buildOptions": {"dry_run": True}}, "buildOptions.dry_run"),
    ({"buildOptions": {"gemm_plugin": "fp16"}}, "buildOptions.gemm_plugin"),
    ({"buildOptions": {"gemm_plugin": True}}, "buildOptions.gemm_plugin"),
    ({"buildOptions": {"strip_plan": "yes"}}, "buildOptions.strip_plan"),
    ({"buildOptions": {"tokens_per_block": "many"}}, "buildOptions.tokens_per_block"),
    ({"buildOptions": {"--gemm_plugin": "auto"}}, "buildOptions.--gemm_plugin"),
    ({"fingerprint": None}, "fingerprint"),
    ({"fingerprint": "xyz"}, "fingerprint"),
    ({"gpuProduct": "NVIDIA H100"}, "gpuProduct"),
    ({"dtype": "fp16"}, "dtype"),
    ({"model": {"source": "huggingFace", "repo": "a/b", "cachedPath": "models/a--b"}},
     "model.cachedPath"),
    ({"model": {"source": "volume", "path": "/models/x", "cachedPath": "/engines/models/x"}},
     "model.cachedPath"),
    ({"quantization": {"format": "fp4"}}, "quantization.format"),
    ({"quantization": {"format": None, "kvCacheDtype": None}}, "quantization"),
    ({"quantization": {"format": "fp8", "calibration": {"size": 0}}},
     "quantization.calibration.size"),
    ({"tensorParallel": 0}, "tensorParallel"),
    ({"pipelineParallel": "2"}, "pipelineParallel"),
    ({"limits": {"maxBatch": 8}}, "limits.maxBatch"),
    ({"limits": {"maxSeqLen": -1}}, "limits.maxSeqLen"),
    ({"model": {"source": "s3", "path": "/x"}}, "model.source"),
    ({"model": {"source": "huggingFace"}}, "model.repo"),
    ({"model": {"source": "volume", "path": "models/x"}}, "model.path"),
    ({"outputDir": "engines/x"}, "outputDir"),
    ({"version": 2}, "version"),
    ({"gpuMemoryMiB": 0}, "gpuMemoryMiB"),
    ({"gpuMemoryMiB": "80GB"}, "gpuMemoryMiB"),
    ({"surprise": True}, "surprise"),
])
def test_invalid_spec_names_the_field(harness: Harness, change: dict[str, Any],
                                      field: str) -> None:
    spec = harness.spec(**change)
    if change.get("fingerprint", "") is None:
        del spec["fingerprint"]

    result = harness.run(spec)

    assert_failed(result, "InvalidSpec", 2)
    assert f"field {field}:" in result.summary["message"]
    if field != "fingerprint":
        assert result.summary["fingerprint"] == FINGERPRINT
    assert result.invocations == []
    assert not harness.output_dir.exists()


@pytest.mark.parametrize(("spec_text", "words"), [
    (None, "no build spec"),
    ("{not json", "not valid JSON"),
])
def test_unreadable_spec(harness: Harness, spec_text: str | None, words: str) -> None:
    proc = (harness.popen(None) if spec_text is None
            else harness.popen(None, TRTLLM_BUILD_SPEC=spec_text))
    result = harness.finish(proc)

    assert_failed(result, "InvalidSpec", 2)
    assert words in result.summary["message"]


# --------------------------------------------------------------------------- termination message


def test_huge_tool_output_still_fits_the_termination_message(harness: Harness) -> None:
    result = harness.run(STANDIN_BUILD_MODE="hugelog")

    assert_failed(result, "BuildFailed", 1)
    assert len(result.summary_text.encode()) <= 4096
    assert result.summary["logTail"].endswith("FINAL LINE")
    assert result.summary["message"]
    assert result.summary["fingerprint"] == FINGERPRINT


def test_fit_summary_trims_tail_then_message_and_stays_valid_json() -> None:
    fields = {"phase": "Failed", "reason": "BuildFailed", "message": "m" * 9000,
              "fingerprint": FINGERPRINT, "logTail": "\n".join(f"line {i} ü" for i in range(3000)),
              "gpu": {"name": "NVIDIA H100 80GB HBM3", "computeCapability": "9.0"}}

    text = reporting.fit_summary(fields)

    assert len(text.encode()) <= 4096
    data = json.loads(text)
    assert data["phase"] == "Failed"
    assert data["reason"] == "BuildFailed"
    assert data["message"].startswith("mmm")
    assert reporting.fit_summary({"phase": "Built"}) == '{"phase": "Built"}'


def test_exit_codes_are_one_map() -> None:
    assert {r.value: contract.exit_code(r) for r in contract.EXIT_CODES} == {
        "InvalidSpec": 2, "TrtllmBuildMissing": 3, "GpuMismatch": 4, "DiskFull": 5,
        "ModelNotFound": 6, "ModelDoesNotFit": 7, "ModelAccessDenied": 8,
        "CachedModelInvalid": 9, "ModelOptMissing": 10, "CalibrationDataMissing": 11}
    assert contract.exit_code(None) == 0
    assert contract.exit_code(contract.Reason.BUILD_FAILED) == 1
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", r.value) for r in contract.Reason)


def test_the_jobs_pod_failure_policy_knows_every_permanent_exit_code() -> None:
    # The Job fails at once (no retry) exactly on the codes the entrypoint calls permanent.
    assert sorted(jobs.PERMANENT_EXIT_CODES) == sorted(set(contract.EXIT_CODES.values()))
    assert 1 not in jobs.PERMANENT_EXIT_CODES


# --------------------------------------------------------------------------- GPU names


@pytest.mark.parametrize(("nvml", "product"), [
    ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
    ("NVIDIA L40S", "NVIDIA-L40S"),
    ("NVIDIA H200", "NVIDIA-H200"),
    ("NVIDIA RTX 6000 Ada Generation", "NVIDIA-RTX-6000-Ada-Generation"),
    ("NVIDIA H100 PCIe (rev. a1)", "NVIDIA-H100-PCIe-rev.-a1"),
    ("  Tesla  V100-SXM2-16GB ", "Tesla-V100-SXM2-16GB"),
])
def test_gpu_product_label_from_nvml_name(nvml: str, product: str) -> None:
    assert job.gfd_product(nvml) == product


def test_shared_and_mig_labels_match_their_gpu() -> None:
    assert job.product_matches(H100, H100)
    assert job.product_matches(H100, f"{H100}-SHARED")
    assert job.product_matches("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb")
    assert not job.product_matches("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe")
    assert not job.product_matches("NVIDIA-H100", "NVIDIA-H100-80GB-HBM3")


# --------------------------------------------------------------------------- tables and facts


def _as_json(flag: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": flag.type,
        "choices": list(flag.choices) if isinstance(flag.choices, tuple) else flag.choices,
    }
    if flag.aliases:
        entry["aliases"] = list(flag.aliases)
    entry["use"] = "emitted" if flag.emitted else "buildOption"
    return entry


def test_embedded_build_flags_equal_the_shipped_table() -> None:
    table = json.loads(FLAG_TABLE.read_text())

    assert {name: _as_json(f) for name, f in jobfacts.TRTLLM_BUILD_FLAGS.items()} == table[
        "trtllm_build"]


def test_embedded_facts_equal_the_operators() -> None:
    assert typing.get_args(facts.Dtype) == jobfacts.DTYPES
    assert typing.get_args(facts.QuantFormat) == jobfacts.QUANT_FORMATS
    assert typing.get_args(facts.KvCacheDtype) == jobfacts.KV_CACHE_DTYPES
    assert dict(jobfacts.QUANT_FORMAT_MIN_SM) == facts.QUANT_FORMAT_MIN_SM
    assert dict(jobfacts.CALIBRATION_DEFAULTS) == {
        "dataset": facts.DEFAULT_CALIBRATION_DATASET, "size": facts.DEFAULT_CALIBRATION_SIZE,
        "batchSize": facts.DEFAULT_CALIBRATION_BATCH_SIZE,
        "maxSeqLength": facts.DEFAULT_CALIBRATION_MAX_SEQ_LENGTH}
    assert facts.BUILD_FLAGS_SET_BY_OPERATOR is jobfacts.BUILD_FLAGS_SET_BY_OPERATOR  # one source
    assert facts.BUILD_FLAGS_REFUSED is jobfacts.BUILD_OPTIONS_REFUSED
    emitted = {n for n, f in jobfacts.TRTLLM_BUILD_FLAGS.items() if f.emitted}
    assert emitted <= set(facts.BUILD_FLAGS_SET_BY_OPERATOR)
    assert set(jobfacts.LIMIT_FLAGS.values()) <= emitted


def test_serve_section_covers_what_the_operator_writes() -> None:
    serve = json.loads(FLAG_TABLE.read_text())["trtllm_serve"]

    assert serve["--log_level"]["choices"] == list(typing.get_args(facts.ServeLogLevel))
    assert "tensorrt" in serve["--backend"]["choices"]
    assert {"MODEL", "--host", "--port", "--backend", "--tp_size", "--pp_size",
            "--max_batch_size", "--max_num_tokens", "--max_seq_len", "--max_beam_width",
            "--kv_cache_free_gpu_memory_fraction", "--tokenizer", "--log_level",
            "--extra_llm_api_options", "--gpus_per_node"} == {
        name for name, entry in serve.items() if entry.get("use", "emitted") == "emitted"}
    emitted = {name for name, entry in serve.items() if entry.get("use") == "emitted"}
    assert emitted <= set(facts.SERVE_FLAGS_SET_BY_OPERATOR)


def test_dockerfile_builds_on_the_default_release_image() -> None:
    dockerfile = (BUILD_JOBS / "Dockerfile").read_text()

    assert f"ARG TRTLLM_IMAGE={facts.DEFAULT_TRTLLM_IMAGE}\n" in dockerfile
    assert "COPY trtllm_jobs/ /opt/trtllm-jobs/trtllm_jobs/\n" in dockerfile
    assert "ENV PYTHONPATH=/opt/trtllm-jobs" in dockerfile
    assert 'ENTRYPOINT ["python3", "-m", "trtllm_jobs.build"]' in dockerfile


needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(),
    reason=f"TensorRT-LLM flag reference not found at {REFERENCE} (set TRTLLM_CLI_REFERENCE)")


def _reference_flags(tool: str) -> dict[str, dict[str, Any]]:
    return {arg["flag"]: arg for arg in json.loads(REFERENCE.read_text())[tool]["args"]}


@pytest.fixture(scope="module")
def compact() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(FLAG_TABLE.read_text())
    return table


@needs_reference
@pytest.mark.parametrize("tool", ["trtllm_build", "convert_checkpoint_llama", "quantize_py",
                                  "trtllm_serve"])
def test_every_tabled_flag_exists_in_the_reference(compact: dict[str, Any], tool: str) -> None:
    reference = _reference_flags(tool)
    for name, entry in compact[tool].items():
        assert name in reference, f"{tool} {name} is not in {REFERENCE.name}"
        real = reference[name]
        assert entry["type"] == real["type"], (tool, name)
        assert entry["choices"] == real["choices"], (tool, name)
        if "aliases" in entry or isinstance(real.get("aliases"), list):
            assert entry.get("aliases") == real.get("aliases"), (tool, name)


@needs_reference
def test_build_options_accept_every_trtllm_build_flag_but_the_refused(
        compact: dict[str, Any]) -> None:
    reference = set(_reference_flags("trtllm_build"))
    refused = {"--model_config", "--build_config", *jobfacts.BUILD_OPTIONS_REFUSED}

    assert set(compact["trtllm_build"]) == reference - refused
    assert refused - set(jobfacts.BUILD_OPTIONS_REFUSED) <= set(
        jobfacts.BUILD_FLAGS_SET_BY_OPERATOR)
