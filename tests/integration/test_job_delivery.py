"""The job package's delivery objects on a real API server: the ConfigMap (one key per file of
trtllm_jobs) is accepted and kept byte for byte, and the build Job that mounts it as the package
folder passes the server's validation (mount, workingDir, podFailurePolicy exit codes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from trtllm_jobs import contract
from trtllm_operator.api import LLMEngine
from trtllm_operator.engines import jobs, planning

pytestmark = pytest.mark.cluster

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
H100 = "NVIDIA-H100-80GB-HBM3"


def _engine(namespace: str) -> LLMEngine:
    body: dict[str, Any] = yaml.safe_load((SAMPLES / "llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": namespace, "uid": "0f4f1d3e-0000-4000-8000-000000000001",
                         "generation": 1}
    return LLMEngine.model_validate(body)


def test_the_package_configmap_and_the_build_job_mounting_it_are_accepted(
        namespace: str, core: client.CoreV1Api, api_client: client.ApiClient) -> None:
    files = jobs.entrypoint_files()
    configmap = jobs.script_configmap(namespace, files)

    core.create_namespaced_config_map(namespace, configmap)
    stored = core.read_namespaced_config_map(configmap["metadata"]["name"], namespace)

    assert stored.immutable is True
    assert stored.data == files  # every file, unchanged
    assert {"__init__.py", "build.py", "download.py"} <= set(stored.data)

    engine = _engine(namespace)
    job = jobs.build_job(engine, planning.plan_target(engine, H100),
                         configmap["metadata"]["name"])
    job["metadata"].pop("ownerReferences")  # the LLMEngine does not exist here
    created = client.BatchV1Api(api_client).create_namespaced_job(namespace, job,
                                                                  dry_run="All")

    container = created.spec.template.spec.containers[0]
    assert container.command == ["python3", "-m", "trtllm_jobs.build"]
    assert container.working_dir == jobs.JOBS_DIR
    (mount,) = [m for m in container.volume_mounts if m.name == "entrypoint"]
    assert mount.mount_path == f"{jobs.JOBS_DIR}/trtllm_jobs"
    (rule,) = created.spec.pod_failure_policy.rules
    assert rule.on_exit_codes.values == list(contract.PERMANENT_EXIT_CODES)
