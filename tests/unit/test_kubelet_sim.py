"""The kubelet simulator's pure decisions: pod + known objects -> waiting state and message."""

from __future__ import annotations

from typing import Any

from trtllm_operator.localcluster import kubelet
from trtllm_operator.localcluster.kubelet import Known, decide


def _pod(image: str = "nvcr.io/nvidia/x:1", env: list[dict[str, Any]] | None = None,
         volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": image, "env": env or []}],
                     "volumes": volumes or []}}


HF = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}]


def test_ordinary_pod_starts() -> None:
    assert decide(_pod(), Known({}, {})) == []


def test_missing_secret() -> None:
    [w] = decide(_pod(env=HF), Known({}, {}))
    assert (w.reason, w.message) == ("CreateContainerConfigError", 'secret "hf" not found')


def test_missing_key_and_present_key() -> None:
    [w] = decide(_pod(env=HF), Known({("ns", "hf"): frozenset({"OTHER"})}, {}))
    assert w.message == "couldn't find key HF_TOKEN in Secret ns/hf"
    assert decide(_pod(env=HF), Known({("ns", "hf"): frozenset({"HF_TOKEN"})}, {})) == []


def test_optional_ref_is_not_required() -> None:
    env = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k",
                                                            "optional": True}}}]
    assert decide(_pod(env=env), Known({}, {})) == []


def test_missing_configmap_in_env_from() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "cfg"}}]
    [w] = decide(pod, Known({}, {}))
    assert w.message == 'configmap "cfg" not found'


def test_missing_secret_volume_keeps_container_creating() -> None:
    pod = _pod(volumes=[{"name": "tok", "secret": {"secretName": "hf"}}])
    [w] = decide(pod, Known({}, {}))
    assert w.reason == "ContainerCreating"
    assert w.message == 'MountVolume.SetUp failed for volume "tok" : secret "hf" not found'


def test_image_rule() -> None:
    assert kubelet.pullable("nvcr.io/nvidia/tritonserver:24.05")
    assert kubelet.pullable("busybox")
    assert not kubelet.pullable("registry.invalid/x:1")
    assert not kubelet.pullable("nvcr.invalid:5000/x:1")
    [first] = decide(_pod(image="registry.invalid/x:1"), Known({}, {}))
    assert first.reason == "ErrImagePull"
    assert "no such host" in first.message
    [then] = decide(_pod(image="registry.invalid/x:1"), Known({}, {}), pull_attempted=True)
    assert (then.reason, then.message) == ("ImagePullBackOff",
                                           'Back-off pulling image "registry.invalid/x:1"')


def test_crash_knob_only_for_restarting_pods() -> None:
    pod = _pod()
    pod["metadata"]["annotations"] = {kubelet.CRASH_ANNOTATION: "1"}
    assert kubelet.crashes(pod)
    pod["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "j"}]
    assert not kubelet.crashes(pod)
    assert kubelet.crashes(_pod(env=[{"name": "SIM_CRASH", "value": "1"}]))


def test_crash_message_and_backoff() -> None:
    assert kubelet.backoff_seconds(1) == 10
    assert kubelet.backoff_seconds(20) == 300
    assert (kubelet.crash_message(_pod(), "c", 300)
            == "back-off 5m0s restarting failed container=c pod=p_ns(u1)")
    status = kubelet.crash_status(_pod(), 3, 40)
    assert status["containerStatuses"][0]["restartCount"] == 3
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
