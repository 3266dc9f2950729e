"""Property test: every generated LLMEngine / LLMDeployment spec is either refused at admission
with a message naming the field, or accepted and judged by the running operator (a Ready
condition with a CamelCase reason at the object's generation). The operator never dies and
never logs a traceback for any of them.

Most specs are a valid sample (samples/) with ONE field mutated -- dropped, of the wrong type,
out of range, an odd string or an extreme integer -- so both the refused and the accepted paths
are exercised; some are samples as they are, some are generated from scratch. The outcomes are
not hard-coded: the checks change, the contract does not. FUZZ_SPECS sets how many specs a run
tries (default 200, part of `make test`; `make fuzz` runs 10,000). The run ends with one summary
line: specs tried, refused at admission, accepted (by Ready reason), operator crashes and
tracebacks.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import ROOT, Kubectl
from tests.e2e.conftest import H100, L40S, apply, small_engine
from trtllm_operator.localcluster.cluster import static_rwx_claim
from trtllm_operator.localcluster.operator_process import OperatorProcess

BATCH = 20
SPECS = int(os.environ.get("FUZZ_SPECS", "200"))
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

RANDOM_SPEC = st.one_of(st.tuples(st.just("llmengines"), NAMES, ENGINE_SPEC),
                        st.tuples(st.just("llmdeployments"), NAMES, DEPLOYMENT_SPEC))

# --------------------------------------------------------------------------- sample mutations

# The engine the generated deployments name (the samples' own engines are built too), created
# before the specs run so that accepted deployments go on to roll out.
SERVED_ENGINE = "fz-engine"
PLURALS = {"LLMEngine": "llmengines", "LLMDeployment": "llmdeployments"}


def _samples() -> list[tuple[str, str, dict[str, Any]]]:
    """(plural, name, spec) of every sample."""
    found = []
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        found.append((PLURALS[doc["kind"]], doc["metadata"]["name"], doc["spec"]))
    return found


SAMPLES = _samples()

Path_ = tuple[str | int, ...]


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key and list item below ``node``, as paths from it."""
    if isinstance(node, dict):
        items: list[tuple[str | int, Any]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    found: list[Path_] = []
    for key, value in items:
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


EXTREME_INTS = [0, -1, -2**31, 2**31, 2**40, 2**53 + 1, 2**63 - 1, -2**63]
ODD_STRINGS = ["", " ", "a" * 300, "x" * 5000, "ünïcödé", "../../etc/passwd", "-x", "--",
               "line\nbreak", "0", "null", "${HOME}", "UPPER_case", "with space",
               "nvidia.com/gpu", "*"]
OTHER_TYPES: list[Any] = [42, -3.5, "text", True, None, [], {}, ["a", 1], {"k": "v"}]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], str]:
    """A sample with ONE field changed; the last item says what was done, for violations."""
    plural, name, sample = draw(st.sampled_from(SAMPLES))
    spec = copy.deepcopy(sample)
    path = draw(st.sampled_from(_paths(spec)))
    parent: Any = spec
    for key in path[:-1]:
        parent = parent[key]
    leaf, old = path[-1], parent[path[-1]]
    kinds = ["drop", "wrong type"]
    if isinstance(old, bool):
        pass
    elif isinstance(old, int | float):
        kinds += ["extreme int"] * 2
    elif isinstance(old, str):
        kinds += ["odd string"] * 2
    elif isinstance(old, dict | list):
        kinds += ["emptied"]
    kind = draw(st.sampled_from(kinds))
    if kind == "drop":
        del parent[leaf]
    elif kind == "extreme int":
        parent[leaf] = draw(st.sampled_from(EXTREME_INTS))
    elif kind == "odd string":
        parent[leaf] = draw(st.sampled_from(ODD_STRINGS))
    elif kind == "emptied":
        parent[leaf] = type(old)()
    else:
        parent[leaf] = draw(st.sampled_from(
            [v for v in OTHER_TYPES if type(v) is not type(old)]))
    where = "spec." + ".".join(str(k) for k in path)
    shown = "" if kind == "drop" else f" = {json.dumps(parent[leaf])[:40]}"
    return plural, name, spec, f"{kind} {where}{shown}"


@st.composite
def _spec(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], str]:
    """Mostly a sample with one field mutated; some samples as they are; some from scratch."""
    roll = draw(st.integers(0, 9))
    if roll < 7:
        return draw(_mutated())
    if roll < 8:
        plural, name, sample = draw(st.sampled_from(SAMPLES))
        return plural, name, copy.deepcopy(sample), "sample"
    plural, name, spec = draw(RANDOM_SPEC)
    return plural, name, spec, "random"


SPEC = _spec()


@dataclass
class Figures:
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Ready reason of each accepted spec when the operator first judged it."""
    crashes: int = 0
    tracebacks: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self, seconds: float) -> str:
        judged = sum(self.reasons.values())
        reasons = ", ".join(f"{r}={n}" for r, n in self.reasons.most_common())
        return (f"fuzz: tried={self.tried} refused_at_admission={self.refused} "
                f"accepted={self.accepted} (judged={judged}: {reasons or 'none'}) "
                f"operator_crashes={self.crashes} tracebacks={self.tracebacks} "
                f"violations={len(self.violations)} time={seconds:.0f}s")


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
    print("\n" + figs.summary(time.monotonic() - start))
    for v in figs.violations:
        print("  VIOLATION", v)


@pytest.fixture
def served_engines(core: client.CoreV1Api, kubectl: Kubectl, namespace: str) -> Iterator[None]:
    """The engines deployments name, built before the specs run: every engine sample under its
    own name (the deployment samples name them; the 70B one reads the "models" claim) and
    SERVED_ENGINE."""
    pv, pvc = static_rwx_claim(namespace, "models", f"models-{namespace}"[:63])
    core.create_persistent_volume(pv)
    core.create_namespaced_persistent_volume_claim(namespace, pvc)
    try:
        engines = [small_engine(SERVED_ENGINE, [H100, L40S])] + [
            {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMEngine",
             "metadata": {"name": name}, "spec": spec}
            for plural, name, spec in SAMPLES if plural == "llmengines"]
        for engine in engines:
            apply(kubectl, namespace, engine)
        for engine in engines:
            kubectl("wait", "-n", namespace, "--for=condition=Ready",
                    f"llmengine/{engine['metadata']['name']}", "--timeout=120s", timeout=130)
        yield
    finally:
        core.delete_persistent_volume(pv["metadata"]["name"])


@pytest.mark.usefixtures("storage", "hf_token", "gpu_fleet", "served_engines")
@pytest.mark.usefixtures("storage", "hf_token", "gpu_fleet")
def test_every_spec_is_refused_with_its_field_or_judged(
        api_client: client.ApiClient, namespace: str, running_operator: OperatorProcess,
        figures: Figures) -> None:
    objects = client.CustomObjectsApi(api_client)
    batch_no = iter(range(10**9))

    @settings(max_examples=max(1, SPECS // BATCH), deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(SPEC, min_size=BATCH, max_size=BATCH))
    def run_batch(batch: list[tuple[str, str, dict[str, Any], str]]) -> None:
        n = next(batch_no)
        created: dict[tuple[str, str], str] = {}
        for i, (plural, name, spec, origin) in enumerate(batch):
            # A unique suffix keeps every object new; the name's shape is what is fuzzed.
            name = f"{name}{n}x{i}" if len(name) < 200 else name
            figures.tried += 1
            body = {"apiVersion": "trtllm.dev/v1alpha1", "metadata": {"name": name},
                    "kind": "LLMEngine" if plural == "llmengines" else "LLMDeployment",
                    "spec": spec}
            described = f"{plural} [{origin}] {json.dumps(spec)[:400]}"
            try:
                objects.create_namespaced_custom_object(
                    "trtllm.dev", "v1alpha1", namespace, plural, body)
            except ApiException as exc:
                if exc.status == 422 and _names_field(exc):
                    figures.refused += 1
                else:
                    figures.violations.append(
                        f"{described}: refused {exc.status} without a field: "
                        f"{(exc.body or '')[:300]}")
                continue
            figures.accepted += 1
            created[(plural, name)] = described
        pending = dict(created)
        deadline = time.monotonic() + JUDGE_WAIT
        while pending and time.monotonic() < deadline:
            for plural in ("llmengines", "llmdeployments"):
                listed = objects.list_namespaced_custom_object(
                    "trtllm.dev", "v1alpha1", namespace, plural)["items"]
                for obj in listed:
                    key = (plural, obj["metadata"]["name"])
                    ready = _ready(obj) if key in pending else None
                    if ready is not None:
                        figures.reasons[ready["reason"]] += 1
                        del pending[key]
            time.sleep(1)
        for (plural, name), described in pending.items():
            obj = objects.get_namespaced_custom_object(
                "trtllm.dev", "v1alpha1", namespace, plural, name)
            figures.violations.append(
                f"{described}: accepted but not judged in {JUDGE_WAIT:.0f}s: "
                f"status={json.dumps(obj.get('status'))[:300]}")
        for plural, name in created:
            try:
                objects.delete_namespaced_custom_object(
                    "trtllm.dev", "v1alpha1", namespace, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        if running_operator.proc is None or running_operator.proc.poll() is not None:
            figures.crashes += 1
            raise AssertionError(f"the operator process died:\n{running_operator.tail()}")

    run_batch()
    log = running_operator.log_path.read_text(errors="replace")
    figures.tracebacks = log.count("Traceback")
    if figures.tracebacks:
        first = log[log.index("Traceback") - 300:][:3000]
        figures.violations.append(
            f"operator log has {figures.tracebacks} traceback(s); the first:\n{first}")
    assert not figures.violations, "\n".join(figures.violations[:20])
