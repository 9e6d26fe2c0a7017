"""Shared fixtures: a vendor key, network keys made on the spot, and servers on 127.0.0.1:0."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import DEFAULT_PRODUCTS, make_key

from lanlic.core import netkey
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import LicenseService, ServiceConfig
from lanlic.net.server import LicenseServer, ServerLimits


@pytest.fixture(autouse=True)
def no_thread_outlives_a_test() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    for t in left:
        t.join(5)
    left = [t for t in left if t.is_alive()]
    assert not left, f"threads outlived the test: {left}"


@pytest.fixture(scope="session")
def vendor_key() -> Ed25519PrivateKey:
    return netkey.generate_vendor_key()


StartServer = Callable[..., Awaitable[LicenseServer]]


@pytest.fixture
async def start_server(vendor_key: Ed25519PrivateKey) -> AsyncIterator[StartServer]:
    """``await start_server(products=..., lease=..., heartbeat=..., limits=...)``."""
    servers: list[LicenseServer] = []

    async def start(
        products: tuple[ProductEntitlement, ...] = DEFAULT_PRODUCTS,
        lease: float = 60.0,
        heartbeat: float = 20.0,
        limits: ServerLimits = ServerLimits(),
        service: LicenseService | None = None,
        port: int = 0,
        **kw: Any,
    ) -> LicenseServer:
        if service is None:
            service = LicenseService(
                make_key(vendor_key, products, **kw),
                Ed25519PrivateKey.generate(),
                ServiceConfig(lease_seconds=lease, heartbeat_seconds=heartbeat),
            )
        server = LicenseServer(service, "127.0.0.1", port, limits)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
