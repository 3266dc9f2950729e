"""The launcher leaves no process and no folder behind, however a run ends.

These tests start clusters of their own (a few seconds each), separate from the session's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, ClusterUnderTest
from tests.support import wait_for
from trtllm_operator.localcluster.binaries import BinaryBuilder, Toolset
from trtllm_operator.localcluster.cluster import (
    ClusterError,
    ClusterOptions,
    LocalCluster,
    sweep_stale_workdirs,
)


@pytest.fixture(autouse=True)
def _local_only(cluster: ClusterUnderTest) -> None:
    cluster.require_local()


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _all_gone(pids: list[int]) -> bool:
    return not any(_alive(p) for p in pids)


START_AND_REPORT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from trtllm_operator.localcluster.cluster import ClusterOptions, LocalCluster
    with LocalCluster(options=ClusterOptions(workdir_parent=Path(sys.argv[1]))) as c:
        c.add_nodes("h100", 1)
        print(json.dumps({"pids": list(c.pids.values()), "workdir": str(c.workdir)}), flush=True)
        time.sleep(600)
""")


def _start_in_subprocess(parent: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen([sys.executable, "-c", START_AND_REPORT, str(parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"cluster subprocess died: {err}")
    info: dict[str, object] = json.loads(line)
    return proc, info


def test_crash_of_one_component_tears_down_the_rest(tmp_path: Path) -> None:
    c = LocalCluster(options=ClusterOptions(workdir_parent=tmp_path))
    c.start()
    try:
        pids = c.pids
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager",
                             "kube-scheduler", "kwok"}
        workdir = c.workdir
        assert workdir
        assert workdir.exists()
        os.kill(pids["etcd"], signal.SIGKILL)
        wait_for(lambda: c.failure, 30, "the watchdog to notice")
        wait_for(lambda: _all_gone(list(pids.values())), 30, "every component to stop")
        wait_for(lambda: not workdir.exists(), 30, "the work folder to be removed")
        with pytest.raises(ClusterError, match="etcd exited"):
            c.check()
    finally:
        c.stop()


def test_ctrl_c_stops_everything_and_removes_the_folder(tmp_path: Path) -> None:
    proc, info = _start_in_subprocess(tmp_path)
    pids = info["pids"]
    assert isinstance(pids, list)
    assert len(pids) == 5
    assert all(_alive(p) for p in pids)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert _all_gone(pids)
    assert not Path(str(info["workdir"])).exists()
    assert list(tmp_path.iterdir()) == []


def test_killed_launcher_takes_its_components_along_and_next_start_sweeps(
        tmp_path: Path) -> None:
    proc, info = _start_in_subprocess(tmp_path)
    pids = info["pids"]
    assert isinstance(pids, list)
    proc.kill()  # no chance to clean up: the kernel's parent-death signal must do it
    proc.wait(timeout=30)
    wait_for(lambda: _all_gone(pids), 30, "components to die with their parent")
    workdir = Path(str(info["workdir"]))
    assert workdir.exists()  # nothing could remove it...
    assert sweep_stale_workdirs(tmp_path) == [workdir]  # ...until the next start sweeps it
    assert not workdir.exists()


def test_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    tools = BinaryBuilder().ensure()
    broken = Toolset({**tools.paths, "kube-apiserver": Path("/bin/false")})
    c = LocalCluster(broken, ClusterOptions(workdir_parent=tmp_path, start_timeout=20))
    with pytest.raises(ClusterError, match="kube-apiserver exited with code 1"):
        c.start()
    assert _all_gone(list(c.pids.values()))
    assert list(tmp_path.iterdir()) == []


FAILING_TEST = textwrap.dedent("""
    import json, os
    import pytest
    from pathlib import Path
    from trtllm_operator.localcluster.cluster import ClusterOptions, LocalCluster

    @pytest.fixture(scope="session")
    def local():
        with LocalCluster(options=ClusterOptions(workdir_parent=Path(os.environ["PARENT"]))) as c:
            yield c

    def test_fails(local):
        Path(os.environ["REPORT"]).write_text(
            json.dumps({"pids": list(local.pids.values()), "workdir": str(local.workdir)}))
        assert False, "this test fails on purpose"
""")


def test_a_failing_test_still_tears_the_cluster_down(tmp_path: Path) -> None:
    parent, report = tmp_path / "clusters", tmp_path / "report.json"
    parent.mkdir()
    (tmp_path / "test_inner.py").write_text(FAILING_TEST)
    env = {**os.environ, "PARENT": str(parent), "REPORT": str(report)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 1
    assert "this test fails on purpose" in run.stdout
    info = json.loads(report.read_text())
    assert _all_gone(info["pids"])
    assert list(parent.iterdir()) == []


def test_cluster_up_and_down_commands(tmp_path: Path) -> None:
    env = {**os.environ, "TRTLLM_LOCALCLUSTER_STATE": str(tmp_path / "state")}
    env.pop("KUBECONFIG", None)
    cli = [sys.executable, "-m", "trtllm_operator.localcluster"]
    up = subprocess.run([*cli, "up", "--nodes", "h100=1,cpu=1"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=240)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        kubeconfig = tmp_path / "state" / "kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout
        kubectl = BinaryBuilder().ensure(["kubectl"])["kubectl"]
        nodes = subprocess.run([str(kubectl), f"--kubeconfig={kubeconfig}", "get", "nodes",
                                "-o", "name"], capture_output=True, text=True, check=True)
        assert sorted(nodes.stdout.split()) == ["node/cpu-1", "node/h100-0"]
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
        supervisor_pids = json.loads(status.stdout.split("\nexport")[0])["pids"]
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0
    assert "stopped" in down.stdout
    assert _all_gone(list(supervisor_pids.values()))
    assert not kubeconfig.exists()
    time.sleep(0.1)
    again = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
    assert again.returncode == 1
    assert "no local cluster running" in again.stdout
