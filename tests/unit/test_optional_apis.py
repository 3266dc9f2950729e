"""The optional-API cache asks again after its TTL, and not before."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from trtllm_operator import optional_apis
from trtllm_operator.kube import LeaderWorkerSetResource


class _Client:
    """Answers LISTs with a 404 until ``installed`` is set, counting the calls."""

    def __init__(self) -> None:
        self.installed = False
        self.calls = 0

    def list(self, resource: Any, namespace: str, chunk_size: int) -> Any:
        self.calls += 1
        installed = self.installed

        async def gen() -> Any:
            if not installed:
                request = httpx2.Request("GET", "https://127.0.0.1/apis/x")
                response = httpx2.Response(404, request=request)
                raise httpx2.HTTPStatusError("404", request=request, response=response)
            yield {}
        return gen()


def test_cache_refreshes_after_ttl() -> None:
    now = [0.0]
    cache = optional_apis.SupportCache(ttl=30, clock=lambda: now[0])
    client = _Client()

    def ask() -> str:
        return asyncio.run(cache.support(client, LeaderWorkerSetResource, "ns"))  # type: ignore[arg-type]

    assert ask() == "missing"
    client.installed = True
    now[0] = 29.0
    assert ask() == "missing"
    assert client.calls == 1
    now[0] = 30.5
    assert ask() == "installed"
    assert client.calls == 2
    cache.forget()
    client.installed = False
    assert ask() == "missing"
