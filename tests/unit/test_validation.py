"""The checks admission cannot make: GPU capabilities, node sizes, releases, pinning."""

from __future__ import annotations

from typing import Any

import pytest

from trtllm_operator.api import LLMDeploymentSpec, LLMEngineSpec
from trtllm_operator.validation import (
    ClusterFacts,
    Finding,
    GPUPool,
    Reason,
    Severity,
    effective_backend,
    errors,
    for_gpu,
    validate_deployment,
    validate_engine,
)

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L40S = "NVIDIA-L40S"
B200 = "NVIDIA-B200"
SHA = "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2"

CLUSTER = ClusterFacts(pools={
    H100: GPUPool(node_gpus=(8, 8), compute_capability=(9, 0)),
    A100: GPUPool(node_gpus=(8,), compute_capability=(8, 0)),
    L40S: GPUPool(node_gpus=(4, 2), compute_capability=(8, 9)),
})


def engine(targets: tuple[str, ...] = (H100,), *, fmt: str | None = None, tp: int = 1,
           pp: int = 1, image: str | None = None, image_release: str | None = None,
           revision: str | None = SHA, limits: dict[str, int] | None = None,
           extra_args: tuple[str, ...] = (), backend: str | None = None,
           quantization: dict[str, Any] | None = None,
           build_gpus: int | None = None) -> LLMEngineSpec:
    build: dict[str, Any] = {"parallelism": {"tensor": tp, "pipeline": pp},
                             "extraArgs": list(extra_args)}
    if build_gpus:
        build["gpus"] = build_gpus
    if fmt:
        build["quantization"] = {"format": fmt}
    if quantization:
        build["quantization"] = quantization
    if image:
        build["image"] = image
    if image_release:
        build["imageRelease"] = image_release
    if limits:
        build["limits"] = limits
    hf: dict[str, Any] = {"repo": "meta-llama/Meta-Llama-3-8B-Instruct"}
    if revision:
        hf["revision"] = revision
    return LLMEngineSpec.model_validate({
        "model": {"huggingFace": hf}, "build": build, "targets": list(targets),
        "storage": {"claimName": "engines"}, **({"backend": backend} if backend else {}),
    })


def deployment(**spec: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate({"engineRef": {"name": "llama"}, **spec})


def only(findings: tuple[Finding, ...]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


# --------------------------------------------------------------------------- LLMEngine


def test_a_valid_engine_on_a_matching_cluster_has_no_findings() -> None:
    assert validate_engine(engine((H100, L40S), fmt="fp8"), CLUSTER) == ()


def test_fp8_on_a100_names_the_field_the_target_and_the_fix() -> None:
    finding = only(validate_engine(engine((H100, A100), fmt="fp8"), CLUSTER))

    assert finding.reason == "QuantizationUnsupported"
    assert finding.severity is Severity.ERROR
    assert finding.field == "spec.build.quantization.format"
    assert finding.gpu == A100
    assert finding.message == (
        "spec.build.quantization.format fp8 needs compute capability >= 8.9; target "
        "NVIDIA-A100-SXM4-80GB is 8.0: remove it from spec.targets or choose int4_awq")


@pytest.mark.parametrize(("fmt", "gpu", "suggestion"), [
    ("nvfp4", H100, "choose fp8"),
    ("w4a8_awq", A100, "choose int4_awq"),
    ("nvfp4", L40S, "choose fp8"),
])
def test_the_suggested_format_runs_on_that_gpu(fmt: str, gpu: str, suggestion: str) -> None:
    finding = only(validate_engine(engine((gpu,), fmt=fmt), CLUSTER))

    assert finding.reason == Reason.QUANTIZATION_UNSUPPORTED
    assert finding.message.endswith(suggestion)


@pytest.mark.parametrize(("fmt", "gpu"), [
    ("fp8", L40S), ("w4a8_awq", H100), ("int4_awq", A100), ("int8_sq", A100),
    ("int8_wo", A100), ("int4_wo", A100), ("nvfp4", B200),
])
def test_formats_on_gpus_that_run_them_pass(fmt: str, gpu: str) -> None:
    cluster = ClusterFacts(pools={**CLUSTER.pools, B200: GPUPool(node_gpus=(8,))})

    assert validate_engine(engine((gpu,), fmt=fmt), cluster) == ()


def test_compute_capability_comes_from_node_labels_before_the_catalog() -> None:
    t4 = "Tesla-T4"
    cluster = ClusterFacts(pools={t4: GPUPool(node_gpus=(1,), compute_capability=(7, 5))})

    finding = only(validate_engine(engine((t4,), fmt="int4_awq"), cluster))

    assert "target Tesla-T4 is 7.5: remove it from spec.targets" in finding.message
    assert "choose" not in finding.message, "no format runs on 7.5: nothing to suggest"


def test_a_catalog_gpu_is_judged_before_any_node_of_it_joins() -> None:
    findings = validate_engine(engine((A100,), fmt="fp8"), ClusterFacts())

    assert [f.reason for f in findings] == [Reason.GPU_NOT_IN_CLUSTER,
                                            Reason.QUANTIZATION_UNSUPPORTED]
    assert [f.severity for f in findings] == [Severity.WARNING, Severity.ERROR]


def test_a_gpu_type_without_nodes_is_a_warning_that_says_how_to_check_the_name() -> None:
    finding = only(validate_engine(engine((H100, "H100"),), CLUSTER))

    assert finding.reason == "GPUNotInCluster"
    assert finding.severity is Severity.WARNING
    assert finding.gpu == "H100"
    assert "kubectl get nodes -L nvidia.com/gpu.product" in finding.message


def test_parallelism_larger_than_every_node_of_a_target_is_an_error() -> None:
    finding = only(validate_engine(engine((H100, L40S), tp=4, pp=2), CLUSTER))

    assert finding.reason == "ParallelismExceedsNode"
    assert finding.field == "spec.build.parallelism"
    assert finding.gpu == L40S
    assert finding.message == (
        "spec.build.parallelism: tensor 4 x pipeline 2 needs 8 GPUs on one node, but the "
        "largest NVIDIA-L40S node has 4: lower spec.build.parallelism or set spec.build.gpus "
        "to build the ranks in turn, or remove NVIDIA-L40S from spec.targets")


def test_a_world_wider_than_a_node_builds_when_build_gpus_fit_one_node() -> None:
    # Serving spans nodes (LeaderWorkerSet); the build runs the ranks in turn on 4 GPUs.
    assert validate_engine(engine((L40S,), tp=4, pp=2, build_gpus=4), CLUSTER) == ()


def test_parallelism_that_fits_the_largest_node_passes() -> None:
    assert validate_engine(engine((L40S,), tp=4), CLUSTER) == ()


@pytest.mark.parametrize("tag", ["1.3.0rc21", "1.3.0", "1.4.0", "2.0.0"])
def test_the_tensorrt_backend_in_an_image_without_trtllm_build_is_an_error(tag: str) -> None:
    image = f"nvcr.io/nvidia/tensorrt-llm/release:{tag}"

    finding = only(validate_engine(engine(image=image, backend="tensorrt"), CLUSTER))

    assert finding.reason == "BackendUnsupportedByImage"
    assert finding.severity == Severity.ERROR
    assert finding.gpu is None  # wrong for every target
    assert finding.field == "spec.backend"
    assert f"is TensorRT-LLM {tag}" in finding.message
    assert "exist only from 1.0 to 1.3.0rc20" in finding.message
    assert "nvcr.io/nvidia/tensorrt-llm/release:1.2.0" in finding.message
    assert "or set spec.backend pytorch" in finding.message


@pytest.mark.parametrize(("tag", "backend"), [
    ("1.0.0", "tensorrt"), ("1.2.0", "tensorrt"), ("1.3.0rc20", "tensorrt"),
    ("1.3.0rc21", "pytorch"), ("1.3.0", "pytorch"), ("1.4.0", "pytorch"),
    ("latest", "tensorrt"),  # unknown release: refused by the image check anyway
])
def test_an_unset_backend_follows_the_builder_release(tag: str, backend: str) -> None:
    spec = engine(image=f"nvcr.io/nvidia/tensorrt-llm/release:{tag}")

    assert effective_backend(spec) == backend
    assert effective_backend(spec.model_copy(update={"backend": "pytorch"})) == "pytorch"


@pytest.mark.parametrize("tag", ["1.2.0", "1.3.0rc20", "0.21.0"])
def test_the_pytorch_backend_before_1_3_0rc21_is_an_error(tag: str) -> None:
    finding = only(validate_engine(engine(image=f"nvcr.io/nvidia/tensorrt-llm/release:{tag}",
                                          backend="pytorch"), CLUSTER))

    assert finding.reason == "BackendUnsupportedByImage"
    assert finding.field == "spec.backend"
    assert "from 1.3.0rc21 on" in finding.message
    assert "e.g. nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc21" in finding.message
    assert ("or set spec.backend tensorrt" in finding.message) == (tag != "0.21.0")


def test_a_pytorch_image_needs_no_backend_field() -> None:
    image = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"
    assert validate_engine(engine(image=image), CLUSTER) == ()
    assert validate_engine(engine(image=image, backend="pytorch"), CLUSTER) == ()


def test_a_builder_image_older_than_1_0_is_an_error() -> None:
    finding = only(validate_engine(engine(image="nvcr.io/nvidia/tensorrt-llm/release:0.21.0"),
                                   CLUSTER))

    assert finding.reason == "BuilderImageUnsupported"
    assert "older than 1.0" in finding.message


@pytest.mark.parametrize("image", [
    "nvcr.io/nvidia/tensorrt-llm/release:1.0.0",
    "nvcr.io/nvidia/tensorrt-llm/release:1.2.1",
    "nvcr.io/nvidia/tensorrt-llm/release:1.2.0.post1",
    "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc0",
    "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc20",
    "registry.local:5000/mirror/tensorrt-llm:1.2.0rc2",
    "nvcr.io/nvidia/tensorrt-llm/release:1.2.0@sha256:" + "0" * 64,
])
def test_builder_images_of_releases_with_trtllm_build_pass(image: str) -> None:
    assert validate_engine(engine(image=image), CLUSTER) == ()


@pytest.mark.parametrize(("image", "why", "suggested"), [
    ("registry.local/tensorrt-llm:latest", "its tag latest is not a version",
     "registry.local/tensorrt-llm:1.2.0"),
    ("registry.local:5000/tensorrt-llm", "it has no tag, so it is latest",
     "registry.local:5000/tensorrt-llm:1.2.0"),
    ("nvcr.io/nvidia/tensorrt-llm/release:nightly", "its tag nightly is not a version",
     "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"),
    ("nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "0" * 64, "pinned by digest only",
     "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"),
])
def test_a_builder_image_of_unknown_release_is_an_error(image: str, why: str,
                                                        suggested: str) -> None:
    finding = only(validate_engine(engine(image=image), CLUSTER))

    assert finding.reason == Reason.IMAGE_RELEASE_UNKNOWN == "ImageReleaseUnknown"
    assert finding.severity == Severity.ERROR
    assert finding.gpu is None
    assert finding.field == "spec.build.image"
    assert why in finding.message
    assert (f"tag the image with its version, e.g. {suggested}, or set spec.build.imageRelease"
            in finding.message)


@pytest.mark.parametrize(("release", "reason"), [
    ("1.2.0", None), ("1.3.0rc20", None),
    ("1.3.0rc21", None), ("0.21.0", Reason.BUILDER_IMAGE_UNSUPPORTED),
])
def test_a_stated_release_is_what_the_image_is_judged_by(release: str,
                                                         reason: Reason | None) -> None:
    digest = "mirror.local/trtllm@sha256:" + "0" * 64
    tagged = "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"  # the field wins over the tag

    for image in (digest, tagged):
        found = validate_engine(engine(image=image, image_release=release), CLUSTER)
        assert [f.reason for f in found] == ([reason] if reason else []), image
        if reason:
            assert f"(spec.build.imageRelease {release})" in found[0].message


@pytest.mark.parametrize(("revision", "shown"), [(None, "is unset"), ("main", "is main"),
                                                 ("v1.0", "is v1.0")])
def test_an_unpinned_revision_is_a_warning(revision: str | None, shown: str) -> None:
    finding = only(validate_engine(engine(revision=revision), CLUSTER))

    assert finding.reason == "UnpinnedRevision"
    assert finding.severity is Severity.WARNING
    assert finding.field == "spec.model.huggingFace.revision"
    assert shown in finding.message
    assert "https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct/commits/main" in (
        finding.message)


def test_a_volume_checkpoint_has_no_revision_to_pin() -> None:
    spec = LLMEngineSpec.model_validate({
        "model": {"volume": {"claimName": "models", "path": "llama"}},
        "targets": [H100], "storage": {"claimName": "engines"},
    })

    assert validate_engine(spec, CLUSTER) == ()


def test_errors_and_per_gpu_filters() -> None:
    findings = validate_engine(engine((H100, A100, "H100"), fmt="fp8", revision=None), CLUSTER)

    assert [f.reason for f in errors(findings)] == [Reason.QUANTIZATION_UNSUPPORTED]
    assert [f.reason for f in for_gpu(findings, H100)] == [Reason.UNPINNED_REVISION]
    assert [f.reason for f in for_gpu(findings, A100)] == [Reason.UNPINNED_REVISION,
                                                           Reason.QUANTIZATION_UNSUPPORTED]


# --------------------------------------------------------------------------- LLMDeployment


def test_a_valid_deployment_has_no_findings() -> None:
    spec = deployment(gpu=H100, serve={"maxBatchSize": 64},
                      image="nvcr.io/nvidia/tensorrt-llm/release:1.2.0")

    assert validate_deployment(spec, engine((H100, L40S)), CLUSTER) == ()


def test_a_missing_engine_is_named() -> None:
    finding = only(validate_deployment(deployment(), None, CLUSTER))

    assert finding.reason == "EngineNotFound"
    assert finding.field == "spec.engineRef.name"
    assert finding.message.startswith("spec.engineRef.name llama: there is no LLMEngine")


def test_a_gpu_the_engine_is_not_built_for_lists_the_choices() -> None:
    finding = only(validate_deployment(deployment(gpu=A100), engine((H100, L40S)), CLUSTER))

    assert finding.reason == "GPUNotATarget"
    assert finding.field == "spec.gpu"
    assert f"(targets: {H100}, {L40S})" in finding.message


@pytest.mark.parametrize(("serve", "limits", "field", "built"), [
    ({"maxBatchSize": 128}, {"maxBatchSize": 64}, "spec.serve.maxBatchSize", "the 64"),
    ({"maxBatchSize": 4096}, None, "spec.serve.maxBatchSize", "the 2048"),
    ({"maxNumTokens": 9000}, None, "spec.serve.maxNumTokens", "the 8192"),
    ({"maxBeamWidth": 4}, None, "spec.serve.maxBeamWidth", "the 1"),
    ({"maxSeqLen": 16384}, {"maxSeqLen": 8192}, "spec.serve.maxSeqLen", "the 8192"),
])
def test_serve_limits_above_the_engine_are_errors(serve: dict[str, int],
                                                  limits: dict[str, int] | None, field: str,
                                                  built: str) -> None:
    finding = only(validate_deployment(deployment(serve=serve), engine(limits=limits), CLUSTER))

    assert finding.reason == "ServeLimitExceedsEngine"
    assert finding.field == field
    assert f"{built} LLMEngine llama is built for" in finding.message


def test_max_seq_len_is_not_judged_when_the_engine_takes_the_models_own() -> None:
    assert validate_deployment(deployment(serve={"maxSeqLen": 131072}), engine(), CLUSTER) == ()


def test_a_serving_image_of_another_release_than_the_build_is_an_error() -> None:
    spec = deployment(image="nvcr.io/nvidia/tensorrt-llm/release:1.1.0")

    finding = only(validate_deployment(spec, engine(), CLUSTER))

    assert finding.reason == "ImageReleaseMismatch"
    assert finding.field == "spec.image"
    assert "built with 1.2.0" in finding.message


def test_the_same_release_from_a_mirror_is_fine() -> None:
    spec = deployment(image="mirror.local/nvidia/tensorrt-llm/release:1.2.0")

    assert validate_deployment(spec, engine(), CLUSTER) == ()


def test_a_serving_image_without_the_tensorrt_backend_is_an_error() -> None:
    spec = deployment(image="nvcr.io/nvidia/tensorrt-llm/release:1.3.0")

    findings = validate_deployment(spec, engine(), CLUSTER)

    assert [f.reason for f in findings] == [Reason.SERVING_IMAGE_UNSUPPORTED,
                                            Reason.IMAGE_RELEASE_MISMATCH]


def test_a_pytorch_engine_served_by_an_engine_release_is_an_error() -> None:
    spec = deployment(image="nvcr.io/nvidia/tensorrt-llm/release:1.2.0")
    pytorch = engine(image="nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25")

    found = validate_deployment(spec, pytorch, CLUSTER)

    assert [f.reason for f in found] == [Reason.SERVING_IMAGE_UNSUPPORTED,
                                         Reason.IMAGE_RELEASE_MISMATCH]
    assert "older than 1.3.0rc21, the first release the operator serves the pytorch" in (
        found[0].message)


DIGEST = "mirror.local/trtllm@sha256:" + "0" * 64


def test_a_serving_image_of_unknown_release_is_an_error() -> None:
    finding = only(validate_deployment(deployment(image="mirror.local/trtllm:latest"), engine(),
                                       CLUSTER))

    assert finding.reason == Reason.IMAGE_RELEASE_UNKNOWN
    assert finding.field == "spec.image"
    assert "e.g. mirror.local/trtllm:1.2.0, or set spec.imageRelease" in finding.message


def test_a_serving_digest_with_its_release_stated_is_fine() -> None:
    spec = deployment(image=DIGEST, imageRelease="1.2.0")

    assert validate_deployment(spec, engine(), CLUSTER) == ()


@pytest.mark.parametrize(("serving", "engine_image", "engine_release", "built_with"), [
    ({"image": DIGEST, "imageRelease": "1.2.1"}, None, None, "1.2.0"),
    ({"image": "nvcr.io/nvidia/tensorrt-llm/release:1.1.0"}, DIGEST, "1.2.0", "1.2.0"),
    ({"image": DIGEST, "imageRelease": "1.3.0rc20"}, DIGEST, "1.3.0rc19", "1.3.0rc19"),
])
def test_the_release_mismatch_compares_the_stated_releases(
        serving: dict[str, str], engine_image: str | None, engine_release: str | None,
        built_with: str) -> None:
    spec = deployment(**serving)

    finding = only(validate_deployment(spec, engine(image=engine_image,
                                                    image_release=engine_release), CLUSTER))

    assert finding.reason == Reason.IMAGE_RELEASE_MISMATCH
    assert f"built with {built_with}" in finding.message


def test_a_serving_image_matching_a_stated_build_release_is_fine() -> None:
    spec = deployment(image="nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc20")

    assert validate_deployment(spec, engine(image=DIGEST, image_release="1.3.0rc20"),
                               CLUSTER) == ()


def test_an_engine_that_cannot_be_built_on_the_chosen_nodes_is_an_error() -> None:
    finding = only(validate_deployment(deployment(gpu=L40S), engine((H100, L40S), tp=8),
                                       CLUSTER))

    assert finding.reason == "ParallelismExceedsNode"
    assert finding.field == "spec.gpu"
    assert "set its spec.build.gpus" in finding.message
    assert "choose another GPU type in spec.gpu" in finding.message


# --------------------------------------------------------------------------- pytorch backend

PYTORCH_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc25"
OFFLINE = {"datasetPath": "calibration/chat.jsonl"}


def pytorch(**kw: Any) -> LLMEngineSpec:
    return engine(image=PYTORCH_IMAGE, **kw)


def test_build_only_fields_are_refused_for_pytorch_each_naming_its_field() -> None:
    spec = LLMEngineSpec.model_validate({
        **pytorch().model_dump(by_alias=True, exclude_none=True),
        "build": {"image": PYTORCH_IMAGE, "dtype": "float16", "limits": {"maxBatchSize": 8},
                  "plugins": {"gemmPlugin": "auto"}, "extraArgs": ["--strip_plan"]}})

    found = validate_engine(spec, CLUSTER)

    assert [(f.reason, f.field) for f in found] == [
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.limits"),
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.plugins"),
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.extraArgs"),
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.dtype"),
    ]
    assert "LLMDeployment's spec.serve (maxBatchSize" in found[0].message
    assert all(f.severity is Severity.ERROR and f.gpu is None for f in found)


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4", "int4_awq", "w4a8_awq"])
def test_pytorch_formats_with_offline_calibration_are_accepted(fmt: str) -> None:
    spec = pytorch(targets=(B200,), quantization={"format": fmt, "calibration": OFFLINE})
    found = [f for f in validate_engine(spec, CLUSTER) if f.reason != "GPUNotInCluster"]
    assert found == []


@pytest.mark.parametrize("fmt", ["int8_sq", "int8_wo", "int4_wo"])
def test_formats_modelopt_cannot_export_for_pytorch_are_refused(fmt: str) -> None:
    finding = only(validate_engine(
        pytorch(quantization={"format": fmt, "calibration": OFFLINE}), CLUSTER))

    assert finding.reason == Reason.QUANTIZATION_UNSUPPORTED
    assert finding.field == "spec.build.quantization.format"
    assert "choose one of fp8, nvfp4, int4_awq, w4a8_awq" in finding.message
    assert ("legacy TensorRT-LLM checkpoint" in finding.message) == (fmt == "int8_sq")


def test_calibration_data_must_be_named_for_pytorch() -> None:
    finding = only(validate_engine(pytorch(fmt="fp8"), CLUSTER))

    assert finding.reason == Reason.CALIBRATION_DATA_MISSING
    assert finding.field == "spec.build.quantization.calibration"
    assert "never downloads by surprise" in finding.message
    assert "calibration.datasetPath" in finding.message
    assert "calibration.downloadDataset true to fetch calibration.dataset (cnn_dailymail)" in (
        finding.message)
    downloading = {"format": "fp8", "calibration": {"downloadDataset": True}}
    assert validate_engine(pytorch(quantization=downloading), CLUSTER) == ()
    both = {"format": "fp8", "calibration": {**OFFLINE, "downloadDataset": True}}
    assert only(validate_engine(pytorch(quantization=both), CLUSTER)).reason == (
        Reason.CALIBRATION_DATA_MISSING)


def test_kv_cache_dtypes_for_pytorch() -> None:
    int8 = only(validate_engine(pytorch(quantization={
        "format": "fp8", "kvCacheDtype": "int8", "calibration": OFFLINE}), CLUSTER))
    alone = only(validate_engine(pytorch(quantization={"kvCacheDtype": "fp8"}), CLUSTER))

    assert (int8.reason, int8.field) == (Reason.KV_CACHE_DTYPE_UNSUPPORTED,
                                         "spec.build.quantization.kvCacheDtype")
    assert (alone.reason, alone.field) == (Reason.FIELD_NOT_FOR_BACKEND,
                                           "spec.build.quantization.kvCacheDtype")
    assert "--kv_cache_dtype fp8 in the LLMDeployment's spec.serve.extraArgs" in alone.message


def test_pytorch_calibration_fields_are_refused_for_tensorrt() -> None:
    found = validate_engine(engine(quantization={
        "format": "fp8", "calibration": {**OFFLINE, "downloadDataset": True}}), CLUSTER)

    assert [(f.reason, f.field) for f in found] == [
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.quantization.calibration.datasetPath"),
        (Reason.FIELD_NOT_FOR_BACKEND, "spec.build.quantization.calibration.downloadDataset"),
    ]


def test_a_pytorch_deployment_is_not_held_to_engine_limits() -> None:
    spec = deployment(serve={"maxBatchSize": 4096, "maxNumTokens": 65536})
    assert validate_deployment(spec, pytorch(), CLUSTER) == ()


def test_pytorch_serve_extra_args_are_judged_by_the_1_3_table() -> None:
    def reasons(*args: str) -> list[tuple[str, str]]:
        found = validate_deployment(deployment(serve={"extraArgs": list(args)}), pytorch(),
                                    CLUSTER)
        return [(f.reason, f.message) for f in found]

    assert reasons("--kv_cache_dtype", "fp8", "--enable_chunked_prefill") == []
    [(reason, message)] = reasons("--grpc")
    assert reason == Reason.FLAG_NOT_ALLOWED
    assert "Replaces the OpenAI HTTP server" in message
    [(reason, message)] = reasons("--bogus")
    assert reason == Reason.UNKNOWN_FLAG
    assert "not a trtllm-serve 1.3 flag" in message
    [(reason, _)] = reasons("--kv_cache_dtype", "int8")
    assert reason == Reason.FLAG_VALUE_INVALID
    [(reason, _)] = reasons("--no-telemetry")
    assert reason == Reason.FLAG_NOT_ALLOWED


def test_options_the_operator_writes_are_refused_in_the_pytorch_options_file() -> None:
    spec = deployment(serve={"extraLlmApiOptions": {
        "max_batch_size": 8, "return_perf_metrics": False,
        "kv_cache_config": {"enable_block_reuse": True}}})

    found = validate_deployment(spec, pytorch(), CLUSTER)

    assert [(f.reason, f.field) for f in found] == [
        (Reason.OPTION_NOT_ALLOWED, "spec.serve.extraLlmApiOptions.max_batch_size"),
        (Reason.OPTION_NOT_ALLOWED, "spec.serve.extraLlmApiOptions.return_perf_metrics"),
    ]


def test_an_engine_built_on_one_node_but_served_wider_is_left_to_the_serving_preflight() -> None:
    # Built on 4 GPUs, ranks in turn; serving spans two L40S nodes (LeaderWorkerSet), which
    # the controller judges, knowing whether LWS is there.
    assert validate_deployment(deployment(gpu=L40S),
                               engine((H100, L40S), tp=8, build_gpus=4), CLUSTER) == ()


def test_calibration_dataset_fields_for_each_backend() -> None:
    fetched = {"format": "fp8", "calibration": {
        "dataset": "abisee/cnn_dailymail", "downloadDataset": True, "revision": "main",
        "files": ["3.0.0/validation-*.parquet"], "textField": "article"}}
    assert validate_engine(pytorch(quantization=fetched), CLUSTER) == ()
    local = {"format": "fp8", "calibration": {**OFFLINE, "files": ["*.jsonl"],
                                              "textField": "prompt"}}
    assert validate_engine(pytorch(quantization=local), CLUSTER) == ()

    # tensorrt: quantize.py takes a dataset by name only.
    found = validate_engine(engine(quantization={"format": "fp8", "calibration": {
        "revision": "main", "files": ["a.jsonl"], "textField": "prompt"}}), CLUSTER)
    assert [(f.reason, f.field) for f in found] == [
        (Reason.FIELD_NOT_FOR_BACKEND, f"spec.build.quantization.calibration.{name}")
        for name in ("revision", "files", "textField")]

    def problem(calibration: dict[str, Any]) -> Finding:
        return only(validate_engine(pytorch(quantization={
            "format": "fp8", "calibration": calibration}), CLUSTER))

    not_a_repo = problem({"dataset": "cnn dailymail", "downloadDataset": True})
    assert not_a_repo.field == "spec.build.quantization.calibration.dataset"
    assert "abisee/cnn_dailymail" in not_a_repo.message
    revision_alone = problem({**OFFLINE, "revision": "main"})
    assert revision_alone.field == "spec.build.quantization.calibration.revision"
    escaping = problem({**OFFLINE, "files": ["../secrets/*"]})
    assert escaping.field == "spec.build.quantization.calibration.files[0]"
