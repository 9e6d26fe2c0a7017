"""The queue over the wire, in-process server on 127.0.0.1: a silent waiter (its machine gone,
its connection never closed) is dropped after a lease period; one whose client heartbeats stays."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from lanlic.core.netkey import ProductEntitlement
from lanlic.net.client import Client
from lanlic.net.server import ServerLimits


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_silent_waiter_is_dropped_a_heartbeating_one_stays(
    start_server: Any, raw_peer: Any
) -> None:
    server = await start_server(
        products=(ProductEntitlement("cad", seats=1),),
        lease=1.0,
        heartbeat=0.3,
        limits=ServerLimits(housekeeping_interval=0.1),
    )
    queue = server.service.gate.queue
    async with Client(server.address, user="ann") as holder, Client(server.address) as waiter:
        await holder.acquire("cad")
        silent = await raw_peer(server.address)
        queued = await silent.request("wait", product="cad")
        assert queued["t"] == "queued" and queued["position"] == 1
        places: list[int] = []
        waiting = asyncio.ensure_future(waiter.acquire("cad", wait=True, on_position=places.append))
        await wait_for(lambda: len(queue) == 2, timeout=3)
        # The raw peer says nothing more: within about a lease period it is out of the line.
        await wait_for(lambda: len(queue) == 1, timeout=4)
        dropped = await silent.recv()
        assert dropped["t"] == "error" and dropped["id"] == queued["id"]
        assert "no heartbeat" in dropped["message"]
        await asyncio.sleep(2.0)  # two lease periods: the client that heartbeats is still there
        assert len(queue) == 1 and places == [2, 1]
        await holder.release(next(iter(holder.seats.values())))
        seat = await asyncio.wait_for(waiting, 5)
        assert seat.product == "cad"
