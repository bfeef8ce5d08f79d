"""A running sandbox cluster handed to other processes as one pickle file (bench/mutation.py's
cluster targets: each mutant's pytest session attaches to it, tests/real_cluster.py
``ATTACH_ENV``).

The cluster's PKI keeps its CA certificate and key as cryptography objects (the fault proxy
issues its serving certificate from them), which do not pickle: they travel as PEM and are
loaded back by the functions here. The supervisor (the processes) stays with the starter."""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.cluster.control_plane import Cluster


def certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def private_key(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, None)


def _reduce_certificate(cert: x509.Certificate) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
    return certificate, (cert.public_bytes(serialization.Encoding.PEM),)


def _reduce_key(key: ec.EllipticCurvePrivateKey) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_key, (pem,)


def dump_cluster(cluster: Cluster, path: Path) -> None:
    """Write `cluster` without its supervisor to `path` (private to this user)."""
    issuer = cluster.pki._issuer
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = {
        type(issuer.cert): _reduce_certificate,
        type(issuer.key): _reduce_key,
    }
    pickler.dump(dataclasses.replace(cluster, supervisor=None))  # type: ignore[arg-type]
    path.write_bytes(buffer.getvalue())
    path.chmod(0o600)
