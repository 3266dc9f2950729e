"""A quantized PyTorch-line engine end to end: the checkpoint is downloaded once (CPU node),
quantized once with ModelOpt (one Job, on a GPU type of the engine that runs the format and
holds the model), and every target whose GPU runs the format serves that one export with
``trtllm-serve <export> --backend pytorch``. A100 cannot run fp8: refused with the reason.
The simulated kubelet answers download and quantize pods with the summaries the real jobs
write (see trtllm_operator/localcluster/kubelet.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import (
    A100,
    BUILD_JOBS,
    DOWNLOAD_JOBS,
    H100,
    L40S,
    QUANTIZE_JOBS,
    Getter,
    OperatorProcess,
    apply,
    condition,
    jobs,
    pytorch_engine,
    serve_on_h100_and_l40s,
    settle,
    targets,
)
from tests.support import wait_for
from tests.unit.test_serving_backends import check_against_table
from trtllm_jobs.spec import parse_quantize_spec
from trtllm_operator import trtllm_facts as facts

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

def _fp8_engine(name: str, gpus: list[str], **sim: str) -> dict[str, Any]:
    obj = pytorch_engine(name, gpus)
    obj["spec"]["build"]["quantization"] = {
        "format": "fp8", "calibration": {"datasetPath": "calibration/chat.jsonl", "size": 256}}
    if sim:
        obj["metadata"]["annotations"] = {f"sim.trtllm.dev/quantize-{k}": v
                                          for k, v in sim.items()}
    return obj


def _spec(job: client.V1Job) -> dict[str, Any]:
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    spec: dict[str, Any] = json.loads(env["TRTLLM_QUANTIZE_SPEC"])
    return spec


def test_one_download_one_quantize_both_gpu_types_served_and_a100_refused(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        api_client: client.ApiClient, core: client.CoreV1Api,
        gpu_fleet: dict[str, list[str]]) -> None:
    apply(kubectl, namespace, _fp8_engine("llama", [H100, L40S, A100]))

    def settled() -> dict[str, Any] | None:
        t = targets(get_engine("llama"))
        return t if {g: t.get(g, {}).get("state") for g in (H100, L40S)} == {
            H100: "Built", L40S: "Built"} else None

    built = wait_for(settled, 150, "the H100 and L40S targets to be Built")
    engine = get_engine("llama")
    assert engine["status"]["backend"] == "pytorch"
    cache = engine["status"]["modelCache"]
    assert cache["state"] == "Cached"

    (download,) = jobs(api_client, namespace, DOWNLOAD_JOBS)
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={download.metadata.name}")
    assert [p.spec.node_name in gpu_fleet["cpu"] for p in pods.items] == [True]
    (quantize,) = jobs(api_client, namespace, QUANTIZE_JOBS)
    assert jobs(api_client, namespace, BUILD_JOBS) == []
    # It ran after the download, on a target GPU type that runs fp8, read the cached
    # checkpoint and wrote the export every target serves, offline.
    assert quantize.metadata.creation_timestamp >= download.status.completion_time
    pod_spec = quantize.spec.template.spec
    assert pod_spec.node_selector["nvidia.com/gpu.product"] in (H100, L40S)
    assert pod_spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    env = {e.name: e.value for e in pod_spec.containers[0].env}
    assert (env["HF_HUB_OFFLINE"], env["HF_DATASETS_OFFLINE"]) == ("1", "1")
    assert "HF_TOKEN" not in env
    parsed = parse_quantize_spec(_spec(quantize))
    assert str(parsed.cached_path) == cache["path"]
    assert (parsed.format, parsed.commit) == ("fp8", cache["commit"])
    export = str(parsed.output_dir.relative_to("/engines"))
    for gpu in (H100, L40S):
        t = built[gpu]
        assert (t["reason"], t["job"], t["path"]) == ("Quantized", quantize.metadata.name,
                                                     export)
        assert t["totalBytes"] > 0
        assert t["checkpointBytes"] == cache["checkpointBytes"]
        assert len(t["fingerprint"]) == 64
    assert built[H100]["fingerprint"] != built[L40S]["fingerprint"]
    a100 = built[A100]
    assert (a100["state"], a100["reason"]) == ("Invalid", "QuantizationUnsupported")
    assert "fp8 needs compute capability >= 8.9" in a100["message"]
    assert a100.get("job") is None

    # The quantized folder, on both GPU types.
    servers = serve_on_h100_and_l40s(kubectl, namespace, api_client, get_llmd, "llama",
                                     {H100: export, L40S: export})
    for container in servers.values():
        command = container.command
        flags = check_against_table(command, facts.parse_release("1.3.0rc25"))
        assert command[1] == "/model"
        assert flags["--backend"] == ["pytorch"]
        assert flags["--host"] == ["0.0.0.0"]

    # A second engine of the same model, commit, format and calibration quantizes nothing and
    # downloads nothing: it serves the same export.
    apply(kubectl, namespace, _fp8_engine("again", [L40S]))
    wait_for(lambda: targets(get_engine("again")).get(L40S, {}).get("state") == "Built", 90,
             "the second engine's target to be Built")
    again = targets(get_engine("again"))[L40S]
    assert (again["reason"], again["path"]) == ("Quantized", export)
    assert [j.metadata.uid for j in jobs(api_client, namespace, QUANTIZE_JOBS)] == [
        quantize.metadata.uid]
    assert [j.metadata.uid for j in jobs(api_client, namespace, DOWNLOAD_JOBS)] == [
        download.metadata.uid]


def test_restarting_the_operator_mid_quantize_starts_no_second_quantize(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        running_operator: OperatorProcess) -> None:
    apply(kubectl, namespace, _fp8_engine("slow", [H100, L40S], duration="12s"))

    def quantizing() -> bool:
        return {t.get("reason") for t in targets(get_engine("slow")).values()} == {"Quantizing"}

    wait_for(quantizing, 90, "the quantize Job to run")
    before = [(j.metadata.name, j.metadata.uid) for j in jobs(api_client, namespace, QUANTIZE_JOBS)]
    assert len(before) == 1
    # The status says where it runs and why there.
    message = targets(get_engine("slow"))[H100]["message"]
    assert "holds the 15.0 GiB model at 16 bits on 1 GPU(s)" in message, message
    building = condition(get_engine("slow"), "Building")
    assert building is not None
    assert building["status"] == "True"
    running_operator.kill()
    running_operator.start()
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/slow",
            "--timeout=120s")
    after = [(j.metadata.name, j.metadata.uid) for j in jobs(api_client, namespace, QUANTIZE_JOBS)]
    assert after == before  # the same Job, picked up again
    assert {t["reason"] for t in targets(get_engine("slow")).values()} == {"Quantized"}


def test_a_failed_quantize_fails_every_target_with_its_reason(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, _fp8_engine("broken", [H100, L40S], **{"exit-code": "11"}))
    wait_for(lambda: {t.get("state") for t in targets(get_engine("broken")).values()}
             == {"Failed"}, 120, "every target to fail")
    (job,) = jobs(api_client, namespace, QUANTIZE_JOBS)
    for t in targets(get_engine("broken")).values():
        assert t["reason"] == "CalibrationDataMissing"
        assert f"kubectl delete job -n {namespace} {job.metadata.name}" in t["message"]
    settle(2)
    assert len(jobs(api_client, namespace, QUANTIZE_JOBS)) == 1  # a permanent failure: no retry


def test_a_calibration_dataset_is_fetched_on_a_cpu_node_before_the_offline_quantize(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api, gpu_fleet: dict[str, list[str]]) -> None:
    obj = _fp8_engine("fetched", [H100])
    obj["spec"]["build"]["quantization"]["calibration"] = {
        "dataset": "abisee/cnn_dailymail", "downloadDataset": True,
        "revision": "96df5e686bee6baa90b8bee7c28b81fa3fa6223d",
        "files": ["3.0.0/validation-*.parquet"], "textField": "article", "size": 128}
    apply(kubectl, namespace, obj)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/fetched",
            "--timeout=150s")

    status = get_engine("fetched")["status"]
    data = status["calibrationData"]
    assert data["state"] == "Cached"
    assert data["path"].startswith(
        "/engines/datasets/abisee--cnn_dailymail/96df5e686bee6baa90b8bee7c28b81fa3fa6223d-")
    downloads = jobs(api_client, namespace, DOWNLOAD_JOBS)
    assert sorted(j.metadata.name.split("-")[1] for j in downloads) == ["data", "model"]
    for job in downloads:  # both on CPU nodes, neither asking for a GPU
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}")
        assert [p.spec.node_name in gpu_fleet["cpu"] for p in pods.items] == [True]
        assert "nvidia.com/gpu" not in (job.spec.template.spec.containers[0].resources.limits
                                        or {})
    (quantize,) = jobs(api_client, namespace, QUANTIZE_JOBS)
    assert all(quantize.metadata.creation_timestamp >= j.status.completion_time
               for j in downloads)
    calibration = parse_quantize_spec(_spec(quantize)).calibration
    assert calibration is not None
    assert str(calibration.dataset_path) == data["path"]
    assert calibration.text_field == "article"
    env = {e.name: e.value for e in quantize.spec.template.spec.containers[0].env}
    assert (env["HF_HUB_OFFLINE"], env["HF_DATASETS_OFFLINE"]) == ("1", "1")
    assert targets(get_engine("fetched"))[H100]["reason"] == "Quantized"
