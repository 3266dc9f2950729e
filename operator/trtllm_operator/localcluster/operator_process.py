"""Run ``trtllm-operator run`` as its own process against a cluster (tests and the demo).

Started exactly as a user would start it, so what runs includes the CLI, settings, kopf wiring
and startup. Health and metrics listen on free loopback ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from trtllm_operator.localcluster.cluster import die_with_parent, free_ports


class OperatorProcess:
    """A running operator process, its log file and its endpoints."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.health_port, self.metrics_port = free_ports(2)
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "TRTLLM_OPERATOR_BIND_ADDRESS": "127.0.0.1", **self.extra_env}
        env.pop("KUBECONFIG", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trtllm_operator.cli", "run",
                 f"--kubeconfig={self.kubeconfig}", f"--health-port={self.health_port}",
                 f"--metrics-port={self.metrics_port}", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=die_with_parent)  # never outlives the test or demo that started it
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"operator not healthy after {timeout}s:\n{self.tail()}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited:\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """Die like a crashed pod: no cleanup at all."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
