"""The operator's one door to the Kubernetes API for writes (and the rare direct read).

Reads of cluster facts come from kopf's watches kept in memory; this module only writes:
build Jobs and the script ConfigMap by create (they never change once made), other
children by create when new and server-side apply under one field manager after that (see
:meth:`Kube.create_child`), status through the status subresource (merge patch, and only when
it differs), deletions. The client is lightkube's async client, so
no call blocks kopf's event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig, codecs
from lightkube.config.client_adapter import verify_cluster
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.types import CascadeType, PatchType

from trtllm_operator import metrics
from trtllm_operator.api import API_GROUP, API_VERSION
from trtllm_operator.optional_apis import resource_access
from trtllm_operator.workqueue import Failure, TokenBucket

P = ParamSpec("P")
R = TypeVar("R")


Async = Callable[P, Coroutine[Any, Any, R]]


def _counted(operation: str) -> Callable[[Async[P, R]], Async[P, R]]:
    """Count failed API calls in trtllm_operator_api_errors_total, then re-raise; time the
    call (the write limit's wait is timed apart, in Kube._throttle)."""
    def wrap(fn: Async[P, R]) -> Async[P, R]:
        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except ApiError as exc:
                metrics.API_ERRORS.labels(operation, str(exc.status.code)).inc()
                raise
            finally:
                metrics.API_SECONDS.labels(operation).observe(
                    time.monotonic() - _started.get())
        return call
    return wrap


_started: contextvars.ContextVar[float] = contextvars.ContextVar("_started", default=0.0)
"""When the current write left the write limit (set by Kube._throttle)."""

URGENT_WRITES: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent_writes",
                                                                     default=False)
"""Set by a reconcile acting on a spec not yet observed (a new or edited object): its child
writes go ahead of other writes waiting on the limit (status writes never do)."""

log = logging.getLogger(__name__)

FIELD_MANAGER = "trtllm-operator"
SERVICE_WRITES = 8
"""Service writes in flight at once. The API server allocates ClusterIPs one Service at a time:
measured with ``make bench`` (N = 1,000), a Service apply took 0.48 s on average with 8 in
flight and 1.76 s with 32, for the same throughput. They are made off the reconcile workers
(see :mod:`write_lane`), so this only bounds how many wait inside the API server."""

LLMEngineResource = create_namespaced_resource(API_GROUP, API_VERSION, "LLMEngine",
                                               "llmengines")
LLMDeploymentResource = create_namespaced_resource(API_GROUP, API_VERSION, "LLMDeployment",
                                                   "llmdeployments")
# Registered so that codecs.from_dict can apply multi-node serving's LeaderWorkerSets.
LeaderWorkerSetResource = create_namespaced_resource(
    "leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet", "leaderworkersets")
# Registered so that codecs.from_dict can apply an LLMDeployment's InferencePool.
InferencePoolResource = create_namespaced_resource(
    "inference.networking.k8s.io", "v1", "InferencePool", "inferencepools")
# Other projects' kinds the operator writes where their CRDs exist (see optional_apis).
ScaledObjectResource = create_namespaced_resource("keda.sh", "v1alpha1", "ScaledObject",
                                                  "scaledobjects")
PodMonitorResource = create_namespaced_resource("monitoring.coreos.com", "v1", "PodMonitor",
                                                "podmonitors")
OPTIONAL_RESOURCES = {"ScaledObject": ScaledObjectResource, "PodMonitor": PodMonitorResource,
                      "InferencePool": InferencePoolResource}
_WORKLOAD_RESOURCES: dict[str, Any] = {"Deployment": Deployment,
                                       "LeaderWorkerSet": LeaderWorkerSetResource}
_CHILD_RESOURCES: dict[str, Any] = {**OPTIONAL_RESOURCES,
                                    "HorizontalPodAutoscaler": HorizontalPodAutoscaler}
_RESOURCES = {"LLMEngine": LLMEngineResource, "LLMDeployment": LLMDeploymentResource}
_STATUS_RESOURCES = {"LLMEngine": LLMEngineResource.Status,
                     "LLMDeployment": LLMDeploymentResource.Status}


def not_served(exc: Exception) -> bool:
    """A write answered 404 because the API server does not serve the kind (its CRD was
    removed): lightkube raises httpx's error for that bare 404, ApiError for a Status one."""
    if isinstance(exc, ApiError):
        return exc.status.code == 404
    return isinstance(exc, httpx2.HTTPStatusError) and exc.response.status_code == 404


def namespace_terminating(exc: ApiError) -> bool:
    """A write refused because its namespace is being deleted: nothing to do there anymore."""
    return exc.status.code == 403 and "being terminated" in (exc.status.message or "")


def invalid_refusal(exc: Exception) -> str | None:
    """The API server's message when it refused a write as invalid: the object built from the
    user's spec breaks a rule of Kubernetes itself (422), or holds a value its Go type cannot
    take, such as an affinity weight past int32 (400, "cannot be handled as a Deployment";
    a create answers so where an apply answered 422). Retrying cannot help."""
    if isinstance(exc, ApiError) and exc.status.code in (400, 422):
        return exc.status.message or "the object is invalid"
    return None


# Refusals that resolve themselves on a retry: optimistic concurrency (409 Conflict on a
# finalizer or status change), the server shedding load (429) or restarting (5xx).
TRANSIENT_CODES = frozenset({409, 429, 500, 502, 503, 504})


def classify(exc: Exception) -> Failure:
    """What failed a reconcile, for the log, the metrics and the ReconcileError condition.

    The message carries the API server's own words (they name the object, the field, the
    quota or the permission, never Secret data) or, for anything else, only the exception's
    class: its text might hold anything and stays in the operator's log."""
    if isinstance(exc, ApiError):
        code = exc.status.code or 0
        reason = exc.status.reason or f"ApiError{code}"
        return Failure(reason, code in TRANSIENT_CODES,
                       f"API server answered {code} {reason}: {exc.status.message or ''}"[:512])
    if isinstance(exc, httpx2.TransportError):
        return Failure("ConnectionError", True,
                       f"no answer from the API server ({type(exc).__name__})")
    return Failure(type(exc).__name__, False,
                   f"unexpected {type(exc).__name__} (see the operator log)")


def make_client(kubeconfig: str | None = None, connections: int | None = None) -> AsyncClient:
    """An async client for a kubeconfig file, else the in-cluster service account.

    ``trust_env=False``: the operator talks to its API server only, never through proxies
    picked up from the environment. ``connections``: how many requests may be in flight at
    once, all kept alive (httpx keeps 20 by default and closes the rest after each request, so
    more concurrent workers than that would pay a TLS handshake per write).
    """
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    transport = None
    if connections is not None:
        # A transport of our own replaces the one lightkube would build, so it gets the same
        # TLS settings (cluster CA, client certificate) from the kubeconfig.
        single = config.get()
        assert single is not None and single.user is not None, "no context or user"
        transport = httpx2.AsyncHTTPTransport(
            verify=verify_cluster(single.cluster, single.user, single.abs_file,
                                  trust_env=False),
            limits=httpx2.Limits(max_connections=connections,
                                 max_keepalive_connections=connections),
            trust_env=False)
    return AsyncClient(config, field_manager=FIELD_MANAGER, trust_env=False,
                       transport=transport)


def _is_entry(entry: dict[str, Any], manager: str, operation: str) -> bool:
    return (entry.get("manager") == manager and entry.get("operation") == operation
            and not entry.get("subresource"))


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The union of two field sets in the ``FieldsV1`` trie form."""
    out = dict(a)
    for key, sub in b.items():
        out[key] = _union(out[key], sub) if key in out else sub
    return out


def fold_patch(entries: list[dict[str, Any]], manager: str) -> list[dict[str, Any]] | None:
    """A JSON patch folding ``manager``'s "Update" entries (of the main resource) in
    ``managedFields`` into its "Apply" entry, or None when there is nothing to fold (not both
    kinds of entry). Fields only an "Update" entry holds are never removed by that manager's
    applies; after the fold they are, like any field it applied. The patch first tests that
    each entry it changes is still what ``entries`` says (another writer's change to its own
    entry does not matter; a field an autoscaler took from ours since does, and fails it),
    and leaves every other entry as it is."""
    target = next((i for i, e in enumerate(entries) if _is_entry(e, manager, "Apply")), None)
    updates = [i for i, e in enumerate(entries) if _is_entry(e, manager, "Update")]
    if target is None or not updates:
        return None
    tests = [{"op": "test", "path": f"/metadata/managedFields/{i}/{key}",
              "value": entries[i].get(key)}
             for i in (target, *updates) for key in ("manager", "operation", "fieldsV1")]
    fields: dict[str, Any] = dict(entries[target].get("fieldsV1") or {})
    for i in updates:
        if entries[i].get("apiVersion") == entries[target].get("apiVersion"):
            fields = _union(fields, entries[i].get("fieldsV1") or {})
    return [*tests,
            {"op": "replace", "path": f"/metadata/managedFields/{target}/fieldsV1",
             "value": fields},
            *({"op": "remove", "path": f"/metadata/managedFields/{i}"}
              for i in sorted(updates, reverse=True))]


FOLD_ATTEMPTS = 4
"""Applies of a child before its create's field ownership is left unfolded this time (each
fold the API server refuses because our entries changed in between costs one more apply)."""


class Kube:
    """Writes on behalf of the controllers, held to a client-side rate limit.

    lightkube and its httpx2 transport have no request rate limit (httpx2's ``Limits`` caps
    connections, not requests), so a token bucket here plays client-go's QPS/Burst: a mass
    change (a new GPU pool re-evaluating every object) cannot flood the API server with
    writes. Reads come from watches, so only writes are limited."""

    def __init__(self, client: AsyncClient, writes: TokenBucket | None = None) -> None:
        self.client = client
        self.writes = writes or TokenBucket(20.0, 50)
        self._services = asyncio.Semaphore(SERVICE_WRITES)

    async def _throttle(self, status: bool = False) -> None:
        """Wait for the write limit; the wait is a metric of its own."""
        waited = time.monotonic()
        await self.writes.acquire(urgent=not status and URGENT_WRITES.get())
        now = time.monotonic()
        metrics.API_THROTTLE_SECONDS.observe(now - waited)
        _started.set(now)

    @_counted("apply")
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``manifest`` as the operator's field manager; return the object.

        ``force``: the operator owns the fields it sets; a hand edit to one of them is drift
        and is put back.
        """
        if manifest.get("kind") == "Service":
            async with self._services:
                return await self._apply(manifest)
        return await self._apply(manifest)

    async def _apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        obj = codecs.from_dict(manifest)
        resource: Any = type(obj)
        for _ in range(FOLD_ATTEMPTS):
            await self._throttle()
            applied = await self.client.apply(obj, force=True)
            result: dict[str, Any] = applied.to_dict()  # type: ignore[no-untyped-call]
            meta = result.get("metadata") or {}
            patch = fold_patch(meta.get("managedFields") or [], FIELD_MANAGER)
            if patch is None:
                return result
            # A child this operator created (see create_child), applied for the first time:
            # its fields are still held by the create's "Update" entry as well, so this apply
            # could not drop any. Fold that entry into the apply's (what client-go's
            # csaupgrade does for kubectl), then apply again.
            await self._throttle()
            try:
                await self.client.patch(resource, meta["name"], patch,
                                        namespace=meta.get("namespace"),
                                        patch_type=PatchType.JSON)
            except ApiError as exc:
                if exc.status.code != 422:  # 422: a test failed, our entries changed
                    raise
                continue
            metrics.FIELD_OWNERSHIP_FOLDS.inc()
            await self._throttle()
            again: dict[str, Any] = (
                await self.client.apply(obj, force=True)).to_dict()  # type: ignore[no-untyped-call]
            return again
        log.warning("the field ownership of %s %s/%s is not folded yet (changed under each of "
                    "%d tries); the next apply tries again", manifest["kind"],
                    manifest["metadata"].get("namespace"), manifest["metadata"]["name"],
                    FOLD_ATTEMPTS)
        return result

    @_counted("create")
    async def create_child(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a child the watch has not seen; return the object.

        A create costs the API server a fraction of a server-side apply (no merge of field
        sets; at 1,000 new objects a Deployment apply took 0.14 s against 0.01 s for a
        create). It leaves the fields under an "Update" entry of the operator's field
        manager; the first apply of the child folds that entry into its own (see
        :meth:`_apply`), so a field a later spec drops is still removed. When the child
        exists after all (a watch lagging behind, a restart), it is applied instead."""
        if manifest.get("kind") == "Service":
            async with self._services:
                return await self._create_or_apply(manifest)
        return await self._create_or_apply(manifest)

    async def _create_or_apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        await self._throttle()
        try:
            created = await self.client.create(codecs.from_dict(manifest))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            return await self._apply(manifest)
        result: dict[str, Any] = created.to_dict()  # type: ignore[no-untyped-call]
        return result

    @_counted("apply")
    async def apply_as(self, manifest: dict[str, Any], field_manager: str) -> None:
        """Server-side apply under another field manager: hands a field over (see the
        Kubernetes docs on transferring ownership) so the operator's own apply can drop it
        without the API server resetting it."""
        await self.writes.acquire()
        # A partial object (only the field handed over): sent as an apply patch, since the
        # typed models would require the rest of the spec.
        meta = manifest["metadata"]
        await self.client.patch(_WORKLOAD_RESOURCES[manifest["kind"]], meta["name"], manifest,
                                namespace=meta["namespace"], patch_type=PatchType.APPLY,
                                field_manager=field_manager, force=True)

    async def delete_child(self, kind: str, namespace: str, name: str) -> bool:
        """Delete a child of one of the optional kinds or an HPA; False if already gone, or
        if its kind is no longer served (a bare 404: the CRD, and the object with it, went)."""
        try:
            return await self.delete(_CHILD_RESOURCES[kind], namespace, name)
        except httpx2.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            return False

    @_counted("create")
    async def create_if_absent(self, manifest: dict[str, Any]) -> bool:
        """Create an object that never changes once made (a build Job, an immutable
        ConfigMap): True if this call created it (201), False if it already existed (409).
        Needs only the create verb."""
        await self._throttle()
        try:
            await self.client.create(codecs.from_dict(manifest))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            return False
        return True

    @_counted("patch_status")
    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        """Merge-patch ``status`` of one of our custom resources (status subresource only).

        An object deleted since it was read (404) has no status left to record; its deletion
        event reconciles whatever remains, so that is not an error worth a retry."""
        await self._throttle(status=True)
        try:
            await self.client.patch(_STATUS_RESOURCES[kind], name, {"status": status},
                                    namespace=namespace, patch_type=PatchType.MERGE)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            log.debug("%s %s/%s is gone; status not written", kind, namespace, name)

    @_counted("set_finalizers")
    async def set_finalizers(self, kind: str, namespace: str, name: str,
                             finalizers: list[str], resource_version: str | None) -> None:
        """Replace metadata.finalizers (never spec). The resourceVersion makes it conditional:
        a concurrent change to the list fails with 409 and the reconcile retries. An object
        already gone (its last finalizer removed by a concurrent reconcile, or its namespace
        deleted) needs nothing more: 404 is success here."""
        meta: dict[str, Any] = {"finalizers": finalizers}
        if resource_version:
            meta["resourceVersion"] = resource_version
        await self._throttle()
        try:
            await self.client.patch(_RESOURCES[kind], name, {"metadata": meta},
                                    namespace=namespace, patch_type=PatchType.MERGE)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            log.debug("%s %s/%s is gone; finalizers not written", kind, namespace, name)

    async def log_tail(self, namespace: str, pod: str, container: str,
                       lines: int) -> str | None:
        """The last ``lines`` of a container's log (``pods/log`` get), None if it cannot be
        read (no log yet, the pod gone, a node that serves no logs). A read, so not held to
        the write limit; the caller reads each download pod's log at most every few seconds."""
        try:
            chunks = [line async for line in self.client.log(
                pod, namespace=namespace, container=container, tail_lines=lines)]
        except (ApiError, httpx2.HTTPError) as exc:
            log.debug("no log of pod %s/%s: %s", namespace, pod, type(exc).__name__)
            return None
        return "".join(chunks)

    @_counted("delete")
    async def delete(self, resource: Any, namespace: str, name: str) -> bool:
        """Delete with background propagation; False if it was already gone."""
        await self._throttle()
        try:
            await self.client.delete(resource, name, namespace=namespace,
                                     cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return True


async def leaderworkerset_support(client: AsyncClient,
                                  namespace: str | None) -> tuple[str, str]:
    """Whether multi-node serving can use LeaderWorkerSets, and the API server's refusal when
    forbidden (see optional_apis)."""
    return await resource_access(client, LeaderWorkerSetResource, namespace)
