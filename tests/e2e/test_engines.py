"""LLMEngine end to end: the operator builds each target once, on the right GPU type, and says
exactly where each build stands."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ClusterUnderTest, Kubectl
from tests.e2e.conftest import (
    A100,
    B200,
    H100,
    L40S,
    Getter,
    OperatorProcess,
    apply,
    condition,
    settle,
    small_engine,
    targets,
)
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.localcluster import stages

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage",
                                      "hf_token")


def _build_jobs(batch: client.BatchV1Api, namespace: str) -> list[client.V1Job]:
    return list(batch.list_namespaced_job(
        namespace, label_selector="app.kubernetes.io/component=engine-build").items)


def _ready(get_engine: Getter, name: str) -> dict[str, Any] | None:
    obj = get_engine(name)
    c = condition(obj, "Ready")
    return obj if c and c["status"] == "True" else None


def test_sample_engine_builds_once_per_gpu_type_on_that_gpu_type(
        kubectl: Kubectl, namespace: str, get_engine: Getter, core: client.CoreV1Api,
        api_client: client.ApiClient) -> None:
    # What the real entrypoint writes as its termination message, supplied through the
    # simulation's SIM_TERMINATION_MESSAGE (kwok runs no container).
    summary = {"phase": "Built", "engineBytes": 16_061_142_016, "totalBytes": 16_078_991_360,
               "tensorrtLlmVersion": "1.2.0", "tensorrtVersion": "10.13.3.9",
               "resolvedRevision": "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"}
    obj = small_engine("llama", [H100, L40S, A100],
                  env=[{"name": stages.MESSAGE_ENV, "value": json.dumps(summary)}])
    apply(kubectl, namespace, obj)

    # Building is visible on the way (simulated builds take 2 s).
    wait_for(lambda: any(t["state"] in ("Pending", "Building")
                         for t in targets(get_engine("llama")).values()), 30,
             "targets to start building")
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/llama", "--timeout=90s")

    engine = get_engine("llama")
    status = engine["status"]
    assert status["builtTargets"] == "3/3"
    assert status["observedGeneration"] == engine["metadata"]["generation"]
    by_gpu = targets(engine)
    assert set(by_gpu) == {H100, L40S, A100}
    assert {t["state"] for t in by_gpu.values()} == {"Built"}
    assert len({t["fingerprint"] for t in by_gpu.values()}) == 3
    for t in by_gpu.values():  # per-target facts the build reported
        assert (t["engineBytes"], t["totalBytes"]) == (16_061_142_016, 16_078_991_360)
        assert t["versions"] == {"tensorrtLLM": "1.2.0", "tensorrt": "10.13.3.9"}
        assert t["modelRevision"] == summary["resolvedRevision"]
        assert t["startTime"] <= t["completionTime"]
    assert by_gpu[H100]["path"].startswith("engines/meta-llama-3-8b-instruct/NVIDIA-H100")

    batch = client.BatchV1Api(api_client)
    jobs = _build_jobs(batch, namespace)
    assert sorted(j.metadata.name for j in jobs) == sorted(t["job"] for t in by_gpu.values())
    for job in jobs:
        product = job.metadata.labels["trtllm.dev/gpu-product"]
        pod = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}"
                                       ).items[0]
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels[gpus.PRODUCT_LABEL] == product  # built on its GPU type
        container = pod.spec.containers[0]
        assert container.resources.limits[gpus.GPU_RESOURCE] == "1"  # tp*pp = 1
        spec = json.loads(next(e.value for e in container.env if e.name == "TRTLLM_BUILD_SPEC"))
        assert spec["gpuProduct"] == product
        assert spec["outputDir"] == f"/engines/{by_gpu[product]['path']}"
        # The HF token reaches the pod only as a secret reference, never as a value.
        token = next(e for e in container.env if e.name == "HF_TOKEN")
        assert token.value is None
        assert token.value_from.secret_key_ref.name == "hf-token"
        assert job.metadata.owner_references[0].name == "llama"

    events = kubectl("get", "events", "-n", namespace, "--field-selector",
                     "involvedObject.name=llama", "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"BuildPending", "Built"} <= reasons

    columns = kubectl("get", "llmengine", "llama", "-n", namespace).stdout
    assert "True" in columns
    assert "3/3" in columns


def test_identical_engines_share_one_build(kubectl: Kubectl, namespace: str,
                                           get_engine: Getter,
                                           api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, small_engine("first", [H100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/first",
            "--timeout=90s")
    apply(kubectl, namespace, small_engine("second", [H100]))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/second",
            "--timeout=60s")
    batch = client.BatchV1Api(api_client)
    assert len(_build_jobs(batch, namespace)) == 1
    first, second = targets(get_engine("first"))[H100], targets(get_engine("second"))[H100]
    assert (first["fingerprint"], first["path"]) == (second["fingerprint"], second["path"])


def test_restarting_the_operator_mid_build_makes_no_duplicate_job(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        running_operator: OperatorProcess) -> None:
    obj = small_engine("slow", [H100], env=[{"name": stages.DURATION_ENV, "value": "8s"}])
    apply(kubectl, namespace, obj)
    wait_for(lambda: targets(get_engine("slow")).get(H100, {}).get("state") == "Building", 60,
             "the build to be running")
    batch = client.BatchV1Api(api_client)
    before = [(j.metadata.name, j.metadata.uid) for j in _build_jobs(batch, namespace)]
    building = targets(get_engine("slow"))[H100]
    running_operator.kill()
    # While no operator runs, status stays as written.
    assert targets(get_engine("slow"))[H100] == building
    running_operator.start()
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/slow", "--timeout=90s")
    after = [(j.metadata.name, j.metadata.uid) for j in _build_jobs(batch, namespace)]
    assert after == before  # the same Job, picked up again: no second build
    built = targets(get_engine("slow"))[H100]
    # Nothing recorded before the restart was lost: same build, same start.
    assert (built["job"], built["fingerprint"], built["startTime"]) == (
        building["job"], building["fingerprint"], building["startTime"])


def test_failed_target_does_not_block_the_others_and_says_what_to_do(
        kubectl: Kubectl, namespace: str, get_engine: Getter) -> None:
    summary = json.dumps({"phase": "Failed", "reason": "TrtllmBuildMissing",
                          "message": "this image's TensorRT-LLM release has no trtllm-build",
                          "logTail": "trtllm-build: command not found"})
    # The failure is steered through spec.build.env, which reaches every target of an
    # engine; so the failing build gets an engine of its own.
    bad = small_engine("bad", [L40S], env=[{"name": stages.EXIT_CODE_ENV, "value": "3"},
                                      {"name": stages.MESSAGE_ENV, "value": summary}])
    apply(kubectl, namespace, bad)
    good_and_fp8_on_a100 = small_engine("mixed", [H100, A100],
                                   quantization={"format": "fp8", "kvCacheDtype": "fp8"})
    apply(kubectl, namespace, good_and_fp8_on_a100)

    def failed() -> dict[str, Any] | None:
        t = targets(get_engine("bad")).get(L40S)
        return t if t and t["state"] == "Failed" else None

    t = wait_for(failed, 90, "the L40S build to fail")
    assert t["reason"] == "TrtllmBuildMissing"
    assert "delete the Job to retry" in t["message"]
    assert "trtllm-build: command not found" in t["message"]
    ready = condition(get_engine("bad"), "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "BuildFailed")
    # What a user sees without reading status JSON.
    wide = kubectl("get", "llmengine", "bad", "-n", namespace, "-o", "wide").stdout
    assert "BuildFailed" in wide
    assert "TrtllmBuildMissing" in wide
    described = kubectl("describe", "llmengine", "bad", "-n", namespace).stdout
    assert "TrtllmBuildMissing" in described
    assert "delete the Job to retry" in described

    def h100_built() -> dict[str, Any] | None:
        ts = targets(get_engine("mixed"))
        return ts if ts.get(H100, {}).get("state") == "Built" else None

    ts = wait_for(h100_built, 90, "the H100 target to build despite the A100 one")
    assert ts[A100]["state"] == "Invalid"
    assert ts[A100]["reason"] == "QuantizationUnsupported"
    assert "compute capability" in ts[A100]["message"]
    assert "job" not in ts[A100]  # no build launched for a spec that cannot work
    assert get_engine("mixed")["status"]["builtTargets"] == "1/2"


def test_unschedulable_targets_say_which_and_build_when_nodes_arrive(
        cluster: ClusterUnderTest, kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    cluster.require_local()
    apply(kubectl, namespace, small_engine("nob200", [B200]))
    apply(kubectl, namespace, small_engine("toowide", [H100], parallelism={"tensor": 16}))

    def state(name: str, gpu: str) -> tuple[str, str] | None:
        t = targets(get_engine(name)).get(gpu)
        return (t["state"], t["reason"]) if t else None

    wait_for(lambda: state("nob200", B200) == ("Unschedulable", "NoNodeOfGPUType"), 60,
             "B200 target Unschedulable")
    wait_for(lambda: state("toowide", H100) == ("Unschedulable", "ParallelismExceedsNode"), 60,
             "tp=16 target Unschedulable")
    message = targets(get_engine("toowide"))[H100]["message"]
    assert "16" in message
    assert "8" in message
    batch = client.BatchV1Api(api_client)
    # The B200 Job exists (a cluster autoscaler scales up for pending pods); the tp=16 one not.
    jobs = {j.metadata.labels["trtllm.dev/gpu-product"] for j in _build_jobs(batch, namespace)}
    assert jobs == {B200}

    nodes = cluster.add_nodes("b200", 1)
    try:
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/nob200",
                "--timeout=90s")
    finally:
        cluster.remove_nodes(nodes)


def test_auto_targets_follow_the_gpu_pools(cluster: ClusterUnderTest, kubectl: Kubectl,
                                           namespace: str, get_engine: Getter) -> None:
    cluster.require_local()
    # FP8 runs on H100, L40S, H200 (>= 8.9) but not A100: auto must leave A100 out.
    apply(kubectl, namespace, small_engine("everywhere", ["auto"],
                                      quantization={"format": "fp8"}))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/everywhere",
            "--timeout=90s")
    built = set(targets(get_engine("everywhere")))
    assert H100 in built
    assert L40S in built
    assert A100 not in built

    nodes = cluster.add_nodes("h200", 1)
    try:
        wait_for(lambda: targets(get_engine("everywhere")).get("NVIDIA-H200", {}).get("state")
                 == "Built", 90, "a new H200 pool to get its engine")
    finally:
        cluster.remove_nodes(nodes)


def test_spec_change_rebuilds_changed_targets_and_removed_target_stops_its_job(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    obj = small_engine("evolving", [H100, L40S],
                       env=[{"name": stages.DURATION_ENV, "value": "30s"}])
    apply(kubectl, namespace, obj)
    wait_for(lambda: len(targets(get_engine("evolving"))) == 2
             and all(t.get("job") for t in targets(get_engine("evolving")).values()), 60,
             "both builds started")
    old = targets(get_engine("evolving"))
    batch = client.BatchV1Api(api_client)

    # Drop L40S: its running Job is stopped; H100's keeps going (same inputs).
    changed = copy.deepcopy(obj)
    changed["spec"]["targets"] = [H100]
    apply(kubectl, namespace, changed)

    def l40s_job_gone() -> bool:
        names = {j.metadata.name for j in _build_jobs(batch, namespace)
                 if j.metadata.deletion_timestamp is None}
        return old[L40S]["job"] not in names and old[H100]["job"] in names

    # The Job deletion and the status write are two API calls: wait for both.
    wait_for(l40s_job_gone, 60, "the removed target's Job to be deleted")
    wait_for(lambda: set(targets(get_engine("evolving"))) == {H100}, 30,
             "the removed target to leave status")
    assert targets(get_engine("evolving"))[H100]["job"] == old[H100]["job"]

    # A build setting change gives H100 a new fingerprint, hence a new Job.
    changed["spec"]["build"]["limits"]["maxBatchSize"] = 32
    apply(kubectl, namespace, changed)
    wait_for(lambda: targets(get_engine("evolving"))[H100]["fingerprint"]
             != old[H100]["fingerprint"], 60, "a new fingerprint")
    settle()
    new_job = targets(get_engine("evolving"))[H100]["job"]
    assert new_job != old[H100]["job"]
    assert get_engine("evolving")["status"]["observedGeneration"] == 3
