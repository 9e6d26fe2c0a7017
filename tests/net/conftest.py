"""For network tests: a raw protocol peer (real sockets, frames written and read by hand), and
a server on a loop in a helper thread for the blocking client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import RawPeer, make_key

from lanlic.core.service import LicenseService
from lanlic.net.server import LicenseServer

PeerFactory = Callable[..., Awaitable[RawPeer]]


@pytest.fixture
async def raw_peer() -> AsyncIterator[PeerFactory]:
    peers: list[RawPeer] = []

    async def connect(address: tuple[str, int], hello: bool = True) -> RawPeer:
        reader, writer = await asyncio.open_connection(*address)
        peer = RawPeer(reader, writer)
        peers.append(peer)
        if hello:
            assert (await peer.hello())["t"] == "welcome"
        return peer

    yield connect
    for p in peers:
        p.close()


@pytest.fixture
def server_address(vendor_key: Ed25519PrivateKey) -> Iterator[tuple[str, int]]:
    """A server on a loop in a helper thread, as a non-asyncio application would meet it."""
    service = LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    async def serve() -> LicenseServer:
        server = LicenseServer(service)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(serve(), loop).result(5)
    try:
        yield server.address
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()
