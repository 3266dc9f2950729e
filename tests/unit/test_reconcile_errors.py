"""The ReconcileError condition: after N consecutive failures, on change only, dropped by the
next successful reconcile; and what the operator calls an expected (quietly retried) error."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx2
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from tests.unit.test_engine_controller import KEY, _setup
from trtllm_operator import metrics
from trtllm_operator.kube import classify
from trtllm_operator.reconcile_errors import RECONCILE_ERROR, ReconcileErrors
from trtllm_operator.status_writes import StatusWrites
from trtllm_operator.workqueue import Failure

FORBIDDEN = Failure("Forbidden", False, 'API server answered 403 Forbidden: jobs.batch "x" is '
                    "forbidden: exceeded quota")
READY = {"type": "Ready", "status": "False", "reason": "BuildPending", "message": "",
         "lastTransitionTime": "2026-11-23T00:00:00Z"}


class Patcher:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.patches.append(status)


def _reporter(body: dict[str, Any]) -> tuple[ReconcileErrors, Patcher, StatusWrites]:
    patcher, writes = Patcher(), StatusWrites("LLMEngine")

    def body_of(key: tuple[str, str]) -> Mapping[str, Any] | None:
        return body

    return (ReconcileErrors("LLMEngine", body_of, patcher, writes, after=3,
                            clock=lambda: datetime(2026, 11, 23, 1, tzinfo=UTC)),
            patcher, writes)


def _body() -> dict[str, Any]:
    return {"metadata": {"name": "e", "namespace": "ml", "uid": "u1", "generation": 2},
            "status": {"conditions": [READY]}}


def test_the_condition_appears_after_n_failures_and_is_written_once() -> None:
    body = _body()
    reporter, patcher, _ = _reporter(body)
    for n in (1, 2):
        asyncio.run(reporter.failed(KEY, FORBIDDEN, n))
    assert patcher.patches == []
    asyncio.run(reporter.failed(KEY, FORBIDDEN, 3))
    assert len(patcher.patches) == 1
    conds = patcher.patches[0]["conditions"]
    assert conds[0] == READY  # the other conditions are kept (merge patch replaces the list)
    error = conds[1]
    assert (error["type"], error["status"], error["reason"], error["observedGeneration"]) == (
        RECONCILE_ERROR, "True", "Forbidden", 2)
    assert "exceeded quota" in error["message"]
    # The same error again, whether or not the view shows our write yet: no write.
    asyncio.run(reporter.failed(KEY, FORBIDDEN, 4))
    body["status"]["conditions"] = conds
    asyncio.run(reporter.failed(KEY, FORBIDDEN, 5))
    assert len(patcher.patches) == 1
    # A different error is a change.
    asyncio.run(reporter.failed(KEY, Failure("Invalid", False, "bad"), 6))
    assert len(patcher.patches) == 2
    assert patcher.patches[1]["conditions"][1]["reason"] == "Invalid"


def test_failures_are_counted_by_class() -> None:
    reporter, _, _ = _reporter(_body())
    counter = metrics.RECONCILE_FAILURES.labels("LLMEngine", "Conflict", "true")
    before = counter._value.get()
    asyncio.run(reporter.failed(KEY, Failure("Conflict", True, "modified"), 1))
    assert counter._value.get() - before == 1


def test_after_success_the_same_error_is_reported_again() -> None:
    body = _body()
    reporter, patcher, _ = _reporter(body)
    asyncio.run(reporter.failed(KEY, FORBIDDEN, 3))
    reporter.succeeded(KEY)
    body["status"]["conditions"] = [READY]  # the controller's write dropped it
    asyncio.run(reporter.failed(KEY, FORBIDDEN, 3))
    assert len(patcher.patches) == 2


def test_the_controllers_next_status_write_is_not_skipped_and_drops_the_condition() -> None:
    controller, view, writer, _ = _setup()
    asyncio.run(controller.reconcile(KEY))
    view.body = copy.deepcopy(view.body) | {"status": writer.status_patches[-1]}
    reporter = ReconcileErrors("LLMEngine", lambda _k: view.body, writer,
                               controller.status_writes, after=1)
    asyncio.run(reporter.failed(KEY, FORBIDDEN, 1))
    assert any(c["type"] == RECONCILE_ERROR for c in writer.status_patches[-1]["conditions"])
    view.body = copy.deepcopy(view.body)
    view.body["status"]["conditions"] = writer.status_patches[-1]["conditions"]
    patches = len(writer.status_patches)
    asyncio.run(controller.reconcile(KEY))  # succeeds: same status as before the failures
    assert len(writer.status_patches) == patches + 1
    assert all(c["type"] != RECONCILE_ERROR for c in writer.status_patches[-1]["conditions"])


def _api_error(code: int, reason: str, message: str) -> ApiError:
    request = httpx2.Request("POST", "https://127.0.0.1/apis/batch/v1/namespaces/ml/jobs")
    response = httpx2.Response(code, request=request, json={
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
        "reason": reason, "message": message})
    return ApiError(request=request, response=response,
                    status=Status(code=code, reason=reason, message=message))


def test_conflicts_and_a_busy_server_are_expected_refusals_are_not() -> None:
    conflict = classify(_api_error(409, "Conflict", "the object has been modified"))
    assert (conflict.reason, conflict.expected) == ("Conflict", True)
    assert (classify(_api_error(429, "TooManyRequests", "slow down")).expected,
            classify(_api_error(503, "ServiceUnavailable", "x")).expected) == (True, True)
    forbidden = classify(_api_error(403, "Forbidden", 'jobs.batch is forbidden: exceeded quota'))
    assert (forbidden.reason, forbidden.expected) == ("Forbidden", False)
    assert "403 Forbidden: jobs.batch is forbidden: exceeded quota" in forbidden.message
    gone = classify(httpx2.ConnectError("refused"))
    assert (gone.reason, gone.expected) == ("ConnectionError", True)


def test_an_unexpected_errors_text_stays_out_of_status() -> None:
    failure = classify(KeyError("hf_secret_value"))
    assert (failure.reason, failure.expected) == ("KeyError", False)
    assert "hf_secret_value" not in failure.message
