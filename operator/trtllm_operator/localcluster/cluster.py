"""Start and stop a real Kubernetes control plane on loopback, with kwok-simulated GPU nodes.

The control plane is the real thing -- etcd, kube-apiserver (TLS, RBAC, service-account
tokens), kube-controller-manager, kube-scheduler -- so admission, RBAC, garbage collection,
the Job and Deployment controllers and scheduling behave as in any cluster. kwok stands in for
the kubelets: simulated nodes carry the labels NVIDIA GPU Feature Discovery writes and
``nvidia.com/gpu`` capacity, and kwok moves their pods through their lives (see
:mod:`.stages`).

Everything listens on 127.0.0.1, on free ports picked at each start (a stopped API server
holds its port for a while). Pod and Service IPs are fake: nothing may connect to them.

Teardown leaves no process and no folder behind, whichever way the run ends:

- ``stop()`` (also from ``with LocalCluster(...)`` on an exception or Ctrl-C) stops the
  components in reverse order and removes the work folder;
- a watchdog notices a component that exits on its own, records why (with its last log lines),
  and tears the rest down; :meth:`LocalCluster.check` then raises with that reason;
- every component is started with ``PR_SET_PDEATHSIG``, so if the Python process itself is
  killed the kernel kills the components, and the next start removes work folders whose owner
  is gone.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trtllm_operator import gpus
from trtllm_operator.localcluster import kubelet, lws, pki, stages
from trtllm_operator.localcluster.binaries import BinaryBuilder, LWSAssets, Toolset, ensure_lws
from trtllm_operator.localcluster.extcrds import CRDSource, crd_files

log = logging.getLogger(__name__)

WORKDIR_PREFIX = "trtllm-localcluster-"
OWNER_FILE = "owner.pid"
SIMULATED_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
NODE_LEASE_SECONDS = 40

# STOP_ORDER is the reverse of start: an API server whose etcd vanished first can hang on exit.
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The local control plane failed to start, or a component died."""


@dataclass
class ClusterOptions:
    """How to run the local control plane."""

    job_duration_seconds: float = 0.0
    """How long a simulated Job pod runs before it succeeds (see :mod:`.stages`)."""
    kube_api_qps: int = 200
    """Client QPS of the controller-manager and scheduler (defaults of 20 slow fleets down)."""
    start_timeout: float = 90.0
    workdir_parent: Path | None = None
    """Where the temporary work folder goes (default: the system temp folder)."""
    keep_workdir: bool = False
    """Keep logs and data after stop (for debugging)."""
    lws: bool = False
    """Also install LeaderWorkerSet (CRDs, webhooks, manager); builds its manager on first use."""


@dataclass
class _Component:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def die_with_parent() -> None:
    """Run in the child between fork and exec: get SIGKILL when the parent dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held together while chosen, so no two collide)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_workdirs(parent: Path | None = None) -> list[Path]:
    """Remove work folders left by runs whose owning process is gone (e.g. killed with -9)."""
    root = parent or Path(tempfile.gettempdir())
    removed = []
    for d in root.glob(f"{WORKDIR_PREFIX}*"):
        owner = d / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            # A folder of ours without an owner file: a start that died before writing it.
            if time.time() - d.stat().st_mtime < 300:
                continue
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def kubeconfig_dict(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                    user: str = "admin") -> dict[str, Any]:
    """A self-contained kubeconfig (certificates embedded) for one user."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


@dataclass
class NodeSpec:
    """A simulated node to create: a GPU type from the catalog (or CPU-only) and its GPU count."""

    gpu: gpus.GPUType | None
    gpus_per_node: int | None = None
    gpu_taint: bool = True
    extra_labels: dict[str, str] = field(default_factory=dict)


def node_manifest(name: str, spec: NodeSpec) -> dict[str, Any]:
    """The Node object of a simulated machine, with the labels GFD would write and capacity."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    capacity: dict[str, str]
    taints: list[dict[str, str]] = []
    if spec.gpu is None:
        capacity = {"cpu": "32", "memory": "128Gi"}
        labels["node.kubernetes.io/instance-type"] = "sim-cpu"
    else:
        count = spec.gpus_per_node if spec.gpus_per_node is not None else spec.gpu.gpus_per_node
        capacity = {
            "cpu": str(spec.gpu.node_cpus),
            "memory": f"{spec.gpu.node_memory_gi}Gi",
            gpus.GPU_RESOURCE: str(count),
        }
        labels |= spec.gpu.labels(count)
        labels["node.kubernetes.io/instance-type"] = f"sim-{spec.gpu.short}x{count}"
        if spec.gpu_taint:
            taints.append({"key": gpus.GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"})
    capacity |= {"pods": "110", "ephemeral-storage": "1Ti"}
    labels |= spec.extra_labels
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {SIMULATED_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


class LocalCluster:
    """One local control plane. Use as a context manager, or call start()/stop()."""

    def __init__(self, tools: Toolset | None = None, options: ClusterOptions | None = None) -> None:
        self.tools = tools or BinaryBuilder().ensure()
        self.options = options or ClusterOptions()
        self.workdir: Path | None = None
        self.kubeconfig: Path | None = None
        self.server = ""
        self.startup_seconds: float | None = None
        self.failure: str | None = None
        self._components: list[_Component] = []
        self._lock = threading.RLock()
        self._running = False
        self._watchdog: threading.Thread | None = None
        self._kubelet: kubelet.KubeletAdmission | None = None
        self._node_counter = itertools.count()
        self._pki: pki.ClusterPKI | None = None
        self._ports: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and wait until the cluster can run pods."""
        started = time.monotonic()
        sweep_stale_workdirs(self.options.workdir_parent)
        self.workdir = Path(
            tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=self.options.workdir_parent))
        (self.workdir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        try:
            self._start()
            if self.options.lws:
                self.start_lws()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = round(time.monotonic() - started, 2)
        log.info("local control plane ready in %.1fs: %s", self.startup_seconds, self.kubeconfig)

    def _start(self) -> None:
        assert self.workdir
        wd = self.workdir
        (wd / "logs").mkdir()
        ports = dict(zip(
            ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok"),
            free_ports(6), strict=True,
        ))
        self._ports = ports
        self._pki = creds = pki.generate(wd / "pki")
        self.server = f"https://127.0.0.1:{ports['apiserver']}"
        ca_pem = creds.ca.cert.read_bytes()
        self.kubeconfig = wd / "kubeconfig"
        for stem, _cn, _org in pki.CLIENTS:
            pair = creds.client(stem)
            path = wd / ("kubeconfig" if stem == "admin" else f"{stem}.kubeconfig")
            path.write_text(yaml.safe_dump(kubeconfig_dict(
                self.server, ca_pem, pair.cert.read_bytes(), pair.key.read_bytes(), stem)))
        (wd / "kwok-stages.yaml").write_text(stages.stages_yaml(self.options.job_duration_seconds))

        self._running = True
        self._launch("etcd", self._etcd_args())
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), "etcd")
        self._launch("kube-apiserver", self._apiserver_args())
        self._wait(lambda: self._apiserver_ok("/readyz"), "kube-apiserver")
        self._launch("kube-controller-manager", self._kcm_args())
        self._launch("kube-scheduler", self._scheduler_args())
        self._launch("kwok", self._kwok_args())
        # kwok runs no container: this stands in for the kubelet's pre-start checks.
        self._kubelet = kubelet.KubeletAdmission(self.kubeconfig)
        self._kubelet.start()
        self._start_watchdog()
        self._wait(lambda: self._https_healthz(ports["kcm"]), "kube-controller-manager")
        self._wait(lambda: self._https_healthz(ports["scheduler"]), "kube-scheduler")
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"), "kwok")
        # Pods can only be created once the default ServiceAccount exists (made by the KCM).
        self._wait(lambda: self._apiserver_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                   "the default ServiceAccount")

    def stop(self) -> None:
        """Stop every component (reverse start order) and remove the work folder. Idempotent."""
        with self._lock:
            self._running = False
            if self._kubelet is not None:
                self._kubelet.stop()
                self._kubelet = None
            for comp in reversed(self._components):
                self._terminate(comp)
            self._components = []
            if self.workdir and not self.options.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _terminate(comp: _Component, grace: float = 10.0) -> None:
        proc = comp.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def check(self) -> None:
        """Raise :class:`ClusterError` if a component has died."""
        if self.failure:
            raise ClusterError(self.failure)
        if not self._running:
            raise ClusterError("the local control plane is not running")

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self._components if c.proc}

    # ------------------------------------------------------------------ processes

    def _launch(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        assert self.workdir
        log_path = self.workdir / "logs" / f"{name}.log"
        comp = _Component(name, [str(self.tools[name]), *args], log_path)
        with comp.log_path.open("wb") as out:
            comp.proc = subprocess.Popen(
                comp.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True, preexec_fn=die_with_parent,
                env={**os.environ, **env} if env else None,
            )
        self._components.append(comp)

    def _start_watchdog(self) -> None:
        def watch() -> None:
            while self._running:
                for comp in list(self._components):
                    if comp.proc is not None and comp.proc.poll() is not None and self._running:
                        self.failure = (
                            f"{comp.name} exited with code {comp.proc.returncode}; "
                            f"its last log lines:\n{comp.tail()}"
                        )
                        log.error("local control plane: %s", self.failure)
                        self.stop()
                        return
                time.sleep(0.5)

        self._watchdog = threading.Thread(target=watch, name="localcluster-watchdog", daemon=True)
        self._watchdog.start()

    def _wait(self, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.options.start_timeout
        while time.monotonic() < deadline:
            if self.failure:
                raise ClusterError(self.failure)
            for comp in self._components:
                if comp.proc is not None and comp.proc.poll() is not None:
                    raise ClusterError(
                        f"{comp.name} exited with code {comp.proc.returncode} while waiting for "
                        f"{what}; its last log lines:\n{comp.tail()}")
            try:
                if probe():
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        tails = "\n".join(f"--- {c.name}\n{c.tail(8)}" for c in self._components)
        raise ClusterError(
            f"timed out after {self.options.start_timeout}s waiting for {what}\n{tails}")

    # ------------------------------------------------------------------ third-party CRDs

    def install_crds(self, source: CRDSource) -> list[str]:
        """Apply ``source``'s CRDs (no controller behind them) and wait until Established."""
        self.check()
        self._kubectl("apply", "--server-side", "--force-conflicts",
                      *[f"--filename={f}" for f in crd_files(source)])
        for name in source.crd_names:
            self._wait(lambda name=name: self._kubectl(  # type: ignore[misc]
                "wait", "--for=condition=Established", "--timeout=10s", f"crd/{name}",
                check=False).returncode == 0, f"the CRD {name}")
        return list(source.crd_names)

    def remove_crds(self, source: CRDSource) -> None:
        """Delete ``source``'s CRDs (and with them every object of those kinds)."""
        self.check()
        self._kubectl("delete", "--ignore-not-found", "--wait=true",
                      *[f"crd/{n}" for n in source.crd_names])

    # ------------------------------------------------------------------ LeaderWorkerSet

    @property
    def lws_running(self) -> bool:
        return any(c.name == "lws-manager" for c in self._components)

    def start_lws(self, assets: LWSAssets | None = None) -> None:
        """Install LeaderWorkerSet: CRDs (server-side), loopback webhooks, the manager process.

        Returns once an LWS passes the webhooks (a server-side dry run). Idempotent.
        """
        self.check()
        if self.lws_running:
            return
        assert self.workdir and self._pki and self.kubeconfig
        assets = assets or ensure_lws()
        self.tools.paths["lws-manager"] = assets.manager
        webhook, health, metrics = free_ports(3)
        cert_dir = self.workdir / "lws-certs"
        pki.serving_pair(self._pki, cert_dir, "tls")
        config = self.workdir / "lws-config.yaml"
        config.write_text(yaml.safe_dump(
            lws.manager_configuration(webhook, health, metrics, cert_dir)))
        self._kubectl("apply", "--server-side", "--force-conflicts",
                      *[f"--filename={f}" for f in assets.crds])
        # Right after the create the CRD may have no status yet, which kubectl wait refuses.
        self._wait(lambda: self._kubectl(
            "wait", "--for=condition=Established", "--timeout=10s",
            "crd/leaderworkersets.leaderworkerset.x-k8s.io", check=False).returncode == 0,
            "the LeaderWorkerSet CRD")
        hooks = lws.webhook_configurations(assets.webhook_manifests.read_text(), webhook,
                                           self._pki.ca.cert.read_bytes())
        self._kubectl("apply", "--server-side", "--force-conflicts", "--filename=-",
                      input=yaml.safe_dump_all(hooks))
        self._launch("lws-manager", [f"--config={config}"],
                     env={"KUBECONFIG": str(self.kubeconfig)})
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{health}/readyz"), "lws-manager")
        probe = yaml.safe_dump({
            "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": "webhook-probe", "namespace": "default"},
            "spec": {"leaderWorkerTemplate": {"size": 1, "workerTemplate": {"spec": {
                "containers": [{"name": "c", "image": "probe"}]}}}},
        })
        self._wait(lambda: self._kubectl("create", "--dry-run=server", "--filename=-",
                                         input=probe, check=False).returncode == 0,
                   "the LeaderWorkerSet webhooks")

    def _kubectl(self, *args: str, input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.tools["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {args[0]} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    # ------------------------------------------------------------------ probes

    @staticmethod
    def _http_ok(url: str) -> bool:
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", "/" + url.split("//", 1)[1].split("/", 1)[1])
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def _admin_ssl(self) -> ssl.SSLContext:
        assert self._pki
        ctx = ssl.create_default_context(cafile=str(self._pki.ca.cert))
        ctx.load_cert_chain(str(self._pki.admin.cert), str(self._pki.admin.key))
        return ctx

    def _apiserver_ok(self, path: str) -> bool:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self._ports["apiserver"], context=self._admin_ssl(), timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()

    @staticmethod
    def _https_healthz(port: int) -> bool:
        # Components serve /healthz with a self-signed certificate; only liveness is asked here.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    # ------------------------------------------------------------------ arguments

    def _etcd_args(self) -> list[str]:
        assert self.workdir
        p, peer = self._ports["etcd"], self._ports["etcd-peer"]
        return [
            "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p}",
            f"--advertise-client-urls=http://127.0.0.1:{p}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # throw-away data: much faster on a shared disk
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        assert self._pki
        c = self._pki
        return [
            f"--etcd-servers=http://127.0.0.1:{self._ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self._ports['apiserver']}",
            f"--tls-cert-file={c.apiserver.cert}", f"--tls-private-key-file={c.apiserver.key}",
            f"--client-ca-file={c.ca.cert}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={c.service_account_pub}",
            f"--service-account-signing-key-file={c.service_account_key}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints reject;
            # nothing in this cluster connects to it anyway.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # Front-proxy settings only so components stop logging a missing CA bundle; no
            # certificate with this name is ever issued.
            f"--requestheader-client-ca-file={c.ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--profiling=false",
        ]

    def _component_kubeconfig_args(self, stem: str, port: int) -> list[str]:
        assert self.workdir
        kc = self.workdir / f"{stem}.kubeconfig"
        return [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / stem}", "--leader-elect=false",
            f"--kube-api-qps={self.options.kube_api_qps}",
            f"--kube-api-burst={self.options.kube_api_qps * 2}",
        ]

    def _kcm_args(self) -> list[str]:
        assert self._pki
        return [
            *self._component_kubeconfig_args("kube-controller-manager", self._ports["kcm"]),
            f"--service-account-private-key-file={self._pki.service_account_key}",
            f"--root-ca-file={self._pki.ca.cert}",
            "--use-service-account-credentials=true",
            # nodelifecycle must run: it lifts the not-ready taint once kwok reports nodes Ready.
            "--controllers=*,-nodeipam",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            "--concurrent-job-syncs=10",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._component_kubeconfig_args("kube-scheduler", self._ports["scheduler"])

    def _kwok_args(self) -> list[str]:
        assert self.workdir
        return [
            f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
            f"--config={self.workdir / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={SIMULATED_NODE_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}", "--node-ip=10.0.0.1",
            f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
            f"--server-address=127.0.0.1:{self._ports['kwok']}",
        ]

    # ------------------------------------------------------------------ API access

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient authenticated as the cluster admin."""
        from kubernetes import config

        assert self.kubeconfig
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig))

    def add_nodes(self, gpu: str | None, count: int = 1, *, gpus_per_node: int | None = None,
                  gpu_taint: bool = True, labels: dict[str, str] | None = None,
                  wait: bool = True, timeout: float = 60.0) -> list[str]:
        """Add ``count`` simulated nodes of a catalog GPU type (``"h100"``; ``None`` for CPU-only).

        Returns the node names. With ``wait``, returns once each is Ready and schedulable (the
        node-lifecycle controller has lifted the not-ready taint).
        """
        from kubernetes import client

        self.check()
        spec = NodeSpec(gpus.gpu_type(gpu) if gpu else None, gpus_per_node, gpu_taint,
                        labels or {})
        prefix = spec.gpu.short if spec.gpu else "cpu"
        # Any: the client's typed models are bypassed on purpose; manifests are plain dicts.
        core: Any = client.CoreV1Api(self.api_client())
        names = []
        for _ in range(count):
            name = f"{prefix}-{next(self._node_counter)}"
            core.create_node(body=node_manifest(name, spec))
            names.append(name)
        if wait:
            self.wait_nodes_ready(names, timeout)
        return names

    def wait_nodes_ready(self, names: Iterable[str], timeout: float = 60.0) -> None:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api_client())
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            self.check()
            for name in list(pending):
                node = core.read_node(name)
                ready = any(c.type == "Ready" and c.status == "True"
                            for c in node.status.conditions or [])
                tainted = any(t.key.startswith("node.kubernetes.io/")
                              for t in node.spec.taints or [])
                if ready and not tainted:
                    pending.discard(name)
            if pending:
                time.sleep(0.2)
        if pending:
            raise ClusterError(f"nodes not Ready after {timeout}s: {sorted(pending)}")

    def remove_nodes(self, names: Iterable[str]) -> None:
        """Delete simulated nodes (their pods are then evicted by the node-lifecycle controller)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        for name in names:
            with contextlib.suppress(client.ApiException):
                core.delete_node(name)

    def describe(self) -> dict[str, Any]:
        """Facts for a human: kubeconfig, server, pids, log folder."""
        return {
            "kubeconfig": str(self.kubeconfig), "server": self.server,
            "workdir": str(self.workdir), "pids": self.pids,
            "startupSeconds": self.startup_seconds,
        }


def static_rwx_claim(namespace: str, claim: str, pv_name: str,
                     size: str = "1Ti") -> tuple[dict[str, Any], dict[str, Any]]:
    """A ReadWriteMany PersistentVolume (NFS) and a claim bound to it by name.

    There is no storage provisioner here; the real PV controller binds the pair. Nothing ever
    mounts it (kwok runs no container), so the NFS server -- loopback -- is never contacted.
    """
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"trtllm.dev/simulated": "true"}},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "nfs": {"server": "127.0.0.1", "path": f"/{claim}"}},
    }
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                 "resources": {"requests": {"storage": size}}},
    }
    return pv, pvc


@contextlib.contextmanager
def local_cluster(options: ClusterOptions | None = None,
                  nodes: dict[str, int] | None = None) -> Iterator[LocalCluster]:
    """Context manager: a running cluster with ``nodes`` ({"h100": 2, "cpu": 1}) added."""
    with LocalCluster(options=options) as cluster:
        for gpu, count in (nodes or {}).items():
            cluster.add_nodes(None if gpu == "cpu" else gpu, count)
        yield cluster


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
