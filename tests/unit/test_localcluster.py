"""Unit tests of the local control plane's pure parts: go.mod handling, kwok stages, PKI, nodes."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trtllm_operator import gpus
from trtllm_operator.localcluster import binaries, pki, stages
from trtllm_operator.localcluster.__main__ import parse_fleet
from trtllm_operator.localcluster.cluster import NodeSpec, kubeconfig_dict, node_manifest

GOMOD = """\
// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tgo.etcd.io/etcd/api/v3 v3.6.8
\tgo.etcd.io/etcd/server/v3 v3.6.8 // indirect
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/some/fork => github.com/other/fork v1.0.0
)
"""


def test_gomod_parsing_finds_staging_modules_etcd_and_go_lines() -> None:
    go_line, godebug, staging, etcd = binaries.parse_kubernetes_gomod(GOMOD)
    assert go_line == "go 1.26.0"
    assert godebug == ("godebug default=go1.26",)
    # Only replacements into ./staging are staging modules; other replaces are not.
    assert staging == ("k8s.io/api", "k8s.io/client-go")
    assert etcd == "v3.6.8"


def test_gomod_without_staging_is_refused() -> None:
    with pytest.raises(binaries.BinaryError, match="unexpected"):
        binaries.parse_kubernetes_gomod("module x\n\ngo 1.26.0\n")


def test_wrapper_gomod_replaces_every_staging_module_with_its_published_version() -> None:
    go_line, godebug, staging, etcd = binaries.parse_kubernetes_gomod(GOMOD)
    upstream = binaries.UpstreamModule(go_line, godebug, staging, etcd, "", "2026-07-22T18:07:38Z")
    text = binaries.wrapper_gomod("example.local/k8s", upstream, "v1.36.3")
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in text
    assert "godebug default=go1.26" in text
    assert "go 1.26.0" in text
    assert "tool k8s.io/kubernetes/cmd/kube-apiserver" in text


def test_staging_version_and_version_stamps() -> None:
    assert binaries.staging_version("v1.36.3") == "v0.36.3"
    with pytest.raises(binaries.BinaryError):
        binaries.staging_version("v0.36.3")
    upstream = binaries.UpstreamModule("go 1.26.0", (), ("k8s.io/api",), "v3.6.8", "", "T")
    flags = binaries.kube_ldflags("v1.36.3", upstream)
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.36.3" in flags
        assert f"-X {pkg}.gitMinor=36" in flags
    assert "gitCommit" not in flags  # not known from the proxy: left unset, not invented


def _fake_binary(folder: Path, name: str, output: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_binaries_of_the_pinned_version_in_kubebuilder_assets_are_used_without_building(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    _fake_binary(assets, "kube-apiserver", "Kubernetes v1.36.3")
    _fake_binary(assets, "etcd", "etcd Version: 3.6.8\nGit SHA: x")
    _fake_binary(assets, "kubectl", "Client Version: v1.32.4\nKustomize Version: v5")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # may hold other versions: they don't count
    root = tmp_path / "cache"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "etcd-for-v1.36.3").write_text("v3.6.8\n")  # no network needed
    builder = binaries.BinaryBuilder(root=root)
    assert builder.locate("kube-apiserver") == assets / "kube-apiserver"
    assert builder.locate("etcd") == assets / "etcd"
    # A kubectl of another version does not count: it would be built.
    assert builder.locate("kubectl") is None


def test_reported_version_reads_each_tools_format(tmp_path: Path) -> None:
    cases = {
        "kube-scheduler": ("Kubernetes v1.36.3", "v1.36.3"),
        "etcd": ("etcd Version: 3.6.8\nGit SHA: Not provided", "v3.6.8"),
        "kwok": ("kwok version v0.8.0 go1.26.8 (linux/amd64)", "v0.8.0"),
        "helm": ("v3.22.0+gabc", "v3.22.0"),
        "kubectl": ("Client Version: v1.36.3\nKustomize Version: v5.8.1", "v1.36.3"),
    }
    for name, (output, want) in cases.items():
        assert binaries.reported_version(_fake_binary(tmp_path, name, output)) == want, name
    assert binaries.reported_version(tmp_path / "missing") is None


def test_stages_cover_node_and_pod_lifecycles() -> None:
    docs = list(yaml.safe_load_all(stages.stages_yaml(job_duration_seconds=2.5)))
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert set(by_name) == {"node-initialize", "node-heartbeat-with-lease", "pod-ready",
                            "pod-job-complete", "pod-job-fail", "pod-delete"}
    assert all(d["kind"] == "Stage" and d["apiVersion"] == "kwok.x-k8s.io/v1alpha1" for d in docs)
    complete = by_name["pod-job-complete"]["spec"]
    assert complete["delay"]["durationMilliseconds"] == 2500
    assert stages.DURATION_ANNOTATION in complete["delay"]["durationFrom"]["expressionFrom"]
    # Success and failure are told apart by the exit-code annotation, so never both apply.
    ops = {n: {e["key"]: e["operator"] for e in by_name[n]["spec"]["selector"]["matchExpressions"]}
           for n in ("pod-job-complete", "pod-job-fail")}
    key = next(k for k in ops["pod-job-fail"] if stages.EXIT_CODE_ANNOTATION in k)
    assert stages.EXIT_CODE_ENV in key  # the annotation, or else the env var
    assert (ops["pod-job-complete"][key], ops["pod-job-fail"][key]) == ("DoesNotExist", "Exists")
    assert "phase: Succeeded" in complete["next"]["statusTemplate"]
    assert "phase: Failed" in by_name["pod-job-fail"]["spec"]["next"]["statusTemplate"]


def test_pki_chain_names_and_identities(tmp_path: Path) -> None:
    creds = pki.generate(tmp_path)
    ca = x509.load_pem_x509_certificate(creds.ca.cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.apiserver.cert.read_bytes())
    admin = x509.load_pem_x509_certificate(creds.admin.cert.read_bytes())
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for cert in (server, admin):
        cert.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:masters")
    eku = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert server.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    assert oct(creds.service_account_key.stat().st_mode & 0o777) == "0o600"
    scheduler = x509.load_pem_x509_certificate(creds.client("kube-scheduler").cert.read_bytes())
    assert scheduler.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:kube-scheduler")


def test_gpu_node_manifest_has_gfd_labels_capacity_and_taint() -> None:
    node = node_manifest("h100-7", NodeSpec(gpus.gpu_type("h100")))
    labels = node["metadata"]["labels"]
    assert labels[gpus.PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
    assert labels[gpus.COUNT_LABEL] == "8"
    assert labels["kubernetes.io/hostname"] == "h100-7"
    assert node["status"]["allocatable"][gpus.GPU_RESOURCE] == "8"
    assert node["status"]["capacity"] == node["status"]["allocatable"]
    assert node["spec"]["taints"][0]["key"] == gpus.GPU_TAINT_KEY
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    small = node_manifest("l40s-0", NodeSpec(gpus.gpu_type("l40s"), gpus_per_node=2,
                                             gpu_taint=False))
    assert small["status"]["capacity"][gpus.GPU_RESOURCE] == "2"
    assert small["metadata"]["labels"][gpus.COUNT_LABEL] == "2"
    assert small["spec"] == {}


def test_cpu_node_has_no_gpu_anything() -> None:
    node = node_manifest("cpu-0", NodeSpec(None))
    assert gpus.GPU_RESOURCE not in node["status"]["capacity"]
    assert not any(k.startswith("nvidia.com/") for k in node["metadata"]["labels"])


def test_catalog_families_follow_compute_capability() -> None:
    for g in gpus.CATALOG:
        assert gpus.family_for(g.compute_major, g.compute_minor) == g.family, g.short
        assert gpus.gpu_type(g.product) is g is gpus.gpu_type(g.short)
    assert gpus.gpu_type("a100").sm == 80
    assert gpus.gpu_type("l40s").sm == 89
    with pytest.raises(KeyError, match="known: h100"):
        gpus.gpu_type("v100")


def test_kubeconfig_is_self_contained() -> None:
    kc = kubeconfig_dict("https://127.0.0.1:6443", b"CA", b"CERT", b"KEY")
    cluster = kc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert cluster["certificate-authority-data"] == "Q0E="
    assert kc["users"][0]["user"]["client-key-data"] == "S0VZ"


def test_fleet_syntax() -> None:
    assert parse_fleet("h100=2, l40s=1,cpu") == {"h100": 2, "l40s": 1, "cpu": 1}
    assert parse_fleet("") == {}
