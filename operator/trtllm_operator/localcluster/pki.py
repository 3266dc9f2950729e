"""Certificates and keys for a throw-away local control plane.

One CA signs the API server's serving certificate (valid for 127.0.0.1 and the in-cluster
names) and every client certificate; a separate RSA key pair signs service-account tokens.
Keys are ECDSA P-256 for TLS (fast to generate) and RSA for tokens (RS256, what every client
library verifies).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Every credential file the control plane needs."""

    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    service_account_key: Path
    service_account_pub: Path

    def client(self, name: str) -> CertPair:
        """The client certificate of a component (``kube-scheduler``, ...), by file stem."""
        return CertPair(self.ca.cert.parent / f"{name}.crt", self.ca.cert.parent / f"{name}.key")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = []
        if server_names or server_ips:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(folder: Path, stem: str, cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> CertPair:
    pair = CertPair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pair.key, key)
    return pair


# Client identities: (file stem, CN, O). Components get their own users so that the
# API server's default RBAC bootstrap policy (system:kube-scheduler, ...) applies to them.
CLIENTS: tuple[tuple[str, str, str | None], ...] = (
    ("admin", "admin", "system:masters"),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
    # kwok plays every kubelet; it needs to write any node's and pod's status.
    ("kwok", "kwok", "system:masters"),
)


def generate(folder: Path, service_cluster_ip: str = "10.96.0.1") -> ClusterPKI:
    """Write a CA, the API server's serving pair, client pairs and the SA key pair to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("trtllm-operator-local-ca")
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca = _write_pair(folder, "ca", ca_cert, ca_key)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        _name("kube-apiserver"), server_key, ca_name, ca_key,
        server_names=("localhost", "kubernetes", "kubernetes.default",
                      "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
        server_ips=("127.0.0.1", service_cluster_ip),
    )
    apiserver = _write_pair(folder, "apiserver", server_cert, server_key)

    pairs: dict[str, CertPair] = {}
    for stem, cn, org in CLIENTS:
        key = ec.generate_private_key(ec.SECP256R1())
        pairs[stem] = _write_pair(
            folder, stem, _issue(_name(cn, org), key, ca_name, ca_key, client=True), key
        )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_priv = folder / "sa.key"
    _write_key(sa_priv, sa_key)
    sa_pub = folder / "sa.pub"
    sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPKI(ca, apiserver, pairs["admin"], sa_priv, sa_pub)


def serving_pair(creds: ClusterPKI, folder: Path, stem: str = "tls",
                 ips: tuple[str, ...] = ("127.0.0.1",)) -> CertPair:
    """A serving certificate for loopback, signed by the cluster CA (for webhook servers).

    Written as ``<stem>.crt``/``<stem>.key`` in ``folder``; callers that need the
    controller-runtime names (``tls.crt``/``tls.key``) pass ``stem="tls"``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(creds.ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the cluster CA key is not an ECDSA key")
    ca_name = x509.load_pem_x509_certificate(creds.ca.cert.read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(f"{stem}-webhook"), key, ca_name, ca_key, server_ips=ips)
    return _write_pair(folder, stem, cert, key)
