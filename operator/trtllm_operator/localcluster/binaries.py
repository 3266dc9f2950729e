"""Pinned control-plane binaries, built reproducibly from Go modules into a per-user cache.

Lookup order for each binary (the first that reports the pinned version wins, nothing is built):

1. ``$KUBEBUILDER_ASSETS`` (the envtest convention: a folder holding etcd, kube-apiserver, ...);
2. ``$PATH``;
3. the cache, ``${XDG_CACHE_HOME:-~/.cache}/trtllm-operator/bin/<versions>/`` -- built there
   when missing.

Why build at all: this machine has no container engine (so no kind) and no download site for
release tarballs, but it does reach the Go module proxy. ``go install k8s.io/kubernetes/...@v``
cannot work because the main module's go.mod ``replace``\\ s its 30-odd staging modules with
local folders; so a small wrapper module requires ``k8s.io/kubernetes`` and replaces each staging
module with its published ``v0.X.Y`` -- the list is read from the upstream go.mod the proxy
serves, never typed by hand. etcd is built at the version that same go.mod pins.

Run ``python -m trtllm_operator.localcluster.binaries`` to build/locate everything and print
the folder; ``--timings`` prints how long each step took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
LWS_VERSION = "v0.9.0"
LWS_MODULE = "sigs.k8s.io/lws"
KSTATUS_MODULE_VERSION = "v0.37.2"
"""sigs.k8s.io/cli-utils, whose pkg/kstatus/status the tests' kstatus check runs (tools/kstatus
pins it in its go.mod; this names the cache folder and is checked against that go.mod)."""

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBE_COMMANDS, "etcd", "kwok", "helm")

_BUILD_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}


class BinaryError(RuntimeError):
    """A pinned binary could not be found or built."""


@dataclass
class Timings:
    """Seconds spent per step, for the build-time report."""

    steps: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, started: float) -> None:
        self.steps[name] = round(time.monotonic() - started, 1)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trtllm-operator"


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **_BUILD_ENV, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BinaryError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


# --------------------------------------------------------------------------- upstream go.mod


@dataclass(frozen=True)
class UpstreamModule:
    """What the wrapper module needs from k8s.io/kubernetes' own go.mod."""

    go_line: str
    godebug_lines: tuple[str, ...]
    staging_modules: tuple[str, ...]
    etcd_version: str
    commit: str
    build_date: str


def parse_kubernetes_gomod(text: str) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
    """Return (go line, godebug lines, staging module paths, etcd version) of a go.mod text.

    Staging modules are the ``replace`` targets pointing into ``./staging/``; the etcd version
    is the one required for ``go.etcd.io/etcd/server/v3``.
    """
    go_line = ""
    godebug: list[str] = []
    staging: list[str] = []
    etcd = ""
    block = ""
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if line.endswith("("):
            block = line[:-1].strip()
            continue
        if line == ")":
            block = ""
            continue
        if line.startswith("go "):
            go_line = line
        elif line.startswith("godebug "):
            godebug.append(line)
        elif block == "godebug":
            godebug.append(f"godebug {line}")
        words = line.split()
        if block == "replace" or line.startswith("replace "):
            rep = words[1:] if words[0] == "replace" else words
            if "=>" in rep and rep[rep.index("=>") + 1].startswith("./staging/"):
                staging.append(rep[0])
        if block == "require" or line.startswith("require "):
            req = words[1:] if words[0] == "require" else words
            if req and req[0] == "go.etcd.io/etcd/server/v3":
                etcd = req[1]
    if not (go_line and staging and etcd):
        raise BinaryError("unexpected k8s.io/kubernetes go.mod: no go line, staging or etcd")
    return go_line, tuple(godebug), tuple(sorted(staging)), etcd


def staging_version(kubernetes_version: str) -> str:
    """v1.36.3 -> v0.36.3: the published tag of the staging modules."""
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes_version)
    if not m:
        raise BinaryError(f"not a Kubernetes release version: {kubernetes_version}")
    return f"v0.{m.group(1)}.{m.group(2)}"


def wrapper_gomod(module: str, upstream: UpstreamModule, kubernetes_version: str) -> str:
    """The go.mod of the wrapper that builds the Kubernetes commands from published modules."""
    sv = staging_version(kubernetes_version)
    lines = [f"module {module}", "", upstream.go_line, "", *upstream.godebug_lines, ""]
    lines += [f"require k8s.io/kubernetes {kubernetes_version}", "", "replace ("]
    lines += [f"\t{m} => {m} {sv}" for m in upstream.staging_modules]
    lines += [")", ""]
    lines += [f"tool k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS]
    return "\n".join(lines) + "\n"


def fetch_upstream(kubernetes_version: str) -> UpstreamModule:
    """Read k8s.io/kubernetes' go.mod and release info through the Go module proxy."""
    out = _run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}"])
    info = json.loads(out)
    if info.get("Error"):
        raise BinaryError(f"k8s.io/kubernetes@{kubernetes_version}: {info['Error']}")
    go_line, godebug, staging, etcd = parse_kubernetes_gomod(Path(info["GoMod"]).read_text())
    release = json.loads(Path(info["Info"]).read_text())
    commit = (release.get("Origin") or {}).get("Hash", "")
    return UpstreamModule(go_line, godebug, staging, etcd, commit, release.get("Time", ""))


def kube_ldflags(kubernetes_version: str, upstream: UpstreamModule) -> str:
    m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", kubernetes_version)
    assert m
    values = {
        "gitVersion": kubernetes_version,
        "gitMajor": m.group(1),
        "gitMinor": m.group(2),
        "gitCommit": upstream.commit,
        "gitTreeState": "clean",
        "buildDate": upstream.build_date,
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in values.items() if v]
    return " ".join(flags)


# --------------------------------------------------------------------------- version probes


def reported_version(path: Path) -> str | None:
    """The version a binary reports about itself ("v1.36.3", "v3.6.8", ...), or None."""
    name = path.name
    args = {
        "kubectl": ["version", "--client"],
        "helm": ["version", "--short"],
        "kwok": ["--version"],
        "etcd": ["--version"],
    }.get(name, ["--version"])
    try:
        proc = subprocess.run(
            [str(path), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = proc.stdout + proc.stderr
    patterns = {
        "etcd": r"etcd Version:\s*(\S+)",
        "kubectl": r"Client Version:\s*(\S+)",
        "helm": r"(v\d+\.\d+\.\d+)",
        "kwok": r"(v\d+\.\d+\.\d+)",
    }
    m = re.search(patterns.get(name, r"Kubernetes\s+(v\S+)"), text)
    if not m:
        return None
    version = m.group(1)
    return version if version.startswith("v") else f"v{version}"


def _candidates(name: str) -> Iterable[Path]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        yield Path(assets) / name
    found = shutil.which(name)
    if found:
        yield Path(found)


# --------------------------------------------------------------------------- the toolset


@dataclass
class Toolset:
    """Where each pinned binary lives."""

    paths: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


class BinaryBuilder:
    """Finds or builds every pinned binary. Building is idempotent and cached."""

    def __init__(
        self,
        kubernetes_version: str = KUBERNETES_VERSION,
        kwok_version: str = KWOK_VERSION,
        helm_version: str = HELM_VERSION,
        root: Path | None = None,
    ) -> None:
        self.kubernetes_version = kubernetes_version
        self.kwok_version = kwok_version
        self.helm_version = helm_version
        self.root = root or cache_root()
        self.timings = Timings()
        self._upstream: UpstreamModule | None = None

    # The folder name carries every version, so a version bump never reuses a stale build.
    @property
    def bin_dir(self) -> Path:
        etcd = self._etcd_version_hint()
        name = f"k8s-{self.kubernetes_version}_etcd-{etcd}_kwok-{self.kwok_version}"
        return self.root / "bin" / f"{name}_helm-{self.helm_version}"

    def _etcd_version_hint(self) -> str:
        # Recorded after the first resolution, so a warm start needs no network round-trip.
        marker = self.root / "bin" / f"etcd-for-{self.kubernetes_version}"
        if marker.exists():
            return marker.read_text().strip()
        etcd = self.upstream().etcd_version
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(etcd + "\n")
        return etcd

    def upstream(self) -> UpstreamModule:
        if self._upstream is None:
            self._upstream = fetch_upstream(self.kubernetes_version)
        return self._upstream

    def expected_version(self, name: str) -> str:
        if name in KUBE_COMMANDS:
            return self.kubernetes_version
        if name == "etcd":
            return self._etcd_version_hint()
        if name == "kwok":
            return self.kwok_version
        if name == "helm":
            return self.helm_version
        raise KeyError(name)

    def locate(self, name: str) -> Path | None:
        """A binary of the pinned version already present (assets, PATH, cache), else None."""
        want = self.expected_version(name)
        cached = self.bin_dir / name
        if cached.exists():
            return cached  # built by us at this version (the folder name says so)
        for cand in _candidates(name):
            if cand.exists() and reported_version(cand) == want:
                return cand
        return None

    def ensure(self, names: Iterable[str] = ALL_BINARIES) -> Toolset:
        """Locate every binary, building the missing ones into the cache."""
        paths: dict[str, Path] = {}
        missing: list[str] = []
        for name in names:
            found = self.locate(name)
            if found:
                paths[name] = found
            else:
                missing.append(name)
        if missing:
            self._build(missing)
            for name in missing:
                paths[name] = self.bin_dir / name
        return Toolset(paths)

    # ------------------------------------------------------------------ builds

    def _build(self, names: list[str]) -> None:
        if shutil.which("go") is None:
            raise BinaryError("Go is needed to build the local control plane; install Go >= 1.26")
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        kube = [n for n in names if n in KUBE_COMMANDS]
        if kube:
            self._build_kubernetes(kube)
        if "etcd" in names:
            self._build_etcd()
        if "kwok" in names:
            self._go_install("kwok", f"sigs.k8s.io/kwok/cmd/kwok@{self.kwok_version}")
        if "helm" in names:
            # Without the stamp, helm reports only "v3.22" (its source default).
            stamp = f"-X helm.sh/helm/v3/internal/version.version={self.helm_version}"
            self._go_install("helm", f"helm.sh/helm/v3/cmd/helm@{self.helm_version}", stamp)

    def _wrapper_dir(self, name: str) -> Path:
        d = self.root / "src" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _tidy(self, src: Path) -> None:
        (src / "tools.go").write_text("package tools\n")
        _run(["go", "mod", "tidy"], cwd=src)

    def _install(self, src: Path, name: str, package: str, ldflags: str) -> None:
        """Build into a temporary file and rename, so an interrupted build leaves nothing."""
        started = time.monotonic()
        tmp = self.bin_dir / f".{name}.partial"
        _run(
            ["go", "build", "-p", str(os.cpu_count() or 2), "-trimpath", "-ldflags", ldflags,
             "-o", str(tmp), package],
            cwd=src,
        )
        tmp.replace(self.bin_dir / name)
        self.timings.record(name, started)

    def _build_kubernetes(self, names: list[str]) -> None:
        upstream = self.upstream()
        src = self._wrapper_dir(f"kubernetes-{self.kubernetes_version}")
        (src / "go.mod").write_text(
            wrapper_gomod("trtllm-operator.local/kubernetes", upstream, self.kubernetes_version)
        )
        started = time.monotonic()
        self._tidy(src)
        self.timings.record("kubernetes go mod tidy", started)
        ldflags = kube_ldflags(self.kubernetes_version, upstream)
        # Cheapest first: a failure in a module setup shows in seconds, not minutes.
        order = ["kube-scheduler", "kubectl", "kube-controller-manager", "kube-apiserver"]
        for name in sorted(names, key=order.index):
            self._install(src, name, f"k8s.io/kubernetes/cmd/{name}", ldflags)

    def _build_etcd(self) -> None:
        etcd = self.upstream().etcd_version
        src = self._wrapper_dir(f"etcd-{etcd}")
        go_line = self.upstream().go_line
        (src / "go.mod").write_text(
            f"module trtllm-operator.local/etcd\n\n{go_line}\n\n"
            f"require go.etcd.io/etcd/server/v3 {etcd}\n\ntool go.etcd.io/etcd/server/v3\n"
        )
        started = time.monotonic()
        self._tidy(src)
        self.timings.record("etcd go mod tidy", started)
        self._install(src, "etcd", "go.etcd.io/etcd/server/v3", "-s -w")

    def _go_install(self, name: str, spec: str, ldflags: str = "") -> None:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=self.bin_dir, prefix=f".{name}-") as tmp:
            _run(
                ["go", "install", "-p", str(os.cpu_count() or 2), "-trimpath", "-ldflags",
                 f"-s -w {ldflags}".strip(), spec],
                env={"GOBIN": tmp},
            )
            Path(tmp, name).replace(self.bin_dir / name)
        self.timings.record(name, started)


# --------------------------------------------------------------------------- LeaderWorkerSet


@dataclass(frozen=True)
class LWSAssets:
    """The LeaderWorkerSet manager binary and the manifests its module ships."""

    version: str
    manager: Path
    source: Path
    """The unpacked module (read-only, in the Go module cache)."""

    @property
    def crds(self) -> list[Path]:
        return sorted((self.source / "config" / "crd" / "bases").glob("*.yaml"))

    @property
    def webhook_manifests(self) -> Path:
        return self.source / "config" / "webhook" / "manifests.yaml"


def ensure_lws(version: str = LWS_VERSION, root: Path | None = None) -> LWSAssets:
    """The LWS manager of ``version``, built into the cache on first use (a few CPU minutes).

    Only tests and commands that ask for LWS call this: the base cluster never builds it.
    """
    root = root or cache_root()
    out = _run(["go", "mod", "download", "-json", f"{LWS_MODULE}@{version}"])
    info = json.loads(out)
    if info.get("Error"):
        raise BinaryError(f"{LWS_MODULE}@{version}: {info['Error']}")
    source = Path(info["Dir"])
    manager = root / "bin" / f"lws-{version}" / "lws-manager"
    if manager.exists():
        return LWSAssets(version, manager, source)
    if shutil.which("go") is None:
        raise BinaryError("Go is needed to build the LWS manager; install Go >= 1.26")
    src = root / "src" / f"lws-{version}"
    src.mkdir(parents=True, exist_ok=True)
    # A wrapper module: the LWS module's own go.mod then decides every dependency version.
    (src / "go.mod").write_text("module trtllm-operator.local/lws\n\ngo 1.24\n")
    _run(["go", "get", f"{LWS_MODULE}@{version}"], cwd=src)
    manager.parent.mkdir(parents=True, exist_ok=True)
    tmp = manager.parent / ".lws-manager.partial"
    _run(["go", "build", "-p", str(os.cpu_count() or 2), "-trimpath", "-ldflags", "-s -w",
          "-o", str(tmp), f"{LWS_MODULE}/cmd"], cwd=src)
    tmp.replace(manager)
    return LWSAssets(version, manager, source)


# --------------------------------------------------------------------------- kstatus


def ensure_kstatus(source: Path, root: Path | None = None) -> Path:
    """The tools/kstatus command (kstatus of sigs.k8s.io/cli-utils, as Flux computes health),
    built from ``source`` into the cache on first use (a few CPU seconds).

    The cache folder is named by the source's hash, so an edit to main.go or a new pin builds
    anew; its go.sum pins every module, and ``-mod=readonly`` refuses any other version.
    """
    root = root or cache_root()
    files = [*sorted(source.glob("*.go")), source / "go.mod", source / "go.sum"]
    gomod = (source / "go.mod").read_text()
    if f"sigs.k8s.io/cli-utils {KSTATUS_MODULE_VERSION}" not in gomod:
        raise BinaryError(f"{source}/go.mod does not pin sigs.k8s.io/cli-utils "
                          f"{KSTATUS_MODULE_VERSION}")
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    out = root / "bin" / f"kstatus-{KSTATUS_MODULE_VERSION}-{digest}" / "kstatus"
    if out.exists():
        return out
    if shutil.which("go") is None:
        raise BinaryError("Go is needed to build tools/kstatus; install Go >= 1.22")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / ".kstatus.partial"
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], cwd=source,
         env={"GOFLAGS": "-mod=readonly -buildvcs=false"})
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timings", action="store_true", help="print seconds per build step")
    parser.add_argument("--json", action="store_true", help="print binary paths as JSON")
    parser.add_argument("--lws", action="store_true",
                        help=f"also build the LeaderWorkerSet manager {LWS_VERSION}")
    args = parser.parse_args(argv)
    builder = BinaryBuilder()
    started = time.monotonic()
    try:
        tools = builder.ensure()
        if args.lws:
            lws_started = time.monotonic()
            tools.paths["lws-manager"] = ensure_lws().manager
            builder.timings.record("lws-manager", lws_started)
    except BinaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps({k: str(v) for k, v in tools.paths.items()}, indent=2))
    else:
        for name, path in tools.paths.items():
            print(f"{name:24} {path}")
    if args.timings:
        for step, secs in builder.timings.steps.items():
            print(f"built {step:30} {secs:7.1f} s", file=sys.stderr)
        print(f"total {total:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
