"""Property test: every generated LLMEngine / LLMDeployment spec is either refused at admission
with a message naming the field, or accepted and judged by the running operator (a Ready
condition with a CamelCase reason at the object's generation). The operator never logs a
traceback for any of them.

The outcomes are not hard-coded: the checks change, the contract does not. FUZZ_SPECS sets how
many specs a run tries (default 120, part of `make test`; `make fuzz` runs 10,000).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from trtllm_operator.localcluster.operator_process import OperatorProcess

BATCH = 20
SPECS = int(os.environ.get("FUZZ_SPECS", "120"))
JUDGE_WAIT = float(os.environ.get("FUZZ_JUDGE_WAIT", "60"))
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]+$")

GPUS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-L40S", "NVIDIA-A100-SXM4-80GB", "NVIDIA-B200",
        "auto", "NVIDIA-Nonexistent-9000", "h100", ""]
QUANT = ["fp8", "int4_awq", "int8_sq", "w4a8_awq", "nvfp4", "int8_wo", "int4_wo", "fp4", "bogus"]
KV = ["fp8", "int8", "nvfp4", "auto", "float16", "bogus"]
DTYPES = ["auto", "float16", "bfloat16", "float32", "int8"]
IMAGES = ["nvcr.io/nvidia/tensorrt-llm/release:1.0.0", "nvcr.io/nvidia/tensorrt-llm/release",
          "nvcr.io/nvidia/tensorrt-llm/release:latest", "nvcr.io/nvidia/tensorrt-llm/release:0.9.0",
          "nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "a" * 64, "example.com/x:1.2.0rc1",
          "UPPER/Case:tag", "img:", ":tag", "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"]
FLAGS = ["--max_beam_width", "4", "--use_refit", "--output_dir", "/tmp", "--checkpoint_dir",
         "x", "--unknown_flag", "--tp_size", "2", "value-first", "--workers", "-1"]
NAMES = st.one_of(st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z0-9]\Z"),
                  st.sampled_from(["Bad_Name", "-x", "a" * 260, "x.y", "UPPER"]))
INTS = st.one_of(st.integers(1, 8192), st.sampled_from([0, -1, 2**31, 2**62]))
ENV = st.lists(st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(["HF_TOKEN", "FOO", "1BAD", "NCCL_DEBUG"]),
                           "value": st.text(max_size=8)}),
    st.fixed_dictionaries({"name": st.just("X"), "value": st.just("v"),
                           "valueFrom": st.just({"secretKeyRef": {"name": "s", "key": "k"}})}),
), max_size=3)


def _opt(d: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=d)


ENGINE_SPEC = st.fixed_dictionaries({
    "model": st.sampled_from([
        {"huggingFace": {"repo": "meta-llama/Meta-Llama-3-8B-Instruct",
                         "revision": "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2",
                         "tokenSecretRef": {"name": "hf-token"}}},
        {"huggingFace": {"repo": "not a repo"}}, {}, {"volume": {"claimName": "m", "path": "/x"}},
    ]),
    "targets": st.lists(st.sampled_from(GPUS), max_size=4),
    "storage": st.sampled_from([{"claimName": "trtllm-engines"}, {},
                                {"claimName": "trtllm-engines", "pathPrefix": "../up"}]),
    "build": _opt({
        "image": st.sampled_from(IMAGES), "dtype": st.sampled_from(DTYPES),
        "quantization": _opt({"format": st.sampled_from(QUANT),
                              "kvCacheDtype": st.sampled_from(KV)}),
        "parallelism": _opt({"tensor": INTS, "pipeline": INTS}),
        "gpus": INTS,
        "limits": _opt({k: INTS for k in ("maxBatchSize", "maxInputLen", "maxSeqLen",
                                          "maxNumTokens", "maxBeamWidth")}),
        "extraArgs": st.lists(st.sampled_from(FLAGS), max_size=4),
        "env": ENV,
    }),
})

DEPLOYMENT_SPEC = st.fixed_dictionaries({
    "engineRef": st.fixed_dictionaries({"name": st.sampled_from(["fz-engine", "missing", ""])}),
    "gpu": st.sampled_from(GPUS),
}, optional={
    "replicas": st.one_of(st.integers(0, 4), st.just(-1)),
    "image": st.sampled_from(IMAGES),
    "serve": _opt({"maxBatchSize": INTS, "maxSeqLen": INTS, "maxNumTokens": INTS,
                   "tensorParallelSize": INTS,
                   "kvCacheFreeGpuMemoryFraction": st.sampled_from([0.5, 0.9, 1.5, -0.1])}),
    "extraArgs": st.lists(st.sampled_from([*FLAGS, "--port", "--host", "--backend"]), max_size=4),
    "env": ENV,
})

SPEC = st.one_of(st.tuples(st.just("llmengines"), NAMES, ENGINE_SPEC),
                 st.tuples(st.just("llmdeployments"), NAMES, DEPLOYMENT_SPEC))


@dataclass
class Figures:
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    judged: int = 0
    violations: list[str] = field(default_factory=list)


def _names_field(exc: ApiException) -> bool:
    """A 422's message or causes name the offending field (spec.* or metadata.name)."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return False
    texts = [body.get("message", "")] + [
        f"{c.get('field', '')} {c.get('message', '')}"
        for c in body.get("details", {}).get("causes", [])]
    return any("spec." in t or "metadata.name" in t for t in texts)


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready" and CAMEL.match(cond.get("reason") or ""):
            return dict(cond)
    return None


@pytest.fixture(scope="module")
def figures() -> Iterator[Figures]:
    figs = Figures()
    start = time.monotonic()
    yield figs
    print(f"\nfuzz: tried={figs.tried} refused={figs.refused} accepted={figs.accepted} "
          f"judged={figs.judged} violations={len(figs.violations)} "
          f"time={time.monotonic() - start:.0f}s")
    for v in figs.violations:
        print("  VIOLATION", v)


def test_every_spec_is_refused_with_its_field_or_judged(
        api_client: client.ApiClient, namespace: str, storage: str,
        gpu_fleet: dict[str, list[str]], running_operator: OperatorProcess,
        figures: Figures) -> None:
    objects = client.CustomObjectsApi(api_client)
    batch_no = iter(range(10**9))

    @settings(max_examples=max(1, SPECS // BATCH), deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(SPEC, min_size=BATCH, max_size=BATCH))
    def run_batch(batch: list[tuple[str, str, dict[str, Any]]]) -> None:
        n = next(batch_no)
        created: dict[tuple[str, str], dict[str, Any]] = {}
        for i, (plural, name, spec) in enumerate(batch):
            # A unique suffix keeps every object new; the name's shape is what is fuzzed.
            name = f"{name}{n}x{i}" if len(name) < 200 else name
            figures.tried += 1
            body = {"apiVersion": "trtllm.dev/v1alpha1", "metadata": {"name": name},
                    "kind": "LLMEngine" if plural == "llmengines" else "LLMDeployment",
                    "spec": spec}
            try:
                objects.create_namespaced_custom_object(
                    "trtllm.dev", "v1alpha1", namespace, plural, body)
            except ApiException as exc:
                if exc.status == 422 and _names_field(exc):
                    figures.refused += 1
                else:
                    figures.violations.append(
                        f"{plural} {json.dumps(spec)}: refused {exc.status} without a field: "
                        f"{(exc.body or '')[:300]}")
                continue
            figures.accepted += 1
            created[(plural, name)] = spec
        pending = dict(created)
        deadline = time.monotonic() + JUDGE_WAIT
        while pending and time.monotonic() < deadline:
            for plural in ("llmengines", "llmdeployments"):
                listed = objects.list_namespaced_custom_object(
                    "trtllm.dev", "v1alpha1", namespace, plural)["items"]
                for obj in listed:
                    key = (plural, obj["metadata"]["name"])
                    if key in pending and _ready(obj) is not None:
                        figures.judged += 1
                        del pending[key]
            time.sleep(1)
        for (plural, name), spec in pending.items():
            obj = objects.get_namespaced_custom_object(
                "trtllm.dev", "v1alpha1", namespace, plural, name)
            figures.violations.append(
                f"{plural} {json.dumps(spec)}: accepted but not judged in {JUDGE_WAIT:.0f}s: "
                f"status={json.dumps(obj.get('status'))[:300]}")
        for plural, name in created:
            try:
                objects.delete_namespaced_custom_object(
                    "trtllm.dev", "v1alpha1", namespace, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        assert running_operator.healthy(), "the operator process died"

    run_batch()
    log = running_operator.log_path.read_text(errors="replace")
    tracebacks = log.count("Traceback")
    if tracebacks:
        figures.violations.append(f"operator log has {tracebacks} traceback(s)")
    assert not figures.violations, "\n".join(figures.violations[:20])
