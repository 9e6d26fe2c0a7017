"""Time: wall-clock jumps on the server, a server that stops running for longer than a lease, and
a client that gives up its seat before the server could give it to someone else.

How each defence was checked to be load-bearing (break it, see the test fail, restore it):
``WallGuard.now`` returning the raw wall clock fails the +30 days case (the borrow ends at once);
``LicenseServer.now`` without its ``StallWatch`` fails both stall tests (the leases are swept on
resume); a client that never re-presents a seat it gave up fails the regain assertions."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliproc import read_json_line
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key

from lanlic.core import netkey, signing
from lanlic.core.clock import StallWatch, WallGuard
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import LicenseService, ServiceConfig
from lanlic.errors import LanlicError, SeatLost
from lanlic.laptop.borrower import Borrower
from lanlic.net.client import Client, Seat
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.store import Store

DAY = 86400.0
HOUR = 3600.0
TODAY = dt.datetime.now(dt.UTC).date()


class WallClock:
    """The server's wall clock, which the test makes jump; real time passes underneath."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------ the core rules


def test_wall_guard_believes_small_steps_and_not_jumps() -> None:
    g = WallGuard(tolerance=300)
    assert g.now(100.0, 1_800_000_000.0) == 1_800_000_000.0  # the anchor
    assert g.now(160.0, 1_800_000_060.0 + 120) == 1_800_000_180.0  # an NTP step: believed
    assert not g.suspect
    for jump in (HOUR, -HOUR, 30 * DAY, -365 * DAY):
        t = g.now(200.0, 1_800_000_100.0 + jump)
        assert t == 1_800_000_100.0, "a jump is not believed: the anchored time is used"
        assert g.suspect and g.changed and g.skew == pytest.approx(jump)
        g.changed = False
        assert g.now(201.0, 1_800_000_101.0 + jump) == 1_800_000_101.0
        assert not g.changed, "one jump is reported once"
    assert g.now(300.0, 1_800_000_200.0) == 1_800_000_200.0  # right again: believed again
    assert not g.suspect and g.changed


def test_stall_watch_reports_only_gaps_over_its_threshold() -> None:
    w = StallWatch(threshold=3.0)
    assert [w.gap(t) for t in (10.0, 11.0, 12.5, 14.9)] == [0.0, 0.0, 0.0, 0.0]
    assert w.gap(19.0) == pytest.approx(4.1)
    assert w.gap(19.5) == 0.0


# ------------------------------------------------------------------- wall-clock jumps, served


@pytest.mark.parametrize(
    "jump", [HOUR, -HOUR, 30 * DAY, -365 * DAY], ids=["+1h", "-1h", "+30d", "-1y"]
)
async def test_wall_clock_jumps_neither_expire_nor_extend_leases_nor_end_borrows(
    start_server: Any, raw_peer: Any, tmp_path: Path, jump: float
) -> None:
    wall = WallClock()
    store = Store(tmp_path / "lanlic.db")
    server = await start_server(
        lease=1.5, heartbeat=0.3, store=store, wall=wall,
        limits=ServerLimits(housekeeping_interval=0.05),
    )  # fmt: skip
    keeper = Client(server.address)
    try:
        pool = server.service.pool
        # A laptop borrows a seat for two days (its own clock is right).
        ann = Borrower(tmp_path / "ann", machine_fp="mfp:ann")
        async with Client(server.address) as c:
            await ann.enroll(c, "ann", "lt")
            await ann.borrow(c, "cad", days=2)
        assert pool.borrowed("cad") == 1
        # One client keeps renewing; another takes a seat and vanishes.
        await keeper.connect()
        kept = await keeper.acquire("cad")
        gone = await raw_peer(server.address)
        dropped = (await gone.request("checkout", product="render"))["lease"]
        gone.writer.transport.abort()
        deadline = pool.lease(dropped).expires  # type: ignore[union-attr]

        wall.offset = jump
        await asyncio.sleep(0.3)  # several sweeps under the jumped clock
        assert pool.lease(dropped) is not None, "a wall jump expired a lease"
        assert pool.lease(dropped).expires == deadline, "a wall jump moved a deadline"  # type: ignore[union-attr]
        assert pool.borrowed("cad") == 1, "a wall jump ended a borrow early"
        # The vanished client's seat goes when its lease runs out on the monotonic clock...
        await wait_until(lambda: pool.lease(dropped) is None, timeout=3)
        assert server.loop.time() >= deadline
        # ...and the one that renews keeps its seat, whatever the wall clock says.
        await asyncio.sleep(2.0)
        assert not kept.lost and pool.lease(kept.lease_id) is not None
        # New checkouts are not refused as "key expired" after +30 days or a year, and a borrow
        # made now is dated by the server's own count of time, not by the jumped clock.
        assert (await keeper.acquire("render")).product == "render"
        bob = Borrower(tmp_path / "bob", machine_fp="mfp:bob")
        async with Client(server.address) as c:
            await bob.enroll(c, "bob", "lt2")
            lic = await bob.borrow(c, "cad", days=1)
        assert abs(lic.start - time.time()) < 60
        assert pool.borrowed("cad") == 2
        # The jump was noticed and written down for the admin, once.
        await server.flush_history()
        jumps = [r for r in store.history() if r.event == "clock_jump"]
        assert len(jumps) == 1 and f"{jump:+.0f} s" in jumps[0].detail
        # The clock is put right: believed again, and said so.
        wall.offset = 0.0
        await asyncio.sleep(0.2)
        await server.flush_history()
        jumps = [r for r in store.history() if r.event == "clock_jump"]
        assert len(jumps) == 2 and "agrees" in jumps[1].detail
        assert pool.borrowed("cad") == 2
        pool.check_invariant()
    finally:
        await keeper.close()
        await server.stop()
        store.close()


# --------------------------------------------------------------------- a stalled server process


@pytest.fixture
def served(
    tmp_path: Path, vendor_key: Ed25519PrivateKey
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``lanlic serve`` as a process: lease 3 s, heartbeat 0.5 s; (process, port, stderr file)."""
    lic, pub = tmp_path / "net.lic", tmp_path / "vendor.pub"
    lic.write_bytes(
        netkey.issue_network_key(
            vendor_key, customer="Stall Office", expires=TODAY + dt.timedelta(days=30),
            borrow_kind="act", products=(ProductEntitlement("cad", seats=3),), issued=TODAY,
        )
    )  # fmt: skip
    pub.write_bytes(signing.public_to_pem(vendor_key.public_key()))
    err = tmp_path / "serve.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanlic.cli", "serve", "--license", str(lic), "--vendor-pub",
             str(pub), "--data", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", "0",
             "--no-mdns", "--no-admin", "--json", "--lease", "3", "--heartbeat", "0.5",
             "--allow-short-lease"],
            stdout=subprocess.PIPE, stderr=err_file,
        )  # fmt: skip
    try:
        port = read_json_line(proc, 30)["port"]
        yield proc, port, err
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


async def test_a_server_stopped_for_longer_than_a_lease_keeps_every_seat(
    served: tuple[subprocess.Popen[bytes], int, Path], raw_peer: Any
) -> None:
    proc, port, err = served
    address = ("127.0.0.1", port)
    events: list[tuple[str, bytes]] = []
    clients = [
        Client(
            address,
            on_seat_lost=lambda s, r: events.append(("lost", s.lease_id)),
            on_seat_regained=lambda s: events.append(("regained", s.lease_id)),
        )
        for _ in range(2)
    ]
    try:
        seats: list[Seat] = []
        for c in clients:
            await c.connect()
            seats.append(await c.acquire("cad"))
        # A third holder that cannot renew while the server is stopped either, and that renews
        # only once it runs again: it must find its lease still there.
        late = await raw_peer(address)
        late_lease = (await late.request("checkout", product="cad"))["lease"]
        await asyncio.sleep(1.0)

        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        await asyncio.sleep(4.5)  # 1.5 leases
        proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()

        reply = await late.request("renew", leases=[late_lease])
        assert reply["leases"] == [late_lease], "the lease was swept on resume"
        await wait_until(lambda: all(not s.lost for s in seats), timeout=3)
        status = await clients[0].status()
        assert status["products"][0]["in_use"] == 3
        # The clients could not know the server was only stopped, not gone: each gave its seat
        # up in time (the same seat must never be used twice), then got the same seat back.
        for s in seats:
            assert ("lost", s.lease_id) in events and ("regained", s.lease_id) in events
            assert s.reason is None and s.lease_id in clients[seats.index(s)].seats
        # The server itself measured a stop longer than the 3 s lease and gave each lease that
        # much (the test's own sleep proves nothing about the server).
        found = re.search(r"did not run for ([0-9.]+) s", err.read_text())
        assert found is not None and 3.0 < float(found[1]) <= resumed - stopped + 0.5, found
        await asyncio.sleep(1.5)  # the seats renew normally afterwards
        assert not any(s.lost for s in seats)
        assert (await clients[1].status())["products"][0]["in_use"] == 3
    finally:
        for c in clients:
            await c.close()
    log = err.read_text()
    assert "stall: the server did not run for" in log and "3 lease(s) extended" in log, log


# ---------------------------------------------------------- the client gives up first (in-process)


class ThreadServer:
    """A ``LicenseServer`` on an event loop of its own thread, so the test can stall that loop."""

    def __init__(self, vendor: Ed25519PrivateKey, lease: float, heartbeat: float) -> None:
        self.service = LicenseService(
            make_key(vendor), Ed25519PrivateKey.generate(),
            ServiceConfig(lease_seconds=lease, heartbeat_seconds=heartbeat),
        )  # fmt: skip
        self.freed: dict[bytes, float] = {}
        """Lease id -> time.monotonic() when the server's pool freed it by expiry."""
        self.expired: dict[bytes, float] = {}
        """Lease id -> the deadline it was freed at (the last renew read + the lease), on the
        same monotonic clock: unlike ``freed``, no later for a slow sweep."""
        expire = self.service.expire

        def recording_expire(now: float) -> Any:
            out = expire(now)
            for lease in out:
                self.freed[lease.id] = time.monotonic()
                self.expired[lease.id] = lease.expires
            return out

        self.service.expire = recording_expire  # type: ignore[method-assign]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: LicenseServer | None = None

    def __enter__(self) -> ThreadServer:
        self.thread.start()

        async def serve() -> LicenseServer:
            limits = ServerLimits(housekeeping_interval=0.05, stall_threshold=0.5)
            server = LicenseServer(self.service, limits=limits)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def run(self, fn: Any) -> None:
        """Run ``fn()`` on the server's loop and wait for it."""
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(call)
        assert done.wait(10)

    def stall(self, seconds: float) -> None:
        """Block the server's loop for ``seconds`` (returns at once)."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)


async def test_the_client_gives_up_before_the_server_frees_the_seat(
    vendor_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    lease, heartbeat = 2.0, 0.3
    caplog.set_level(logging.WARNING)
    with ThreadServer(vendor_key, lease, heartbeat) as ts:
        assert ts.server is not None
        lost_at: dict[bytes, float] = {}
        regained_at: dict[bytes, float] = {}
        sent: dict[bytes, float] = {}
        """When the last renew the client counted on left (it gave up that + lease - margin)."""

        def on_lost(seat: Seat, reason: LanlicError) -> None:
            assert isinstance(reason, SeatLost)
            lost_at[seat.lease_id] = time.monotonic()
            sent[seat.lease_id] = seat._renew_sent

        def on_regained(seat: Seat) -> None:
            regained_at[seat.lease_id] = time.monotonic()

        async with Client(
            ts.server.address, on_seat_lost=on_lost, on_seat_regained=on_regained
        ) as client:
            margin = client.margin
            assert margin == pytest.approx(0.2)

            # 1. Cut off: the server runs, but reads nothing more from this client.
            seat = await client.acquire("cad")
            await asyncio.sleep(0.7)  # a few heartbeats
            conn = ts.server._owners[client.client_id]
            ts.run(lambda: conn._transport.pause_reading())  # type: ignore[union-attr]
            cut = time.monotonic()
            await wait_until(lambda: seat.lease_id in ts.freed, timeout=lease + 2)
            gave_up, freed = lost_at[seat.lease_id], ts.freed[seat.lease_id]
            assert gave_up < freed, "the client counted the seat after the server freed it"
            # The deadlines, not when the timers ran (a loaded machine runs them late): the
            # client's came a margin before the server's, because the renew it counted on left
            # before the server read it, and the server read nothing after the cut.
            last_read = ts.expired[seat.lease_id] - lease
            assert sent[seat.lease_id] <= last_read <= cut, (sent[seat.lease_id], last_read, cut)
            give_up_at = sent[seat.lease_id] + lease - margin
            assert give_up_at <= ts.expired[seat.lease_id] - margin <= freed - margin
            assert give_up_at <= gave_up  # and never early
            assert seat.lease_id not in regained_at  # the server freed it: it never comes back
            ts.run(lambda: conn.abort())

        async with Client(
            ts.server.address, on_seat_lost=on_lost, on_seat_regained=on_regained
        ) as client:
            # 2. Stalled: the server's loop does not run for 1.5 leases. The client cannot tell
            # this from a cut and gives up in time; the server gives every lease the stalled time
            # back, so nothing is freed, and the client gets the same seat back.
            seat = await client.acquire("cad")
            await asyncio.sleep(0.7)
            stalled = time.monotonic()
            ts.stall(1.5 * lease)
            await wait_until(lambda: seat.lease_id in regained_at, timeout=2 * lease + 2)
            gave_up, back = lost_at[seat.lease_id], regained_at[seat.lease_id]
            assert stalled < gave_up < stalled + 1.5 * lease, "gave up during the stall"
            assert back >= stalled + 1.5 * lease, "regained once the server ran again"
            assert seat.lease_id not in ts.freed, "the stall freed the seat"
            assert not seat.lost and seat.reason is None
            await client.renew_now()
            assert not seat.lost
    assert any("stall: the server did not run for" in r.getMessage() for r in caplog.records)
