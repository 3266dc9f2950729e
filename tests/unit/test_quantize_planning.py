"""The operator side of the quantize job: the spec it writes (read back by the job's own
parser, the seam) and the Job manifest. Pure; which GPU node runs it is the caller's choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trtllm_jobs import contract as job_contract
from trtllm_jobs.spec import parse_download_spec, parse_quantize_spec
from trtllm_operator.api import LLMEngine
from trtllm_operator.engines import jobs, planning
from trtllm_operator.engines import model_cache as mc

SHA = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"
H100 = "NVIDIA-H100-80GB-HBM3"


def engine(name: str = "llama", claim: str = "trtllm-engines", fmt: str = "fp8",
           kv: str | None = None, calibration: dict[str, Any] | None = None,
           token: bool = True) -> LLMEngine:
    quant: dict[str, Any] = {"format": fmt, "calibration": calibration if calibration
                             is not None else {"datasetPath": "calibration/chat.jsonl"}}
    if kv:
        quant["kvCacheDtype"] = kv
    hf: dict[str, Any] = {"repo": "meta-llama/Llama-3.1-8B", "revision": SHA}
    if token:
        hf["tokenSecretRef"] = {"name": "hf-token"}
    return LLMEngine.model_validate({
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"model": {"huggingFace": hf},
                 "build": {"image": "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25",
                           "quantization": quant, "parallelism": {"tensor": 2}},
                 "targets": [H100], "storage": {"claimName": claim}}})


def test_the_spec_the_operator_writes_is_what_the_job_reads() -> None:
    spec = planning.quantize_job_spec(engine(kv="fp8").spec, SHA)

    parsed = parse_quantize_spec(json.loads(json.dumps(spec)))

    assert str(parsed.cached_path) == (
        f"{planning.ENGINES_MOUNT}/models/meta-llama--Llama-3.1-8B/{SHA}")
    assert str(parsed.output_dir) == (
        f"{planning.ENGINES_MOUNT}/{planning.quantized_path(engine(kv='fp8').spec, SHA)}")
    assert planning.quantized_path(engine(kv="fp8").spec, SHA).startswith(
        f"quantized/meta-llama--Llama-3.1-8B/{SHA}/fp8-kvfp8-cal")
    # Other calibration samples, other scales: another folder (and Job).
    other = engine(kv="fp8", calibration={"datasetPath": "calibration/chat.jsonl", "size": 64})
    assert planning.quantized_path(other.spec, SHA) != planning.quantized_path(
        engine(kv="fp8").spec, SHA)
    assert planning.quantize_job_name(other.spec, SHA) != planning.quantize_job_name(
        engine(kv="fp8").spec, SHA)
    assert parsed.calibration is not None
    assert str(parsed.calibration.dataset_path) == "/engines/calibration/chat.jsonl"
    assert parsed.calibration.text_field == "text"
    assert (parsed.format, parsed.kv_cache_dtype) == ("fp8", "fp8")


def test_a_fetched_dataset_is_read_from_its_cache_entry_by_the_offline_quantize_job() -> None:
    calibration = {"dataset": "abisee/cnn_dailymail", "downloadDataset": True,
                   "revision": "main", "files": ["3.0.0/validation-*.parquet"],
                   "textField": "article", "size": 64}
    spec = engine(calibration=calibration).spec
    plan = mc.plan_calibration(spec)
    assert plan is not None
    download = parse_download_spec(mc.download_spec(plan))
    assert (download.repo_type, download.repo, download.files) == (
        "dataset", "abisee/cnn_dailymail", ("3.0.0/validation-*.parquet",))
    entry = plan.entry_path("d" * 40)
    assert entry == str(download.entry("d" * 40))
    assert plan.job_name.startswith("trtllm-data-")
    # The same dataset for another engine (another model even): the same Job.
    other = engine(name="other", calibration=calibration, fmt="int4_awq").spec
    assert mc.plan_calibration(other) == plan
    narrower = engine(calibration={**calibration, "files": ["3.0.0/test-*.parquet"]}).spec
    assert mc.plan_calibration(narrower).job_name != plan.job_name  # type: ignore[union-attr]

    written = planning.quantize_job_spec(spec, SHA, entry)
    parsed = parse_quantize_spec(written)
    assert parsed.calibration is not None
    assert str(parsed.calibration.dataset_path) == entry
    assert (parsed.calibration.files, parsed.calibration.text_field) == (
        ("3.0.0/validation-*.parquet",), "article")
    assert planning.quantize_job_name(spec, SHA, entry) != planning.quantize_job_name(
        spec, SHA, plan.entry_path("e" * 40))  # another dataset commit, another export
    # Nothing named: no calibration at all (the job refuses; validation refuses first).
    unnamed = planning.quantize_job_spec(engine(calibration={"size": 64}).spec, SHA)
    assert unnamed["calibration"] is None
    assert mc.plan_calibration(engine(calibration={"size": 64}).spec) is None


def test_the_quantize_job_is_offline_even_when_a_dataset_was_fetched() -> None:
    job = jobs.quantize_job(engine(calibration={"downloadDataset": True}), SHA, H100, 1, "cm",
                            dataset_path="/engines/datasets/cnn_dailymail/" + "d" * 40)

    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert env["HF_DATASETS_OFFLINE"]["value"] == "1"
    assert "HF_TOKEN" not in env

def test_one_job_per_model_commit_format_and_claim_whichever_engine_asks() -> None:
    name = planning.quantize_job_name(engine().spec, SHA)

    assert name.startswith("trtllm-quantize-")
    assert len(name) == len("trtllm-quantize-") + 12
    assert planning.quantize_job_name(engine(name="other").spec, SHA) == name
    for other in (engine(fmt="nvfp4"), engine(kv="fp8"), engine(claim="elsewhere")):
        assert planning.quantize_job_name(other.spec, SHA) != name
    assert planning.quantize_job_name(engine().spec, "0" * 40) != name


def test_a_volume_model_has_no_quantize_job() -> None:
    body = engine().model_dump(mode="json", by_alias=True, exclude_none=True)
    body["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama"}}
    with pytest.raises(ValueError, match="Hugging Face model"):
        planning.quantize_job_spec(LLMEngine.model_validate(body).spec, SHA)


def test_the_quantize_job_runs_the_package_on_the_chosen_gpu_offline() -> None:
    job = jobs.quantize_job(engine(), SHA, H100, 2, "trtllm-jobs-abc")

    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert container["command"] == ["python3", "-m", "trtllm_jobs.quantize"]
    assert container["workingDir"] == jobs.JOBS_DIR
    assert container["image"] == "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": H100}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert "HF_TOKEN" not in env  # nothing to fetch, so no credential
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-name']")
    assert json.loads(env["TRTLLM_QUANTIZE_SPEC"]["value"]) == planning.quantize_job_spec(
        engine().spec, SHA)
    assert {"name": "engines", "mountPath": "/engines"} in container["volumeMounts"]
    assert {"name": "entrypoint", "mountPath": "/opt/trtllm-jobs/trtllm_jobs",
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "engines", "persistentVolumeClaim": {"claimName": "trtllm-engines"}} in (
        pod["volumes"])
    assert job["metadata"]["name"] == planning.quantize_job_name(engine().spec, SHA)
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == list(
        job_contract.PERMANENT_EXIT_CODES)
    assert "ttlSecondsAfterFinished" not in job["spec"]


def test_the_pytorch_sample_reaches_the_quantize_and_download_entrypoints_intact() -> None:
    import yaml

    from tests.conftest import ROOT
    body = yaml.safe_load((ROOT / "samples/llmengine-llama-3-8b-pytorch-fp8.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u"}
    sample = LLMEngine.model_validate(body)
    data = mc.plan_calibration(sample.spec)
    assert data is not None
    download = parse_download_spec(mc.download_spec(data))
    assert (download.repo_type, download.files) == ("dataset", ("3.0.0/validation-*",))
    parsed = parse_quantize_spec(planning.quantize_job_spec(sample.spec, SHA,
                                                            data.entry_path("d" * 40)))
    assert parsed.format == "fp8"
    assert parsed.calibration is not None
    assert (parsed.calibration.text_field, parsed.calibration.size) == ("article", 512)
