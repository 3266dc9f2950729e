"""The operator's write door: every write takes a token of the client-side rate limit, and a
create says whether it made the object."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from trtllm_operator.kube import Kube
from trtllm_operator.workqueue import TokenBucket

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "script", "namespace": "ml"}, "data": {}}


class FakeClient:
    """Answers like the API server: a second create of one name is 409 AlreadyExists."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    async def create(self, obj: Any) -> Any:
        if obj.metadata.name in self.names:
            request = httpx2.Request("POST", "https://127.0.0.1/api/v1/namespaces/ml/configmaps")
            response = httpx2.Response(409, request=request, json={
                "kind": "Status", "code": 409, "reason": "AlreadyExists", "message": "exists"})
            raise ApiError(request=request, response=response,
                           status=Status(code=409, reason="AlreadyExists", message="exists"))
        self.names.add(obj.metadata.name)
        return obj

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_every_write_takes_a_token_and_create_reports_201_or_409() -> None:
    bucket = TokenBucket(qps=1.0, burst=4, clock=lambda: 0.0)  # time stands still
    kube = Kube(FakeClient(), writes=bucket)  # type: ignore[arg-type]

    async def writes() -> tuple[bool, bool]:
        first = await kube.create_if_absent(CONFIGMAP)
        again = await kube.create_if_absent(CONFIGMAP)
        await kube.patch_status("LLMEngine", "ml", "e", {"builtTargets": "0/1"})
        await kube.delete(object, "ml", "gone")
        return first, again

    assert asyncio.run(writes()) == (True, False)
    # Four writes took the whole burst: the next one would have to wait a second.
    assert bucket.reserve() == 1.0


class GoneClient(FakeClient):
    """The object was deleted a moment ago (its last finalizer removed elsewhere)."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        request = httpx2.Request("PATCH", "https://127.0.0.1/apis/trtllm.dev/v1alpha1/x")
        response = httpx2.Response(self.code, request=request, json={
            "kind": "Status", "code": self.code, "message": "no"})
        raise ApiError(request=request, response=response,
                       status=Status(code=self.code, message="no"))


def test_removing_finalizers_of_an_object_already_gone_is_done_and_other_errors_raise() -> None:
    gone = Kube(GoneClient(404), writes=TokenBucket(qps=100.0, burst=10))  # type: ignore[arg-type]
    asyncio.run(gone.set_finalizers("LLMEngine", "ml", "e", [], "1"))  # no exception: done
    conflict = Kube(GoneClient(409), writes=TokenBucket(qps=100.0, burst=10))  # type: ignore[arg-type]
    with pytest.raises(ApiError) as raised:  # the work queue retries it
        asyncio.run(conflict.set_finalizers("LLMEngine", "ml", "e", [], "1"))
    assert raised.value.status.code == 409
