"""The operator side of the quantize job: the spec it writes (read back by the job's own
parser, the seam) and the Job manifest. Pure; which GPU node runs it is the caller's choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trtllm_jobs import contract as job_contract
from trtllm_jobs.spec import parse_quantize_spec
from trtllm_operator.api import LLMEngine
from trtllm_operator.engines import jobs, planning

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
    assert parsed.calibration.dataset is None
    assert (parsed.format, parsed.kv_cache_dtype) == ("fp8", "fp8")


def test_a_dataset_is_named_only_when_the_spec_allows_the_download() -> None:
    fetched = planning.quantize_job_spec(engine(calibration={
        "dataset": "cnn_dailymail", "downloadDataset": True, "size": 64}).spec, SHA)
    unnamed = planning.quantize_job_spec(engine(calibration={"size": 64}).spec, SHA)

    assert fetched["calibration"] == {"dataset": "cnn_dailymail", "size": 64,
                                      "maxSeqLength": 512, "batchSize": 1}
    assert parse_quantize_spec(fetched).calibration is not None
    assert unnamed["calibration"] is None  # the job then fails with CalibrationDataMissing
    assert parse_quantize_spec(unnamed).calibration is None


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
