"""A one-member etcd on loopback that demands TLS client certificates from a test CA (the
``tls_etcd`` fixture, registered in conftest.py), and waiting for a store to start on it."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from etcd_cluster import ETCD, free_port

from lanlic.cluster.etcd import EtcdSeats, EtcdTls


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
    *, ca: bool = False, server: bool = False,
) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(signer, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, EtcdTls]]:
    """A one-member etcd on loopback that requires a client certificate from our test CA."""
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("lanlic test CA", ca_key, "lanlic test CA", ca_key, ca=True)
    server = _cert("etcd", server_key, "lanlic test CA", ca_key, server=True)
    client = _cert("lanlic-member", client_key, "lanlic test CA", ca_key)
    pem = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
    }
    for name, data in pem.items():
        (tmp_path / name).write_bytes(data)
    port, peer = free_port(), free_port()
    with open(tmp_path / "etcd.log", "wb") as log:
        proc = subprocess.Popen(
            [
                ETCD, "--name", "tls", "--data-dir", str(tmp_path / "tls.etcd"),
                "--listen-client-urls", f"https://127.0.0.1:{port}",
                "--advertise-client-urls", f"https://127.0.0.1:{port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
                "--cert-file", str(tmp_path / "server.pem"),
                "--key-file", str(tmp_path / "server.key"),
                "--trusted-ca-file", str(tmp_path / "ca.pem"),
                "--client-cert-auth",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        tls = EtcdTls(
            ca=pem["ca.pem"],
            cert=client.public_bytes(serialization.Encoding.PEM),
            key=_pem_key(client_key),
        )
        yield f"127.0.0.1:{port}", tls
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(tmp_path / "tls.etcd", ignore_errors=True)  # its 64 MB WAL; the log stays


async def started(store: EtcdSeats, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await store.start()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
