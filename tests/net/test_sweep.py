"""The housekeeping sweep looks only at the connections a timeout runs on.

With 10,000 clients connected, looking at each every second cost the loop about 4 ms a second,
a pause every renew arriving meanwhile waited for (the steady scenario's p99).
"""

from __future__ import annotations

import asyncio

from lanlic.net.server import ServerLimits
from lanlic.proto.framing import encode_frame


async def test_only_connections_with_a_timeout_running_are_watched(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    limits = ServerLimits(handshake_timeout=0.5, frame_timeout=0.5, housekeeping_interval=0.1)
    server = await start_server(limits=limits)
    ready = [await raw_peer(server.address) for _ in range(5)]
    silent = await raw_peer(server.address, hello=False)
    half = await raw_peer(server.address)
    await half.send_raw(encode_frame({"t": "status", "id": 9})[:3])
    await asyncio.sleep(0.3)  # a few sweeps
    conns = {c._session.client_id: c for c in server.connections}
    watched_ids = {c._session.client_id for c in server.watched}
    assert not watched_ids & {p.client_id for p in ready}  # said hello, nothing pending
    assert half.client_id in watched_ids and b"" in watched_ids  # half a frame; no hello yet
    assert len(server.watched) == 2 and len(conns) == 7
    # And the timeouts still close them.
    assert await silent.closed_by_server() and await half.closed_by_server()
    for peer in ready:
        assert (await peer.request("status"))["t"] == "status_reply"
    assert server.watched == set()
