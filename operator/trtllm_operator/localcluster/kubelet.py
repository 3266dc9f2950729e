"""The checks a real kubelet makes before it starts a pod's containers, which kwok skips.

kwok runs no container, so without this a pod that a real node would refuse (a Secret that
does not exist, an image that cannot be pulled, a container that keeps crashing) would run
here. :class:`KubeletAdmission` watches pods bound to nodes and, for each one, decides what a
kubelet would show:

- every Secret / ConfigMap named by ``env[].valueFrom`` (``secretKeyRef``/``configMapKeyRef``,
  honouring ``optional``) or ``envFrom`` must exist and hold the key, else the container waits
  in ``CreateContainerConfigError`` with the kubelet's message (``secret "hf" not found``,
  ``couldn't find key HF_TOKEN in Secret ns/hf``); a ``secret`` / ``configMap`` volume must
  exist, else the container waits in ``ContainerCreating`` (the kubelet's volume manager
  retries the mount). The pod proceeds once the object appears, as a kubelet retries.
- **image rule**: an image whose registry host ends in ``.invalid`` (RFC 2606: a name that can
  never resolve) cannot be pulled: ``ErrImagePull`` first, then ``ImagePullBackOff`` with
  ``Back-off pulling image "<image>"``. Every other image pulls.
- **crash knob**: a pod that is not owned by a Job and carries the annotation
  ``sim.trtllm.dev/crash`` (any non-empty value) or the env var ``SIM_CRASH`` on its first
  container crashes at start: ``CrashLoopBackOff`` with ``restartCount`` growing and
  ``lastState.terminated`` (exit code 1, reason ``Error``). Annotating a pod that already runs
  crashes it from then on (a process dying mid-serve). A Job's pod (restartPolicy Never)
  fails instead: use ``sim.trtllm.dev/exit-code`` (see :mod:`.stages`).

- **simulated hub**: a model-download pod (env ``TRTLLM_DOWNLOAD_SPEC``) is admitted with the
  summary the real download job writes to its termination message (``phase``, ``repo``,
  ``commit``, ``path``, ``totalBytes``, ``checkpointBytes``; on failure the reason its exit
  code stands for), as the annotation the completion Stage copies. The commit is the revision
  when it is one, else a hash of repo and revision (a stable simulated hub). The operator
  writes the download pod itself, so a test steers it through annotations on the LLMEngine
  that created it: ``sim.trtllm.dev/download-exit-code``, ``sim.trtllm.dev/download-duration``
  (Go duration), ``sim.trtllm.dev/download-checkpoint-bytes``. kwok keeps no logs, so no
  progress lines exist here: a slow download shows Downloading without figures.
- **simulated ModelOpt**: a quantize pod (env ``TRTLLM_QUANTIZE_SPEC``) likewise gets the
  summary the real quantize job writes (``phase`` Quantized, ``format``, ``commit``, the
  export's ``path``, ``totalBytes``), steered by ``sim.trtllm.dev/quantize-exit-code`` and
  ``sim.trtllm.dev/quantize-duration`` on the LLMEngine that created it.

A pod that passes every check gets the annotation ``sim.trtllm.dev/admitted``; kwok's pod
Stages only act on admitted pods, so kwok never runs a pod a kubelet would refuse. A PVC volume
needs nothing here: the real scheduler leaves a pod whose claim is missing or unbound Pending
(``FailedScheduling``), so it never reaches a node.

One watch on pods, Secrets and ConfigMaps each (admin credentials: this is the harness, never
the operator), no LIST per pod, one patch per decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trtllm_jobs import contract, facts
from trtllm_jobs import spec as job_spec
from trtllm_operator.localcluster.stages import (
    DURATION_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    MESSAGE_ANNOTATION,
)

SIM_PREFIX = "sim.trtllm.dev"
DOWNLOAD_SPEC_ENV = "TRTLLM_DOWNLOAD_SPEC"
DOWNLOAD_EXIT_CODE_ANNOTATION = f"{SIM_PREFIX}/download-exit-code"
DOWNLOAD_DURATION_ANNOTATION = f"{SIM_PREFIX}/download-duration"
DOWNLOAD_BYTES_ANNOTATION = f"{SIM_PREFIX}/download-checkpoint-bytes"
QUANTIZE_SPEC_ENV = "TRTLLM_QUANTIZE_SPEC"
QUANTIZE_EXIT_CODE_ANNOTATION = f"{SIM_PREFIX}/quantize-exit-code"
QUANTIZE_DURATION_ANNOTATION = f"{SIM_PREFIX}/quantize-duration"
SIM_CHECKPOINT_BYTES = 16_060_522_496
ADMITTED_ANNOTATION = f"{SIM_PREFIX}/admitted"
CRASH_ANNOTATION = f"{SIM_PREFIX}/crash"
CRASH_ENV = "SIM_CRASH"
UNRESOLVABLE_TLD = ".invalid"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Waiting:
    """Why one container cannot start: the kubelet's ``state.waiting`` for it."""

    container: str
    reason: str
    message: str


@dataclass
class Known:
    """What the simulator knows of the cluster: ``(namespace, name) -> keys`` per kind."""

    secrets: dict[tuple[str, str], frozenset[str]]
    configmaps: dict[tuple[str, str], frozenset[str]]


def registry_host(image: str) -> str:
    """The registry host of an image reference (``docker.io`` when the reference names none)."""
    first, sep, _rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first.split(":")[0]
    return "docker.io"


def pullable(image: str) -> bool:
    """The image rule: a registry under the reserved ``.invalid`` TLD never resolves."""
    host = registry_host(image).lower().rstrip(".")
    return not (host == "invalid" or host.endswith(UNRESOLVABLE_TLD))


def _ref_problem(kind: str, ref: dict[str, Any], namespace: str, known: Known,
                 key: str | None) -> str | None:
    """The kubelet's message if the referenced object (or its key) is missing, else None."""
    if ref.get("optional"):
        return None
    name = ref.get("name", "")
    objects = known.secrets if kind == "Secret" else known.configmaps
    keys = objects.get((namespace, name))
    if keys is None:
        return f'{kind.lower()} "{name}" not found'
    if key is not None and key not in keys:
        return f"couldn't find key {key} in {kind} {namespace}/{name}"
    return None


def config_problem(container: dict[str, Any], namespace: str, known: Known) -> str | None:
    """Why the kubelet cannot build this container's environment (CreateContainerConfigError)."""
    for env in container.get("env") or []:
        source = env.get("valueFrom") or {}
        for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            ref = source.get(field)
            if ref:
                problem = _ref_problem(kind, ref, namespace, known, ref.get("key"))
                if problem:
                    return problem
    for source in container.get("envFrom") or []:
        for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            ref = source.get(field)
            if ref:
                problem = _ref_problem(kind, ref, namespace, known, None)
                if problem:
                    return problem
    return None


def volume_problem(pod: dict[str, Any], known: Known) -> str | None:
    """Why a Secret/ConfigMap volume cannot be mounted (the container stays ContainerCreating)."""
    namespace = pod["metadata"].get("namespace", "default")
    for volume in pod.get("spec", {}).get("volumes") or []:
        if "secret" in volume:
            ref = {"name": volume["secret"].get("secretName", ""),
                   "optional": volume["secret"].get("optional")}
            problem = _ref_problem("Secret", ref, namespace, known, None)
        elif "configMap" in volume:
            problem = _ref_problem("ConfigMap", volume["configMap"], namespace, known, None)
        else:
            continue
        if problem:
            return f'MountVolume.SetUp failed for volume "{volume.get("name", "")}" : {problem}'
    return None


def _first_env(pod: dict[str, Any], name: str) -> str | None:
    containers = pod.get("spec", {}).get("containers") or [{}]
    for env in containers[0].get("env") or []:
        if env.get("name") == name:
            return str(env.get("value") or "")
    return None


def is_download_pod(pod: dict[str, Any]) -> bool:
    return _first_env(pod, DOWNLOAD_SPEC_ENV) is not None


def _steered_failure(exit_code: str | None, default: contract.Reason, what: str,
                     base: dict[str, str]) -> dict[str, str]:
    """The exit code and failure summary a job pod gets when its LLMEngine's steering
    annotation asks for a non-zero ``exit_code`` (the reason that code stands for, else
    ``default``); empty when it asks for none."""
    code = int(exit_code or 0)
    if not code:
        return {}
    reason = next((str(r) for r, c in contract.EXIT_CODES.items() if c == code), str(default))
    return {EXIT_CODE_ANNOTATION: str(code), MESSAGE_ANNOTATION: json.dumps({
        "phase": str(contract.Phase.FAILED), "reason": reason,
        "message": f"simulated {what} failure: {reason}", **base})}


def download_pod_annotations(pod: dict[str, Any],
                             steering: dict[str, str]) -> dict[str, str]:
    """The Stage annotations of a download pod: its termination message (what the real job
    would write) and, if the creating LLMEngine's ``steering`` annotations ask, its exit code
    and duration. Empty for any other pod."""
    raw = _first_env(pod, DOWNLOAD_SPEC_ENV)
    if raw is None:
        return {}
    out: dict[str, str] = {}
    if steering.get(DOWNLOAD_DURATION_ANNOTATION):
        out[DURATION_ANNOTATION] = steering[DOWNLOAD_DURATION_ANNOTATION]
    spec = json.loads(raw)
    repo, revision = spec["model"]["repo"], spec["model"]["revision"]
    base = {"repo": repo, "revision": revision}
    failure = _steered_failure(steering.get(DOWNLOAD_EXIT_CODE_ANNOTATION),
                               contract.Reason.DOWNLOAD_FAILED, "download", base)
    if failure:
        return out | failure
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else hashlib.sha1(
        f"{repo}@{revision}".encode()).hexdigest()
    parsed = job_spec.parse_download_spec(spec)
    if parsed.repo_type == "dataset":  # calibration samples: no weights, no size at 16 bits
        out[MESSAGE_ANNOTATION] = json.dumps({
            "phase": str(contract.Phase.DOWNLOADED), **base, "commit": commit,
            "path": str(parsed.entry(commit)), "totalBytes": 52_428_800, "fileCount": 2,
            "durationSeconds": 1.0})
        return out
    checkpoint = int(steering.get(DOWNLOAD_BYTES_ANNOTATION) or SIM_CHECKPOINT_BYTES)
    out[MESSAGE_ANNOTATION] = json.dumps({
        "phase": str(contract.Phase.DOWNLOADED), **base, "commit": commit,
        "path": str(parsed.entry(commit)),
        "totalBytes": checkpoint + 9_085_657, "checkpointBytes": checkpoint, "fileCount": 9,
        "durationSeconds": 1.0})
    return out


def is_quantize_pod(pod: dict[str, Any]) -> bool:
    return _first_env(pod, QUANTIZE_SPEC_ENV) is not None


def quantize_pod_annotations(pod: dict[str, Any], steering: dict[str, str]) -> dict[str, str]:
    """The Stage annotations of a quantize pod: the summary the real quantize job writes (its
    folder named by the job's own spec parser), or the failure the creating LLMEngine's
    ``sim.trtllm.dev/quantize-exit-code`` asks for; ``quantize-duration`` sets how long it
    runs. Empty for any other pod."""
    raw = _first_env(pod, QUANTIZE_SPEC_ENV)
    if raw is None:
        return {}
    out: dict[str, str] = {}
    if steering.get(QUANTIZE_DURATION_ANNOTATION):
        out[DURATION_ANNOTATION] = steering[QUANTIZE_DURATION_ANNOTATION]
    parsed = job_spec.parse_quantize_spec(json.loads(raw))
    base = {"format": parsed.format, "commit": parsed.commit}
    failure = _steered_failure(steering.get(QUANTIZE_EXIT_CODE_ANNOTATION),
                               contract.Reason.QUANTIZE_FAILED, "quantize", base)
    if failure:
        return out | failure
    weights = int(SIM_CHECKPOINT_BYTES * facts.WEIGHT_BYTES_FACTOR[parsed.format])
    out[MESSAGE_ANNOTATION] = json.dumps({
        "phase": str(contract.Phase.QUANTIZED), **base, "path": str(parsed.output_dir),
        "totalBytes": weights + 9_085_657, "durationSeconds": 1.0})
    return out


def owned_by_job(pod: dict[str, Any]) -> bool:
    return any(o.get("kind") == "Job" for o in pod["metadata"].get("ownerReferences") or [])


def crashes(pod: dict[str, Any]) -> bool:
    """The crash knob (annotation or env), for pods a kubelet would restart (not a Job's)."""
    if owned_by_job(pod):
        return False
    annotations = pod["metadata"].get("annotations") or {}
    return bool(annotations.get(CRASH_ANNOTATION) or _first_env(pod, CRASH_ENV))


def decide(pod: dict[str, Any], known: Known, pull_attempted: bool = False) -> list[Waiting]:
    """What a kubelet shows for this pod before it runs: one ``Waiting`` per blocked container.

    Empty means the pod may start. ``pull_attempted``: a pull of an unpullable image already
    failed once, so the kubelet now backs off (``ImagePullBackOff``) instead of ``ErrImagePull``.
    """
    namespace = pod["metadata"].get("namespace", "default")
    containers = pod.get("spec", {}).get("containers") or []
    mount = volume_problem(pod, known)
    if mount:
        return [Waiting(c["name"], "ContainerCreating", mount) for c in containers]
    waiting: list[Waiting] = []
    for c in containers:
        image = c.get("image", "")
        if not pullable(image):
            if pull_attempted:
                waiting.append(Waiting(c["name"], "ImagePullBackOff",
                                       f'Back-off pulling image "{image}"'))
            else:
                host = registry_host(image)
                waiting.append(Waiting(
                    c["name"], "ErrImagePull",
                    f'failed to pull and unpack image "{image}": failed to resolve reference '
                    f'"{image}": failed to do request: dial tcp: lookup {host}: no such host'))
            continue
        problem = config_problem(c, namespace, known)
        if problem:
            waiting.append(Waiting(c["name"], "CreateContainerConfigError", problem))
    return waiting


def crash_message(pod: dict[str, Any], container: str, backoff_seconds: int) -> str:
    """The kubelet's CrashLoopBackOff message (``format.Pod``: name_namespace(uid))."""
    meta = pod["metadata"]
    minutes, seconds = divmod(backoff_seconds, 60)
    span = f"{minutes}m{seconds}s" if minutes else f"{seconds}s"
    return (f"back-off {span} restarting failed container={container} "
            f"pod={meta['name']}_{meta.get('namespace', 'default')}({meta.get('uid', '')})")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting_status(pod: dict[str, Any], waiting: list[Waiting]) -> dict[str, Any]:
    """The pod status a kubelet reports while containers wait: Pending, not Ready."""
    now = _now()
    by_name = {w.container: w for w in waiting}
    statuses = []
    for c in pod.get("spec", {}).get("containers") or []:
        w = by_name.get(c["name"])
        state = ({"waiting": {"reason": w.reason, "message": w.message}} if w
                 else {"waiting": {"reason": "ContainerCreating"}})
        statuses.append({"name": c["name"], "image": c.get("image", ""), "ready": False,
                         "started": False, "restartCount": 0, "state": state})
    not_ready = ", ".join(sorted(by_name))
    conditions = [
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
         "message": f"containers with unready status: [{not_ready}]", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
         "message": f"containers with unready status: [{not_ready}]", "lastTransitionTime": now},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
    ]
    return {"phase": "Pending", "conditions": conditions, "containerStatuses": statuses,
            "startTime": pod.get("status", {}).get("startTime") or now}


def crash_status(pod: dict[str, Any], restarts: int, backoff_seconds: int) -> dict[str, Any]:
    """A pod whose containers keep exiting: Running phase, CrashLoopBackOff, not Ready."""
    now = _now()
    statuses = []
    names = []
    for c in pod.get("spec", {}).get("containers") or []:
        names.append(c["name"])
        statuses.append({
            "name": c["name"], "image": c.get("image", ""), "ready": False, "started": False,
            "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": crash_message(pod, c["name"], backoff_seconds)}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                         "startedAt": now, "finishedAt": now}},
        })
    unready = f"containers with unready status: [{', '.join(names)}]"
    conditions = [
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": unready,
         "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
         "message": unready, "lastTransitionTime": now},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
    ]
    return {"phase": "Running", "conditions": conditions, "containerStatuses": statuses,
            "startTime": pod.get("status", {}).get("startTime") or now}


def backoff_seconds(restarts: int) -> int:
    """The kubelet's restart back-off: 10s doubling up to 5m."""
    return int(min(10 * 2 ** max(restarts - 1, 0), 300))


class KubeletAdmission:
    """The watcher: admits pods that pass :func:`decide`, reports the others' waiting states.

    Runs in daemon threads of the launcher process (so it dies with it). ``crash_interval``:
    seconds between simulated restarts of a crash-knob pod (short, so tests see the count grow;
    the message still names the kubelet's back-off for that restart count).
    """

    def __init__(self, kubeconfig: Path, retry_seconds: float = 2.0,
                 crash_interval: float = 3.0) -> None:
        from lightkube import Client, KubeConfig

        self._client = Client(KubeConfig.from_file(str(kubeconfig)), field_manager="sim-kubelet")
        self._known = Known({}, {})
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._pulled_once: set[str] = set()  # uids whose unpullable image already failed once
        self._restarts: dict[str, float] = {}  # uid -> when the next restart is due
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._retry = retry_seconds
        self._crash_interval = crash_interval
        self._stop = threading.Event()

    def start(self) -> None:
        from lightkube.resources.core_v1 import ConfigMap, Pod, Secret

        for name, res in (("pods", Pod), ("secrets", Secret), ("configmaps", ConfigMap)):
            threading.Thread(target=self._watch, args=(res,), name=f"sim-kubelet-{name}",
                             daemon=True).start()
        threading.Thread(target=self._loop, name="sim-kubelet", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _watch(self, res: Any) -> None:
        from lightkube.resources.core_v1 import Pod, Secret

        while not self._stop.is_set():
            try:
                for event, obj in self._client.watch(res, namespace="*"):
                    raw = obj.to_dict()
                    meta = raw["metadata"]
                    key = (meta.get("namespace", ""), meta["name"])
                    with self._lock:
                        if res is Pod:
                            self._on_pod(event, key, raw)
                        else:
                            table = (self._known.secrets if res is Secret
                                     else self._known.configmaps)
                            if event == "DELETED":
                                table.pop(key, None)
                            else:
                                table[key] = frozenset((raw.get("data") or {})
                                                       | (raw.get("binaryData") or {})
                                                       | (raw.get("stringData") or {}))
                    self._wake.set()
                    if self._stop.is_set():
                        return
            except Exception as exc:  # the watch ends on timeouts and restarts: resume it
                if self._stop.is_set():
                    return
                log.debug("sim-kubelet watch %s restarted: %s", res.__name__, exc)
                time.sleep(1)

    def _on_pod(self, event: str, key: tuple[str, str], pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        # An admitted pod is done with, unless the crash knob was put on it later: a container
        # that was running and then crashes (a rank dying mid-serve).
        admitted = ADMITTED_ANNOTATION in (meta.get("annotations") or {}) and not crashes(pod)
        if (event == "DELETED" or admitted or meta.get("deletionTimestamp")
                or not pod.get("spec", {}).get("nodeName")):
            self._pending.pop(key, None)
            return
        self._pending[key] = pod

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._retry)
            self._wake.clear()
            with self._lock:
                pods = list(self._pending.values())
            for pod in pods:
                try:
                    self._handle(pod)
                except Exception as exc:  # one pod's failed patch must not stop the others
                    log.debug("sim-kubelet: pod %s: %s", pod["metadata"]["name"], exc)

    def _handle(self, pod: dict[str, Any]) -> None:
        from lightkube.resources.core_v1 import Pod
        from lightkube.types import PatchType

        meta = pod["metadata"]
        uid, ns, name = meta.get("uid", ""), meta.get("namespace", "default"), meta["name"]
        if crashes(pod):
            last = pod.get("status", {}).get("containerStatuses") or [{}]
            restarts = int(last[0].get("restartCount", 0) or 0)
            due = self._restarts.get(uid)
            if due is not None and time.monotonic() < due:
                return
            self._restarts[uid] = time.monotonic() + self._crash_interval
            restarts += 1
            status = crash_status(pod, restarts, backoff_seconds(max(restarts, 1)))
            self._patch_status(Pod, ns, name, status, PatchType)
            return
        with self._lock:
            waiting = decide(pod, self._known, pull_attempted=uid in self._pulled_once)
        if not waiting:
            admit: dict[str, Any] = {"metadata": {"annotations": {ADMITTED_ANNOTATION: "true"}}}
            if is_download_pod(pod):
                admit["metadata"]["annotations"] |= download_pod_annotations(
                    pod, self._steering(ns, meta.get("labels") or {}))
            elif is_quantize_pod(pod):
                admit["metadata"]["annotations"] |= quantize_pod_annotations(
                    pod, self._steering(ns, meta.get("labels") or {}))
            self._client.patch(Pod, name, admit, namespace=ns, patch_type=PatchType.MERGE)
            with self._lock:
                self._pending.pop((ns, name), None)
            return
        current = pod.get("status", {}).get("containerStatuses") or []
        seen = {(s.get("name"), (s.get("state") or {}).get("waiting", {}).get("reason"),
                 (s.get("state") or {}).get("waiting", {}).get("message")) for s in current}
        if any(w.reason == "ErrImagePull" for w in waiting):
            self._pulled_once.add(uid)
        if all((w.container, w.reason, w.message) in seen for w in waiting):
            return  # already reported: one patch per change, not per retry
        self._patch_status(Pod, ns, name, waiting_status(pod, waiting), PatchType)

    def _steering(self, namespace: str, pod_labels: dict[str, str]) -> dict[str, str]:
        """The sim annotations of the LLMEngine that created a download pod ({} if gone)."""
        from lightkube import ApiError
        from lightkube.generic_resource import create_namespaced_resource

        engine = pod_labels.get("trtllm.dev/engine")
        if not engine:
            return {}
        res = create_namespaced_resource("trtllm.dev", "v1alpha1", "LLMEngine", "llmengines")
        try:
            obj = self._client.get(res, engine, namespace=namespace)
        except ApiError:
            return {}
        annotations = obj.metadata.annotations if obj.metadata else None
        return {k: v for k, v in (annotations or {}).items() if k.startswith(SIM_PREFIX)}

    def _patch_status(self, pod_res: Any, ns: str, name: str, status: dict[str, Any],
                      patch_type: Any) -> None:
        self._client.patch(pod_res.Status, name, {"status": status}, namespace=ns,
                           patch_type=patch_type.MERGE)
