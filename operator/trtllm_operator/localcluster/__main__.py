"""Command line of the local simulated GPU cluster.

    python -m trtllm_operator.localcluster up [--nodes h100=2,l40s=2] [--job-duration 5]
    python -m trtllm_operator.localcluster down
    python -m trtllm_operator.localcluster status
    python -m trtllm_operator.localcluster run      # in the foreground until Ctrl-C
    python -m trtllm_operator.localcluster binaries [--timings]
    python -m trtllm_operator.localcluster bench [--runs 3]   # start/stop times

``up`` starts a supervisor in the background (``run``) and returns once the cluster is ready,
printing the kubeconfig path; ``down`` stops it. The supervisor owns every component: if it
dies, so do they (see :mod:`.cluster`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from trtllm_operator.localcluster import binaries
from trtllm_operator.localcluster.binaries import cache_root
from trtllm_operator.localcluster.cluster import ClusterError, ClusterOptions, LocalCluster

DEFAULT_FLEET = "h100=2,l40s=2,a100=1,cpu=1"


def state_dir() -> Path:
    return Path(os.environ.get("TRTLLM_LOCALCLUSTER_STATE", cache_root() / "dev-cluster"))


def parse_fleet(text: str) -> dict[str, int]:
    """``"h100=2,cpu=1"`` -> ``{"h100": 2, "cpu": 1}``."""
    fleet: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = item.partition("=")
        fleet[name] = int(count or 1)
    return fleet


def _pid() -> int | None:
    try:
        pid = int((state_dir() / "supervisor.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """Run a cluster in the foreground, publishing its kubeconfig into the state folder."""
    sd = state_dir()
    sd.mkdir(parents=True, exist_ok=True)

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    options = ClusterOptions(job_duration_seconds=args.job_duration, lws=args.lws)
    try:
        with LocalCluster(options=options) as cluster:
            for gpu, count in parse_fleet(args.nodes).items():
                cluster.add_nodes(None if gpu == "cpu" else gpu, count)
            assert cluster.kubeconfig
            shutil.copy(cluster.kubeconfig, sd / "kubeconfig")
            (sd / "cluster.json").write_text(json.dumps(cluster.describe(), indent=2))
            print(f"ready in {cluster.startup_seconds}s; KUBECONFIG={sd / 'kubeconfig'}",
                  flush=True)
            while True:
                cluster.check()
                time.sleep(1)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for name in ("kubeconfig", "cluster.json"):
            (sd / name).unlink(missing_ok=True)


def cmd_up(args: argparse.Namespace) -> int:
    sd = state_dir()
    if _pid():
        print(f"already running; export KUBECONFIG={sd / 'kubeconfig'}")
        return 0
    binaries.BinaryBuilder().ensure()  # build in the foreground, where its errors show
    if args.lws:
        binaries.ensure_lws()
    sd.mkdir(parents=True, exist_ok=True)
    (sd / "kubeconfig").unlink(missing_ok=True)
    logfile = sd / "supervisor.log"
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trtllm_operator.localcluster", "run",
             "--nodes", args.nodes, "--job-duration", str(args.job_duration),
             *(["--lws"] if args.lws else [])],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (sd / "supervisor.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (sd / "cluster.json").exists():
            print(f"local cluster up (supervisor pid {proc.pid}, log {logfile})")
            print(f"export KUBECONFIG={sd / 'kubeconfig'}")
            return 0
        if proc.poll() is not None:
            print(logfile.read_text()[-3000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    proc.terminate()
    print("timed out waiting for the local cluster", file=sys.stderr)
    return 1


def cmd_down(_args: argparse.Namespace) -> int:
    pid = _pid()
    if pid is None:
        print("no local cluster running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _pid():
        time.sleep(0.2)
    if _pid():
        os.kill(pid, signal.SIGKILL)
    (state_dir() / "supervisor.pid").unlink(missing_ok=True)
    print("local cluster stopped")
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    info = state_dir() / "cluster.json"
    if _pid() and info.exists():
        print(info.read_text())
        print(f"export KUBECONFIG={state_dir() / 'kubeconfig'}")
        return 0
    print("no local cluster running")
    return 1


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure warm start-to-ready (control plane, then the fleet's nodes Ready) and stop times."""
    tools = binaries.BinaryBuilder().ensure()
    fleet = parse_fleet(args.nodes)
    rows = []
    for run in range(1, args.runs + 1):
        t0 = time.monotonic()
        cluster = LocalCluster(tools)
        cluster.start()
        t1 = time.monotonic()
        for gpu, count in fleet.items():
            cluster.add_nodes(None if gpu == "cpu" else gpu, count)
        t2 = time.monotonic()
        cluster.stop()
        t3 = time.monotonic()
        rows.append((t1 - t0, t2 - t0, t3 - t2))
        print(f"run {run}: control plane ready {t1 - t0:5.2f}s, "
              f"{sum(fleet.values())} nodes Ready {t2 - t0:5.2f}s, stop {t3 - t2:5.2f}s",
              flush=True)
    ready = sorted(r[1] for r in rows)
    print(f"median start-to-ready with nodes: {ready[len(ready) // 2]:.2f}s over {args.runs} runs")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m trtllm_operator.localcluster",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("up", cmd_up), ("run", cmd_run)):
        p = sub.add_parser(name)
        p.add_argument("--nodes", default=DEFAULT_FLEET,
                       help=f"simulated nodes per GPU type (default {DEFAULT_FLEET})")
        p.add_argument("--job-duration", type=float, default=5.0,
                       help="seconds a simulated Job pod runs before it succeeds")
        p.add_argument("--lws", action="store_true",
                       help="also run LeaderWorkerSet (its manager is built on first use)")
        p.set_defaults(func=func)
    bench = sub.add_parser("bench")
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument("--nodes", default=DEFAULT_FLEET)
    bench.set_defaults(func=cmd_bench)
    sub.add_parser("down").set_defaults(func=cmd_down)
    sub.add_parser("status").set_defaults(func=cmd_status)
    b = sub.add_parser("binaries")
    b.add_argument("--timings", action="store_true")
    b.set_defaults(func=lambda a: binaries.main(["--timings"] if a.timings else []))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
