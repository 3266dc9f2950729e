"""The PyTorch line end to end: an LLMEngine with a 1.3.0rc21+ image builds no engine. Its
checkpoint is downloaded once into the model cache, every target is Built from that cached
checkpoint, and an LLMDeployment serves it with ``trtllm-serve <folder> --backend pytorch``,
offline, with the options file that turns the Prometheus gauges on. Quantized engines of this
line: test_pytorch_quantize.py."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import (
    BUILD_JOBS,
    DOWNLOAD_JOBS,
    H100,
    L40S,
    Getter,
    apply,
    jobs,
    pytorch_engine,
    serve_on_h100_and_l40s,
    targets,
)
from trtllm_operator.localcluster.cluster import static_rwx_claim

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

def test_a_pytorch_engine_downloads_once_builds_nothing_and_is_served_on_both_gpu_types(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, pytorch_engine("llama", [H100, L40S]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/llama",
            "--timeout=120s")

    engine = get_engine("llama")
    assert engine["status"]["backend"] == "pytorch"
    cache = engine["status"]["modelCache"]
    assert cache["state"] == "Cached"
    built = targets(engine)
    for gpu in (H100, L40S):
        assert (built[gpu]["state"], built[gpu]["reason"]) == ("Built", "CheckpointCached")
        assert built[gpu]["path"] == cache["path"].removeprefix("/engines/")
        assert built[gpu].get("job") is None
    assert len(jobs(api_client, namespace, DOWNLOAD_JOBS)) == 1
    assert jobs(api_client, namespace, BUILD_JOBS) == []

    servers = serve_on_h100_and_l40s(kubectl, namespace, api_client, get_llmd, "llama",
                                     {gpu: built[gpu]["path"] for gpu in (H100, L40S)})
    for container in servers.values():
        command = container.command
        assert command[:4] == ["trtllm-serve", "/model", "--backend", "pytorch"]
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert "--config" in command
    core = client.CoreV1Api(api_client)
    options = [cm for cm in core.list_namespaced_config_map(namespace).items
               if cm.metadata.name.startswith("chat-h100")]
    assert options, "the options file of the PyTorch-line server"
    data = yaml.safe_load(next(iter(options[0].data.values())))
    assert data["return_perf_metrics"] is True
    assert data["enable_iter_perf_stats"] is True


def test_a_volume_checkpoint_is_served_from_its_own_claim_without_any_job(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        api_client: client.ApiClient, core: client.CoreV1Api) -> None:
    pv_name = f"models-{namespace}"[:63]
    pv, pvc = static_rwx_claim(namespace, "models", pv_name)
    core.create_persistent_volume(pv)
    try:
        core.create_namespaced_persistent_volume_claim(namespace, pvc)
        obj = pytorch_engine("onvolume", [H100])
        obj["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama-3-8b"},
                                "sizeHint": "16G"}
        apply(kubectl, namespace, obj)
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/onvolume",
                "--timeout=120s")
        target = targets(get_engine("onvolume"))[H100]
        assert (target["reason"], target["path"]) == ("CheckpointOnVolume", "llama-3-8b")
        assert "modelCache" not in get_engine("onvolume")["status"]
        assert jobs(api_client, namespace, DOWNLOAD_JOBS) == []
        assert jobs(api_client, namespace, BUILD_JOBS) == []

        apply(kubectl, namespace, {
            "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "chat"},
            "spec": {"engineRef": {"name": "onvolume"}, "gpu": H100, "replicas": 1}})
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmdeployment/chat",
                "--timeout=120s")
        pod = client.AppsV1Api(api_client).read_namespaced_deployment(
            "chat", namespace).spec.template.spec
        claim = next(v for v in pod.volumes if v.persistent_volume_claim is not None)
        assert claim.persistent_volume_claim.claim_name == "models"
        mount = next(m for m in pod.containers[0].volume_mounts if m.mount_path == "/model")
        assert mount.sub_path == "llama-3-8b"
        assert pod.containers[0].command[:4] == ["trtllm-serve", "/model", "--backend",
                                                 "pytorch"]
    finally:
        core.delete_persistent_volume(pv_name)
