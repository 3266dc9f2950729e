"""Preflight of images and extra arguments, end to end: a spec whose image release is unknown or
cannot build, or whose extraArgs the tool would reject, gets its reason (naming the field) on
the real API server, and no build Job or serving Deployment is created for it. Stating the
release (imageRelease) lets the same image through."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import Kubectl
from tests.e2e.conftest import (
    H100,
    Getter,
    apply,
    condition,
    settle,
    small_engine,
    targets,
)
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_fleet", "storage", "hf_token")

DIGEST_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "a" * 64


def _target_in(get_engine: Getter, name: str, *states: str) -> dict[str, Any] | None:
    t = targets(get_engine(name)).get(H100)
    return t if t is not None and t["state"] in states else None


def _launched(get_engine: Getter, name: str) -> dict[str, Any] | None:
    """The target, once its build Job is created."""
    t = _target_in(get_engine, name, "Pending", "Building", "Built")
    return t if t is not None and t.get("job") else None


def _invalid(get_engine: Getter, name: str) -> dict[str, Any]:
    target: dict[str, Any] = wait_for(lambda: _target_in(get_engine, name, "Invalid"), 60,
                                      f"the {name} target to become Invalid")
    return target


def _job_names(api_client: client.ApiClient, namespace: str, selector: str = "") -> set[str]:
    jobs = client.BatchV1Api(api_client).list_namespaced_job(
        namespace, label_selector=selector).items
    return {j.metadata.name for j in jobs}


BUILDS = "app.kubernetes.io/component=engine-build"


def _event_messages(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items
    return [e.message or "" for e in events]


def _assert_engine_refused(get_engine: Getter, core: client.CoreV1Api, namespace: str,
                           name: str, reason: str, *texts: str) -> dict[str, Any]:
    target = _invalid(get_engine, name)
    assert target["reason"] == reason
    for text in texts:
        assert text in target["message"]
    assert "job" not in target  # no build launched for a spec that cannot work
    ready = condition(get_engine(name), "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    wait_for(lambda: any(texts[0] in m for m in _event_messages(core, namespace, name)), 30,
             f"a Warning Event about {name} naming {texts[0]}")
    return target


def test_an_image_of_unknown_release_builds_nothing_until_the_release_is_stated(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    engine = small_engine("by-digest", [H100], image=DIGEST_IMAGE)
    apply(kubectl, namespace, engine)

    _assert_engine_refused(get_engine, core, namespace, "by-digest",
                           "ImageReleaseUnknown", "spec.build.image",
                           "pinned by digest only", "or set spec.build.imageRelease")
    settle()
    assert _job_names(api_client, namespace) == set()

    # The fix the message names: state the release. The same image now builds.
    engine["spec"]["build"]["imageRelease"] = "1.2.0"
    apply(kubectl, namespace, engine)
    target = wait_for(lambda: _launched(get_engine, "by-digest"), 60,
                      "the build to start once the release is stated")
    assert _job_names(api_client, namespace, BUILDS) == {target["job"]}


def test_the_tensorrt_backend_of_1_3_0rc21_is_refused_and_one_of_1_3_0rc20_builds(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    release = "nvcr.io/nvidia/tensorrt-llm/release"
    rc21 = small_engine("rc21", [H100], image=f"{release}:1.3.0rc21")
    rc21["spec"]["backend"] = "tensorrt"
    apply(kubectl, namespace, rc21)
    apply(kubectl, namespace, small_engine("rc20", [H100], image=f"{release}:1.3.0rc20"))

    _assert_engine_refused(get_engine, core, namespace, "rc21",
                           "BackendUnsupportedByImage", "spec.backend tensorrt",
                           "exist only from 1.0 to 1.3.0rc20", "or set spec.backend pytorch")
    assert get_engine("rc21")["status"]["backend"] == "tensorrt"
    rc20 = wait_for(lambda: _launched(get_engine, "rc20"), 60, "the 1.3.0rc20 build to start")
    assert get_engine("rc20")["status"]["backend"] == "tensorrt"
    settle()
    assert _job_names(api_client, namespace, BUILDS) == {rc20["job"]}


def test_build_only_fields_of_a_pytorch_engine_are_refused_before_any_job(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    """The sample's trtllm-build settings (limits, plugins) mean nothing to the pytorch backend
    that a 1.3.0rc21 image implies: refused, naming the field, not silently ignored."""
    apply(kubectl, namespace, small_engine(
        "torch", [H100], image="nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc21"))

    _assert_engine_refused(get_engine, core, namespace, "torch", "FieldNotForBackend",
                           "spec.build.limits has no effect with the pytorch backend")
    assert get_engine("torch")["status"]["backend"] == "pytorch"
    settle()
    assert _job_names(api_client, namespace) == set()


def test_an_unknown_build_flag_is_refused_with_the_closest_real_flag(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("typo", [H100],
                                           extraArgs=["--max_batchsize", "8"]))

    _assert_engine_refused(get_engine, core, namespace, "typo", "UnknownFlag",
                           "spec.build.extraArgs --max_batchsize is not a trtllm-build 1.2 "
                           "flag; did you mean --max_batch_size?")
    settle()
    assert _job_names(api_client, namespace) == set()


def test_a_build_flag_with_a_wrong_value_is_refused(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("switch", [H100], extraArgs=["--strip_plan", "yes"]))

    _assert_engine_refused(get_engine, core, namespace, "switch",
                           "FlagValueInvalid",
                           "spec.build.extraArgs --strip_plan is a switch and takes no value")
    settle()
    assert _job_names(api_client, namespace) == set()


def test_a_real_build_flag_the_operator_does_not_pass_on_is_refused(
        kubectl: Kubectl, namespace: str, get_engine: Getter, api_client: client.ApiClient,
        core: client.CoreV1Api) -> None:
    apply(kubectl, namespace, small_engine("dry", [H100], extraArgs=["--dry_run"]))

    _assert_engine_refused(get_engine, core, namespace, "dry", "FlagNotAllowed",
                           "spec.build.extraArgs --dry_run is not allowed here",
                           "write no engine")
    settle()
    assert _job_names(api_client, namespace) == set()


# --------------------------------------------------------------------------- LLMDeployment


def _llmd(name: str, engine: str, replicas: int = 0, **spec: Any) -> dict[str, Any]:
    # replicas 0: a Deployment is still written for a valid spec, and needs no GPU.
    return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"engineRef": {"name": engine}, "gpu": H100, "replicas": replicas, **spec}}


def _has_deployment(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    try:
        apps.read_namespaced_deployment(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _ready_reason(get_llmd: Getter, name: str, reason: str) -> dict[str, Any] | None:
    c = condition(get_llmd(name), "Ready")
    return c if c is not None and c["status"] == "False" and c["reason"] == reason else None


def test_a_serving_image_of_unknown_release_or_an_unknown_serve_flag_rolls_out_nothing(
        kubectl: Kubectl, namespace: str, get_engine: Getter, get_llmd: Getter,
        api_client: client.ApiClient, core: client.CoreV1Api) -> None:
    served = small_engine("served", [H100])
    # No Hugging Face token: its build pod needs no Secret (the simulated kubelet, like a real
    # one, holds a container whose Secret is missing).
    served["spec"]["model"]["huggingFace"].pop("tokenSecretRef", None)
    apply(kubectl, namespace, served)
    wait_for(lambda: _target_in(get_engine, "served", "Built"), 120, "the engine to build")
    apps = client.AppsV1Api(api_client)

    # The same engine, served as written and with the digest's release stated: rolled out.
    apply(kubectl, namespace, _llmd("control", "served"))
    apply(kubectl, namespace, _llmd("stated", "served", image=DIGEST_IMAGE,
                                    imageRelease="1.2.0"))
    # Unknown release; an extra argument trtllm-serve 1.2 does not have.
    apply(kubectl, namespace, _llmd("by-digest", "served", image=DIGEST_IMAGE))
    apply(kubectl, namespace, _llmd("typo", "served",
                                    serve={"extraArgs": ["--num_postproces_workers", "2"]}))

    unknown = wait_for(lambda: _ready_reason(get_llmd, "by-digest", "ImageReleaseUnknown"), 60,
                       "Ready=False ImageReleaseUnknown")
    assert "spec.image" in unknown["message"]
    assert "or set spec.imageRelease" in unknown["message"]
    flag = wait_for(lambda: _ready_reason(get_llmd, "typo", "UnknownFlag"), 60,
                    "Ready=False UnknownFlag")
    assert ("spec.serve.extraArgs --num_postproces_workers is not a trtllm-serve 1.2 flag; "
            "did you mean --num_postprocess_workers?") in flag["message"]
    wait_for(lambda: _has_deployment(apps, namespace, "control")
             and _has_deployment(apps, namespace, "stated"), 60,
             "the valid deployments' Deployments")
    settle()
    assert not _has_deployment(apps, namespace, "by-digest")
    assert not _has_deployment(apps, namespace, "typo")
    for name in ("by-digest", "typo"):
        engine_ready = condition(get_llmd(name), "EngineReady")
        assert engine_ready is not None
        assert engine_ready["status"] == "False"
    wait_for(lambda: any("spec.serve.extraArgs" in m
                         for m in _event_messages(core, namespace, "typo")), 30,
             "a Warning Event naming spec.serve.extraArgs")


# --------------------------------------------------------------------------- admission


def test_admission_refuses_a_release_that_is_no_version_or_names_no_image(
        kubectl: Kubectl, namespace: str) -> None:
    engine = small_engine("bad-release", [H100], imageRelease="latest")
    refused = kubectl("apply", "-n", namespace, "-f", "-", check=False,
                      input=yaml.safe_dump(engine))
    assert refused.returncode != 0
    assert "spec.build.imageRelease" in refused.stderr

    orphan = _llmd("orphan", "served", imageRelease="1.2.0")
    refused = kubectl("apply", "-n", namespace, "-f", "-", check=False,
                      input=yaml.safe_dump(orphan))
    assert refused.returncode != 0
    assert "spec.imageRelease names the release of spec.image" in refused.stderr
