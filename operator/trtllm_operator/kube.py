"""The operator's one door to the Kubernetes API for writes (and the rare direct read).

Reads of cluster facts come from kopf's watches kept in memory; this module only writes:
build Jobs and the script ConfigMap by create (they never change once made), other
children by server-side apply under one field manager, status through the status subresource
(merge patch, and only when it differs), deletions. The client is lightkube's async client, so
no call blocks kopf's event loop.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import CascadeType, PatchType

from trtllm_operator import metrics
from trtllm_operator.api import API_GROUP, API_VERSION
from trtllm_operator.optional_apis import resource_access
from trtllm_operator.workqueue import Failure, TokenBucket

P = ParamSpec("P")
R = TypeVar("R")


Async = Callable[P, Coroutine[Any, Any, R]]


def _counted(operation: str) -> Callable[[Async[P, R]], Async[P, R]]:
    """Count failed API calls in trtllm_operator_api_errors_total, then re-raise."""
    def wrap(fn: Async[P, R]) -> Async[P, R]:
        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except ApiError as exc:
                metrics.API_ERRORS.labels(operation, str(exc.status.code)).inc()
                raise
        return call
    return wrap

log = logging.getLogger(__name__)

FIELD_MANAGER = "trtllm-operator"

LLMEngineResource = create_namespaced_resource(API_GROUP, API_VERSION, "LLMEngine",
                                               "llmengines")
LLMDeploymentResource = create_namespaced_resource(API_GROUP, API_VERSION, "LLMDeployment",
                                                   "llmdeployments")
# Registered so that codecs.from_dict can apply multi-node serving's LeaderWorkerSets.
LeaderWorkerSetResource = create_namespaced_resource(
    "leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet", "leaderworkersets")
_RESOURCES = {"LLMEngine": LLMEngineResource, "LLMDeployment": LLMDeploymentResource}
_STATUS_RESOURCES = {"LLMEngine": LLMEngineResource.Status,
                     "LLMDeployment": LLMDeploymentResource.Status}


def namespace_terminating(exc: ApiError) -> bool:
    """A write refused because its namespace is being deleted: nothing to do there anymore."""
    return exc.status.code == 403 and "being terminated" in (exc.status.message or "")


def invalid_refusal(exc: Exception) -> str | None:
    """The API server's message when it refused a write as invalid (422): the object built
    from the user's spec breaks a rule of Kubernetes itself, and retrying cannot help."""
    if isinstance(exc, ApiError) and exc.status.code == 422:
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


def make_client(kubeconfig: str | None = None) -> AsyncClient:
    """An async client for a kubeconfig file, else the in-cluster service account.

    ``trust_env=False``: the operator talks to its API server only, never through proxies
    picked up from the environment.
    """
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    return AsyncClient(config, field_manager=FIELD_MANAGER, trust_env=False)


class Kube:
    """Writes on behalf of the controllers, held to a client-side rate limit.

    lightkube and its httpx2 transport have no request rate limit (httpx2's ``Limits`` caps
    connections, not requests), so a token bucket here plays client-go's QPS/Burst: a mass
    change (a new GPU pool re-evaluating every object) cannot flood the API server with
    writes. Reads come from watches, so only writes are limited."""

    def __init__(self, client: AsyncClient, writes: TokenBucket | None = None) -> None:
        self.client = client
        self.writes = writes or TokenBucket(20.0, 50)

    @_counted("apply")
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``manifest`` as the operator's field manager; return the object.

        ``force``: the operator owns the fields it sets; a hand edit to one of them is drift
        and is put back.
        """
        await self.writes.acquire()
        obj = codecs.from_dict(manifest)
        applied = await self.client.apply(obj, force=True)
        result: dict[str, Any] = applied.to_dict()  # type: ignore[no-untyped-call]
        return result

    @_counted("create")
    async def create_if_absent(self, manifest: dict[str, Any]) -> bool:
        """Create an object that never changes once made (a build Job, an immutable
        ConfigMap): True if this call created it (201), False if it already existed (409).
        Needs only the create verb."""
        await self.writes.acquire()
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
        await self.writes.acquire()
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
        await self.writes.acquire()
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
        await self.writes.acquire()
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
