"""Floating seats end to end over real loopback sockets: the server, the client library and the
protocol as a hostile or careless peer would use it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest

from lanlic.core import signing
from lanlic.core.service import handshake_payload
from lanlic.errors import (
    LanlicError,
    NoSeat,
    SeatLost,
    ServerUnavailable,
    UnknownProduct,
    VersionNotLicensed,
)
from lanlic.net.blocking import BlockingClient
from lanlic.net.client import Client, Seat
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.proto.framing import encode_frame


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def in_use(server: LicenseServer, product: str = "cad") -> int:
    return server.service.pool.in_use(product)


async def test_checkout_up_to_seat_count_then_no_seat(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    async with Client(server.address) as a, Client(server.address) as b:
        seats = [
            await a.acquire("cad", "16"),
            await b.acquire("cad", "12.1"),
            await a.acquire("cad"),
        ]
        assert len({s.lease_id for s in seats}) == 3
        assert in_use(server) == 3
        with pytest.raises(NoSeat) as info:
            await b.acquire("cad", "16")
        assert info.value.code == "no_seat"
        # Another product's seats are counted on their own.
        await b.acquire("render")
        with pytest.raises(NoSeat):
            await a.acquire("render")
        with pytest.raises(VersionNotLicensed):
            await a.acquire("cad", "17")
        with pytest.raises(UnknownProduct):
            await a.acquire("nope")
        server.service.pool.check_invariant()


async def test_release_frees_a_seat_at_once(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    async with Client(server.address) as a, Client(server.address) as b:
        held = [await a.acquire("cad") for _ in range(3)]
        with pytest.raises(NoSeat):
            await b.acquire("cad")
        await a.release(held[0])
        assert in_use(server) == 2
        seat = await b.acquire("cad")  # no waiting for any lease
        assert not seat.lost
        async with b.checkout("render") as r:
            assert in_use(server, "render") == 1
            assert not r.lost
        assert in_use(server, "render") == 0


async def test_clean_close_releases_everything_at_once(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    client = Client(server.address)
    await client.connect()
    await client.acquire("cad")
    await client.acquire("render")
    assert in_use(server) == 1
    await client.close()
    assert in_use(server) == 0 and in_use(server, "render") == 0


async def test_vanished_client_keeps_seat_until_lease_runs_out(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(lease=1.0, heartbeat=0.3)
    peer = await raw_peer(server.address)
    granted = await peer.request("checkout", product="cad", version="16")
    assert granted["t"] == "granted"
    peer.writer.transport.abort()  # the connection dies with no goodbye
    await asyncio.sleep(0.3)
    assert in_use(server) == 1, "a dropped connection must not free the seat before the lease"
    await wait_for(lambda: in_use(server) == 0, timeout=3)


async def test_sigkilled_client_process_loses_its_seat_only_after_the_lease(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(lease=1.5, heartbeat=0.3)
    host, port = server.address
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lanlic.cli",
        "checkout",
        "cad",
        "--server",
        f"{host}:{port}",
        "--hold",
        "60",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"checked out cad" in line
        await asyncio.sleep(1.0)  # longer than a heartbeat: the client keeps the lease alive
        assert in_use(server) == 1
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        killed = time.monotonic()
        await asyncio.sleep(0.2)
        assert in_use(server) == 1, "SIGKILL must not free the seat at once"
        await wait_for(lambda: in_use(server) == 0, timeout=5)
        assert time.monotonic() - killed >= 1.0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_connection_drop_and_return_within_lease_keeps_the_seat(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(lease=3.0, heartbeat=0.5)
    lost: list[LanlicError] = []
    async with Client(server.address, on_seat_lost=lambda s, r: lost.append(r)) as client:
        seat = await client.acquire("cad", "16")
        # The network goes away: the server stops listening and drops every connection...
        service, port = server.service, server.port
        await server.stop()
        await wait_for(lambda: not client.connected, timeout=3)
        await asyncio.sleep(1.0)
        # ...and comes back within the lease, with the same state.
        server2 = LicenseServer(service, "127.0.0.1", port)
        await server2.start()
        try:
            await wait_for(lambda: client.connected, timeout=5)
            await client.renew_now()
            assert not seat.lost and not lost
            assert service.pool.lease(seat.lease_id) is not None
            assert service.pool.in_use("cad") == 1
        finally:
            await server2.stop()


async def test_client_gives_up_before_the_server_frees_the_seat(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(lease=2.0, heartbeat=0.3)
    lost: list[tuple[Seat, LanlicError]] = []
    client = Client(server.address, on_seat_lost=lambda s, r: lost.append((s, r)))
    await client.connect()
    try:
        seat = await client.acquire("cad")
        pool = server.service.pool
        lease = pool.lease(seat.lease_id)
        assert lease is not None
        await server.stop()  # the server is unreachable from now on, but keeps its pool
        reason = await asyncio.wait_for(seat.wait_lost(), 5)
        assert isinstance(reason, SeatLost)
        assert lost and lost[0][0] is seat
        # The client stopped counting the seat while the server still held it.
        assert asyncio.get_running_loop().time() < lease.expires
    finally:
        await client.close()


async def test_renew_or_release_of_unknown_or_foreign_lease_is_refused(
    start_server, raw_peer
) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    alice = await raw_peer(server.address)
    mallory = await raw_peer(server.address)
    granted = await alice.request("checkout", product="cad", version="16")
    lease = granted["lease"]
    made_up = os.urandom(16)
    for t in ("renew", "release"):
        reply = await mallory.request(t, leases=[lease, made_up])
        assert reply["leases"] == []
        assert {(x["lease"], x["code"]) for x in reply["lost"]} == {
            (lease, "lease_unknown"),
            (made_up, "lease_unknown"),
        }
    assert in_use(server) == 1
    reply = await alice.request("renew", leases=[lease])
    assert reply["leases"] == [lease] and reply["lost"] == []


async def test_welcome_is_signed_over_the_clients_nonce(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    nonce = os.urandom(32)
    welcome = await peer.request(
        "hello", versions=[1, 7], client_id=peer.client_id, user="u", host="h", nonce=nonce
    )
    assert welcome["version"] == 1
    pub = signing.public_from_bytes(welcome["server_key"])
    payload = handshake_payload(nonce, peer.client_id, welcome["server_id"], welcome["vendor_fp"])
    assert signing.verify(pub, signing.DOMAIN_HANDSHAKE, payload, welcome["signature"])
    other = handshake_payload(
        os.urandom(32), peer.client_id, welcome["server_id"], welcome["vendor_fp"]
    )
    assert not signing.verify(pub, signing.DOMAIN_HANDSHAKE, other, welcome["signature"])


async def test_no_common_protocol_version(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    reply = await peer.request(
        "hello", versions=[4, 5], client_id=peer.client_id, user="u", host="h"
    )
    assert reply["t"] == "error" and reply["code"] == "unsupported_version"
    assert await peer.closed_by_server()


async def test_bad_input_gets_clear_errors_and_server_keeps_serving(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(
        limits=ServerLimits(frame_timeout=0.5, handshake_timeout=0.5, housekeeping_interval=0.1)
    )
    bystander = Client(server.address)
    await bystander.connect()
    try:
        seat = await bystander.acquire("cad")

        peer = await raw_peer(server.address)
        # Not msgpack: an error, and the connection stays usable.
        await peer.send_body(b"\xc1\xc1\xc1")
        assert (await peer.recv())["code"] == "bad_frame"
        # msgpack, but not a map.
        await peer.send_body(msgpack.packb([1, 2, 3]))
        assert (await peer.recv())["code"] == "bad_frame"
        # A map missing fields: the error carries the request id.
        await peer.send({"t": "checkout", "id": 7})
        reply = await peer.recv()
        assert (reply["code"], reply["id"]) == ("bad_message", 7)
        assert "product" in reply["message"]
        # An unknown message type.
        await peer.send({"t": "make_coffee", "id": 8})
        reply = await peer.recv()
        assert (reply["code"], reply["id"]) == ("unknown_message", 8)
        # A second handshake.
        reply = await peer.hello()
        assert reply["code"] == "unexpected_message"
        # Still serving this peer after all that.
        assert (await peer.request("checkout", product="cad"))["t"] == "granted"

        # A request before the handshake.
        early = await raw_peer(server.address, hello=False)
        reply = await early.request("checkout", product="cad")
        assert reply["code"] == "unexpected_message"

        # A frame over the limit: refused at the header, and the connection closed.
        big = await raw_peer(server.address)
        await big.send_raw((10**9).to_bytes(4, "big"))
        reply = await big.recv()
        assert reply["code"] == "bad_frame" and "limit" in reply["message"]
        assert await big.closed_by_server()

        # Half a frame, then silence: closed by the frame timeout.
        half = await raw_peer(server.address)
        await half.send_raw(b"\x00\x00\x00\x20abc")
        assert await half.closed_by_server(timeout=5)

        # A connection that never says hello: closed by the handshake timeout.
        mute = await raw_peer(server.address, hello=False)
        assert await mute.closed_by_server(timeout=5)

        # The well-behaved client never noticed.
        await bystander.renew_now()
        assert not seat.lost
        assert (await bystander.status())["products"][0]["in_use"] == 2
    finally:
        await bystander.close()


async def test_status_lists_holders(start_server) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    async with Client(server.address, user="alice", host="ws-12", app="MyCAD 16.2") as c:
        before = time.time()
        await c.acquire("cad", "16")
        status = await c.status()
    cad = next(p for p in status["products"] if p["name"] == "cad")
    assert (cad["seats"], cad["in_use"], cad["free"]) == (3, 1, 2)
    (holder,) = cad["holders"]
    assert (holder["user"], holder["host"], holder["app"], holder["version"]) == (
        "alice",
        "ws-12",
        "MyCAD 16.2",
        "16",
    )
    assert before - 1 <= holder["since"] <= time.time() + 1
    assert status["customer"] == "ACME Engineering"


async def test_pipelined_requests_are_answered_by_id(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    peer = await raw_peer(server.address)
    frames = b"".join(
        encode_frame({"t": "checkout", "id": i, "product": "cad"}) for i in range(1, 6)
    )
    await peer.send_raw(frames)
    replies = [await peer.recv() for _ in range(5)]
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5]
    assert [r["t"] for r in replies] == ["granted"] * 3 + ["error"] * 2


async def test_server_busy_beyond_connection_cap(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(limits=ServerLimits(max_connections=2))
    await raw_peer(server.address)
    await raw_peer(server.address)
    third = await raw_peer(server.address, hello=False)
    reply = await third.recv()
    assert reply["code"] == "server_busy"
    assert await third.closed_by_server()


def test_blocking_client(server_address: tuple[str, int]) -> None:
    # A non-asyncio application: the server runs on a loop in a helper thread, and the blocking
    # client runs its own loop in its own thread.
    with BlockingClient(server_address, user="bob") as client:
        with client.checkout("cad", version="16") as seat:
            assert not seat.lost
            assert client.status()["products"][0]["in_use"] == 1
        assert client.status()["products"][0]["in_use"] == 0
        client.acquire("render")
        with pytest.raises(NoSeat):
            client.acquire("render")


async def test_no_server_address_is_a_clear_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LANLIC_SERVER", raising=False)
    with pytest.raises(ServerUnavailable, match="LANLIC_SERVER"):
        Client()


async def test_status_of_a_campus_fits_in_one_frame(start_server) -> None:  # type: ignore[no-untyped-def]
    from lanlic.core.netkey import ProductEntitlement
    from lanlic.core.pool import Holder

    server = await start_server(products=(ProductEntitlement("cad", seats=5000),))
    pool, now = server.service.pool, server.loop.time()
    for i in range(5000):  # straight into the pool: 5,000 holders with long names
        pool.checkout(
            "cad", "", os.urandom(16), Holder("u" * 60 + str(i), "h" * 60, "app" * 20), now
        )
    async with Client(server.address) as c:
        status = await c.status()
    (cad,) = status["products"]
    assert (cad["in_use"], cad["holders_total"], cad["free"]) == (5000, 5000, 0)
    assert 0 < len(cad["holders"]) < 5000


async def test_a_cancel_that_meets_its_reply_is_not_lost(start_server) -> None:  # type: ignore[no-untyped-def]
    """An application cancels ``acquire`` (its own timeout, a closed window) in the very moment
    the server's answer arrives. The cancel must win: on Python 3.11 ``asyncio.wait_for`` lost
    it and returned the seat to a caller that had gone (CPython gh-86296), and a task awaiting it
    (the heartbeat, at close) ran on. The seat the server granted meanwhile goes with the bye."""
    server = await start_server()
    async with Client(server.address) as a:
        task: asyncio.Task[Seat] | None = None

        class CancelOnReply(dict[int, "asyncio.Future[object]"]):
            def __setitem__(self, rid: int, fut: asyncio.Future[object]) -> None:
                super().__setitem__(rid, fut)
                # Runs right after the reply is set, before the waiting task resumes.
                fut.add_done_callback(lambda _: task.cancel() if task else None)

        a._pending = CancelOnReply()  # type: ignore[assignment]
        task = asyncio.create_task(a.acquire("cad"))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.seats == {}
    await wait_for(lambda: in_use(server) == 0)
