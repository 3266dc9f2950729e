"""``make demo`` as a newcomer runs it: from the repository, every sample Ready, clean exit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, ClusterUnderTest


@pytest.fixture(autouse=True)
def _local_only(cluster: ClusterUnderTest) -> None:
    cluster.require_local()  # the demo starts a local cluster of its own


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.Popen([sys.executable, "-m", "trtllm_operator.demo", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _own_processes(marker: str = "trtllm-demo-") -> set[int]:
    """Pids of processes whose command line names ``marker`` (a demo's or cluster's folder)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.add(int(proc.name))
    return found


def test_demo_exits_once_every_sample_is_ready() -> None:
    demo = _demo("--exit-when-ready", "--timeout", "180", "--build-seconds", "3")
    out, _ = demo.communicate(timeout=300)
    assert demo.returncode == 0, out[-3000:]
    assert "every engine built and every deployment Ready" in out
    engines, final = out.rsplit("---", 1)[-1].split("LLMDEPLOYMENT", 1)
    for name in ("llama-3-8b-h100", "llama-3-8b-l40s", "llama-3-70b-fp8", "llama-3-8b-int4-awq",
                 "llama-3-8b-pytorch-fp8"):
        line = next(line for line in final.splitlines() if line.startswith(name + " "))
        assert " True " in line, line
    # One engine of each backend: built per GPU type, and quantized once then served.
    rows = [line.split() for line in engines.splitlines() if line.startswith("llama-")]
    assert {(r[0], r[1]) for r in rows} >= {("llama-3-8b", "tensorrt"),
                                            ("llama-3-8b-pytorch-fp8", "pytorch")}
    assert {r[-1] for r in rows if r[0] == "llama-3-8b-pytorch-fp8"} == {"Quantized"}
    assert "export KUBECONFIG=" in out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM],
                         ids=["ctrl-c", "sigterm"])
def test_demo_tears_down_on_ctrl_c_and_sigterm(signum: signal.Signals) -> None:
    demo = _demo("--build-seconds", "3")
    assert demo.stdout
    deadline = time.monotonic() + 180
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if "every engine built" in line or time.monotonic() > deadline:
            break
    assert any("every engine built" in line for line in seen), "".join(seen[-40:])
    kubeconfig = next(Path(line.split("=", 1)[1].strip()) for line in seen
                      if "export KUBECONFIG=" in line)
    oplog = next(Path(line.split("operator log:", 1)[1].split()[0]) for line in seen
                 if "operator log:" in line)
    assert kubeconfig.exists()
    assert oplog.exists()
    demo.send_signal(signum)
    rest, _ = demo.communicate(timeout=120)
    assert demo.returncode == 128 + signum, rest
    assert "torn down" in rest
    assert not _own_processes()
    assert not _own_processes(str(kubeconfig.parent))  # the operator and the control plane
    assert not oplog.parent.exists()  # the demo's folder
    assert not kubeconfig.parent.exists()  # the cluster's own folder went with it


def test_a_killed_demo_leaves_no_process_behind() -> None:
    """SIGKILL allows no cleanup: the children must still go (they die with their parent)."""
    demo = _demo("--build-seconds", "3")
    assert demo.stdout
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if "operator log:" in line:
            break
    kubeconfig = next(Path(line.split("=", 1)[1].strip()) for line in seen
                      if "export KUBECONFIG=" in line)
    oplog = Path(seen[-1].split("operator log:", 1)[1].split()[0])
    try:
        assert _own_processes(str(kubeconfig.parent))  # the operator and the control plane
        demo.kill()
        demo.communicate(timeout=30)
        deadline = time.monotonic() + 15
        while _own_processes(str(kubeconfig.parent)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _own_processes(str(kubeconfig.parent))
    finally:
        for folder in (kubeconfig.parent, oplog.parent):  # no cleanup ran; tidy up here
            shutil.rmtree(folder, ignore_errors=True)
