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

log = logging.getLogger(__name__)

Support = Literal["installed", "missing", "forbidden"]


async def resource_support(client: AsyncClient, resource: type[NamespacedResource],
                           namespace: str | None) -> Support:
    """"installed", "missing" (the API server does not serve the resource) or "forbidden"
    (served, but this operator's RBAC does not allow listing it)."""
    try:
        # "*": every namespace.
        async for _ in client.list(resource, namespace=namespace or "*", chunk_size=1):
            break
    except (ApiError, httpx2.HTTPStatusError) as exc:
        # An unserved resource is a bare 404 (no Status body): lightkube then raises httpx's.
        code = (exc.status.code if isinstance(exc, ApiError)
                else exc.response.status_code)
        if code == 404:
            return "missing"
        if code == 403:
            # The API server's words name the user, verb and resource the RBAC lacks.
            log.warning("may not use %s: %s", resource._api_info.plural,
                        exc.status.message if isinstance(exc, ApiError) else exc)
            return "forbidden"
        raise
    return "installed"


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
        answer = await resource_support(client, resource, namespace)
        self._seen[key] = (now, answer)
        return answer

    def forget(self) -> None:
        """Ask again on next use (for example after a write was refused with 404)."""
        self._seen.clear()
