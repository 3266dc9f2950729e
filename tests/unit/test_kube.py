"""The operator's write door: every write takes a token of the client-side rate limit, and a
create says whether it made the object."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from trtllm_operator.kube import Kube, fold_patch, not_served
from trtllm_operator.metrics import REGISTRY
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


def _api_error(code: int, reason: str) -> ApiError:
    request = httpx2.Request("PATCH", "https://127.0.0.1/apis/trtllm.dev/v1alpha1/x")
    response = httpx2.Response(code, request=request, json={
        "kind": "Status", "code": code, "reason": reason, "message": reason})
    return ApiError(request=request, response=response,
                    status=Status(code=code, reason=reason, message=reason))


class RefusingClient(FakeClient):
    """Every patch fails with the given code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__()
        self.code, self.reason = code, reason

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        raise _api_error(self.code, self.reason)


def test_finalizers_of_an_object_already_gone_need_no_change_but_a_conflict_is_raised() -> None:
    gone = Kube(RefusingClient(404, "NotFound"))  # type: ignore[arg-type]
    asyncio.run(gone.set_finalizers("LLMEngine", "ml", "e", [], "7"))  # no error: nothing to do

    conflict = Kube(RefusingClient(409, "Conflict"))  # type: ignore[arg-type]
    with pytest.raises(ApiError) as raised:  # the reconcile must see it, to retry
        asyncio.run(conflict.set_finalizers("LLMEngine", "ml", "e", [], "7"))
    assert raised.value.status.code == 409


class LogClient:
    """lightkube's ``log``: an async iterator of lines, or a 404 for a pod without a log."""

    def __init__(self, lines: list[str] | None) -> None:
        self.lines = lines
        self.calls: list[dict[str, Any]] = []

    def log(self, name: str, **kwargs: Any) -> Any:
        self.calls.append({"name": name, **kwargs})
        lines = self.lines

        async def gen() -> Any:
            if lines is None:
                request = httpx2.Request("GET", "https://127.0.0.1/api/v1/namespaces/ml/pods/p/log")
                response = httpx2.Response(404, request=request, json={
                    "kind": "Status", "code": 404, "reason": "NotFound", "message": "no log"})
                raise ApiError(request=request, response=response,
                               status=Status(code=404, reason="NotFound", message="no log"))
            for line in lines:
                yield line
        return gen()


def test_a_log_tail_is_read_with_tail_lines_and_an_unreadable_log_is_none() -> None:
    client = LogClient(['{"progress": {"doneBytes": 1, "totalBytes": 2}}\n', "done\n"])
    kube = Kube(client)  # type: ignore[arg-type]
    text = asyncio.run(kube.log_tail("ml", "p", "download", 20))
    assert text == '{"progress": {"doneBytes": 1, "totalBytes": 2}}\ndone\n'
    assert client.calls == [{"name": "p", "namespace": "ml", "container": "download",
                             "tail_lines": 20}]
    assert asyncio.run(Kube(LogClient(None)).log_tail(  # type: ignore[arg-type]
        "ml", "p", "download", 20)) is None


def test_a_kind_no_longer_served_is_told_apart_from_other_refusals() -> None:
    request = httpx2.Request("PATCH", "https://127.0.0.1/apis/x/v1/namespaces/n/xs/a")

    def refusal(code: int) -> ApiError:
        return ApiError(response=httpx2.Response(code, request=request, json={
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "message": "m", "reason": "r"}))

    bare = httpx2.Response(404, request=request)
    assert not_served(httpx2.HTTPStatusError("404", request=request, response=bare))
    assert not_served(refusal(404))
    assert not not_served(refusal(422))
    assert not not_served(refusal(403))
    assert not not_served(RuntimeError("boom"))


def _entry(manager: str, operation: str, fields: dict[str, Any],
           subresource: str | None = None) -> dict[str, Any]:
    entry = {"manager": manager, "operation": operation, "apiVersion": "apps/v1",
             "fieldsType": "FieldsV1", "fieldsV1": fields}
    return entry | ({"subresource": subresource} if subresource else {})


def test_the_create_entry_is_folded_into_the_apply_entry() -> None:
    entries = [
        _entry("trtllm-operator", "Apply", {"f:metadata": {"f:labels": {"f:app": {}}}}),
        _entry("kube-controller-manager", "Update",
               {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}}),
        _entry("trtllm-operator", "Update", {"f:metadata": {"f:labels": {
            "f:app": {}, "f:tier": {}}}, "f:spec": {"f:replicas": {}}}),
        _entry("trtllm-operator", "Update", {"f:status": {"f:x": {}}}, subresource="status"),
    ]
    patch = fold_patch(entries, "trtllm-operator")
    assert patch is not None
    tests = [op for op in patch if op["op"] == "test"]
    changes = [op for op in patch if op["op"] != "test"]
    # Every entry it changes is tested first, by index, as it was read; no other entry is.
    assert patch[:len(tests)] == tests
    assert {(op["path"], str(op["value"])) for op in tests} == {
        (f"/metadata/managedFields/{i}/{key}", str(entries[i][key]))
        for i in (0, 2) for key in ("manager", "operation", "fieldsV1")}
    assert changes == [
        {"op": "replace", "path": "/metadata/managedFields/0/fieldsV1",
         "value": {"f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}},
                   "f:spec": {"f:replicas": {}}}},
        {"op": "remove", "path": "/metadata/managedFields/2"},
    ]
    # Applied the way the API server applies a JSON patch: the other entries stay as they are.
    assert _apply_patch(entries, changes) == [
        _entry("trtllm-operator", "Apply", {"f:metadata": {"f:labels": {
            "f:app": {}, "f:tier": {}}}, "f:spec": {"f:replicas": {}}}),
        entries[1], entries[3]]


def test_several_create_entries_are_removed_from_the_last() -> None:
    entries = [_entry("trtllm-operator", "Update", {"f:data": {"f:a": {}}}),
               _entry("trtllm-operator", "Apply", {"f:data": {"f:b": {}}}),
               _entry("trtllm-operator", "Update", {"f:data": {"f:c": {}}})]
    patch = fold_patch(entries, "trtllm-operator")
    assert patch is not None
    changes = [op for op in patch if op["op"] != "test"]
    assert _apply_patch(entries, changes) == [_entry(
        "trtllm-operator", "Apply", {"f:data": {"f:b": {}, "f:a": {}, "f:c": {}}})]


def _apply_patch(entries: list[dict[str, Any]],
                 ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(e) for e in entries]
    for op in ops:
        index, *rest = op["path"].removeprefix("/metadata/managedFields/").split("/")
        if op["op"] == "remove":
            del out[int(index)]
        else:
            out[int(index)][rest[0]] = op["value"]
    return out


def test_nothing_to_fold_without_both_entries() -> None:
    created = [_entry("trtllm-operator", "Update", {"f:data": {"f:a": {}}})]
    applied = [_entry("trtllm-operator", "Apply", {"f:data": {"f:a": {}}}),
               _entry("someone-else", "Update", {"f:data": {"f:b": {}}})]
    assert fold_patch(created, "trtllm-operator") is None
    assert fold_patch(applied, "trtllm-operator") is None


class FoldingClient(FakeClient):
    """A child made by create: each apply answers with both of the operator's entries until a
    fold patch is accepted; the first fold is refused (422: a test failed, as when the
    entries changed between the apply and the patch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.folded = False

    async def apply(self, obj: Any, force: bool = False) -> Any:
        self.calls.append("apply")
        entries = [_entry("trtllm-operator", "Apply", {"f:data": {"f:a": {}}})]
        if not self.folded:
            entries.append(_entry("trtllm-operator", "Update", {"f:data": {"f:b": {}}}))
        body = {"metadata": {"name": "options", "namespace": "ml", "managedFields": entries},
                "data": {"a": "1"}}
        return type("Answer", (), {"to_dict": lambda self: body})()

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("fold")
        if self.calls.count("fold") == 1:
            raise _api_error(422, "Invalid")
        self.folded = True


def test_a_refused_fold_is_tried_again_after_a_new_apply_and_then_applied_once_more() -> None:
    client = FoldingClient()
    kube = Kube(client)  # type: ignore[arg-type]
    before = REGISTRY.get_sample_value("trtllm_operator_field_ownership_folds_total") or 0.0
    manifest = CONFIGMAP | {"data": {"a": "1"}}

    result = asyncio.run(kube.apply(manifest))

    assert client.calls == ["apply", "fold", "apply", "fold", "apply"]
    assert [e["operation"] for e in result["metadata"]["managedFields"]] == ["Apply"]
    assert REGISTRY.get_sample_value("trtllm_operator_field_ownership_folds_total") == before + 1
