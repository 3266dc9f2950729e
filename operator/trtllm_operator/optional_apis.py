"""Which optional APIs (CRDs of other projects) the cluster serves, and whether we may use them.

The operator writes KEDA ScaledObjects, Prometheus Operator PodMonitors, Inference Extension
InferencePools and LeaderWorkerSets only where their CRDs exist. Those CRDs can be installed or
removed while the operator runs, so the answer is cached for a short time and asked again, not
fixed at startup (LeaderWorkerSets are the exception: kopf watches them, and a watch is chosen
before kopf starts). One LIST of at most one object per kind and TTL; no CRD read rights needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.core.resource import NamespacedResource

Support = Literal["installed", "missing", "forbidden"]

log = logging.getLogger(__name__)


async def resource_support(client: AsyncClient, resource: type[NamespacedResource],
                           namespace: str | None, *, log_forbidden: bool = False) -> Support:
    """"installed", "missing" (the API server does not serve the resource) or "forbidden"
    (served, but this operator's RBAC does not allow listing it)."""
    support, refusal = await resource_access(client, resource, namespace)
    if support == "forbidden" and log_forbidden:
        # The API server's words name the missing right (at most once per TTL).
        log.warning("treated as not installed: %s", refusal)
    return support


async def resource_access(client: AsyncClient, resource: type[NamespacedResource],
                          namespace: str | None) -> tuple[Support, str]:
    """:func:`resource_support`, and when forbidden the API server's refusal (it names the
    account, verb and resource the RBAC lacks: the words a status message can quote)."""
    try:
        # "*": every namespace.
        async for _ in client.list(resource, namespace=namespace or "*", chunk_size=1):
            break
    except (ApiError, httpx2.HTTPStatusError) as exc:
        # An unserved resource is a bare 404 (no Status body): lightkube then raises httpx's.
        code = (exc.status.code if isinstance(exc, ApiError)
                else exc.response.status_code)
        if code == 404:
            return "missing", ""
        if code == 403:
            return "forbidden", (str(exc.status.message or "") if isinstance(exc, ApiError)
                                 else str(exc))
        raise
    return "installed", ""


@dataclass
class SupportCache:
    """Answers of :func:`resource_support` per (resource, namespace), each kept ``ttl`` seconds."""

    ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, str | None], tuple[float, Support]] = field(default_factory=dict)

    async def support(self, client: AsyncClient, resource: type[NamespacedResource],
                      namespace: str | None) -> Support:
        key = (f"{resource._api_info.resource.api_version}/"
               f"{resource._api_info.plural}", namespace)
        now = self.clock()
        hit = self._seen.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        answer = await resource_support(client, resource, namespace, log_forbidden=True)
        self._seen[key] = (now, answer)
        return answer

    def forget(self) -> None:
        """Ask again on next use (for example after a write was refused with 404)."""
        self._seen.clear()
