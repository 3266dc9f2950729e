"""``make bench``: how fast a fleet of LLMDeployments converges, next to the API server's floor.

    python -m trtllm_operator.localcluster.bench --deployments 100 [--nodes 20] [--out f.json]

Three modes, each on a fresh local cluster with the same simulated H100 nodes:

- **floor**: a bare client creates, for each of N names, exactly the Deployment and Service the
  operator would make (built by the operator's own builders from a Built engine). What the
  control plane needs to get N serving Deployments available, with no operator in the way.
- **objects** (optional): the floor plus what no operator of LLMDeployments can avoid: the
  bare client also creates each LLMDeployment (owning its children), writes its status once at
  once and once when its Deployment is available (Ready), and posts one Event. The same
  status fields as the operator's, so the API server's work per write is comparable.
- **operator**: the operator builds one engine, then N LLMDeployments of it are created; timed
  until every child exists, every Deployment is available and every LLMDeployment is Ready.

Progress is read from watches (the event's arrival time per object), never by listing the
fleet in a loop. API requests by verb and resource come from the API server's own
``apiserver_request_total`` (its loopback /metrics), diffed over the run and over an idle
period after convergence. Operator peak RSS and CPU seconds come from /proc. A measurement,
not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from trtllm_operator import gpus
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.demo import Kubectl, apply_crds, repo_root
from trtllm_operator.deployments import builders
from trtllm_operator.deployments.controller import serving_for
from trtllm_operator.localcluster.binaries import BinaryBuilder
from trtllm_operator.localcluster.cluster import ClusterOptions, LocalCluster, static_rwx_claim
from trtllm_operator.localcluster.operator_process import OperatorProcess

log = logging.getLogger(__name__)

NAMESPACE = "bench"
CLAIM = "trtllm-engines"
ENGINE = "llama-3-8b"
GROUP, VERSION = "trtllm.dev", "v1alpha1"
H100 = gpus.gpu_type("h100").product
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
CREATE_THREADS = 4


def engine_manifest(root: Path) -> dict[str, Any]:
    """The 8B sample engine, built for H100 only."""
    body: dict[str, Any] = yaml.safe_load((root / "samples/llmengine-llama-3-8b.yaml").read_text())
    body["metadata"] = {"name": ENGINE, "namespace": NAMESPACE}
    body["spec"]["targets"] = [H100]
    return body


def llmd_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"engineRef": {"name": ENGINE}, "gpu": H100, "replicas": 1}}


def floor_children(engine: dict[str, Any], name: str, uid: str,
                   owned: bool = False) -> list[dict[str, Any]]:
    """What the operator applies for LLMDeployment ``name`` of a Built ``engine``, from its own
    builders (the spec-hash annotation included), less the owner reference unless ``owned``
    (``uid`` is then the LLMDeployment's)."""
    d = LLMDeployment.model_validate(
        llmd_manifest(name) | {"metadata": {"name": name, "namespace": NAMESPACE, "uid": uid}})
    e = LLMEngine.model_validate(engine)
    target = next(t for t in e.status.targets if t.gpu == H100)
    serving = serving_for(e, target)
    options = builders.options_configmap(d, ENGINE, serving.backend, serving.release)
    manifests = [*([options] if options else []),
                 builders.deployment(d, e, serving, e.spec.storage.claim_name),
                 builders.service(d, ENGINE)]
    for m in manifests if not owned else ():
        # No LLMDeployment exists to own them: the garbage collector would delete them.
        del m["metadata"]["ownerReferences"]
    return [builders.with_spec_hash(m) for m in manifests]


def _conditions(ready: bool) -> list[dict[str, Any]]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def c(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": status, "reason": reason, "message": message,
                "observedGeneration": 1, "lastTransitionTime": now}
    built = c("EngineReady", "True", "EngineBuilt", f"engine for {H100} built (ffffffffffff)")
    if ready:
        return [built,
                c("Available", "True", "MinimumReplicasAvailable",
                  "Deployment has minimum availability."),
                c("Progressing", "False", "RolloutComplete",
                  "1 replica(s) on the current engine and settings"),
                c("Ready", "True", "Ready", "1/1 replicas ready")]
    return [built,
            c("Available", "Unknown", "Pending",
              "the Deployment has not reported availability yet"),
            c("Progressing", "True", "RollingOut", "0/1 updated, 0/1 available"),
            c("Ready", "False", "RollingOut", "0/1 ready, 0/1 updated"),
            c("Reconciling", "True", "RollingOut", "0/1 ready, 0/1 updated")]


def minimal_status(name: str, ready: bool) -> dict[str, Any]:
    """The status an LLMDeployment of the bench has when its Deployment is made (``ready``
    False) and once it is available: the fields and conditions the operator writes."""
    count = 1 if ready else 0
    return {"observedGeneration": 1, "gpu": H100, "gpuReason": "named by spec.gpu",
            "engineFingerprint": "f" * 64, "replicasOwner": "spec.replicas", "slices": [],
            "endpoint": f"http://{name}.{NAMESPACE}.svc.cluster.local:8000/v1",
            "selector": f"app.kubernetes.io/instance={name},app.kubernetes.io/name=trtllm-serve",
            "replicas": count, "readyReplicas": count, "replicaSummary": f"{count}/1",
            "conditions": _conditions(ready)}


def ready_event(name: str, uid: str) -> dict[str, Any]:
    """The one Event of an LLMDeployment that became Ready (as the operator posts it)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"metadata": {"generateName": f"{name}.", "namespace": NAMESPACE},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment",
                               "name": name, "namespace": NAMESPACE, "uid": uid},
            "reason": "Ready", "message": "1/1 replicas ready", "type": "Normal",
            "source": {"component": "bench"}, "firstTimestamp": now, "lastTimestamp": now,
            "count": 1}


def synthetic_built(engine: dict[str, Any]) -> dict[str, Any]:
    """The engine as the operator records it once Built (fingerprint and folder made up)."""
    return engine | {"status": {"targets": [{
        "gpu": H100, "state": "Built", "reason": "Built", "fingerprint": "f" * 64,
        "path": f"engines/{ENGINE}/h100", "job": "bench", "image": engine["spec"]["build"]
        .get("image") or "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"}]}}


# --------------------------------------------------------------------------- measurements


def request_counts(api: Any, metric: str = "apiserver_request_total") -> Counter[tuple[str, str]]:
    """An API server counter summed by (verb, resource[/subresource]): requests
    (apiserver_request_total), or the seconds they took
    (apiserver_request_duration_seconds_sum, in milliseconds)."""
    response = api.call_api("GET", api.configuration.host + "/metrics")
    text = response.read().decode()
    scale = 1000 if metric.endswith("_seconds_sum") else 1
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != metric:
                continue
            res = sample.labels.get("resource", "")
            if sample.labels.get("subresource"):
                res += "/" + sample.labels["subresource"]
            counts[(sample.labels.get("verb", ""), res)] += int(sample.value * scale)
    return counts


REQUEST_MS = "apiserver_request_duration_seconds_sum"


def diff(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]]) -> dict[str, int]:
    out = {f"{verb} {res}": after[(verb, res)] - before[(verb, res)] for verb, res in after}
    return {k: v for k, v in sorted(out.items()) if v > 0}


def writes(requests: dict[str, int], but_not: tuple[str, ...] = ("leases",)) -> int:
    """Write requests, leases (node and leader heartbeats) left out unless asked."""
    return sum(n for k, n in requests.items()
               if k.split(" ")[0] in WRITE_VERBS and k.split(" ")[1] not in but_not)


def proc_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a live process, from /proc (VmHWM is the kernel's own
    high-water mark, so no sampling can miss a peak)."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm_kib = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return hwm_kib / 1024, ticks / os.sysconf("SC_CLK_TCK")


def operator_metrics(port: int) -> dict[str, Any]:
    """From the operator's own /metrics: reconciles by kind and outcome; per kind the reconcile
    time and the queue wait, per operation the API time, and the write limit's wait (each:
    mean, and the bucket bounds p50 and p99 fall in)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, Any] = {"reconciles": {}}
    hist: dict[tuple[str, str], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind = sample.labels.get("kind") or sample.labels.get("operation", "")
            if sample.name == "trtllm_operator_reconciles_total":
                out["reconciles"][f"{kind} {sample.labels['outcome']}"] = int(sample.value)
            elif sample.name == "trtllm_operator_status_writes_total":
                out.setdefault("status_writes_changed", {})[
                    f"{kind} {sample.labels['changed']}"] = int(sample.value)
            elif sample.name == "trtllm_operator_status_writes_held_total":
                out.setdefault("status_writes_held", {})[kind] = int(sample.value)
            for metric in ("reconcile_duration_seconds", "queue_wait_seconds",
                           "api_request_duration_seconds", "api_rate_limiter_duration_seconds"):
                base = f"trtllm_operator_{metric}"
                if sample.name.startswith(base):
                    h = hist.setdefault((metric, kind), {"buckets": []})
                    suffix = sample.name[len(base):]
                    if suffix == "_bucket":
                        h["buckets"].append((float(sample.labels["le"]), sample.value))
                    elif suffix in ("_sum", "_count"):
                        h[suffix[1:]] = sample.value
    for (metric, kind), h in sorted(hist.items()):
        count = h.get("count") or 0
        if not count:
            continue
        buckets = sorted(h["buckets"])

        def bound(q: float, buckets: list[tuple[float, float]] = buckets,
                  count: float = count) -> float:
            return next(le for le, n in buckets if n >= q * count)

        out[f"{metric} {kind}"] = {"count": int(count),
                                   "mean_ms": round(1000 * h["sum"] / count, 1),
                                   "p50_le_s": bound(0.5), "p99_le_s": bound(0.99)}
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Profiler:
    """py-spy sampling a live process until stopped, into a collapsed-stack file (one line per
    stack: ``frame;frame;... count``; speedscope.app and flamegraph.pl open it as is).

    py-spy is not a dependency of the project: ``pip install py-spy`` to use ``--profile``."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy")
        if exe is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        """Stop sampling (py-spy writes its file on Ctrl-C)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def profile_summary(collapsed: str, top: int = 25) -> list[tuple[str, int, int]]:
    """(function, self samples, inclusive samples) of the ``top`` functions by inclusive
    samples, from py-spy's collapsed stacks; a function recursing counts once per stack."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    ranked = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:top]  # ties by name
    return [(f, own[f], n) for f, n in ranked]


@dataclass
class Progress:
    """Arrival times (monotonic) of watch events, per object name."""

    n: int
    exists: dict[str, float] = field(default_factory=dict)
    available: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def note(self, table: dict[str, float], name: str) -> bool:
        """Note ``name``'s first arrival in ``table``; True if this was it."""
        with self.cond:
            if name in table:
                return False
            table[name] = time.monotonic()
            self.cond.notify_all()
            return True

    def wait(self, done: Callable[[], bool], deadline: float) -> bool:
        with self.cond:
            return self.cond.wait_for(done, timeout=max(0.0, deadline - time.monotonic()))


def _watch(list_fn: Callable[..., Any], on: Callable[[dict[str, Any]], None],
           stop: threading.Event, **kwargs: Any) -> None:
    """Feed every object event of one watch to ``on`` until ``stop``; resumes after the
    server closes the watch."""
    from kubernetes import watch

    version = None
    while not stop.is_set():
        w: Any = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            # deserialize=False: plain dicts, not the client's models (slow for 1,000 objects).
            for event in w.stream(list_fn, resource_version=version, timeout_seconds=30,
                                  _request_timeout=40, deserialize=False, **kwargs):
                obj = event["object"]
                if event["type"] == "ERROR":  # 410 Gone: list again from now
                    version = None
                    break
                version = obj["metadata"].get("resourceVersion", version)
                on(obj)
                if stop.is_set():
                    break
        except Exception as exc:  # a dropped watch: start a new one
            log.debug("watch restarted: %r", exc)
            version = None
            time.sleep(0.5)
        finally:
            w.stop()


def start_watches(api: Any, progress: Progress, stop: threading.Event, with_llmd: bool,
                  on_available: Callable[[str], None] | None = None
                  ) -> list[threading.Thread]:
    from kubernetes import client

    def deployments(**kw: Any) -> Any:
        return client.AppsV1Api(api).list_namespaced_deployment(NAMESPACE, **kw)

    def on_deployment(obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        progress.note(progress.exists, name)
        status = obj.get("status") or {}
        available = int(status.get("availableReplicas") or 0) >= int(
            obj["spec"].get("replicas") or 0)
        if available and progress.note(progress.available, name) and on_available is not None:
            on_available(name)

    def llmds(**kw: Any) -> Any:
        return client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "llmdeployments", **kw)

    def on_llmd(obj: dict[str, Any]) -> None:
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                progress.note(progress.ready, obj["metadata"]["name"])

    targets: list[tuple[Callable[..., Any], Callable[[dict[str, Any]], None]]] = [
        (deployments, on_deployment)]
    if with_llmd:
        targets.append((llmds, on_llmd))
    threads = [threading.Thread(target=_watch, args=(fn, on, stop), daemon=True)
               for fn, on in targets]
    for t in threads:
        t.start()
    return threads


# --------------------------------------------------------------------------- one mode


@dataclass
class Settings:
    deployments: int
    nodes: int
    build_seconds: float
    idle_seconds: float
    timeout: float
    operator_env: dict[str, str]
    profile: Path | None = None
    """Where py-spy's collapsed stacks of the operator go (from the first create until
    convergence), or None."""


def _setup(kubectl: Kubectl, root: Path) -> None:
    apply_crds(kubectl, root)
    kubectl("create", "namespace", NAMESPACE)
    kubectl("create", "secret", "generic", "hf-token", "-n", NAMESPACE,
            "--from-literal=HF_TOKEN=not-a-real-token")
    pv, pvc = static_rwx_claim(NAMESPACE, CLAIM, f"bench-{CLAIM}")
    kubectl("apply", "-f", "-", input=json.dumps(pv))
    kubectl("apply", "-f", "-", input=json.dumps(pvc))


def _wait_engine_built(api: Any, timeout: float) -> dict[str, Any]:
    """One object, polled: the fleet is not created yet, so this loads nothing."""
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: Any = objects.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "llmengines", ENGINE)
        states = [t.get("state") for t in (body.get("status") or {}).get("targets") or []]
        if states == ["Built"]:
            return dict(body)
        time.sleep(0.5)
    raise RuntimeError(f"engine {ENGINE} not Built after {timeout}s")


def _create_all(items: list[Callable[[], None]]) -> None:
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        for f in [pool.submit(item) for item in items]:
            f.result()


def run_mode(mode: str, cfg: Settings, workdir: Path) -> dict[str, Any]:
    from kubernetes import client

    root = repo_root()
    tools = BinaryBuilder().ensure()
    names = [f"llm-{i:05d}" for i in range(cfg.deployments)]
    result: dict[str, Any] = {"mode": mode, "deployments": cfg.deployments, "nodes": cfg.nodes}
    with LocalCluster(tools, ClusterOptions(job_duration_seconds=cfg.build_seconds)) as cluster:
        assert cluster.kubeconfig
        cluster.add_nodes("h100", cfg.nodes, timeout=300)
        kubectl = Kubectl(tools["kubectl"], cluster.kubeconfig)
        _setup(kubectl, root)
        api = cluster.api_client()
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = CREATE_THREADS + 4
        objects = client.CustomObjectsApi(api)
        operator: OperatorProcess | None = None
        later = ThreadPoolExecutor(CREATE_THREADS)  # the objects mode's Ready writes
        try:
            engine = engine_manifest(root)
            if mode == "operator":
                operator = OperatorProcess(cluster.kubeconfig, workdir / f"operator-{mode}.log",
                                           extra_env=cfg.operator_env)
                operator.start()
                objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE,
                                                        "llmengines", engine)
                _wait_engine_built(api, 300)
            else:
                engine = synthetic_built(engine)
            progress = Progress(cfg.deployments)
            stop = threading.Event()
            uids: dict[str, str] = {}

            def ready(name: str) -> None:
                try:
                    objects.patch_namespaced_custom_object_status(
                        GROUP, VERSION, NAMESPACE, "llmdeployments", name,
                        {"status": minimal_status(name, ready=True)})
                    core: Any = client.CoreV1Api(api)  # a plain dict manifest
                    core.create_namespaced_event(NAMESPACE, ready_event(name, uids[name]))
                except Exception as exc:  # that object never shows Ready: the run times out
                    log.warning("Ready of %s not written: %r", name, exc)

            def ready_later(name: str) -> None:
                later.submit(ready, name)

            start_watches(api, progress, stop, with_llmd=mode != "floor",
                          on_available=ready_later if mode == "objects" else None)
            time.sleep(1.0)  # the watches are open before the first create
            applied: dict[str, float] = {}
            profiler = None
            if cfg.profile is not None and operator is not None and operator.proc is not None:
                profiler = Profiler(operator.proc.pid, cfg.profile)
            cpu0 = proc_usage(operator.proc.pid)[1] if operator and operator.proc else 0.0
            components0 = {n: proc_usage(pid)[1] for n, pid in cluster.pids.items()}
            load0 = os.getloadavg()[0]
            before = request_counts(api)
            before_ms = request_counts(api, REQUEST_MS)
            t0 = time.monotonic()

            def create(name: str) -> Callable[[], None]:
                def run() -> None:
                    applied[name] = time.monotonic()
                    if mode == "operator":
                        objects.create_namespaced_custom_object(
                            GROUP, VERSION, NAMESPACE, "llmdeployments", llmd_manifest(name))
                        return
                    apps: Any = client.AppsV1Api(api)  # plain dict manifests, not models
                    core: Any = client.CoreV1Api(api)
                    uid = f"uid-{name}"
                    if mode == "objects":
                        made: Any = objects.create_namespaced_custom_object(
                            GROUP, VERSION, NAMESPACE, "llmdeployments", llmd_manifest(name))
                        uid = uids[name] = made["metadata"]["uid"]
                    for m in floor_children(engine, name, uid, owned=mode == "objects"):
                        if m["kind"] == "Deployment":
                            apps.create_namespaced_deployment(NAMESPACE, m)
                        elif m["kind"] == "ConfigMap":
                            core.create_namespaced_config_map(NAMESPACE, m)
                        else:
                            core.create_namespaced_service(NAMESPACE, m)
                    if mode == "objects":
                        objects.patch_namespaced_custom_object_status(
                            GROUP, VERSION, NAMESPACE, "llmdeployments", name,
                            {"status": minimal_status(name, ready=False)})
                return run

            _create_all([create(n) for n in names])
            result["created_s"] = round(time.monotonic() - t0, 2)
            deadline = t0 + cfg.timeout
            n = cfg.deployments
            done = {
                "exist": progress.wait(lambda: len(progress.exists) >= n, deadline),
                "available": progress.wait(lambda: len(progress.available) >= n, deadline),
                "ready": mode == "floor" or progress.wait(
                    lambda: len(progress.ready) >= n, deadline)}
            result["converged"] = all(done.values())
            result["counts"] = {"exist": len(progress.exists),
                                "available": len(progress.available),
                                "ready": len(progress.ready) if mode != "floor" else None}

            def last(table: dict[str, float]) -> float | None:
                return round(max(table.values()) - t0, 2) if len(table) >= n else None

            if profiler is not None:
                profiler.stop()
                result["profile"] = str(profiler.out)
            # Where the machine's CPU went during the run, per control-plane process.
            result["component_cpu_run_s"] = {
                n: round(proc_usage(pid)[1] - components0[n], 2)
                for n, pid in cluster.pids.items() if n in components0}
            result["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            if operator is not None and operator.proc is not None:
                result["operator_metrics"] = operator_metrics(operator.metrics_port)
                # The fleet's share: the engine build and startup before t0 left out.
                result["operator_cpu_run_s"] = round(proc_usage(operator.proc.pid)[1] - cpu0, 2)
            result["all_exist_s"] = last(progress.exists)
            result["all_available_s"] = last(progress.available)
            result["all_ready_s"] = last(progress.ready) if mode != "floor" else None
            latency = [(progress.exists[k] - applied[k]) * 1000 for k in progress.exists
                       if k in applied]
            result["apply_to_deployment_ms"] = _percentiles(latency)
            # How long after its Deployment became available an LLMDeployment said Ready.
            result["available_to_ready_ms"] = _percentiles([
                (progress.ready[k] - progress.available[k]) * 1000 for k in progress.ready
                if k in progress.available])
            after = request_counts(api)
            result["requests_run"] = diff(after, before)
            result["writes_run"] = writes(result["requests_run"])
            # Where the API server's time went (watches left out: they last as long as open).
            result["request_ms_run"] = {k: v for k, v in diff(
                request_counts(api, REQUEST_MS), before_ms).items()
                if not k.startswith("WATCH")}
            time.sleep(cfg.idle_seconds)
            idle = request_counts(api)
            # Who posted the run's Events, and why (one LIST, after the measured periods).
            events: Any = client.CoreV1Api(api).list_namespaced_event(NAMESPACE)
            result["events_by_reason"] = dict(Counter(
                f"{e.reporting_component or (e.source.component if e.source else '')} "
                f"{e.involved_object.kind} {e.reason}" for e in events.items).most_common())
            result["idle_seconds"] = cfg.idle_seconds
            result["requests_idle"] = diff(idle, after)
            result["writes_idle"] = writes(result["requests_idle"])
            if operator is not None and operator.proc is not None:
                rss, cpu = proc_usage(operator.proc.pid)
                result["operator_peak_rss_mib"] = round(rss, 1)
                result["operator_cpu_s"] = round(cpu, 2)
            stop.set()
        finally:
            later.shutdown(wait=False, cancel_futures=True)
            if operator is not None:
                operator.stop()
    return result


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {"p50": _round(percentile(values, 0.50)), "p90": _round(percentile(values, 0.90)),
            "p99": _round(percentile(values, 0.99)), "max": _round(max(values, default=None))}


# --------------------------------------------------------------------------- engine fleet

ENGINE_GPUS = ("h100", "l40s", "a100")


def fleet_engine_manifest(root: Path, i: int) -> dict[str, Any]:
    """Engine ``i`` of the fleet: the 8B sample for three GPU types, each engine with its own
    maxBatchSize so that no two share a build (each (engine, GPU type) needs its own Job)."""
    body = engine_manifest(root)
    body["metadata"] = {"name": f"eng-{i:04d}", "namespace": NAMESPACE}
    body["spec"]["targets"] = [gpus.gpu_type(g).product for g in ENGINE_GPUS]
    body["spec"]["build"]["limits"]["maxBatchSize"] = 1 + i
    return body


def _operator_counts(port: int) -> Counter[str]:
    """The operator's own writes by operation, and its reconciles by kind, from its
    /metrics (cumulative: diff two readings)."""
    m = operator_metrics(port)
    out: Counter[str] = Counter()
    for key, value in m.items():
        if key.startswith("api_request_duration_seconds "):
            out["write " + key.split(" ", 1)[1]] = value["count"]
    for key, n in m["reconciles"].items():
        out["reconcile " + key] = n
    return out


def _settle(port: int, quiet: float, timeout: float) -> float:
    """Wait until the operator has run no reconcile for ``quiet`` seconds; the seconds taken."""
    start = last_change = time.monotonic()
    seen = _operator_counts(port)
    while time.monotonic() - last_change < quiet and time.monotonic() - start < timeout:
        time.sleep(1.0)
        now = _operator_counts(port)
        if now != seen:
            seen, last_change = now, time.monotonic()
    return round(last_change - start, 2)


def run_engines(cfg: Settings, workdir: Path, engines: int, node_change: int) -> dict[str, Any]:
    """``engines`` LLMEngines x 3 GPU types converge (every target Built, Jobs counted); then
    ``node_change`` H100 nodes join, and later leave, with the writes each change caused."""
    from kubernetes import client

    root = repo_root()
    tools = BinaryBuilder().ensure()
    result: dict[str, Any] = {"mode": "engines", "engines": engines, "gpu_types": ENGINE_GPUS,
                              "nodes": cfg.nodes, "node_change": node_change}
    with LocalCluster(tools, ClusterOptions(job_duration_seconds=cfg.build_seconds)) as cluster:
        assert cluster.kubeconfig
        for gpu in ENGINE_GPUS:
            cluster.add_nodes(gpu, cfg.nodes, timeout=300)
        kubectl = Kubectl(tools["kubectl"], cluster.kubeconfig)
        _setup(kubectl, root)
        api = cluster.api_client()
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = CREATE_THREADS + 4
        objects = client.CustomObjectsApi(api)
        operator = OperatorProcess(cluster.kubeconfig, workdir / "operator-engines.log",
                                   extra_env=cfg.operator_env)
        operator.start()
        try:
            built: dict[str, float] = {}
            cond = threading.Condition()
            stop = threading.Event()

            def on_engine(obj: dict[str, Any]) -> None:
                states = [t.get("state") for t in (obj.get("status") or {}).get("targets")
                          or []]
                if len(states) == len(ENGINE_GPUS) and set(states) == {"Built"}:
                    with cond:
                        built.setdefault(obj["metadata"]["name"], time.monotonic())
                        cond.notify_all()

            def list_engines(**kw: Any) -> Any:
                return objects.list_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, "llmengines", **kw)

            threading.Thread(target=_watch, args=(list_engines, on_engine, stop),
                             daemon=True).start()
            time.sleep(1.0)
            cpu0 = proc_usage(operator.proc.pid)[1] if operator.proc else 0.0
            before, ops0 = request_counts(api), _operator_counts(operator.metrics_port)
            t0 = time.monotonic()
            def create(i: int) -> Callable[[], None]:
                def run() -> None:
                    objects.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "llmengines", fleet_engine_manifest(root, i))
                return run

            _create_all([create(i) for i in range(engines)])
            with cond:
                result["converged"] = cond.wait_for(lambda: len(built) >= engines,
                                                    timeout=cfg.timeout)
            result["all_built_s"] = round(max(built.values()) - t0, 2) if built else None
            result["built"] = len(built)
            result["settle_s"] = _settle(operator.metrics_port, 5.0, 120.0)
            result["requests_converge"] = diff(request_counts(api), before)
            result["writes_converge"] = writes(result["requests_converge"])
            result["operator_converge"] = dict(_operator_counts(operator.metrics_port) - ops0)
            if operator.proc:
                result["operator_cpu_converge_s"] = round(proc_usage(operator.proc.pid)[1] - cpu0,
                                                          2)
            jobs: Any = client.BatchV1Api(api).list_namespaced_job(NAMESPACE,
                                                                   _preload_content=False)
            per_target: Counter[tuple[str, str]] = Counter()
            kinds: Counter[str] = Counter()
            for job in json.loads(jobs.data)["items"]:
                job_labels = job["metadata"].get("labels") or {}
                component = job_labels.get("app.kubernetes.io/component", "?")
                kinds[component] += 1
                if component == "engine-build":
                    selector = job["spec"]["template"]["spec"].get("nodeSelector") or {}
                    per_target[(job_labels.get("trtllm.dev/engine", "?"),
                                selector.get(gpus.PRODUCT_LABEL, "?"))] += 1
            result["jobs"] = dict(kinds)
            result["build_jobs_per_target"] = dict(Counter(per_target.values()))
            for change in ("join", "leave"):
                before, ops0 = request_counts(api), _operator_counts(operator.metrics_port)
                t1 = time.monotonic()
                if change == "join":
                    added = cluster.add_nodes("h100", node_change, timeout=300)
                else:
                    cluster.remove_nodes(added)
                settle = _settle(operator.metrics_port, 5.0, 120.0)
                requests = diff(request_counts(api), before)
                result[f"node_{change}"] = {
                    "seconds": round(time.monotonic() - t1, 2), "operator_settle_s": settle,
                    "requests": requests, "writes": writes(requests),
                    "operator": dict(_operator_counts(operator.metrics_port) - ops0)}
            if operator.proc:
                rss, cpu = proc_usage(operator.proc.pid)
                result["operator_peak_rss_mib"] = round(rss, 1)
                result["operator_cpu_s"] = round(cpu, 2)
            stop.set()
        finally:
            operator.stop()
    return result


def engines_report(r: dict[str, Any]) -> str:
    def w(requests: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in requests.items()
                         if k.split(" ")[0] in WRITE_VERBS) or "none"

    lines = [f"{r['engines']} LLMEngines x {len(r['gpu_types'])} GPU types "
             f"({', '.join(r['gpu_types'])}), {r['nodes']} nodes of each",
             f"all Built: {r['all_built_s']} s ({r['built']}/{r['engines']}); Jobs: {r['jobs']}; "
             f"build Jobs per (engine, GPU type): {r['build_jobs_per_target']}",
             f"operator while converging: {r['operator_converge']}",
             f"writes while converging ({r['writes_converge']}, leases aside): "
             f"{w(r['requests_converge'])}"]
    for change in ("join", "leave"):
        c = r[f"node_{change}"]
        lines += [f"{r['node_change']} H100 nodes {change} ({c['seconds']} s): operator "
                  f"{c['operator'] or 'nothing'}",
                  f"  all writes ({c['writes']}, leases aside): {w(c['requests'])}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def table(runs: dict[str, dict[str, Any]]) -> str:
    """One row per mode run; times of the others as ratios of the floor's. With the objects
    mode run too, a last line gives the operator's times as ratios of that mode's."""
    def s(v: Any) -> str:
        return "-" if v is None else f"{v}"

    def ratio(a: Any, b: Any) -> str:
        return f" ({a / b:.2f}x floor)" if a is not None and b else ""

    floor = runs["floor"]
    base = floor.get("all_available_s")
    any_run = next(iter(runs.values()))
    lines = [
        f"N = {any_run['deployments']} LLMDeployments, {any_run['nodes']} simulated H100 nodes",
        "| mode | all exist | all available | all Ready | apply->Deployment p50 / p99 ms "
        "| writes (run) | writes (idle) | peak RSS MiB | CPU s |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in runs.values():
        lat = r["apply_to_deployment_ms"]
        is_op = r is not floor
        exist = ratio(r["all_exist_s"], floor["all_exist_s"]) if is_op else ""
        avail = ratio(r["all_available_s"], base) if is_op else ""
        ready = f" s{ratio(r['all_ready_s'], base)}" if r["all_ready_s"] else ""
        lines.append(
            f"| {r['mode']} | {s(r['all_exist_s'])} s{exist} "
            f"| {s(r['all_available_s'])} s{avail} "
            f"| {s(r['all_ready_s'])}{ready} "
            f"| {s(lat['p50'])} / {s(lat['p99'])} | {r['writes_run']} "
            f"| {r['writes_idle']} in {r['idle_seconds']:.0f} s "
            f"| {s(r.get('operator_peak_rss_mib'))} | {s(r.get('operator_cpu_s'))} |")
    objects, op = runs.get("objects"), runs.get("operator")
    if objects is not None and op is not None:
        parts = [f"{label} {op[key] / objects[key]:.2f}x" for label, key in (
            ("all exist", "all_exist_s"), ("all available", "all_available_s"),
            ("all Ready", "all_ready_s")) if op.get(key) and objects.get(key)]
        lines.append("operator / objects: " + ", ".join(parts))
    return "\n".join(lines)


def _writes_breakdown(r: dict[str, Any], key: str) -> Iterator[str]:
    for k, v in r[key].items():
        if k.split(" ")[0] in WRITE_VERBS:
            yield f"  {k}: {v}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtllm_operator.localcluster.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", "-n", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=None,
                        help="simulated 8-GPU H100 nodes (default: room for every replica + 5)")
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="how long to count requests after convergence")
    parser.add_argument("--build-seconds", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--modes", default="floor,operator",
                        help="floor,operator or floor,objects,operator (a fleet of "
                             "LLMDeployments), or engines")
    parser.add_argument("--engines", type=int, default=200,
                        help="engines mode: LLMEngines, each built for 3 GPU types")
    parser.add_argument("--node-change", type=int, default=50,
                        help="engines mode: H100 nodes that join, then leave")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="record the operator with py-spy (collapsed stacks, opened by "
                             "speedscope.app) from the first create until convergence")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="operator settings, e.g. TRTLLM_OPERATOR_WORKERS=8")
    args = parser.parse_args(argv)
    cfg = Settings(
        deployments=args.deployments,
        nodes=args.nodes or math.ceil(args.deployments / 8) + 5,
        build_seconds=args.build_seconds, idle_seconds=args.idle_seconds,
        timeout=args.timeout,
        operator_env=dict(e.split("=", 1) for e in args.operator_env),
        profile=args.profile.resolve() if args.profile else None)
    results: dict[str, Any] = {"settings": vars(cfg)}
    if args.modes == "engines":
        cfg.nodes = args.nodes or 10
        with tempfile.TemporaryDirectory(prefix="trtllm-bench-") as tmp:
            r = run_engines(cfg, Path(tmp), args.engines, args.node_change)
        args.out.write_text(json.dumps({"settings": vars(cfg), "engines": r}, indent=2,
                                       default=str))
        print(engines_report(r))
        print(f"JSON: {args.out}")
        return 0 if r["converged"] else 1
    with tempfile.TemporaryDirectory(prefix="trtllm-bench-") as tmp:
        for mode in args.modes.split(","):
            print(f"--- {mode}: N = {cfg.deployments}, {cfg.nodes} nodes", flush=True)
            results[mode] = run_mode(mode, cfg, Path(tmp))
            print(json.dumps({k: v for k, v in results[mode].items()
                              if not k.startswith("requests")}), flush=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    runs = {m: r for m, r in results.items() if m in ("floor", "objects", "operator")}
    if "floor" in runs and len(runs) > 1:
        print(table(runs))
    for mode in runs:
        if mode in results:
            print(f"{mode} writes during the run:")
            print("\n".join(_writes_breakdown(results[mode], "requests_run")))
            print(f"{mode} writes in the idle period (leases included):")
            print("\n".join(_writes_breakdown(results[mode], "requests_idle")) or "  none")
    if args.profile is not None and args.profile.exists():
        print(f"operator profile (py-spy samples, top functions by inclusive time): "
              f"{args.profile}")
        for fn, own, total in profile_summary(args.profile.read_text()):
            print(f"  {total:7d} {own:7d}  {fn}")
    print(f"JSON: {args.out}")
    converged = all(r.get("converged") for r in runs.values())
    return 0 if converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
