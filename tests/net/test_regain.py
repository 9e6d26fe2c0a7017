"""The client gets its seat back: a server away for longer than a lease, then back, and a seat
someone else took meanwhile. The application is told lost, then regained (or, with
``regain=False``, that the seat is gone), and ``status`` shows who holds what.

Servers are real ``lanlic serve`` processes on 127.0.0.1 (no mDNS) with a 2 s lease, stopped
and started again on the same port and data folder; the "someone else took it" case runs an
in-process server whose reading from one client the test pauses."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliproc import read_json_line
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import netkey, signing
from lanlic.core.netkey import ProductEntitlement
from lanlic.errors import NoSeat, SeatLost
from lanlic.net.blocking import BlockingClient
from lanlic.net.client import Client, Seat, SeatState

LEASE = 2.0
HEARTBEAT = 0.5
APP = "regain-test 1.0"
TODAY = dt.datetime.now(dt.UTC).date()


class ServerProcess:
    """``lanlic serve`` on 127.0.0.1 with a data folder of the test's; restartable on its port."""

    def __init__(self, folder: Path, vendor: Ed25519PrivateKey) -> None:
        self.folder = folder
        self.lic, self.pub = folder / "net.lic", folder / "vendor.pub"
        self.lic.write_bytes(
            netkey.issue_network_key(
                vendor, customer="Regain Office", expires=TODAY + dt.timedelta(days=30),
                borrow_kind="act", products=(ProductEntitlement("cad", seats=3),), issued=TODAY,
            )
        )  # fmt: skip
        self.pub.write_bytes(signing.public_to_pem(vendor.public_key()))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> int:
        """Start (again, on the same port once it has one); returns the port."""
        assert self.proc is None
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
        err = (self.folder / f"serve{self.runs}.err").open("wb")
        with err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lanlic.cli", "serve", "--license", str(self.lic),
                 "--vendor-pub", str(self.pub), "--data", str(self.folder / "data"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--no-mdns", "--no-admin",
                 "--json", "--lease", str(LEASE), "--heartbeat", str(HEARTBEAT),
                 "--allow-short-lease"],
                stdout=subprocess.PIPE, stderr=err, env=env,
            )  # fmt: skip
        event = read_json_line(self.proc, 30)
        assert event["event"] == "listening", event
        self.port = int(event["port"])
        return self.port

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def server(tmp_path: Path, vendor_key: Ed25519PrivateKey) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path, vendor_key)
    try:
        yield srv
    finally:
        srv.stop()


def cad(status: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(p for p in status["products"] if p["name"] == "cad")
    return entry


class Told:
    """What the application was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_seat_lost": lambda seat, reason: self.events.append(("lost", seat.state)),
            "on_seat_regained": lambda seat: self.events.append(("regained", seat.state)),
            "on_seat_state": lambda seat: self.events.append(("state", seat.state)),
        }


async def away_longer_than_a_lease(server: ServerProcess, seat: Seat) -> None:
    """Stop the server; the client gives the seat up; start it again after more than a lease."""
    await asyncio.to_thread(server.stop)
    stopped = time.monotonic()
    reason = await asyncio.wait_for(seat.wait_lost(), 3 * LEASE)
    assert isinstance(reason, SeatLost) and seat.state is SeatState.LOST
    await asyncio.sleep(max(0.0, stopped + LEASE + 0.5 - time.monotonic()))
    await asyncio.to_thread(server.start)


async def test_a_server_away_longer_than_a_lease_gives_the_seat_back(
    server: ServerProcess,
) -> None:
    port = await asyncio.to_thread(server.start)
    told = Told()
    async with Client(("127.0.0.1", port), app=APP, **told.kwargs()) as client:
        seat = await client.acquire("cad", "16")
        assert seat.state is SeatState.HELD
        await away_longer_than_a_lease(server, seat)

        await asyncio.wait_for(seat.wait_regained(), 5 * LEASE)
        assert told.events == [
            ("lost", SeatState.LOST),
            ("state", SeatState.LOST),
            ("regained", SeatState.REGAINED),
            ("state", SeatState.REGAINED),
        ]
        assert not seat.lost and seat.reason is None and seat.version == "16"
        assert client.seats[seat.lease_id] is seat
        entry = cad(await client.status())
        assert entry["in_use"] == 1
        assert [(h["app"], h["version"]) for h in entry["holders"]] == [(APP, "16")]
        # It is renewed as any seat: still held, and only once, a few leases later.
        await asyncio.sleep(2 * LEASE)
        assert seat.state is SeatState.REGAINED and cad(await client.status())["in_use"] == 1


async def test_with_regain_off_nothing_is_taken_again(server: ServerProcess) -> None:
    port = await asyncio.to_thread(server.start)
    told = Told()
    async with Client(("127.0.0.1", port), app=APP, regain=False, **told.kwargs()) as client:
        seat = await client.acquire("cad")
        await away_longer_than_a_lease(server, seat)

        # Once back, the server no longer holds the seat for this client: gone for good.
        await asyncio.wait_for(seat.wait_state(SeatState.GONE), 5 * LEASE)
        with pytest.raises(SeatLost):
            await seat.wait_regained()
        assert told.events == [
            ("lost", SeatState.LOST),
            ("state", SeatState.LOST),
            ("state", SeatState.GONE),
        ]
        await asyncio.sleep(LEASE)
        assert client.connected and not client.seats and seat.state is SeatState.GONE
        entry = cad(await client.status())
        assert (entry["in_use"], entry["holders"]) == (0, [])


def test_the_blocking_client_gets_its_seat_back(server: ServerProcess) -> None:
    port = server.start()
    told = Told()
    with BlockingClient(("127.0.0.1", port), app=APP, **told.kwargs()) as client:
        seat = client.acquire("cad")
        server.stop()
        stopped = time.monotonic()
        assert client.seat_lost(seat, 3 * LEASE)
        assert client.seat_state(seat) is SeatState.LOST
        assert not client.seat_regained(seat, 0.1), "regained with no server"
        time.sleep(max(0.0, stopped + LEASE + 0.5 - time.monotonic()))
        server.start()
        assert client.seat_regained(seat, 5 * LEASE)
        assert client.seat_state(seat) is SeatState.REGAINED
        assert [e for e in told.events if e[0] != "state"] == [
            ("lost", SeatState.LOST),
            ("regained", SeatState.REGAINED),
        ]
        assert cad(client.status())["in_use"] == 1


async def take_when_free(client: Client) -> Seat:
    async with asyncio.timeout(5):
        while True:
            try:
                return await client.acquire("render")
            except NoSeat:
                await asyncio.sleep(0.05)


async def test_a_seat_someone_else_took_is_waited_for(start_server: Any) -> None:
    """The server freed the seat while this client could not renew, and another took the only
    one: the client says it is waiting, asks again, and gets it once the other lets it go."""
    server = await start_server(lease=1.5, heartbeat=0.3)
    told = Told()
    async with Client(server.address, **told.kwargs()) as client, Client(server.address) as other:
        seat = await client.acquire("render")
        first_lease = seat.lease_id
        # Cut off: the server reads nothing more from this client and frees its seat in time.
        conn = server._owners[client.client_id]
        conn._transport.pause_reading()
        await asyncio.wait_for(seat.wait_lost(), 5)
        taken = await take_when_free(other)
        conn.abort()  # the client reconnects: the server no longer holds its seat

        await asyncio.wait_for(seat.wait_state(SeatState.WAITING), 5)
        assert isinstance(seat.reason, NoSeat) and seat.lost
        await asyncio.sleep(1.0)  # it keeps asking, and keeps waiting
        assert seat.state is SeatState.WAITING and server.service.pool.in_use("render") == 1
        await other.release(taken)
        await asyncio.wait_for(seat.wait_regained(), 5)
        assert seat.state is SeatState.REGAINED and seat.lease_id != first_lease
        assert server.service.pool.lease(seat.lease_id) is not None
        assert [s for kind, s in told.events if kind == "state"] == [
            SeatState.LOST,
            SeatState.WAITING,
            SeatState.REGAINED,
        ]
        # Released while waiting: it is not taken again.
        conn = server._owners[client.client_id]
        conn._transport.pause_reading()
        await asyncio.wait_for(seat.wait_lost(), 5)
        await take_when_free(other)
        conn.abort()
        await asyncio.wait_for(seat.wait_state(SeatState.WAITING), 5)
        await client.release(seat)
        assert seat.state is SeatState.GONE
        await other.close()  # a seat frees: nobody asks for it
        await asyncio.sleep(1.0)
        assert seat.state is SeatState.GONE and not client.seats
        assert server.service.pool.in_use("render") == 0


def test_a_client_made_outside_an_event_loop_says_what_to_do() -> None:
    with pytest.raises(RuntimeError) as info:
        Client(("127.0.0.1", 7))
    message = str(info.value)
    assert "async with Client(" in message and "BlockingClient" in message


async def test_a_seat_the_administrator_removed_is_never_taken_again(start_server: Any) -> None:
    server = await start_server(lease=1.5, heartbeat=0.3)
    told = Told()
    async with Client(server.address, **told.kwargs()) as client:
        seat = await client.acquire("cad")
        assert server.remove_lease(seat.lease_id)
        reason = await asyncio.wait_for(seat.wait_lost(), 5)
        assert "administrator" in reason.message and seat.state is SeatState.GONE
        await asyncio.sleep(2 * 1.5)  # heartbeats, and time to regain if it wanted to
        assert seat.state is SeatState.GONE and not client.seats
        assert server.service.pool.in_use("cad") == 0
        assert told.events == [("lost", SeatState.GONE), ("state", SeatState.GONE)]
