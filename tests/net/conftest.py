"""A raw protocol peer for network tests: real sockets, frames written and read by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from helpers import RawPeer

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
