"""kwok Stage objects: how simulated nodes and pods move through their lives.

kwok plays every kubelet: it does nothing to a node or pod unless a Stage says so (without
Stages the binary exits with "no stages found"). These Stages make:

- a node Ready at once, then renew its Lease (heartbeat);
- a scheduled pod Running and Ready (``pod-ready``);
- a pod owned by a Job succeed after a delay (``pod-job-complete``), or fail when it carries
  the ``sim.trtllm.dev/exit-code`` annotation (``pod-job-fail``);
- a deleted pod go away a second later, as a kubelet stops its containers (``pod-delete``).

A pod only starts once the kubelet simulator (:mod:`.kubelet`) has checked what a real kubelet
checks (Secrets, ConfigMaps, image pull, crash knob) and set ``sim.trtllm.dev/admitted``.

Annotations a test (or a pod template) may set, all optional -- or the same as environment
variables of the pod's first container (``SIM_DURATION``, ``SIM_EXIT_CODE``,
``SIM_TERMINATION_MESSAGE``), which is how a test steers a pod it does not write itself, such
as a build pod made by the operator from ``spec.build.env``:

=====================================  =========================================================
``sim.trtllm.dev/duration``            how long a Job's pod "runs" (Go duration, e.g. ``30s``);
                                       overrides the launcher's default
``sim.trtllm.dev/exit-code``           the Job's pod fails with this exit code
``sim.trtllm.dev/termination-message`` written as the container's termination message
=====================================  =========================================================
"""

from __future__ import annotations

from typing import Any

import yaml

SIM_PREFIX = "sim.trtllm.dev"
DURATION_ANNOTATION = f"{SIM_PREFIX}/duration"
EXIT_CODE_ANNOTATION = f"{SIM_PREFIX}/exit-code"
MESSAGE_ANNOTATION = f"{SIM_PREFIX}/termination-message"
DURATION_ENV = "SIM_DURATION"
EXIT_CODE_ENV = "SIM_EXIT_CODE"
MESSAGE_ENV = "SIM_TERMINATION_MESSAGE"
POD_STOP_MILLISECONDS = 1000  # a deleted pod lingers this long, Terminating


def _env(name: str) -> str:
    """A jq expression for the value of an env var of the pod's first container."""
    return f'.spec.containers.[0] | (.env // []).[] | select( .name == "{name}" ) | .value'


def _annotation_or_env(annotation: str, env: str) -> str:
    """A Go template expression: the annotation's value, else the env var's, else empty."""
    return (f'{{{{ $v := "" }}}}{{{{ with $.metadata.annotations }}}}{{{{ $v = index . "{annotation}" }}}}'
            f'{{{{ end }}}}{{{{ if not $v }}}}{{{{ range (index $.spec.containers 0).env }}}}'
            f'{{{{ if eq .name "{env}" }}}}{{{{ $v = .value }}}}{{{{ end }}}}{{{{ end }}}}{{{{ end }}}}')

# Only pods the kubelet simulator admitted (see :mod:`.kubelet`) may start.
_ADMITTED = {"key": '.metadata.annotations["sim.trtllm.dev/admitted"]', "operator": "Exists"}
_NOT_DELETING = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_OWNED_BY_JOB = {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]}
_RUNNING = {"key": ".status.phase", "operator": "In", "values": ["Running"]}

_NODE_STATUS = """\
{{ $now := Now }}
{{ $since := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}
{{ YAML . 1 }}
{{ else }}
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ NodeName | Quote }}
  type: Hostname
{{ end }}
"""

# Capacity and allocatable were given when the node was created (GPU counts included): keep them.
_NODE_INIT_EXTRA = """\
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  osImage: simulated
  bootID: ""
  machineID: ""
  systemUUID: ""
phase: Running
"""

_POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _pod_finished(phase: str, exit_code: str, reason: str) -> str:
    """Status of a Job's pod whose containers all terminated (first container carries the message)."""
    return f"""\
{{{{ $now := Now }}}}
{_annotation_or_env(MESSAGE_ANNOTATION, MESSAGE_ENV)}
{{{{ $message := $v }}}}
conditions:
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  type: Ready
  reason: PodCompleted
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  type: ContainersReady
  reason: PodCompleted
containerStatuses:
{{{{ range $index, $c := .spec.containers }}}}
- image: {{{{ $c.image | Quote }}}}
  name: {{{{ $c.name | Quote }}}}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: {exit_code}
      reason: {reason}
      finishedAt: {{{{ $now | Quote }}}}
      startedAt: {{{{ $now | Quote }}}}
      {{{{ if and (eq $index 0) $message }}}}
      message: {{{{ $message | Quote }}}}
      {{{{ end }}}}
{{{{ end }}}}
phase: {phase}
"""


def _stage(name: str, kind: str, match: list[dict[str, Any]], next_: dict[str, Any],
           delay: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": match},
        "next": next_,
    }
    if delay:
        spec["delay"] = delay
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name},
            "spec": spec}


def stages(job_duration_seconds: float = 0.0, heartbeat_seconds: int = 600) -> list[dict[str, Any]]:
    """The project's Stage objects.

    ``job_duration_seconds``: how long a Job's pod stays Running before it completes, so that a
    simulated build takes visible time; a pod's ``sim.trtllm.dev/duration`` annotation overrides
    it. ``heartbeat_seconds``: how often node status is refreshed (the Lease, renewed by kwok
    itself, is what keeps nodes Ready, as with a real kubelet).
    """
    job_delay = {
        "durationMilliseconds": int(job_duration_seconds * 1000),
        "durationFrom": {"expressionFrom": f'.metadata.annotations["{DURATION_ANNOTATION}"] '
                                           f'// ({_env(DURATION_ENV)})'},
    }
    exit_code_set = {"key": f'.metadata.annotations["{EXIT_CODE_ANNOTATION}"] '
                            f'// ({_env(EXIT_CODE_ENV)})',
                     "operator": "Exists"}
    exit_code_unset = {**exit_code_set, "operator": "DoesNotExist"}
    ready = {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
             "operator": "In", "values": ["True"]}
    return [
        _stage(
            "node-initialize", "Node",
            [{"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
              "operator": "NotIn", "values": ["True"]}],
            {"statusTemplate": _NODE_STATUS + _NODE_INIT_EXTRA},
        ),
        _stage(
            "node-heartbeat-with-lease", "Node",
            [{"key": ".status.phase", "operator": "In", "values": ["Running"]}, ready],
            {"statusTemplate": _NODE_STATUS},
            delay={"durationMilliseconds": heartbeat_seconds * 1000,
                   "jitterDurationMilliseconds": heartbeat_seconds * 1000 + 10_000},
        ),
        _stage(
            "pod-ready", "Pod",
            [_NOT_DELETING, _ADMITTED, {"key": ".status.podIP", "operator": "DoesNotExist"}],
            {"statusTemplate": _POD_READY},
        ),
        _stage(
            "pod-job-complete", "Pod",
            [_NOT_DELETING, _RUNNING, _OWNED_BY_JOB, exit_code_unset],
            {"statusTemplate": _pod_finished("Succeeded", "0", "Completed")},
            delay=job_delay,
        ),
        _stage(
            "pod-job-fail", "Pod",
            [_NOT_DELETING, _RUNNING, _OWNED_BY_JOB, exit_code_set],
            {"statusTemplate": _pod_finished(
                "Failed", _annotation_or_env(EXIT_CODE_ANNOTATION, EXIT_CODE_ENV) + "{{ $v }}",
                "Error")},
            delay=job_delay,
        ),
        _stage(
            "pod-delete", "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"finalizers": {"empty": True}, "delete": True},
            # A kubelet takes a moment to stop containers; controllers that act on a pod while
            # it terminates (LeaderWorkerSet recreating a group) see it do so, as on a node.
            delay={"durationMilliseconds": POD_STOP_MILLISECONDS},
        ),
    ]


def stages_yaml(job_duration_seconds: float = 0.0) -> str:
    """The Stage objects as one multi-document YAML file, for ``kwok --config``."""
    return yaml.safe_dump_all(stages(job_duration_seconds), sort_keys=False)
