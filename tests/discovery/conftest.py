"""Discovery fixtures. mDNS in these tests never leaves the machine: everything in the test
process runs zeroconf on ``interfaces=["127.0.0.1"]``, servers started as processes listen on
127.0.0.1 (so they announce on loopback only), and the multicast test between two hosts runs in
network namespaces the test makes itself."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from discovery_helpers import LOOPBACK, Serve, Served, ServerProcess, network_key
from helpers import DEFAULT_PRODUCTS, TODAY

from lanlic.core import netkey
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import LicenseService, ServiceConfig
from lanlic.net.announce import announcer_for
from lanlic.net.server import LicenseServer


@pytest.fixture(autouse=True)
def quick_mdns_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering probes the name three times 500 ms apart (~1.2 s). In this process, probe
    100 ms apart: still three probes, still renamed on a conflict, a second saved per server.
    Servers run as processes keep zeroconf's real timing."""
    import zeroconf._core

    monkeypatch.setattr(zeroconf._core, "_CHECK_TIME", 100)
    monkeypatch.setattr(zeroconf._core, "_PROBE_RANDOM_DELAY_INTERVAL", (20, 40))


@pytest.fixture
async def serve(vendor_key: Ed25519PrivateKey) -> AsyncIterator[Serve]:
    """``await serve(vendor=..., customer=..., products=..., lease=..., service=..., port=...,
    member=...)``:
    a server on 127.0.0.1, registered over mDNS on loopback before this returns."""
    started: list[Served] = []

    async def start(
        vendor: Ed25519PrivateKey | None = None,
        customer: str = "ACME Engineering",
        products: tuple[ProductEntitlement, ...] = DEFAULT_PRODUCTS,
        lease: float = 60.0,
        heartbeat: float = 20.0,
        service: LicenseService | None = None,
        port: int = 0,
        member: bool = False,
    ) -> Served:
        if service is None:
            service = LicenseService(
                network_key(vendor or vendor_key, customer, products),
                Ed25519PrivateKey.generate(),
                ServiceConfig(lease_seconds=lease, heartbeat_seconds=heartbeat),
            )
        server = LicenseServer(service, "127.0.0.1", port)
        await server.start()
        # ``member``: another member of the same server, announced with a label of its own (host
        # and port), as ``lanlic serve --store etcd://`` announces each member.
        label = f"{server.host}:{server.port}" if member else ""
        announcer = announcer_for(service, server.host, server.port, member=label)
        assert announcer.interfaces == LOOPBACK
        served = Served(server, announcer)
        started.append(served)
        await asyncio.wait_for(announcer.start(), 10)
        return served

    yield start
    for served in started:
        await served.stop()


@pytest.fixture
async def server_processes() -> AsyncIterator[list[ServerProcess]]:
    """Every server process a test appends here is stopped (SIGTERM, then SIGKILL) at its end."""
    procs: list[ServerProcess] = []
    yield procs
    for p in procs:
        await p.stop()


@pytest.fixture
def vendor_files(vendor_key: Ed25519PrivateKey, tmp_path: Path) -> tuple[Path, Path]:
    """The session's vendor key as files: (network key for ACME Engineering, vendor.pub)."""
    from lanlic.vendorkeys import write_vendor_keypair

    folder = tmp_path / "vendor"
    folder.mkdir()
    _, pub = write_vendor_keypair(folder, vendor_key)
    lic = tmp_path / "acme.lic"
    lic.write_bytes(
        netkey.issue_network_key(
            vendor_key,
            customer="ACME Engineering",
            expires=TODAY + dt.timedelta(days=365),
            borrow_kind="act",
            products=DEFAULT_PRODUCTS,
            issued=TODAY,
        )
    )
    return lic, pub
