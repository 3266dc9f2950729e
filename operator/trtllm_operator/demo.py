"""``make demo``: the whole product on a laptop with no GPU and no Docker.

Starts the local control plane with a small simulated GPU fleet (H100, L40S and A100 nodes,
and CPU nodes for the downloads) and LeaderWorkerSet, installs the CRDs, runs the operator,
applies every sample (engines of both backends: tensorrt engines built per GPU type, and a
pytorch one quantized once to fp8 and served as a checkpoint; a 405B engine served as
two-node groups), and shows the engines building and the deployments
becoming Ready in a live table. Ctrl-C tears everything down; with
``--exit-when-ready`` it exits by itself once every sample is Ready (0), or fails after
``--timeout`` seconds (1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from trtllm_operator.localcluster.binaries import BinaryBuilder
from trtllm_operator.localcluster.cluster import ClusterOptions, LocalCluster, static_rwx_claim
from trtllm_operator.localcluster.operator_process import OperatorProcess

NAMESPACE = "llm-demo"
FLEET = {"h100": 6, "l40s": 2, "a100": 1, "cpu": 1}
"""Simulated nodes by GPU type; ``cpu`` nodes (no GPU) run the model and dataset downloads.
Four of the H100 nodes hold the multi-node sample's two groups of two nodes."""
CLAIMS = ("trtllm-engines", "models")


def repo_root() -> Path:
    """The checkout holding samples/ and crds/ (the demo runs from a clone)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "samples").is_dir() and (parent / "crds").is_dir():
            return parent
    raise SystemExit("samples/ and crds/ not found: run the demo from a clone of the project")


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.base = [str(binary), f"--kubeconfig={kubeconfig}"]

    def __call__(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([*self.base, *args], input=input, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            found: dict[str, Any] = c
            return found
    return {}


def table(engines: list[dict[str, Any]], deployments: list[dict[str, Any]]) -> str:
    """The live view: one line per engine target and per deployment."""
    lines = [f"{'LLMENGINE':24} {'BACKEND':9} {'GPU TYPE':24} {'STATE':14} REASON"]
    for e in engines:
        name = e["metadata"]["name"]
        status = e.get("status") or {}
        backend = status.get("backend") or "-"
        ts = status.get("targets") or []
        if not ts:
            lines.append(f"{name:24} {backend:9} {'-':24} {'Pending':14} waiting for the "
                         f"operator")
        for t in ts:
            lines.append(f"{name:24} {backend:9} {t['gpu']:24} {t['state']:14} "
                         f"{t.get('reason', '')}")
    lines.append("")
    lines.append(f"{'LLMDEPLOYMENT':24} {'GPU TYPE':24} {'READY':6} {'REPLICAS':9} REASON")
    for d in deployments:
        status = d.get("status") or {}
        ready = _condition(d, "Ready")
        lines.append(f"{d['metadata']['name']:24} {status.get('gpu') or '-':24} "
                     f"{ready.get('status', '-'):6} {status.get('replicaSummary') or '-':9} "
                     f"{ready.get('reason', '')}")
    return "\n".join(lines)


def all_ready(objects: list[dict[str, Any]]) -> bool:
    return bool(objects) and all(_condition(o, "Ready").get("status") == "True"
                                 for o in objects)


def apply_crds(kubectl: Kubectl, root: Path) -> None:
    """Apply the operator's CRDs (``root``/crds) and wait until both are Established."""
    kubectl("apply", "--server-side", "-f", str(root / "crds"))
    for attempt in range(10):
        try:
            kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/llmengines.trtllm.dev", "crd/llmdeployments.trtllm.dev")
            return
        except RuntimeError as exc:
            # Asked in the instant before the API server writes a new CRD's first status,
            # kubectl wait fails on the missing conditions instead of waiting for them.
            if "accessor error" not in str(exc) or attempt == 9:
                raise
            time.sleep(0.5)


def setup(kubectl: Kubectl, root: Path) -> None:
    """CRDs, the namespace, the Hugging Face token Secret and the two storage claims."""
    apply_crds(kubectl, root)
    kubectl("create", "namespace", NAMESPACE)
    # The simulated builds never contact Hugging Face; a real cluster needs a real token.
    kubectl("create", "secret", "generic", "hf-token", "-n", NAMESPACE,
            "--from-literal=HF_TOKEN=not-a-real-token")
    for claim in CLAIMS:
        pv, pvc = static_rwx_claim(NAMESPACE, claim, f"demo-{claim}")
        kubectl("apply", "-f", "-", input=json.dumps(pv))
        kubectl("apply", "-f", "-", input=json.dumps(pvc))


class _Stopped(Exception):
    """SIGTERM or SIGHUP arrived: tear down as on Ctrl-C, then exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signum)


def run(exit_when_ready: bool, timeout: float, build_seconds: float) -> int:
    # `timeout`, a CI runner or a closed terminal stop the demo with SIGTERM or SIGHUP, whose
    # default action would skip every cleanup below and leave the cluster's folder behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    root = repo_root()
    tools = BinaryBuilder().ensure()
    workdir = Path(tempfile.mkdtemp(prefix="trtllm-demo-"))
    print("starting the local control plane with simulated GPU nodes ...", flush=True)
    options = ClusterOptions(job_duration_seconds=build_seconds)
    try:
        with LocalCluster(tools, options) as cluster:
            assert cluster.kubeconfig
            for gpu, count in FLEET.items():
                cluster.add_nodes(None if gpu == "cpu" else gpu, count)
            # The multi-node sample runs as LeaderWorkerSet groups: LWS's manager (built from
            # its Go module on first use) runs beside the control plane, on loopback.
            print("starting LeaderWorkerSet for the multi-node sample ...", flush=True)
            cluster.start_lws()
            kubectl = Kubectl(tools["kubectl"], cluster.kubeconfig)
            setup(kubectl, root)
            operator = OperatorProcess(cluster.kubeconfig, workdir / "operator.log")
            operator.start()
            try:
                kubectl("apply", "-n", NAMESPACE, "-f", str(root / "samples"))
                print(kubectl("get", "nodes", "-L", "nvidia.com/gpu.product",
                              "-L", "nvidia.com/gpu.count"))
                print(f"cluster ready in {cluster.startup_seconds}s. In another terminal:\n"
                      f"  export KUBECONFIG={cluster.kubeconfig}\n"
                      f"  {tools['kubectl']} get llm -n {NAMESPACE}\n"
                      f"  {tools['kubectl']} describe llmengine llama-3-8b -n {NAMESPACE}\n"
                      f"operator log: {operator.log_path}   metrics: "
                      f"http://127.0.0.1:{operator.metrics_port}/metrics\n", flush=True)
                return watch(kubectl, operator, exit_when_ready, timeout)
            finally:
                operator.stop()
    except KeyboardInterrupt:
        print("\nstopped; everything torn down.")
        return 130
    except _Stopped as stopped:
        print(f"\n{signal.Signals(stopped.signum).name}: stopped; everything torn down.")
        return 128 + stopped.signum
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def watch(kubectl: Kubectl, operator: OperatorProcess, exit_when_ready: bool,
          timeout: float) -> int:
    started = time.monotonic()
    last = ""
    tty = sys.stdout.isatty()
    while True:
        operator.healthy()
        engines = json.loads(kubectl("get", "llmengines", "-n", NAMESPACE, "-o", "json"))["items"]
        deps = json.loads(kubectl("get", "llmdeployments", "-n", NAMESPACE, "-o",
                                  "json"))["items"]
        view = table(engines, deps)
        if view != last:
            elapsed = time.monotonic() - started
            if tty:
                print("\033[2J\033[H", end="")
            print(f"--- {elapsed:5.1f}s\n{view}\n", flush=True)
            last = view
        if all_ready(engines) and all_ready(deps):
            print(f"every engine built and every deployment Ready after "
                  f"{time.monotonic() - started:.1f}s.", flush=True)
            if exit_when_ready:
                return 0
        elif exit_when_ready and time.monotonic() - started > timeout:
            print(f"not everything Ready after {timeout:.0f}s; operator log tail:\n"
                  f"{operator.tail(40)}", file=sys.stderr)
            return 1
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtllm_operator.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--exit-when-ready", action="store_true",
                        help="exit 0 once every sample is Ready (for scripts and CI)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="with --exit-when-ready: give up after this many seconds")
    parser.add_argument("--build-seconds", type=float, default=8,
                        help="how long each simulated engine build takes")
    args = parser.parse_args(argv)
    return run(args.exit_when_ready, args.timeout, args.build_seconds)


if __name__ == "__main__":
    sys.exit(main())
