"""Memory fit end to end: a model too big for a GPU type gets no build Job there, an explicit
target says why (Invalid, ModelDoesNotFit), ``auto`` leaves the type out and says so in
status and an Event, and a size one build measured stops another engine of the same model.

The shared simulated fleet: H100 and A100 nodes (80 GiB per GPU, from their
nvidia.com/gpu.memory labels) and an L40S node (45 GiB).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.e2e.conftest import A100, H100, L40S, Getter, apply, condition, small_engine, targets
from tests.support import wait_for
from trtllm_operator import gpus
from trtllm_operator.localcluster import stages

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

GiB = 1 << 30


def fit_engine(name: str, target_list: list[str], size_hint: str | None = None,
               model_bytes: int | None = None, **build: Any) -> dict[str, Any]:
    """The 8B sample engine, with a model repo of its own: sizes measured by builds are shared
    by model across the cluster, so each test keeps its model to itself. ``model_bytes``: the
    checkpoint size the simulated hub's download reports (the model cache's manifest)."""
    obj = small_engine(name, target_list, **build)
    if model_bytes is not None:
        obj["metadata"]["annotations"] = {
            "sim.trtllm.dev/download-checkpoint-bytes": str(model_bytes)}
    hf = obj["spec"]["model"]["huggingFace"]
    hf["repo"] = f"org/fit-{uuid.uuid4().hex[:8]}"
    del hf["tokenSecretRef"]  # an open model: no Secret for the build pod to wait for
    if size_hint is not None:
        obj["spec"]["model"]["sizeHint"] = size_hint
    return obj


def _jobs_by_gpu(api_client: client.ApiClient, namespace: str) -> dict[str, client.V1Job]:
    jobs = client.BatchV1Api(api_client).list_namespaced_job(
        namespace, label_selector="app.kubernetes.io/component=engine-build").items
    return {j.metadata.labels["trtllm.dev/gpu-product"]: j for j in jobs}


def _events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector",
                  f"involvedObject.name={name}", "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _build_spec(job: client.V1Job) -> dict[str, Any]:
    env = job.spec.template.spec.containers[0].env
    spec: dict[str, Any] = json.loads(next(e.value for e in env
                                           if e.name == "TRTLLM_BUILD_SPEC"))
    return spec


def test_size_hint_admission_takes_quantities_of_bytes_only(kubectl: Kubectl,
                                                            namespace: str) -> None:
    for bad in ("16GB", "0", "-1Gi", "500m"):
        result = kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", check=False,
                         input=json.dumps(fit_engine("hint", [H100], bad)))
        assert result.returncode != 0, f"sizeHint {bad} accepted"
        assert "sizeHint" in result.stderr
    zero = fit_engine("hint", [H100])
    zero["spec"]["model"]["sizeHint"] = 0
    result = kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", check=False,
                     input=json.dumps(zero))
    assert result.returncode != 0
    assert "spec.model.sizeHint must be a positive quantity of bytes" in result.stderr
    for good in ("16Gi", "1.5Ti", "16000000000"):
        kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-",
                input=json.dumps(fit_engine("hint", [H100], good)))


def test_an_explicit_target_the_model_cannot_fit_is_invalid_and_gets_no_job(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    # 60 GiB of bf16 weights: about 68 GiB per GPU with headroom. H100 has 80, L40S 45.
    apply(kubectl, namespace, fit_engine("big", [H100, L40S], "60Gi", model_bytes=60 * GiB))

    def l40s_judged() -> dict[str, Any] | None:
        t = targets(get_engine("big")).get(L40S)
        return t if t and t["state"] == "Invalid" else None

    t = wait_for(l40s_judged, 60, "the L40S target to be refused")
    assert t["reason"] == "ModelDoesNotFit"
    assert "needs about 68.0 GiB per GPU" in t["message"]
    assert "one NVIDIA-L40S GPU has 45.0 GiB" in t["message"]
    assert "raise spec.build.parallelism.tensor to 2" in t["message"]
    assert "job" not in t
    kubectl("wait", "-n", namespace, "--for=jsonpath={.status.builtTargets}=1/2",
            "llmengine/big", "--timeout=90s")
    assert targets(get_engine("big"))[H100]["state"] == "Built"
    jobs = _jobs_by_gpu(api_client, namespace)
    assert set(jobs) == {H100}  # none for the L40S, ever
    # The build Job carries the GPU type's memory (its nodes' label) for its own fit check.
    assert _build_spec(jobs[H100])["gpuMemoryMiB"] == gpus.gpu_type("h100").memory_mib
    ready = condition(get_engine("big"), "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "TargetInvalid")
    invalid = [e for e in _events(kubectl, namespace, "big") if e["reason"] == "TargetInvalid"]
    assert invalid
    assert invalid[0]["type"] == "Warning"
    assert "does not fit NVIDIA-L40S" in invalid[0]["message"]


def test_auto_skips_the_gpu_type_too_small_says_why_and_builds_the_others(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, fit_engine("auto", ["auto"], "60Gi", model_bytes=60 * GiB))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/auto",
            "--timeout=90s")
    engine = get_engine("auto")
    built = targets(engine)
    assert set(built) == {H100, A100}
    assert {t["state"] for t in built.values()} == {"Built"}
    assert engine["status"]["builtTargets"] == "2/2"
    (skipped,) = engine["status"]["skippedTargets"]
    assert (skipped["gpu"], skipped["reason"]) == (L40S, "ModelDoesNotFit")
    assert "one NVIDIA-L40S GPU has 45.0 GiB" in skipped["message"]
    assert set(_jobs_by_gpu(api_client, namespace)) == {H100, A100}
    events = [e for e in _events(kubectl, namespace, "auto") if e["reason"] == "TargetSkipped"]
    assert len(events) == 1
    assert events[0]["message"].startswith(f"{L40S}: auto does not build for it "
                                           f"(ModelDoesNotFit)")


def test_auto_with_every_gpu_type_too_small_is_not_ready_and_builds_nothing(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    apply(kubectl, namespace, fit_engine("huge", ["auto"], "400Gi"))

    def not_ready() -> dict[str, Any] | None:
        ready = condition(get_engine("huge"), "Ready")
        return ready if ready and ready["reason"] == "ModelDoesNotFit" else None

    ready = wait_for(not_ready, 60, "Ready False with ModelDoesNotFit")
    assert ready["status"] == "False"
    skipped = {s["gpu"] for s in get_engine("huge")["status"]["skippedTargets"]}
    assert {H100, A100, L40S} <= skipped
    assert _jobs_by_gpu(api_client, namespace) == {}


def test_a_size_the_download_measured_stops_another_engine_of_the_same_model(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    # What the entrypoint reports for a 60 GiB checkpoint, through the simulation.
    summary = {"phase": "Built", "checkpointBytes": 60 * GiB,
               "resolvedRevision": "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"}
    first = fit_engine("first", [H100], model_bytes=60 * GiB,
                       env=[{"name": stages.MESSAGE_ENV, "value": json.dumps(summary)}])
    apply(kubectl, namespace, first)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "llmengine/first",
            "--timeout=90s")
    assert targets(get_engine("first"))[H100]["checkpointBytes"] == 60 * GiB

    # The same model (repo and revision), no sizeHint, for the L40S: refused before any Job.
    second = fit_engine("second", [L40S])
    second["spec"]["model"] = first["spec"]["model"]
    apply(kubectl, namespace, second)

    def judged() -> dict[str, Any] | None:
        t = targets(get_engine("second")).get(L40S)
        return t if t and t["state"] == "Invalid" else None

    t = wait_for(judged, 60, "the L40S target of the second engine to be refused")
    assert t["reason"] == "ModelDoesNotFit"
    # The model cache's manifest (the download's measure) is the best size source.
    assert "from the model cache's manifest of this checkpoint" in t["message"]
    assert set(_jobs_by_gpu(api_client, namespace)) == {H100}


def test_a_model_the_download_measured_too_big_is_refused_before_any_build(
        kubectl: Kubectl, namespace: str, get_engine: Getter,
        api_client: client.ApiClient) -> None:
    # No sizeHint: the download (one CPU Job) measures the checkpoint, and the operator
    # refuses the GPU type before any build Job - no GPU time spent finding out. (The build
    # Job's own fit check, exit 7, remains for a checkpoint whose size nothing reported.)
    apply(kubectl, namespace, fit_engine("refused", [L40S], model_bytes=60 * GiB))

    def judged() -> dict[str, Any] | None:
        t = targets(get_engine("refused")).get(L40S)
        return t if t and t["reason"] == "ModelDoesNotFit" and t["state"] == "Invalid" else None

    t = wait_for(judged, 90, "the L40S target to end ModelDoesNotFit")
    assert "from the model cache's manifest of this checkpoint" in t["message"]
    assert get_engine("refused")["status"]["modelCache"]["checkpointBytes"] == 60 * GiB
    assert _jobs_by_gpu(api_client, namespace) == {}
    transitions = [e["reason"] for e in _events(kubectl, namespace, "refused")]
    assert "TargetInvalid" in transitions
