"""kopf registrations: in-memory indexes of cluster facts, and thin event handlers that enqueue.

Why this shape:

- **Indexes, not LISTs.** GPU nodes, build Jobs and their pods, and what each LLMEngine has
  built are kept in kopf indexes, fed by watches. A reconcile reads memory only. kopf starts no
  handler before every index has been fully listed, so no reconcile ever judges a half-known
  cluster (for example, "no H100 node" a second after start).
- **Event handlers that only enqueue.** kopf calls a handler for the object an event is about;
  the controllers are level-triggered and need "this LLMEngine, again" when its Job, a build
  pod or the GPU node pools change. Handlers put keys on a de-duplicating queue
  (:mod:`trtllm_operator.workqueue`); workers reconcile. Using only ``on.event`` (no
  ``on.create``/``on.update``) also means kopf stores no handler progress or last-handled
  configuration on users' objects: GitOps tools see no drift.
- **Filtering.** Index functions keep only what the operator owns or needs (its labels, GPU
  nodes) and only the fields it reads, so memory stays flat in objects it does not own.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError
from lightkube.resources.batch_v1 import Job

from trtllm_operator import gpu_usage, gpus, labels, metrics
from trtllm_operator.api import API_GROUP, API_VERSION, EngineTargetStatus
from trtllm_operator.api.engine import ModelCacheStatus
from trtllm_operator.claims import ClaimFact, observe_claim
from trtllm_operator.deployments import autoscaling, multinode
from trtllm_operator.deployments import builders as serving
from trtllm_operator.deployments.controller import DeploymentController
from trtllm_operator.engines import jobs as jobbuilder
from trtllm_operator.engines import model_cache
from trtllm_operator.engines.controller import EngineController, Key
from trtllm_operator.engines.planning import CheckpointKey, checkpoint_key
from trtllm_operator.kube import (
    OPTIONAL_RESOURCES,
    Kube,
    classify,
    leaderworkerset_support,
    make_client,
    namespace_terminating,
)
from trtllm_operator.optional_apis import Support, SupportCache
from trtllm_operator.pods import PodFact, observe_pod
from trtllm_operator.reconcile_errors import ReconcileErrors
from trtllm_operator.settings import OperatorSettings
from trtllm_operator.validation import ClusterFacts, GPUPool
from trtllm_operator.workqueue import Backoff, TokenBucket, WorkQueue
from trtllm_operator.write_lane import WriteLane

log = logging.getLogger(__name__)

BUILD_LABELS = {labels.MANAGED_BY: labels.MANAGER, labels.COMPONENT: jobbuilder.BUILD_COMPONENT}


def _job_component(value: str | None, **_: Any) -> bool:
    return value in (jobbuilder.BUILD_COMPONENT, model_cache.DOWNLOAD_COMPONENT,
                     jobbuilder.QUANTIZE_COMPONENT)


# Build, model-download and quantize Jobs (and their pods): the engine reconcile reads them.
JOB_LABELS: dict[str, Any] = {labels.MANAGED_BY: labels.MANAGER,
                              labels.COMPONENT: _job_component}
SERVING_LABELS = {labels.MANAGED_BY: labels.MANAGER, labels.COMPONENT: serving.SERVING_COMPONENT}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# Handlers receive a ``labels`` argument that shadows the module inside them.
ENGINE_LABEL = labels.ENGINE
DEPLOYMENT_LABEL = labels.DEPLOYMENT
GPU_LABEL = labels.GPU_PRODUCT

NODE_SETTLE_SECONDS = 2.0
"""How long objects wait after a GPU pool changes before they are reconciled (see on_node)."""

NodeFact = tuple[str, int, tuple[int, int] | None, int | None]
"""(product, allocatable nvidia.com/gpu, compute capability, MiB per GPU) of one GPU node."""


# --------------------------------------------------------------------------- the view


def pool_of(facts: list[NodeFact]) -> GPUPool:
    """One GPU type's pool from its nodes' facts (the one derivation of it)."""
    caps = [f[2] for f in facts if f[2] is not None]
    memory = [f[3] for f in facts if f[3] is not None]
    return GPUPool(tuple(sorted(f[1] for f in facts)), caps[0] if caps else None,
                   min(memory) if memory else None)


class IndexView:
    """The reconcilers' read-only view of the cluster, backed by kopf's indexes."""

    def __init__(self) -> None:
        self.indexes: dict[str, Any] = {}
        self._facts: ClusterFacts | None = None
        self._seen_nodes: dict[str, NodeFact] = {}

    def _all(self, index_name: str, key: Any) -> list[Any]:
        """What one kopf index holds under ``key`` ([] before the index exists)."""
        index = self.indexes.get(index_name)
        if index is None or key not in index:
            return []
        return list(index[key])

    def _first(self, index_name: str, key: Any) -> Any:
        return next(iter(self._all(index_name, key)), None)

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Take the live index objects kopf passes to every handler."""
        for name in ("engine_bodies", "engine_builds", "gpu_nodes", "build_jobs",
                     "engine_jobs", "build_pods", "deployment_bodies",
                     "deployments_by_engine", "serving_deployments", "serving_services",
                     "serving_configmaps", "serving_pods",
                     "build_configmaps", "claims", "engines_by_claim", "model_caches",
                     "checkpoint_sizes", "serving_group_sets", "serving_workloads",
                     "serving_group_workloads", "serving_hpas", "serving_autoscalers",
                     "gpu_node_names", "gpu_pods"):
            if name in kwargs:
                self.indexes[name] = kwargs[name]

    def engine(self, key: Key) -> Mapping[str, Any] | None:
        body: Mapping[str, Any] | None = self._first("engine_bodies", key)
        return body

    def _pool(self, product: str) -> GPUPool | None:
        facts = [f for f in self._seen_nodes.values() if f[0] == product]
        return pool_of(facts) if facts else None

    def node_changed(self, name: str, fact: NodeFact | None) -> set[str]:
        """Note a GPU node event; the GPU types whose pool (node GPU counts, capability,
        memory) it changed. A heartbeat or an unrelated label changes none."""
        old = self._seen_nodes.get(name)
        if old == fact:
            return set()
        products = {f[0] for f in (old, fact) if f is not None}
        before = {p: self._pool(p) for p in products}
        if fact is None:
            self._seen_nodes.pop(name, None)
        else:
            self._seen_nodes[name] = fact
        changed = {p for p in products if self._pool(p) != before[p]}
        if changed:
            self._facts = None
        return changed

    def engines_affected_by(self, products: set[str]) -> list[Key]:
        """LLMEngines whose decisions read these GPU pools: those naming one of the types
        (or auto, which weighs every type) in spec.targets, or holding one in status."""
        out = []
        for key in self.all_engine_keys():
            body = self.engine(key) or {}
            named = set((body.get("spec") or {}).get("targets") or [])
            named |= {t.get("gpu") for t in (body.get("status") or {}).get("targets") or []}
            if "auto" in named or named & products:
                out.append(key)
        return out

    def deployments_affected_by(self, products: set[str], engines: list[Key]) -> list[Key]:
        """LLMDeployments of those engines (their GPU choice weighs the engine's pools), and
        those naming one of the types in spec.gpu or spec.slices."""
        engine_keys = set(engines)
        out = []
        for key in self.all_deployment_keys():
            spec = (self.deployment_body(key) or {}).get("spec") or {}
            engine = (spec.get("engineRef") or {}).get("name")
            named = {spec.get("gpu"), *((s or {}).get("gpu") for s in spec.get("slices") or [])}
            if named & products or (key[0], engine) in engine_keys:
                out.append(key)
        return out

    def cluster_facts(self) -> ClusterFacts:
        """GPU pools from the node index (complete before any handler runs), cached until a
        node event changes a fact."""
        if self._facts is None:
            index = self.indexes.get("gpu_nodes")
            pools: dict[str, GPUPool] = {}
            for product in (list(index.keys()) if index is not None else []):
                pools[product] = pool_of(list(index[product]))  # type: ignore[index]
            self._facts = ClusterFacts(pools)
        return self._facts

    def job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        job: Mapping[str, Any] | None = self._first("build_jobs", (namespace, name))
        return job

    def newest_pod(self, namespace: str, job_name: str) -> Mapping[str, Any] | None:
        pods = self._all("build_pods", (namespace, job_name))
        return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "",
                   default=None)

    def built_elsewhere(self, namespace: str, job_name: str,
                        but_not: str) -> EngineTargetStatus | None:
        for engine, target in self._all("engine_builds", (namespace, job_name)):
            if engine != but_not and target.get("state") == "Built":
                return EngineTargetStatus.model_validate(target)
        return None

    def jobs_of_engine(self, namespace: str, engine: str) -> list[str]:
        return [str(job) for job in self._all("engine_jobs", (namespace, engine))]

    def job_wanted_by_others(self, namespace: str, job_name: str, but_not: str) -> bool:
        return any(engine != but_not for engine, _ in (
            *self._all("engine_builds", (namespace, job_name)),
            *self._all("model_caches", (namespace, job_name))))

    def engines_using_job(self, namespace: str, job_name: str) -> set[str]:
        """Engines recording a build Job or a download Job of that name."""
        return {engine for engine, _ in (*self._all("engine_builds", (namespace, job_name)),
                                         *self._all("model_caches", (namespace, job_name)))}

    def model_cached_elsewhere(self, namespace: str, job_name: str,
                               but_not: str) -> ModelCacheStatus | None:
        for engine, model in self._all("model_caches", (namespace, job_name)):
            if engine != but_not and model.get("state") == "Cached":
                return ModelCacheStatus.model_validate(model)
        return None

    def all_engine_keys(self) -> list[Key]:
        index = self.indexes.get("engine_bodies")
        return list(index.keys()) if index is not None else []

    def checkpoint_bytes(self, key: CheckpointKey | None) -> int | None:
        """The checkpoint size a build of this model measured, if any engine recorded one."""
        sizes: list[int] = self._all("checkpoint_sizes", key) if key is not None else []
        return min(sizes, default=None)

    def has_configmap(self, namespace: str, name: str) -> bool:
        """From the watch, not from memory of having created it: a ConfigMap deleted since
        (or its namespace, recreated) is missing again and gets created again."""
        return bool(self._all("build_configmaps", (namespace, name)))

    def deployment_body(self, key: Key) -> Mapping[str, Any] | None:
        body: Mapping[str, Any] | None = self._first("deployment_bodies", key)
        return body

    def deployments_using(self, namespace: str, engine: str) -> list[str]:
        return sorted(set(self._all("deployments_by_engine", (namespace, engine))))

    def all_deployment_keys(self) -> list[Key]:
        index = self.indexes.get("deployment_bodies")
        return list(index.keys()) if index is not None else []

    def serving_deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return _unpacked(self._first("serving_deployments", (namespace, name)))

    def serving_child(self, kind: str, namespace: str,
                      name: str) -> Mapping[str, Any] | None:
        """The watched copy of a serving Deployment, Service or options ConfigMap."""
        index = {"Deployment": "serving_deployments", "Service": "serving_services",
                 "ConfigMap": "serving_configmaps",
                 "HorizontalPodAutoscaler": "serving_hpas"}[kind]
        return _unpacked(self._first(index, (namespace, name)))

    def serving_group_set(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        lws: Mapping[str, Any] | None = self._first("serving_group_sets", (namespace, name))
        return lws

    def serving_autoscaler(self, namespace: str, name: str) -> autoscaling.HPAFact | None:
        fact: autoscaling.HPAFact | None = self._first("serving_autoscalers", (namespace, name))
        return fact

    def serving_pods(self, namespace: str, name: str) -> list[PodFact]:
        pods: list[PodFact] = self._all("serving_pods", (namespace, name))
        return sorted(pods, key=lambda p: p.name)

    def serving_workloads(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(kind, name) of each Deployment and LeaderWorkerSet serving this LLMDeployment."""
        return sorted([*self._all("serving_workloads", (namespace, name)),
                       *self._all("serving_group_workloads", (namespace, name))])

    def free_gpus(self, product: str, selector: Mapping[str, str]) -> dict[str, int]:
        """Free GPUs of each node of a GPU type whose labels match ``selector`` (see
        :mod:`gpu_usage`)."""
        nodes = {name: count for name, count, node_labels in self._all("gpu_node_names", product)
                 if all(node_labels.get(k) == v for k, v in selector.items())}
        held = [(node, n) for node in nodes for n in self._all("gpu_pods", node)]
        return gpu_usage.free_gpus(nodes, held)

    def claim(self, namespace: str, name: str) -> ClaimFact | None:
        fact: ClaimFact | None = self._first("claims", (namespace, name))
        return fact

    def engines_using_claim(self, namespace: str, claim: str) -> set[str]:
        return {str(engine) for engine in self._all("engines_by_claim", (namespace, claim))}


class Runtime:
    """Everything the handlers share for one run of the operator."""

    def __init__(self) -> None:
        self.settings = OperatorSettings()
        self.view = IndexView()
        self.kube: Kube | None = None
        self.engines: WorkQueue[Key] | None = None
        self.deployments: WorkQueue[Key] | None = None
        self.controller: EngineController | None = None
        self.deployment_controller: DeploymentController | None = None
        self.engine_of: dict[Key, str] = {}
        """The engine each LLMDeployment last named (to poke both on a change of engineRef)."""
        self.pod_facts: dict[Key, PodFact] = {}
        """Each serving pod's fact as its last event showed it (see on_serving_pod)."""
        self.lws = "missing"
        self.lws_refusal = ""
        """The API server's words when listing LeaderWorkerSets was forbidden."""
        """LeaderWorkerSet support, found before kopf starts (see prepare_leaderworkersets)."""


RUNTIME = Runtime()


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    raw: Any = dict(body)  # kopf only reads apiVersion, kind and metadata from it
    kopf.event(kopf.Body(raw), type=type_, reason=reason, message=message)


def _unless_namespace_goes(reconcile: Any) -> Any:
    """Wrap a reconcile: a write refused because the namespace is being deleted ends it
    quietly (the objects go with the namespace) instead of retrying with backoff."""
    async def run(key: Key) -> Any:
        try:
            return await reconcile(key)
        except ApiError as exc:
            if namespace_terminating(exc):
                log.debug("%s: namespace %s is being deleted", key[1], key[0])
                return None
            raise
    return run


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig (--kubeconfig / KUBECONFIG)."""
    if not RUNTIME.settings.kubeconfig:
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            return info
    return kopf.login_with_kubeconfig(**kwargs)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf computes, for every watch event, an "essence" of the object (a deep copy of all
    but its status) to diff against the last handled one. Only on.create/on.update-style
    handlers read that diff; this operator registers none (see the module's docstring), so the
    copy is pure cost (a tenth of the operator's CPU under a fleet's churn, by py-spy)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    cfg = RUNTIME.settings
    settings.posting.level = logging.WARNING  # our Events are explicit (kopf.event)
    settings.watching.server_timeout = 300
    # kopf keeps a worker per object alive this long after its last event, holding that
    # event's whole body; at 5 s (kopf's default) a new fleet's thousands of objects were all
    # held at once, most of the operator's peak memory (make bench).
    settings.queueing.idle_timeout = 0.5
    # The watched resources are fixed: no need to scan CRDs and namespaces at runtime (and
    # no RBAC for them).
    settings.scanning.disabled = True
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.diffbase_storage = NoDiffBase()
    # Both kinds' workers may each have a request in flight, plus a few log reads.
    RUNTIME.kube = kube = Kube(make_client(cfg.kubeconfig, connections=2 * cfg.workers + 4),
                               writes=TokenBucket(cfg.api_write_qps, cfg.api_write_burst))
    RUNTIME.controller = EngineController(
        view=RUNTIME.view, writer=kube, events=_post_event, job_resource=Job,
        log_reader=kube.log_tail,
        active_deadline_seconds=cfg.build_deadline_seconds)
    optional = SupportCache(ttl=cfg.optional_api_ttl_seconds)
    # Cluster-wide: one answer for all namespaces; else per watched namespace (RBAC is).
    per_namespace = bool(cfg.namespaces)

    async def supports(kind: str, namespace: str | None) -> Support:
        return await optional.support(kube.client, OPTIONAL_RESOURCES[kind],
                                      namespace if per_namespace else None)

    async def inference_pools(namespace: str) -> str:
        return await supports("InferencePool", namespace)

    RUNTIME.deployment_controller = deployments = DeploymentController(
        view=RUNTIME.view, writer=kube, events=_post_event, lws=RUNTIME.lws,
        lws_refusal=RUNTIME.lws_refusal, supports=supports,
        inference_pools=inference_pools, forget_supports=optional.forget,
        pod_monitors=cfg.pod_monitors, prometheus_address=cfg.prometheus_address)

    def queue(name: str, reconcile: Any, errors: ReconcileErrors) -> WorkQueue[Key]:
        return WorkQueue(name, _unless_namespace_goes(reconcile), workers=cfg.workers,
                         backoff=Backoff(), retry_limit=TokenBucket(cfg.retry_qps,
                                                                    cfg.retry_burst),
                         classify=classify, on_failure=errors.failed,
                         on_success=errors.succeeded, on_result=metrics.observe_reconcile,
                         on_wait=metrics.observe_queue_wait)

    # Workers start on the first event (see _bind): tasks inherit the context they are
    # created in, and only handler contexts carry what kopf.event() needs to post Events.
    RUNTIME.engines = queue("llmengine", RUNTIME.controller.reconcile, ReconcileErrors(
        "LLMEngine", RUNTIME.view.engine, kube, RUNTIME.controller.status_writes,
        after=cfg.reconcile_error_after))
    RUNTIME.deployments = queue("llmdeployment", deployments.reconcile, ReconcileErrors(
        "LLMDeployment", RUNTIME.view.deployment_body, kube, deployments.status_writes,
        after=cfg.reconcile_error_after))
    deployments.service_lane = WriteLane(_requeue_deployment)
    deployments.status_writes.min_interval = cfg.status_detail_seconds
    metrics.serve(cfg.metrics_port, cfg.bind_address)


def _requeue_deployment(key: Any) -> None:
    if RUNTIME.deployments is not None:
        RUNTIME.deployments.add(key)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for queue in (RUNTIME.engines, RUNTIME.deployments):
        if queue:
            await queue.stop()
    if RUNTIME.kube:
        await RUNTIME.kube.client.close()


# --------------------------------------------------------------------------- indexes


@kopf.index(API_GROUP, API_VERSION, "llmengines")
async def engine_bodies(namespace: str | None, name: str, body: kopf.Body,
                        **_: Any) -> dict[Key, Any]:
    """Each LLMEngine as a plain dict, by (namespace, name)."""
    return {(namespace or "", name): _slim_body(body)}


_UNREAD_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})


def _slim_body(body: kopf.Body) -> dict[str, Any]:
    """A custom resource as the reconcilers read it: all but managedFields and kubectl's
    copy of the last applied manifest, which nothing reads and which can be as large as the
    rest together (a thousand LLMDeployments are held at once)."""
    out = copy.deepcopy({k: v for k, v in body.items() if k != "metadata"})
    meta = {k: copy.deepcopy(v) for k, v in body.get("metadata", {}).items()
            if k != "managedFields"}
    if meta.get("annotations"):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items()
                               if k not in _UNREAD_ANNOTATIONS}
    out["metadata"] = meta
    return out


@kopf.index(API_GROUP, API_VERSION, "llmengines")
async def engine_builds(namespace: str | None, name: str, status: kopf.Status,
                  **_: Any) -> dict[tuple[str, str], Any] | None:
    """Which LLMEngines record which build Job, and in what state: (namespace, job) ->
    (engine, target status). Lets one engine reuse another's identical build."""
    out: dict[tuple[str, str], Any] = {}
    for target in status.get("targets") or []:
        job = target.get("job")
        if job:
            out[(namespace or "", job)] = (name, copy.deepcopy(dict(target)))
    return out or None


@kopf.index(API_GROUP, API_VERSION, "llmengines")
async def model_caches(namespace: str | None, name: str, status: kopf.Status,
                 **_: Any) -> dict[tuple[str, str], Any] | None:
    """Which LLMEngines record which download Job, and its state: (namespace, job) ->
    (engine, status.modelCache or status.calibrationData). Lets an engine reuse a checkpoint
    (or a calibration dataset) another one saw Cached."""
    out = {}
    for field in ("modelCache", "calibrationData"):
        model = status.get(field) or {}
        if model.get("job"):
            out[(namespace or "", model["job"])] = (name, copy.deepcopy(dict(model)))
    return out or None


@kopf.index(API_GROUP, API_VERSION, "llmengines")
async def checkpoint_sizes(namespace: str | None, spec: kopf.Spec, status: kopf.Status,
                     **_: Any) -> dict[CheckpointKey, int] | None:
    """Checkpoint sizes the builds measured (built, or failed after measuring, such as a
    ModelDoesNotFit refusal), by model identity: the memory-fit check of any engine of the
    same model uses them before its own build runs."""
    key = checkpoint_key(namespace or "", spec.get("model") or {})
    sizes = [t["checkpointBytes"] for t in status.get("targets") or []
             if isinstance(t.get("checkpointBytes"), int)]
    return {key: min(sizes)} if key is not None and sizes else None


@kopf.index("", "v1", "nodes", labels={gpus.PRODUCT_LABEL: kopf.PRESENT})
async def gpu_nodes(name: str, labels: kopf.Labels, status: kopf.Status,
              **_: Any) -> dict[str, NodeFact] | None:
    """GPU nodes by product: (name, allocatable GPUs, compute capability)."""
    fact = node_fact(name, labels, status)
    return {fact[0]: fact} if fact else None


@kopf.index("", "v1", "nodes", labels={gpus.PRODUCT_LABEL: kopf.PRESENT})
async def gpu_node_names(name: str, labels: kopf.Labels, status: kopf.Status,
                   **_: Any) -> dict[str, tuple[str, int, dict[str, str]]] | None:
    """GPU nodes by product: (node name, allocatable GPUs, labels), for the free-GPU count of
    the nodes a pod's nodeSelector allows."""
    fact = node_fact(name, labels, status)
    return {fact[0]: (name, fact[1], dict(labels))} if fact else None


@kopf.index("", "v1", "pods")
async def gpu_pods(spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, int] | None:
    """GPUs held by bound, unfinished pods (anyone's), by node: what is free on a GPU node.
    kopf watches pods once for all its handlers; this keeps one number per GPU pod."""
    held = gpu_usage.pod_gpus(spec, status)
    return {held[0]: held[1]} if held else None


@kopf.index("batch", "v1", "jobs", labels=JOB_LABELS)
async def build_jobs(namespace: str | None, name: str, body: kopf.Body,
                     **_: Any) -> dict[tuple[str, str], Any]:
    """Build Jobs by (namespace, name), metadata and status only."""
    return {(namespace or "", name): {"metadata": {"name": name,
                                             "labels": dict(body.metadata.labels)},
                                "status": copy.deepcopy(dict(body.get("status") or {}))}}


@kopf.index("batch", "v1", "jobs", labels=JOB_LABELS)
async def engine_jobs(namespace: str | None, name: str, labels: kopf.Labels,
                **_: Any) -> dict[tuple[str, str], str] | None:
    """Build Jobs by the LLMEngine that created them."""
    engine = labels.get(ENGINE_LABEL)
    return {(namespace or "", engine): name} if engine else None


def _job_of(pod_labels: Mapping[str, str]) -> str | None:
    """The Job a pod belongs to (``job-name`` is the label's name before Kubernetes 1.27)."""
    return pod_labels.get(JOB_NAME_LABEL) or pod_labels.get("job-name")


@kopf.index("", "v1", "pods", labels=JOB_LABELS)
async def build_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body,
               **_: Any) -> dict[tuple[str, str], Any] | None:
    """Build pods by (namespace, Job name): phase, conditions, termination messages."""
    job = _job_of(labels)
    if not job:
        return None
    status = body.get("status") or {}
    return {(namespace or "", job): {
        "metadata": {"name": body.metadata.name,
                     "creationTimestamp": body.metadata.get("creationTimestamp")},
        "status": {k: copy.deepcopy(status[k]) for k in (
            "phase", "conditions", "initContainerStatuses", "containerStatuses") if k in status},
    }}


@kopf.index("", "v1", "configmaps", labels=BUILD_LABELS)
async def build_configmaps(namespace: str | None, name: str, **_: Any) -> dict[Key, bool]:
    """The build-script ConfigMaps that exist (name only: the content is immutable)."""
    return {(namespace or "", name): True}


# --------------------------------------------------------------------------- events


def _bind(kwargs: Mapping[str, Any]) -> None:
    RUNTIME.view.bind(kwargs)
    for queue in (RUNTIME.engines, RUNTIME.deployments):
        if queue is not None:
            queue.start()  # idempotent


@kopf.on.event(API_GROUP, API_VERSION, "llmengines")
async def on_engine(namespace: str | None, name: str, type: str, **kwargs: Any) -> None:
    _bind(kwargs)
    assert RUNTIME.engines is not None
    key = (namespace or "", name)
    _enqueue_deployments_of(key[0], name)
    if type == "DELETED":
        RUNTIME.engines.forget(key)
        return
    RUNTIME.engines.add(key)


def _enqueue_for_job(namespace: str, job_name: str, creator: str | None) -> None:
    assert RUNTIME.engines is not None
    names = RUNTIME.view.engines_using_job(namespace, job_name)
    if creator:
        names.add(creator)
    for engine in names:
        RUNTIME.engines.add((namespace, engine))


@kopf.on.event("batch", "v1", "jobs", labels=JOB_LABELS)
async def on_build_job(namespace: str | None, name: str, labels: kopf.Labels,
                       **kwargs: Any) -> None:
    _bind(kwargs)
    _enqueue_for_job(namespace or "", name, labels.get(ENGINE_LABEL))


@kopf.on.event("", "v1", "pods", labels=JOB_LABELS)
async def on_build_pod(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    _bind(kwargs)
    job = _job_of(labels)
    if job:
        _enqueue_for_job(namespace or "", job, labels.get(ENGINE_LABEL))


@kopf.on.event("", "v1", "configmaps", labels=BUILD_LABELS)
async def on_build_configmap(namespace: str | None, type: str, **kwargs: Any) -> None:
    """A deleted build-script ConfigMap is recreated by the reconcile of any engine of its
    namespace with a build still to run or running (its pods need it to start)."""
    _bind(kwargs)
    if type == "DELETED" and RUNTIME.engines is not None:
        for key in RUNTIME.view.all_engine_keys():
            if key[0] == (namespace or ""):
                RUNTIME.engines.add(key)


def node_fact(name: str, labels: Mapping[str, str],
              status: Mapping[str, Any]) -> NodeFact | None:
    """(product, allocatable GPUs, compute capability, MiB per GPU) of a node, None if it has no
    GPU. Labels that are missing or not numbers give None (the catalog may know instead)."""
    product = labels.get(gpus.PRODUCT_LABEL)
    if not product:
        return None
    try:
        count = int((status.get("allocatable") or {}).get(gpus.GPU_RESOURCE, "0"))
    except ValueError:
        count = 0
    try:
        cap: tuple[int, int] | None = (int(labels[gpus.COMPUTE_MAJOR_LABEL]),
                                       int(labels[gpus.COMPUTE_MINOR_LABEL]))
    except (KeyError, ValueError):
        cap = None
    try:
        memory: int | None = int(labels[gpus.MEMORY_LABEL])
    except (KeyError, ValueError):
        memory = None
    return (product, count, cap, memory)


@kopf.on.event("", "v1", "nodes", labels={gpus.PRODUCT_LABEL: kopf.PRESENT})
async def on_node(name: str, type: str, labels: kopf.Labels, status: kopf.Status,
                  **kwargs: Any) -> None:
    """Re-evaluate what reads a GPU pool when that pool changes: not on heartbeats, and not
    objects of other GPU types (one node joining must not re-reconcile the whole fleet)."""
    _bind(kwargs)
    fact = None if type == "DELETED" else node_fact(name, labels, status)
    products = RUNTIME.view.node_changed(name, fact)
    if products:
        assert RUNTIME.engines is not None and RUNTIME.deployments is not None
        engines = RUNTIME.view.engines_affected_by(products)
        # A pool rarely changes by one node: many join or leave within seconds (a scale-up,
        # a rack drained). Waiting NODE_SETTLE_SECONDS lets one reconcile per object see
        # them all (measured: 50 H100 nodes joining ran 200 engines' reconciles 7,400 times).
        for key in engines:
            RUNTIME.engines.add_after(key, NODE_SETTLE_SECONDS)
        for key in RUNTIME.view.deployments_affected_by(products, engines):
            RUNTIME.deployments.add_after(key, NODE_SETTLE_SECONDS)


# --------------------------------------------------------------------------- storage claims


@kopf.index("", "v1", "persistentvolumeclaims")
async def claims(namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status,
           **_: Any) -> dict[Key, ClaimFact]:
    """Every claim's phase and access modes. Users' claims carry no label of ours, so all are
    indexed; three small fields each, and clusters hold few claims."""
    return {(namespace or "", name): observe_claim(spec, status)}


@kopf.index(API_GROUP, API_VERSION, "llmengines")
async def engines_by_claim(namespace: str | None, name: str, spec: kopf.Spec,
                     **_: Any) -> dict[Key, str] | None:
    """Which LLMEngines mount which claims (storage and model volume), by (namespace, claim)."""
    names = [(spec.get("storage") or {}).get("claimName"),
             ((spec.get("model") or {}).get("volume") or {}).get("claimName")]
    return {(namespace or "", claim): name for claim in names if claim} or None


@kopf.on.event("", "v1", "persistentvolumeclaims")
async def on_claim(namespace: str | None, name: str, **kwargs: Any) -> None:
    """A claim created, bound, changed or deleted: look again at what mounts it, so fixing a
    claim resumes builds and rollouts without a spec edit."""
    _bind(kwargs)
    assert RUNTIME.engines is not None
    ns = namespace or ""
    for engine in RUNTIME.view.engines_using_claim(ns, name):
        RUNTIME.engines.add((ns, engine))
        _enqueue_deployments_of(ns, engine)


# --------------------------------------------------------------------------- deployments


@kopf.index(API_GROUP, API_VERSION, "llmdeployments")
async def deployment_bodies(namespace: str | None, name: str, body: kopf.Body,
                      **_: Any) -> dict[Key, Any]:
    """Each LLMDeployment as a plain dict, by (namespace, name)."""
    return {(namespace or "", name): _slim_body(body)}


@kopf.index(API_GROUP, API_VERSION, "llmdeployments")
async def deployments_by_engine(namespace: str | None, name: str, spec: kopf.Spec,
                          **_: Any) -> dict[Key, str] | None:
    """Which LLMDeployments use which LLMEngine (in-use protection, re-evaluation)."""
    engine = (spec.get("engineRef") or {}).get("name")
    return {(namespace or "", engine): name} if engine else None


def _child(body: kopf.Body, *parts: str) -> bytes:
    """What the reconcile compares with its desired child: the metadata the operator sets
    (and generation), and the named parts (spec, data, status) whole. managedFields and the
    rest of metadata are left out: the operator sets none of it. Kept as compact JSON, read
    back by :func:`_unpacked` (a Deployment: about 3 KB as JSON, 16 KB as Python objects;
    every child of every LLMDeployment is held)."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in (
        "name", "namespace", "labels", "annotations", "ownerReferences", "generation")
        if k in meta}}
    for part in parts:
        if part in body:
            out[part] = body[part]
    return json.dumps(out, separators=(",", ":"), default=dict).encode()


def _unpacked(packed: bytes | None) -> Mapping[str, Any] | None:
    """A child as :func:`_child` kept it: read-only, and shared by every reader of the same
    watched version (one reconcile reads its Deployment three times)."""
    return None if packed is None else _decoded(packed)


@functools.lru_cache(maxsize=128)
def _decoded(packed: bytes) -> Mapping[str, Any]:
    child: dict[str, Any] = json.loads(packed)
    return child


@kopf.index("apps", "v1", "deployments", labels=SERVING_LABELS)
async def serving_deployments(namespace: str | None, name: str, body: kopf.Body,
                        **_: Any) -> dict[Key, Any]:
    """The operator's trtllm-serve Deployments: what it owns of them, and their status."""
    return {(namespace or "", name): _child(body, "spec", "status")}


@kopf.index("", "v1", "services", labels=SERVING_LABELS)
async def serving_services(namespace: str | None, name: str, body: kopf.Body,
                     **_: Any) -> dict[Key, Any]:
    """The operator's Services in front of trtllm-serve: compared before any apply."""
    return {(namespace or "", name): _child(body, "spec")}


@kopf.index("", "v1", "configmaps", labels=SERVING_LABELS)
async def serving_configmaps(namespace: str | None, name: str, body: kopf.Body,
                       **_: Any) -> dict[Key, Any]:
    """The operator's extra LLM API options ConfigMaps: compared before any apply."""
    return {(namespace or "", name): _child(body, "data")}


async def serving_group_sets(namespace: str | None, name: str, body: kopf.Body,
                       **_: Any) -> dict[Key, Any]:
    """The operator's multi-node LeaderWorkerSets by their own name (a single-type
    deployment's is :func:`multinode.lws_name`, a slice's is named for its GPU type), as the
    facts status reads (groups)."""
    return {(namespace or "", name): multinode.group_status(body)}


@kopf.index("apps", "v1", "deployments", labels=SERVING_LABELS)
async def serving_workloads(namespace: str | None, name: str, labels: kopf.Labels,
                      **_: Any) -> dict[Key, tuple[str, str]] | None:
    """Which Deployments serve which LLMDeployment (one per GPU type with spec.slices)."""
    owner = labels.get(DEPLOYMENT_LABEL)
    return {(namespace or "", owner): ("Deployment", name)} if owner else None


async def serving_group_workloads(namespace: str | None, name: str, labels: kopf.Labels,
                            **_: Any) -> dict[Key, tuple[str, str]] | None:
    """Which LeaderWorkerSets serve which LLMDeployment."""
    owner = labels.get(DEPLOYMENT_LABEL)
    return {(namespace or "", owner): ("LeaderWorkerSet", name)} if owner else None
@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=SERVING_LABELS)
async def serving_hpas(namespace: str | None, name: str, body: kopf.Body,
                 **_: Any) -> dict[Key, Any]:
    """The operator's HPAs (and KEDA's for its ScaledObjects, which copy their labels):
    compared before any apply."""
    return {(namespace or "", name): _child(body, "spec")}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=SERVING_LABELS)
async def serving_autoscalers(namespace: str | None, name: str, status: kopf.Status,
                        **_: Any) -> dict[Key, autoscaling.HPAFact]:
    """What each HPA reports (conditions, sizes, last scale): the Autoscaling condition."""
    return {(namespace or "", name): autoscaling.observe_hpa(name, status)}


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=SERVING_LABELS)
async def on_serving_hpa(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    await _on_serving_child(namespace, labels, kwargs)


@kopf.index("", "v1", "pods", labels=SERVING_LABELS)
async def serving_pods(namespace: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta,
                 status: kopf.Status, **_: Any) -> dict[Key, PodFact] | None:
    """Per LLMDeployment, each serving pod's fact: unschedulable, or stuck and why."""
    owner = labels.get(DEPLOYMENT_LABEL)
    if not owner:
        return None
    return {(namespace or "", owner): _pod_fact(name, labels, meta, status)}


def _pod_fact(name: str, labels: Mapping[str, str], meta: Mapping[str, Any],
              status: Mapping[str, Any]) -> PodFact:
    return observe_pod(name, meta.get("creationTimestamp"), status, gpu=labels.get(GPU_LABEL),
                       group=labels.get(multinode.LWS_GROUP_INDEX_LABEL))


def _enqueue_deployments_of(namespace: str, engine: str) -> None:
    assert RUNTIME.deployments is not None
    for name in RUNTIME.view.deployments_using(namespace, engine):
        RUNTIME.deployments.add((namespace, name))


def spec_unobserved(body: Mapping[str, Any]) -> bool:
    """The object's spec is newer than its status (created, or edited since the last
    reconcile): its reconcile has something to create or change, so it goes ahead of
    reconciles that only re-check status."""
    generation = (body.get("metadata") or {}).get("generation")
    return generation != (body.get("status") or {}).get("observedGeneration")


@kopf.on.event(API_GROUP, API_VERSION, "llmdeployments")
async def on_llm_deployment(namespace: str | None, name: str, type: str, spec: kopf.Spec,
                            body: kopf.Body, **kwargs: Any) -> None:
    _bind(kwargs)
    assert RUNTIME.deployments is not None and RUNTIME.engines is not None
    key = (namespace or "", name)
    engine = (spec.get("engineRef") or {}).get("name")
    # The engine's in-use protection depends on who uses it: poke the engines a deployment
    # starts or stops using, not every engine on every status write of its deployments.
    before = RUNTIME.engine_of.pop(key, None)
    if type != "DELETED" and engine:
        RUNTIME.engine_of[key] = engine
    if type == "DELETED" or before != engine:
        for used in {before, engine} - {None}:
            RUNTIME.engines.add((key[0], str(used)))
    if type == "DELETED":
        RUNTIME.deployments.forget(key)
        return
    controller = RUNTIME.deployment_controller
    if type == "MODIFIED" and controller is not None and controller.is_status_echo(key, body):
        return  # the watch showing the status this operator just wrote: nothing new
    RUNTIME.deployments.add(key, urgent=spec_unobserved(body))


async def _on_serving_child(namespace: str | None, labels: kopf.Labels,
                            kwargs: Mapping[str, Any]) -> None:
    _bind(kwargs)
    body = kwargs.get("body") or {}
    controller = RUNTIME.deployment_controller
    child = (str(body.get("kind")), namespace or "", str(kwargs.get("name")))
    if controller is not None:
        if kwargs.get("type") == "DELETED":
            controller.forget_child(*child)
        elif controller.is_child_echo(*child, body):
            return  # the operator's own write, as it answered: nothing new to reconcile
    owner = labels.get(DEPLOYMENT_LABEL)
    if owner and RUNTIME.deployments is not None:
        RUNTIME.deployments.add((namespace or "", owner))


@kopf.on.event("apps", "v1", "deployments", labels=SERVING_LABELS)
async def on_serving_deployment(namespace: str | None, labels: kopf.Labels,
                                **kwargs: Any) -> None:
    """Status changes drive Ready; edits and deletions are drift, put back on reconcile."""
    await _on_serving_child(namespace, labels, kwargs)


@kopf.on.event("", "v1", "services", labels=SERVING_LABELS)
async def on_serving_service(namespace: str | None, labels: kopf.Labels,
                             **kwargs: Any) -> None:
    await _on_serving_child(namespace, labels, kwargs)


@kopf.on.event("", "v1", "configmaps", labels=SERVING_LABELS)
async def on_serving_configmap(namespace: str | None, labels: kopf.Labels,
                               **kwargs: Any) -> None:
    await _on_serving_child(namespace, labels, kwargs)


@kopf.on.event("", "v1", "pods", labels=SERVING_LABELS)
async def on_serving_pod(namespace: str | None, name: str, labels: kopf.Labels,
                         meta: kopf.Meta, status: kopf.Status, type: str | None,
                         **kwargs: Any) -> None:
    # A pod's events that leave its fact as it was (bound to a node, a new IP, kubelet
    # bookkeeping) change nothing the reconcile reads: about a third of a new fleet's pod
    # events (make bench).
    key = (namespace or "", name)
    if type == "DELETED":
        RUNTIME.pod_facts.pop(key, None)
    else:
        fact = _pod_fact(name, labels, meta, status)
        if RUNTIME.pod_facts.get(key) == fact:
            return
        RUNTIME.pod_facts[key] = fact
    await _on_serving_child(namespace, labels, kwargs | {"type": type})


async def on_serving_group_set(namespace: str | None, labels: kopf.Labels,
                               **kwargs: Any) -> None:
    await _on_serving_child(namespace, labels, kwargs)


def prepare_leaderworkersets(settings: OperatorSettings) -> str:
    """Before kopf starts: check once whether LeaderWorkerSets can be used, and only then
    register their index and handler. kopf lists every indexed resource before any handler
    runs and retries a forbidden list, so watching LWS without the right to would stall the
    whole operator; an LWS installed later needs a restart (as the condition says)."""
    async def check() -> tuple[str, str]:
        client = make_client(settings.kubeconfig)
        try:
            return await leaderworkerset_support(client, next(iter(settings.namespaces), None))
        finally:
            await client.close()

    RUNTIME.lws, RUNTIME.lws_refusal = asyncio.run(check())
    log.info("LeaderWorkerSet for multi-node serving: %s", RUNTIME.lws)
    if RUNTIME.lws == "installed":
        group = (multinode.LWS_GROUP, multinode.LWS_VERSION, multinode.LWS_PLURAL)
        kopf.index(*group, labels=SERVING_LABELS)(serving_group_sets)
        kopf.index(*group, labels=SERVING_LABELS)(serving_group_workloads)
        kopf.on.event(*group, labels=SERVING_LABELS)(on_serving_group_set)
    return RUNTIME.lws

