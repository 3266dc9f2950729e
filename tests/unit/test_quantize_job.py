"""The quantize-job entrypoint (``python3 -m trtllm_jobs.quantize``), run for real as a
subprocess against stand-in ``modelopt`` / ``transformers`` / ``torch`` modules
(build_job_standins/fake_site) that refuse any call, config or keyword outside the
``modelopt_python_api`` section of build-jobs/trtllm_flags_1_3.json. No GPU, no network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trtllm_jobs import cache, facts, publish, quantize
from trtllm_jobs import contract as job_contract
from trtllm_jobs.spec import parse_quantize_spec

REPO = Path(__file__).resolve().parents[2]
BUILD_JOBS = REPO / "build-jobs"
STANDINS = Path(__file__).resolve().parent / "build_job_standins"
TABLE = json.loads((BUILD_JOBS / "trtllm_flags_1_3.json").read_text())
MODEL = "meta-llama/Llama-3.1-8B"
SHA = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"
JOB = "trtllm-quantize-abc"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    calls: list[dict[str, Any]]

    def called(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["call"] == name]


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]

    @property
    def cache_root(self) -> Path:
        return self.root / "engines"

    @property
    def entry(self) -> Path:
        return cache.entry_dir(self.cache_root, MODEL, SHA)

    def output(self, fmt: str = "fp8", kv: str | None = None,
               calibration: dict[str, Any] | None = None) -> Path:
        """Where the job publishes: named by the job's own parser, as the operator names it."""
        changes: dict[str, Any] = {"format": fmt, "kvCacheDtype": kv}
        if calibration is not None:
            changes["calibration"] = calibration
        return parse_quantize_spec(self.spec(**changes)).output_dir

    @property
    def calibration_file(self) -> Path:
        return self.cache_root / "calibration" / "chat.jsonl"

    def spec(self, **changes: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "version": 1, "kind": "quantize",
            "model": {"repo": MODEL, "commit": SHA, "cachedPath": str(self.entry)},
            "format": "fp8", "kvCacheDtype": None,
            "calibration": {"datasetPath": str(self.calibration_file), "size": 4,
                            "maxSeqLength": 256, "batchSize": 2},
            "cacheRoot": str(self.cache_root),
        }
        spec.update(changes)
        return spec

    def popen(self, spec: dict[str, Any] | None = None, **env: str) -> subprocess.Popen[str]:
        environ = dict(self.env)
        environ["TRTLLM_QUANTIZE_SPEC"] = json.dumps(self.spec() if spec is None else spec)
        environ.update(env)
        for log in (self.root / "termination-log", self.root / "modelopt.jsonl"):
            log.unlink(missing_ok=True)
        return subprocess.Popen([sys.executable, "-m", "trtllm_jobs.quantize"], env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> Run:
        stdout, stderr = proc.communicate(timeout=timeout)
        term = self.root / "termination-log"
        log = self.root / "modelopt.jsonl"
        calls = ([json.loads(line) for line in log.read_text().splitlines()]
                 if log.exists() else [])
        return Run(proc.returncode, stdout, stderr,
                   json.loads(term.read_text()) if term.exists() else {}, calls)

    def run(self, spec: dict[str, Any] | None = None, **env: str) -> Run:
        return self.finish(self.popen(spec, **env))

    def siblings(self, output: Path) -> list[str]:
        parent = output.parent
        return sorted(p.name for p in parent.iterdir() if p != output) if parent.exists() \
            else []


def _cached_entry(folder: Path) -> None:
    """A published model-cache entry, as the download job leaves it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"w" * 4096)
    (folder / "tokenizer.json").write_text('{"model": "fake"}')
    files = publish.list_files(folder, cache.MANIFEST_NAME)
    (folder / cache.MANIFEST_NAME).write_text(json.dumps({
        "schemaVersion": 1, "source": "huggingFace", "repo": MODEL, "revision": "main",
        "commit": SHA, "checkpointBytes": 4096, "totalBytes": sum(f["bytes"] for f in files),
        "files": files}))


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    sandbox = Sandbox(tmp_path, {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "PYTHONPATH": os.pathsep.join([str(BUILD_JOBS), str(STANDINS / "fake_site")]),
        "HOME": str(tmp_path),
        "TRTLLM_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "FAKE_MODELOPT_LOG": str(tmp_path / "modelopt.jsonl"),
        "NODE_NAME": "gpu-node-1", "POD_NAME": f"{JOB}-x1", "JOB_NAME": JOB,
        "HF_HUB_OFFLINE": "1",
    })
    _cached_entry(sandbox.entry)
    sandbox.calibration_file.parent.mkdir(parents=True)
    sandbox.calibration_file.write_text("".join(
        json.dumps({"text": f"sample {i}"}) + "\n" for i in range(6)))
    return sandbox


def assert_quantized(box: Sandbox, run: Run, output: Path) -> dict[str, Any]:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.summary["phase"] == "Quantized", run.summary
    assert box.siblings(output) == []  # no staging or stale folder left
    manifest: dict[str, Any] = json.loads((output / quantize.MANIFEST_NAME).read_text())
    return manifest


def assert_failed(run: Run, reason: str, code: int) -> None:
    assert run.summary.get("reason") == reason, (run.summary, run.stdout[-3000:],
                                                 run.stderr[-3000:])
    assert run.summary["phase"] == "Failed"
    assert run.returncode == code


# --------------------------------------------------------------------------- success


def test_an_fp8_export_is_published_with_a_manifest_from_offline_calibration(
        box: Sandbox) -> None:
    run = box.run()

    output = box.output()
    manifest = assert_quantized(box, run, output)
    assert output.parent == box.cache_root / "quantized" / "meta-llama--Llama-3.1-8B" / SHA
    # Keyed by the calibration too: other samples give other scales, hence another export.
    assert output.name == "fp8-cal" + cache.calibration_key({
        "datasetPath": str(box.calibration_file), "size": 4, "maxSeqLength": 256,
        "batchSize": 2, "textField": "text"})
    assert output != box.output(calibration={"datasetPath": str(box.calibration_file),
                                             "size": 8})
    assert (output / facts.HF_QUANT_CONFIG).is_file()
    assert {f["path"] for f in manifest["files"]} == {
        "config.json", "model.safetensors", "hf_quant_config.json", "tokenizer.json",
        "tokenizer_config.json"}
    assert (manifest["repo"], manifest["commit"], manifest["format"]) == (MODEL, SHA, "fp8")
    assert manifest["calibration"]["datasetPath"] == str(box.calibration_file)
    assert manifest["modelopt"] == {"config": "FP8_DEFAULT_CFG", "kvConfig": None}
    # The tokenizer got a pad token (the stand-in refuses to pad without one).
    assert json.loads((output / "tokenizer_config.json").read_text())["pad_token"] == "</s>"
    (quantized,) = run.called("quantize")
    assert quantized == {"call": "quantize", "config": "FP8_DEFAULT_CFG", "kv": False,
                         "forwards": 2, "samples": 4}  # size 4 of 6, batches of 2
    assert run.called("get_dataset_dataloader") == []  # nothing fetched
    assert [c["path"] for c in run.called("AutoModelForCausalLM.from_pretrained")] == [
        str(box.entry)]
    assert run.summary["path"] == str(output)
    assert run.summary["totalBytes"] == manifest["totalBytes"]


@pytest.mark.parametrize(("fmt", "kv"), [("fp8", "fp8"), ("nvfp4", None), ("int4_awq", None),
                                         ("w4a8_awq", "fp8")])
def test_each_format_uses_its_modelopt_config_and_path(box: Sandbox, fmt: str,
                                                       kv: str | None) -> None:
    run = box.run(box.spec(format=fmt, kvCacheDtype=kv))

    output = box.output(fmt, kv)
    assert_quantized(box, run, output)
    assert output.name.startswith(fmt + (f"-kv{kv}" if kv else "") + "-cal")
    (quantized,) = run.called("quantize")
    assert quantized["config"] == TABLE["modelopt_python_api"]["quantize"]["configs"][fmt]
    assert quantized["kv"] is (kv is not None)
    hf_quant = json.loads((output / facts.HF_QUANT_CONFIG).read_text())["quantization"]
    assert (hf_quant["kv_cache_quant_algo"] == "FP8") is (kv is not None)


def test_a_cached_dataset_repo_is_read_offline_through_its_files_and_text_field(
        box: Sandbox) -> None:
    # What the CPU download Job leaves for a dataset repo: data files and its manifest.
    folder = box.cache_root / "datasets" / "abisee--cnn_dailymail" / SHA
    (folder / "3.0.0").mkdir(parents=True)
    (folder / "3.0.0" / "validation.jsonl").write_text("".join(
        json.dumps({"article": f"news {i}", "id": str(i)}) + "\n" for i in range(5)))
    (folder / "3.0.0" / "train.jsonl").write_text(json.dumps({"article": "not read"}) + "\n")
    (folder / cache.MANIFEST_NAME).write_text("{}")
    calibration = {"datasetPath": str(folder), "files": ["3.0.0/validation.*"],
                   "textField": "article", "size": 8, "batchSize": 5}

    run = box.run(box.spec(calibration=calibration))

    manifest = assert_quantized(box, run, box.output(calibration=calibration))
    assert run.called("quantize")[0]["samples"] == 5  # validation only: 5 records
    assert run.called("get_dataset_dataloader") == []  # never fetched
    assert manifest["calibration"]["textField"] == "article"
    assert manifest["calibration"]["files"] == ["3.0.0/validation.*"]

    other_field = box.run(box.spec(calibration={**calibration, "textField": "text"}))
    assert_failed(other_field, "CalibrationDataMissing", 11)
    assert "the records have article, id" in other_field.summary["message"]
    assert "calibration.textField" in other_field.summary["message"]


def test_an_existing_valid_export_is_a_cache_hit_without_modelopt(box: Sandbox) -> None:
    first = box.run()
    assert_quantized(box, first, box.output())

    again = box.run(POD_NAME=f"{JOB}-x2", PYTHONPATH=str(BUILD_JOBS))  # no modelopt at all

    assert again.returncode == 0, again.stdout + again.stderr
    assert again.summary["phase"] == "CacheHit"
    assert again.calls == []


def test_a_damaged_export_is_replaced_not_trusted(box: Sandbox) -> None:
    assert_quantized(box, box.run(), box.output())
    (box.output() / "model.safetensors").write_bytes(b"short")

    run = box.run()

    assert_quantized(box, run, box.output())
    assert "is not a valid quantized checkpoint" in run.stdout
    assert (box.output() / "model.safetensors").stat().st_size == 1024


# --------------------------------------------------------------------------- resumption


def test_a_killed_export_publishes_nothing_and_the_jobs_next_pod_starts_over(
        box: Sandbox) -> None:
    proc = box.popen(FAKE_QUANT_MODE="slow", FAKE_QUANT_SECONDS="30")
    staging = box.output().with_name(f"{box.output().name}.staging-{JOB}")
    deadline = time.monotonic() + 30
    while not (staging / "config.json").is_file():
        assert time.monotonic() < deadline, "the export never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the node died, the OOM killer struck: no cleanup
    proc.wait(timeout=30)

    assert not box.output().exists()  # never half-written
    assert staging.is_dir()

    run = box.run(POD_NAME=f"{JOB}-x2")  # the Job's replacement pod

    assert_quantized(box, run, box.output())
    assert f"removing {staging.name}: the export of an earlier pod of this Job" in run.stdout


def test_sigterm_reports_terminated_and_leaves_nothing(box: Sandbox) -> None:
    proc = box.popen(FAKE_QUANT_MODE="slow", FAKE_QUANT_SECONDS="30")
    staging = box.output().with_name(f"{box.output().name}.staging-{JOB}")
    deadline = time.monotonic() + 30
    while not (staging / "config.json").is_file():
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)

    run = box.finish(proc)

    assert_failed(run, "Terminated", 1)
    assert not box.output().exists()
    assert box.siblings(box.output()) == []


# --------------------------------------------------------------------------- failures


def test_no_calibration_named_fails_without_fetching_anything(box: Sandbox) -> None:
    run = box.run(box.spec(calibration=None))

    assert_failed(run, "CalibrationDataMissing", 11)
    assert "runs offline and never downloads" in run.summary["message"]
    assert run.calls == []


@pytest.mark.parametrize(("content", "problem"), [
    (None, "is missing"), (b"not json\n", "is not JSON"), (b'{"prompt": "x"}\n', "no calibration"),
    (b"\xff\xfe binary", "is not UTF-8 text"),
])
def test_unusable_calibration_data_is_refused(box: Sandbox, content: bytes | None,
                                              problem: str) -> None:
    if content is None:
        box.calibration_file.unlink()
    else:
        box.calibration_file.write_bytes(content)

    run = box.run()

    assert_failed(run, "CalibrationDataMissing", 11)
    assert problem in run.summary["message"]
    assert not box.output().exists()


def test_a_calibration_folder_of_jsonl_files_is_read(box: Sandbox) -> None:
    folder = box.calibration_file.parent
    (folder / "more.jsonl").write_text(json.dumps({"text": "more"}) + "\n")
    spec = box.spec(calibration={"datasetPath": str(folder), "size": 100, "batchSize": 3})

    run = box.run(spec)

    assert_quantized(box, run, box.output(calibration=spec["calibration"]))
    assert run.called("quantize")[0]["samples"] == 7  # 6 + 1: all there is, under the size


def test_an_incomplete_cache_entry_is_refused(box: Sandbox) -> None:
    (box.entry / "model.safetensors").unlink()

    run = box.run()

    assert_failed(run, "CachedModelInvalid", 9)
    assert "model.safetensors is missing" in run.summary["message"]
    assert run.calls == []


def test_an_image_without_modelopt_is_refused(box: Sandbox) -> None:
    run = box.run(PYTHONPATH=str(BUILD_JOBS))

    assert_failed(run, "ModelOptMissing", 10)
    assert "1.3.0rc21 or later" in run.summary["message"]


@pytest.mark.parametrize(("mode", "reason", "code", "words"), [
    ("oom", "QuantizeFailed", 1, "do not fit the GPU memory"),
    ("unquantized", "QuantizeFailed", 1, "exported no hf_quant_config.json"),
    ("diskfull", "DiskFull", 5, "no space left on device"),
])
def test_tool_failures_map_to_reasons_and_leave_nothing(box: Sandbox, mode: str, reason: str,
                                                       code: int, words: str) -> None:
    run = box.run(FAKE_QUANT_MODE=mode)

    assert_failed(run, reason, code)
    assert words in run.summary["message"]
    assert not box.output().exists()
    assert box.siblings(box.output()) == []


def test_too_little_free_space_is_refused_before_loading(box: Sandbox) -> None:
    run = box.run(TRTLLM_BUILD_FREE_BYTES="1000")

    assert_failed(run, "DiskFull", 5)
    assert run.calls == []


@pytest.mark.parametrize(("change", "field"), [
    ({"format": "int8_sq"}, "format"),
    ({"format": "fp8_pc_pt"}, "format"),
    ({"kvCacheDtype": "int8"}, "kvCacheDtype"),
    ({"model": {"repo": MODEL, "commit": "main", "cachedPath": "/x"}}, "model.commit"),
    ({"calibration": {"datasetPath": "/a.jsonl", "dataset": "cnn_dailymail"}},
     "calibration.dataset"),  # fetching is the download Job's, never this one's
    ({"calibration": {"size": 4}}, "calibration.datasetPath"),
    ({"calibration": {"datasetPath": "/d", "files": ["../x"]}}, "calibration.files"),
    ({"extra": 1}, "extra"),
])
def test_an_invalid_spec_is_refused_naming_the_field(box: Sandbox, change: dict[str, Any],
                                                     field: str) -> None:
    run = box.run(box.spec(**change))

    assert_failed(run, "InvalidSpec", 2)
    assert f"quantize spec field {field}:" in run.summary["message"]


# --------------------------------------------------------------------------- one source


def test_the_embedded_modelopt_configs_equal_the_table() -> None:
    section = TABLE["modelopt_python_api"]["quantize"]
    assert dict(facts.MODELOPT_CONFIGS) == section["configs"]
    assert dict(facts.MODELOPT_KV_CONFIGS) == section["kv_configs"]
    assert set(facts.MODELOPT_CONFIGS) == set(TABLE["modelopt_hf_ptq"]["operator_formats"])
    assert "INT8_SMOOTHQUANT_CFG" not in facts.MODELOPT_CONFIGS.values()


def test_the_quantize_exit_codes_are_permanent() -> None:
    for reason in (job_contract.Reason.MODELOPT_MISSING,
                   job_contract.Reason.CALIBRATION_DATA_MISSING):
        assert job_contract.exit_code(reason) in job_contract.PERMANENT_EXIT_CODES
