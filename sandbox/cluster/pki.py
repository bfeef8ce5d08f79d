"""The test cluster's certificates and keys, made with ``cryptography`` on every start.

One cluster CA signs the API server's serving certificate and every client certificate (the
admin, the control-plane components, each node); a second CA is the front-proxy
(request-header) CA that a fault-injecting proxy will present its client certificate with
later (issue 14, item 7). The ServiceAccount tokens are signed with their own key. ECDSA P-256
throughout: key generation takes milliseconds, so nothing is cached between runs.

The identities follow the conventions the real authorizers key on (kube-apiserver's
``plugin/pkg/auth/authorizer/node/node_authorizer.go`` and the RBAC bootstrap policy in
``plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go``): ``O=system:masters`` for the
admin, ``CN=system:kube-controller-manager`` and ``CN=system:kube-scheduler`` for those two,
``CN=system:node:<name>, O=system:nodes`` for each node.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_public_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _make_ca(directory: Path, stem: str, common_name: str) -> tuple[_Issuer, CertPair]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return _Issuer(cert=cert, key=key), pair


def _issue(
    issuer: _Issuer,
    directory: Path,
    stem: str,
    subject: x509.Name,
    *,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool,
) -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    if server_names or server_ips:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if server_names or server_ips:
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


@dataclass(frozen=True)
class ClusterPki:
    """Every file the control plane and its clients are started with."""

    ca: CertPair
    front_proxy_ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    front_proxy_client: CertPair
    apiserver_kubelet_client: CertPair
    service_account_key: Path
    service_account_public_key: Path
    directory: Path
    _issuer: _Issuer

    def node_client(self, node_name: str) -> CertPair:
        """A kubelet-style client certificate, as the Node authorizer expects it."""
        return _issue(
            self._issuer,
            self.directory,
            f"node-{node_name}",
            _name(f"system:node:{node_name}", ("system:nodes",)),
            client=True,
        )

    def client(self, common_name: str, organizations: tuple[str, ...] = ()) -> CertPair:
        """A client certificate for ``common_name`` (RBAC's user) in ``organizations`` (groups)."""
        return _issue(
            self._issuer,
            self.directory,
            common_name.replace(":", "-"),
            _name(common_name, organizations),
            client=True,
        )

    def serving(self, stem: str, common_name: str, *, server_ips: tuple[str, ...]) -> CertPair:
        """A serving certificate for a component the API server calls (a webhook), valid for
        ``server_ips`` and signed by the cluster CA that the caller puts in its caBundle."""
        return _issue(
            self._issuer,
            self.directory,
            stem,
            _name(common_name),
            server_ips=server_ips,
            client=False,
        )


def make_pki(directory: Path, *, advertise_ip: str, service_ip: str) -> ClusterPki:
    """Create the cluster's CAs, certificates and keys under ``directory``.

    The serving certificate names every address a client may dial: loopback, the advertise
    address inside the network namespace, and the ``kubernetes`` Service's ClusterIP.
    """
    directory.mkdir(parents=True, exist_ok=True)
    issuer, ca = _make_ca(directory, "ca", "llm-rollout-test-ca")
    front_issuer, front_proxy_ca = _make_ca(directory, "front-proxy-ca", "llm-rollout-front-proxy")
    apiserver = _issue(
        issuer,
        directory,
        "apiserver",
        _name("kube-apiserver"),
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", advertise_ip, service_ip),
        client=False,
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    _write_key(sa_key, sa_private)
    _write_public_key(sa_key, sa_public)
    return ClusterPki(
        ca=ca,
        front_proxy_ca=front_proxy_ca,
        apiserver=apiserver,
        admin=_issue(
            issuer, directory, "admin", _name("llm-rollout-admin", ("system:masters",)), client=True
        ),
        controller_manager=_issue(
            issuer,
            directory,
            "controller-manager",
            _name("system:kube-controller-manager"),
            client=True,
        ),
        scheduler=_issue(
            issuer, directory, "scheduler", _name("system:kube-scheduler"), client=True
        ),
        front_proxy_client=_issue(
            front_issuer, directory, "front-proxy-client", _name("front-proxy-client"), client=True
        ),
        # kubeadm's apiserver-kubelet-client: how the API server authenticates to kubelets
        # (logs, exec, port-forward).
        apiserver_kubelet_client=_issue(
            issuer,
            directory,
            "apiserver-kubelet-client",
            _name("kube-apiserver-kubelet-client", ("system:masters",)),
            client=True,
        ),
        service_account_key=sa_private,
        service_account_public_key=sa_public,
        directory=directory,
        _issuer=issuer,
    )
