"""Adversarial fixtures: raw peers on real loopback sockets, closed at the end of the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from adversarial_helpers import PeerFactory
from helpers import RawPeer


@pytest.fixture
async def raw_peer() -> AsyncIterator[PeerFactory]:
    """``await raw_peer(address, hello=True)``: a raw protocol peer, after its handshake."""
    peers: list[RawPeer] = []

    async def connect(address: tuple[str, int], hello: bool = True) -> RawPeer:
        reader, writer = await asyncio.open_connection(*address)
        peer = RawPeer(reader, writer)
        peers.append(peer)
        if hello:
            welcome = await peer.hello()
            assert welcome["t"] == "welcome", welcome
        return peer

    yield connect
    for p in peers:
        p.close()
