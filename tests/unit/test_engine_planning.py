"""Build planning, the build Job builder and target decisions: pure, tested on exact output."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from trtllm_operator.api import LLMEngine
from trtllm_operator.api.engine import EngineTargetStatus
from trtllm_operator.engines import jobs, planning
from trtllm_operator.engines.status import Observed, decide_target, resolve_targets
from trtllm_operator.validation import ClusterFacts, GPUPool, validate_engine

H100 = "NVIDIA-H100-80GB-HBM3"
L40S = "NVIDIA-L40S"


def _body(**spec_changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u-1", "generation": 1}
    body["spec"] |= spec_changes
    return body


def _engine(body: dict[str, Any] | None = None) -> LLMEngine:
    return LLMEngine.model_validate(body or _body())


def test_fingerprint_changes_with_engine_inputs_only() -> None:
    base = _engine()
    fp = planning.fingerprint(base.spec, H100)
    assert len(fp) == 64
    assert planning.fingerprint(base.spec, L40S) != fp  # the GPU is an input

    changed = _body()
    changed["spec"]["build"]["limits"]["maxBatchSize"] = 32
    assert planning.fingerprint(_engine(changed).spec, H100) != fp

    scheduling_only = _body()
    scheduling_only["spec"]["build"] |= {
        "resources": {"requests": {"cpu": "8"}}, "gpus": 1,
        "tolerations": [{"key": "team", "operator": "Exists"}],
        "env": [{"name": "HTTPS_PROXY", "value": "http://127.0.0.1:3128"}]}
    scheduling_only["spec"]["targets"] = [H100]  # other targets do not matter either
    assert planning.fingerprint(_engine(scheduling_only).spec, H100) == fp

    explicit_default = _body()
    explicit_default["spec"]["build"]["parallelism"] = {"tensor": 1, "pipeline": 1}
    assert planning.fingerprint(_engine(explicit_default).spec, H100) == fp


def test_plan_paths_and_job_names_are_deterministic_and_storage_aware() -> None:
    engine = _engine()
    plan = planning.plan_target(engine, H100)
    assert plan.path == f"engines/meta-llama-3-8b-instruct/{H100}/{plan.fingerprint[:16]}"
    assert plan.mount_path == f"/engines/{plan.path}"
    assert plan.job_name.startswith("trtllm-build-")
    assert len(plan.job_name) == len("trtllm-build-") + 12
    assert (plan.build_gpus, plan.world_size) == (1, 1)
    # Another name, same inputs: same plan (shared build). Other storage: other Job.
    renamed = _body()
    renamed["metadata"]["name"] = "other"
    assert planning.plan_target(_engine(renamed), H100) == plan
    elsewhere = _body()
    elsewhere["spec"]["storage"] = {"claimName": "other-claim"}
    other = planning.plan_target(_engine(elsewhere), H100)
    assert other.fingerprint == plan.fingerprint
    assert other.job_name != plan.job_name


def test_extra_args_become_build_options() -> None:
    assert planning.extra_args_as_options(
        ("--strip_plan", "--logits_dtype", "float32", "--max_prompt_embedding_table_size=8")
    ) == {"strip_plan": True, "logits_dtype": "float32", "max_prompt_embedding_table_size": "8"}
    assert planning.extra_args_as_options(("--lora_dir", "a", "b", "--strip_plan")) == {
        "lora_dir": ["a", "b"], "strip_plan": True}


def test_build_job_spec_carries_every_input_and_no_secret() -> None:
    engine = _engine()
    plan = planning.plan_target(engine, H100)
    spec = planning.build_job_spec(engine, plan)
    assert spec == {
        "version": 1, "fingerprint": plan.fingerprint, "gpuProduct": H100,
        "outputDir": plan.mount_path, "workDir": "/scratch",
        "model": {"source": "huggingFace", "repo": "meta-llama/Meta-Llama-3-8B-Instruct",
                  "revision": "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"},
        "modelFamily": None, "dtype": "bfloat16", "quantization": None,
        "tensorParallel": 1, "pipelineParallel": 1,
        "limits": {"maxBatchSize": 64, "maxInputLen": 4096, "maxSeqLen": 8192,
                   "maxNumTokens": 8192, "maxBeamWidth": None},
        "buildOptions": {"gemm_plugin": "auto", "use_paged_context_fmha": "enable",
                         "multiple_profiles": "enable"},
        "gpuMemoryMiB": None,
    }
    assert planning.build_job_spec(engine, plan, 81559)["gpuMemoryMiB"] == 81559
    dumped = json.dumps(spec)
    assert "hf-token" not in dumped  # not even the Secret's name: it reaches the pod as a ref
    assert "HF_TOKEN" not in dumped


def test_build_job_manifest() -> None:
    body = _body()
    body["spec"]["build"]["parallelism"] = {"tensor": 4}
    body["spec"]["build"]["resources"] = {"requests": {"cpu": "16", "memory": "64Gi"}}
    engine = _engine(body)
    plan = planning.plan_target(engine, H100)
    job = jobs.build_job(engine, plan, "trtllm-build-entrypoint-abc")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["name"] == plan.job_name
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMEngine", "name": "llama-3-8b",
        "uid": "u-1", "controller": True, "blockOwnerDeletion": True}]
    # Labels are the operator's own, never copied from the LLMEngine.
    assert job["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "trtllm-operator",
        "app.kubernetes.io/part-of": "trtllm-operator",
        "app.kubernetes.io/component": "engine-build",
        "trtllm.dev/engine": "llama-3-8b",
        "trtllm.dev/fingerprint": plan.fingerprint[:32],
        "trtllm.dev/gpu-product": H100,
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": H100}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"])
    assert container["resources"] == {
        "requests": {"cpu": "16", "memory": "64Gi"}, "limits": {"nvidia.com/gpu": "4"}}
    # The package runs as `python3 -m trtllm_jobs.build` from the folder holding it.
    assert container["command"] == ["python3", "-m", "trtllm_jobs.build"]
    assert container["workingDir"] == "/opt/trtllm-jobs"
    assert {"name": "entrypoint", "mountPath": "/opt/trtllm-jobs/trtllm_jobs",
            "readOnly": True} in container["volumeMounts"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "hf-token", "key": "HF_TOKEN"}}}
    assert json.loads(env["TRTLLM_BUILD_SPEC"]["value"])["tensorParallel"] == 4
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["engines"] == {"name": "engines",
                                  "persistentVolumeClaim": {"claimName": "trtllm-engines"}}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert volumes["entrypoint"]["configMap"]["name"] == "trtllm-build-entrypoint-abc"
    assert pod["restartPolicy"] == "Never"
    spec = job["spec"]
    assert spec["backoffLimit"] == 1
    assert "ttlSecondsAfterFinished" not in spec  # the result must outlive its recording
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [
        2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_volume_model_is_mounted_read_only() -> None:
    body = _body()
    body["spec"]["model"] = {"volume": {"claimName": "models", "path": "llama/8b"}}
    engine = _engine(body)
    plan = planning.plan_target(engine, H100)
    pod = jobs.build_job(engine, plan, "cm")["spec"]["template"]["spec"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in (
        pod["containers"][0]["volumeMounts"])
    assert planning.build_job_spec(engine, plan)["model"] == {
        "source": "volume", "path": "/models/llama/8b"}
    assert "HF_TOKEN" not in {e["name"] for e in pod["containers"][0]["env"]}


def test_script_configmap_is_immutable_and_named_by_content() -> None:
    a = jobs.script_configmap("ml", {"build.py": "print(1)\n", "spec.py": ""})
    b = jobs.script_configmap("ml", {"build.py": "print(2)\n", "spec.py": ""})
    renamed = jobs.script_configmap("ml", {"build2.py": "print(1)\n", "spec.py": ""})
    assert a["immutable"] is True
    assert len({a["metadata"]["name"], b["metadata"]["name"], renamed["metadata"]["name"]}) == 3
    assert a["data"] == {"build.py": "print(1)\n", "spec.py": ""}


def test_the_configmap_carries_the_whole_job_package_one_key_per_file() -> None:
    files = jobs.entrypoint_files()
    package = Path(__file__).resolve().parents[2] / "build-jobs" / "trtllm_jobs"
    assert files == {p.name: p.read_text() for p in package.glob("*.py")}
    assert {"__init__.py", "build.py", "download.py", "contract.py", "spec.py"} <= set(files)
    # ConfigMap keys: [-._a-zA-Z0-9]+, at most 253 characters; 1 MiB in all.
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", name) for name in files)
    assert sum(len(k) + len(v.encode()) for k, v in files.items()) < 900 * 1024
    assert jobs.script_configmap("ml", files)["data"] == files


# --------------------------------------------------------------------------- decisions

FLEET = ClusterFacts({H100: GPUPool((8, 8), (9, 0)), L40S: GPUPool((4,), (8, 9))})


def _decide(observed: Observed, facts: ClusterFacts = FLEET, body: dict[str, Any] | None = None,
            gpu: str = H100) -> Any:
    engine = _engine(body)
    plan = planning.plan_target(engine, gpu)
    findings = [f for f in validate_engine(engine.spec, facts) if f.gpu == gpu]
    return decide_target(plan, engine.spec.build.image, "ml", findings, observed, facts), plan


def _job(*conditions: str, start: str | None = "2026-11-23T10:00:00Z") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": c, "status": "True"} for c in conditions]}
    if start:
        status["startTime"] = start
    if "Complete" in conditions:
        status["completionTime"] = "2026-11-23T10:20:00Z"
    return {"metadata": {"name": "j"}, "status": status}


def _pod(phase: str, message: str | None = None, unschedulable: str | None = None) -> Any:
    status: dict[str, Any] = {"phase": phase}
    if message is not None:
        status["containerStatuses"] = [{"state": {"terminated": {"message": message}}}]
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False",
                                 "reason": "Unschedulable", "message": unschedulable}]
    return {"metadata": {"name": "p"}, "status": status}


def test_no_job_yet_means_create_it() -> None:
    decision, plan = _decide(Observed())
    assert decision.create_job
    assert (decision.status.state, decision.status.reason) == ("Pending", "JobCreated")
    assert decision.status.job == plan.job_name


def test_completed_job_reports_what_the_build_said() -> None:
    summary = json.dumps({"phase": "Built", "engineBytes": 16_000_000_000,
                          "totalBytes": 16_100_000_000, "tensorrtLlmVersion": "1.2.0",
                          "tensorrtVersion": "10.13.0", "resolvedRevision": "8afb486c"})
    decision, plan = _decide(Observed(job=_job("Complete"), pod=_pod("Succeeded", summary)))
    s = decision.status
    assert not decision.create_job
    assert (s.state, s.engine_bytes, s.total_bytes, s.model_revision) == (
        "Built", 16_000_000_000, 16_100_000_000, "8afb486c")
    assert s.versions is not None
    assert s.versions.tensorrt_llm == "1.2.0"
    assert s.completion_time is not None
    assert s.completion_time.isoformat() == "2026-11-23T10:20:00+00:00"
    assert s.path == plan.path


def test_failed_job_uses_the_entrypoint_reason_and_says_how_to_retry() -> None:
    summary = json.dumps({"phase": "Failed", "reason": "GpuMismatch",
                          "message": "the node's GPU is an NVIDIA A100", "logTail": "boom"})
    decision, plan = _decide(Observed(job=_job("Failed"), pod=_pod("Failed", summary)))
    s = decision.status
    assert (s.state, s.reason) == ("Failed", "GpuMismatch")
    assert f"kubectl delete job -n ml {plan.job_name}" in s.message
    assert "boom" in s.message


def test_crash_without_summary_falls_back_to_the_log_tail() -> None:
    decision, _ = _decide(Observed(job=_job("Failed"), pod=_pod("Failed", "Segmentation fault")))
    assert decision.status.reason == "BuildFailed"
    assert "Segmentation fault" in decision.status.message


@pytest.mark.parametrize(("facts", "reason", "state"), [
    (ClusterFacts({L40S: GPUPool((4,), (8, 9))}), "NoNodeOfGPUType", "Unschedulable"),
    (FLEET, "WaitingForGPUs", "Pending"),
])
def test_waiting_pods_say_why(facts: ClusterFacts, reason: str, state: str) -> None:
    decision, _ = _decide(Observed(job=_job(start=None), pod=_pod(
        "Pending", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")),
        facts=facts)
    assert (decision.status.state, decision.status.reason) == (state, reason)


def test_parallelism_beyond_the_largest_node_is_unschedulable_without_a_job() -> None:
    body = _body()
    body["spec"]["build"]["parallelism"] = {"tensor": 16}
    decision, _ = _decide(Observed(), body=body)
    assert not decision.create_job
    assert (decision.status.state, decision.status.reason) == (
        "Unschedulable", "ParallelismExceedsNode")
    assert decision.status.job is None


def test_reuse_of_an_identical_build_recorded_elsewhere() -> None:
    built = EngineTargetStatus(gpu=H100, state="Built", reason="Built", fingerprint="f",
                               path="p", job="j")
    decision, _ = _decide(Observed(built_elsewhere=built))
    assert not decision.create_job
    assert decision.status.state == "Built"
    assert "another LLMEngine" in (decision.status.message or "")


def test_built_engine_survives_its_job_being_cleaned_up() -> None:
    _, plan = _decide(Observed())
    prev = EngineTargetStatus(gpu=H100, state="Built", reason="Built",
                              fingerprint=plan.fingerprint, path=plan.path, job=plan.job_name)
    decision, _ = _decide(Observed(previous=prev))
    assert not decision.create_job
    assert decision.status == prev
    stale = prev.model_copy(update={"fingerprint": "0" * 64})
    assert _decide(Observed(previous=stale))[0].create_job  # inputs changed: rebuild


def test_auto_targets_pick_every_eligible_pool_in_a_stable_order() -> None:
    body = _body()
    body["spec"]["targets"] = ["auto", L40S]
    spec = _engine(body).spec
    facts = ClusterFacts({"NVIDIA-B200": GPUPool((8,), (10, 0)), H100: GPUPool((8,), (9, 0)),
                          L40S: GPUPool((4,), (8, 9)), "NVIDIA-A100-SXM4-80GB": GPUPool((8,))})
    eligible = {"NVIDIA-B200": True, H100: True, "NVIDIA-A100-SXM4-80GB": False}
    assert resolve_targets(spec, facts, eligible) == (L40S, "NVIDIA-B200", H100)
    plain = copy.deepcopy(body)
    plain["spec"]["targets"] = [H100]
    assert resolve_targets(_engine(plain).spec, facts, eligible) == (H100,)


@pytest.mark.parametrize("phase", ["Running", "Succeeded"])
def test_a_running_or_just_finished_pod_means_building(phase: str) -> None:
    decision, _ = _decide(Observed(job=_job(), pod=_pod(phase)))
    assert (decision.status.state, decision.status.reason) == ("Building", "Building")
    assert decision.status.start_time is not None
