"""What a pod's own status says about why it does not run, and what the user should do. Pure.

A build or serving pod that the scheduler placed can still never start: a Secret or key its
env names is missing (``CreateContainerConfigError``), its image cannot be pulled
(``ErrImagePull`` / ``ImagePullBackOff``), or its process keeps dying (``CrashLoopBackOff``).
The kubelet says so in the container's ``state.waiting`` (reason and message), and keeps
retrying: creating the Secret later lets the same pod start. So the operator reads the pod's
state instead of reading Secrets (it has no access to Secret data, and needs none): the
kubelet's message names the Secret and key, never a value.

:class:`PodFact` is the one typed fact the pod indexes keep, the controllers read and the tests
build; :func:`diagnose` turns a stuck container into a reason and a message with the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class StuckReason(StrEnum):
    """Reasons (target ``reason`` / deployment ``Ready`` reason) for a pod that cannot run."""

    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CRASH_LOOP = "CrashLoop"


# The kubelet's container waiting reasons that mean "this will not start by itself soon".
# ContainerCreating and PodInitializing are normal waits and are not here.
_KUBELET_REASONS: Final[Mapping[str, StuckReason]] = {
    "CreateContainerConfigError": StuckReason.CONTAINER_CONFIG_ERROR,
    "ErrImagePull": StuckReason.IMAGE_PULL_FAILED,
    "ImagePullBackOff": StuckReason.IMAGE_PULL_FAILED,
    "InvalidImageName": StuckReason.IMAGE_PULL_FAILED,
    "CrashLoopBackOff": StuckReason.CRASH_LOOP,
}

# The kubelet's wording (pkg/kubelet/kuberuntime: makeEnvironmentVariables and the secret
# manager's NotFound error).
_SECRET_MISSING = re.compile(r'secrets? "(?P<name>[^"]+)" not found')
_SECRET_KEY_MISSING = re.compile(
    r"couldn't find key (?P<key>\S+) in Secret (?:(?P<namespace>[^/\s]+)/)?(?P<name>[^\s,;]+)")

STUCK_REASONS: Final = frozenset(StuckReason)
"""Every reason :func:`diagnose` can give (for callers that announce them as Warnings)."""


@dataclass(frozen=True)
class StuckContainer:
    """A container (or init container) the kubelet holds in a waiting state it will not leave
    by itself."""

    container: str
    init: bool
    waiting_reason: str
    """The kubelet's reason, e.g. CreateContainerConfigError."""
    message: str
    """The kubelet's message, e.g. secret "hf" not found (names, never values)."""
    restarts: int = 0


@dataclass(frozen=True)
class PodFact:
    """What the operator keeps of one of its pods."""

    name: str
    created: str = ""
    """creationTimestamp (RFC 3339 sorts as text)."""
    phase: str | None = None
    unschedulable: str | None = None
    """The scheduler's message when it cannot place the pod."""
    stuck: StuckContainer | None = None
    gpu: str | None = None
    """The GPU type the pod serves on (its trtllm.dev/gpu-product label), for slices."""
    group: str | None = None
    """The LeaderWorkerSet group index of a multi-node serving pod (its label), else None."""


def observe_pod(name: str, created: str | None, status: Mapping[str, Any],
                gpu: str | None = None, group: str | None = None) -> PodFact:
    """The fact of one pod, from its metadata and ``status``."""
    unschedulable = None
    for c in status.get("conditions") or []:
        if (c.get("type"), c.get("status"), c.get("reason")) == (
                "PodScheduled", "False", "Unschedulable"):
            unschedulable = str(c.get("message") or "no node fits the pod")
    return PodFact(name=name, created=str(created or ""), phase=status.get("phase"),
                   unschedulable=unschedulable, stuck=stuck_container(status), gpu=gpu,
                   group=group)


def stuck_container(status: Mapping[str, Any]) -> StuckContainer | None:
    """The first container that cannot start or keeps crashing; init containers first, as the
    kubelet runs them first."""
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason in _KUBELET_REASONS:
                return StuckContainer(
                    container=str(cs.get("name") or ""), init=init, waiting_reason=reason,
                    message=str(waiting.get("message") or reason),
                    restarts=int(cs.get("restartCount") or 0))
    return None


@dataclass(frozen=True)
class PodContext:
    """Where the pod's settings come from in the user's spec, to name them in the fix."""

    kind: str
    """"build" or "serving"."""
    namespace: str
    image: str
    image_field: str
    """The spec field that sets the image, e.g. spec.build.image."""
    pull_secrets_field: str
    env_field: str
    """The spec field whose entries can name Secrets, e.g. spec.build.env."""
    token_secret: tuple[str, str] | None = None
    """(Secret name, key) of spec.model.huggingFace.tokenSecretRef, for build pods."""


@dataclass(frozen=True)
class PodProblem:
    reason: StuckReason
    message: str
    """What the kubelet says, and the fix naming the spec field."""


def diagnose(pod: str, stuck: StuckContainer, ctx: PodContext) -> PodProblem:
    """The reason and the fix for a stuck container of ``pod``."""
    what = ("init container" if stuck.init else "container") + f" {stuck.container}"
    seen = (f"{ctx.kind} pod {pod}: {what} is in {stuck.waiting_reason}: "
            f"{stuck.message.strip()}")
    kind = _KUBELET_REASONS[stuck.waiting_reason]
    if kind is StuckReason.CONTAINER_CONFIG_ERROR:
        return _config_problem(seen, stuck.message, ctx)
    if kind is StuckReason.IMAGE_PULL_FAILED:
        return PodProblem(kind, (
            f"{seen}; check that {ctx.image_field} {ctx.image} exists and the nodes can reach "
            f"its registry; for a private registry list a pull Secret in "
            f"{ctx.pull_secrets_field}. The pod retries the pull by itself"))
    return PodProblem(kind, (
        f"{seen} (restarted {stuck.restarts} times); see why with kubectl logs -n "
        f"{ctx.namespace} {pod} -c {stuck.container} --previous, then fix the settings or the "
        f"image ({ctx.image_field})"))


def _config_problem(seen: str, message: str, ctx: PodContext) -> PodProblem:
    retry = "the pod starts by itself once it exists"
    missing_key = _SECRET_KEY_MISSING.search(message)
    if missing_key:
        name, key = missing_key["name"], missing_key["key"]
        return PodProblem(StuckReason.SECRET_KEY_NOT_FOUND, (
            f"{seen}; add key {key} to Secret {name} in namespace {ctx.namespace}, or "
            f"{_secret_field(name, ctx)}; {retry}"))
    missing = _SECRET_MISSING.search(message)
    if missing:
        name = missing["name"]
        key = ctx.token_secret[1] if ctx.token_secret and ctx.token_secret[0] == name else None
        create = f"create Secret {name}" + (f" with key {key}" if key else "")
        return PodProblem(StuckReason.SECRET_NOT_FOUND, (
            f"{seen}; {create} in namespace {ctx.namespace}, or "
            f"{_secret_field(name, ctx)}; {retry}"))
    return PodProblem(StuckReason.CONTAINER_CONFIG_ERROR, (
        f"{seen}; fix what it names (a ConfigMap or Secret reference in {ctx.env_field}); "
        f"{retry}"))


def _secret_field(name: str, ctx: PodContext) -> str:
    if ctx.token_secret is not None and ctx.token_secret[0] == name:
        return "fix spec.model.huggingFace.tokenSecretRef"
    return f"fix the reference in {ctx.env_field}"
