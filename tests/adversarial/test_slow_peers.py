"""Slow and greedy peers (issue 8): each is closed by a timeout or a cap, while well-behaved
clients keep their seats and their latency.

In-process servers with shortened limits show each rule and its timing; ``lanlic serve`` run as
a process, with its real defaults, shows the latency of well-behaved clients while 1,000
hostile connections are open, and the connection cap meeting a lowered RLIMIT_NOFILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from adversarial_helpers import (
    PeerFactory,
    ServeProcess,
    connect,
    cpu_seconds,
    frame,
    header,
    open_fds,
    p99,
    pack,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import RawPeer

from lanlic.core import borrowing, signing
from lanlic.net.client import Client
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.proto.framing import encode_frame
from lanlic.store import Store

QUICK = {"housekeeping_interval": 0.05}
DAY = 86400.0


# A loaded machine (2 cores shared by many) makes a timeout fire late, never early: each test
# bounds the close from below by the timeout, and from above only by what would happen without
# the rule (the dripped hello or frame would take about 15 s to complete; a mute peer would stay).
LATE = 8.0
"""Seconds after which a close can no longer be the timeout's doing."""


async def closed_after(peer: RawPeer, limit: float) -> float:
    """Seconds until the server closes ``peer`` (reading whatever it sends meanwhile)."""
    started = time.monotonic()
    assert await peer.closed_by_server(timeout=limit), "not closed"
    return time.monotonic() - started


def hello_frame(peer: RawPeer, app: str = "test") -> bytes:
    return encode_frame(
        {"t": "hello", "id": 1, "versions": [1], "client_id": peer.client_id, "user": "u",
         "host": "h", "app": app, "nonce": os.urandom(32)}
    )  # fmt: skip


async def drip(peer: RawPeer, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart, until done or disconnected."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            await peer.send_raw(data[i : i + 1])
            await asyncio.sleep(every)


# ----------------------------------------------------------------------- each rule alone


async def test_a_client_that_sends_nothing_is_closed_by_the_handshake_timeout(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    server = await start_server(limits=ServerLimits(handshake_timeout=0.5, **QUICK))
    mute = await raw_peer(server.address, hello=False)
    took = await closed_after(mute, LATE)
    assert 0.45 <= took < LATE, took
    assert not server.connections


async def test_a_hello_dripped_a_byte_at_a_time_cannot_outlast_the_handshake_timeout(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    server = await start_server(limits=ServerLimits(handshake_timeout=0.8, **QUICK))
    peer = await raw_peer(server.address, hello=False)
    sender = asyncio.create_task(drip(peer, hello_frame(peer, app="a" * 200), every=0.05))
    try:
        took = await closed_after(peer, LATE)  # the whole hello would take about 15 s
        assert 0.75 <= took < LATE, took
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def test_a_frame_dripped_a_byte_at_a_time_is_closed_by_the_frame_timeout(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    """The frame timeout runs from the frame's first byte: bytes that keep trickling in (one
    every 50 ms, well inside the timeout) do not reset it."""
    server = await start_server(limits=ServerLimits(frame_timeout=0.8, **QUICK))
    peer = await raw_peer(server.address)
    slow = frame(pack({"t": "status", "id": 5, "pad": "p" * 300}))
    sender = asyncio.create_task(drip(peer, slow, every=0.05))
    try:
        took = await closed_after(peer, LATE)  # the whole frame would take about 15 s
        assert 0.75 <= took < LATE, took
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    assert peer.inbox == []  # the frame was never completed, so never answered


async def test_slow_frames_that_each_arrive_in_time_are_served(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    """A slow but honest peer is not cut off: each frame starts its own clock, so three frames
    that each take 0.5 s (1.5 s in all, past the 0.8 s timeout) are all answered."""
    server = await start_server(limits=ServerLimits(frame_timeout=0.8, **QUICK))
    peer = await raw_peer(server.address)
    for rid in (1, 2, 3):
        data = frame(pack({"t": "status", "id": rid}))
        await drip(peer, data, every=0.5 / len(data))
        reply = await peer.recv()
        assert (reply["t"], reply["id"]) == ("status_reply", rid)
    assert (await peer.request("status"))["t"] == "status_reply"


async def test_half_a_frame_then_silence_is_closed_by_the_frame_timeout(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    server = await start_server(limits=ServerLimits(frame_timeout=0.5, **QUICK))
    peer = await raw_peer(server.address)
    data = frame(pack({"t": "status", "id": 5, "pad": "p" * 1000}))
    await peer.send_raw(data[: len(data) // 2])
    took = await closed_after(peer, LATE)
    assert 0.45 <= took < LATE, took


class NonReader:
    """A peer that sends requests and never reads a reply: a socket with a tiny receive
    buffer that is never ``recv``-ed from after the welcome."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> NonReader:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        self = cls(sock)
        peer = RawPeer(None, None)  # type: ignore[arg-type]
        await loop.sock_sendall(sock, hello_frame(peer))
        await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)  # the welcome, then never again
        return self

    async def flood(self, data: bytes, stall: float, limit: float) -> str:
        """Send ``data`` again and again until a send stalls for ``stall`` s (the server stopped
        reading), the connection is reset, or ``limit`` s pass. Returns which."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(loop.sock_sendall(self.sock, data), stall)
            except TimeoutError:
                return "stalled"
            except OSError:
                return "reset"
            self.sent += len(data)
        return "timeout"

    async def reset_within(self, limit: float) -> bool:
        """True once the server has dropped the connection (a send or recv fails or sees EOF)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(loop.sock_sendall(self.sock, frame(b"\x80")), 0.05)
            except TimeoutError:
                continue
            except OSError:
                return True
            await asyncio.sleep(0.02)
        return False

    def close(self) -> None:
        self.sock.close()


def statuses(n: int) -> bytes:
    return b"".join(encode_frame({"t": "status", "id": i + 1}) for i in range(n))


async def test_a_client_that_never_reads_is_closed_by_the_write_timeout(
    start_server: Any,
) -> None:
    """Its replies pile up past the high-water mark: the server stops reading its requests (so
    the pile stops growing) and closes it once the pile has stood for the write timeout."""
    limits = ServerLimits(write_timeout=0.6, write_buffer_high=64 * 1024, **QUICK)
    server = await start_server(limits=limits)
    greedy = await NonReader.connect(server.address)
    try:
        (conn,) = server.connections
        transport = conn._transport
        assert transport is not None
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, transport.get_write_buffer_size())
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            outcome = await greedy.flood(statuses(2000), stall=0.3, limit=20)
            stalled_at = time.monotonic()
            assert outcome == "stalled", outcome  # the server stopped taking its requests
            assert conn.write_paused is not None
            assert await greedy.reset_within(LATE)  # without the timeout: never
            took = time.monotonic() - stalled_at
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        assert conn not in server.connections
        assert took < LATE, took
        # What the server held for it: the high-water mark plus one slice of replies (a
        # quarter of the mark, and the reply that crossed it), not one read's replies, which
        # may be megabytes of status replies.
        assert peak <= 64 * 1024 + 16 * 1024 + 4096, peak
        print(f"\nnon-reader: sent {greedy.sent} bytes, server buffer peaked at {peak} bytes")
    finally:
        greedy.close()


async def test_a_reader_that_pauses_for_less_than_the_write_timeout_keeps_everything(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    server = await start_server(
        limits=ServerLimits(write_timeout=1.5, write_buffer_high=16 * 1024, **QUICK)
    )
    peer = await raw_peer(server.address)
    n = 3000
    await peer.send_raw(statuses(n))
    await asyncio.sleep(0.5)  # not reading: the server's buffer goes past its high-water mark
    got = [await peer.recv() for _ in range(n)]
    assert [r["id"] for r in got] == list(range(1, n + 1))
    assert (await peer.request("status"))["t"] == "status_reply"
    assert len(server.connections) == 1


async def test_one_read_asking_for_too_many_replies_is_closed_at_once(
    start_server: Any,
) -> None:
    """Small requests with big replies, pipelined: one read of ~64 KiB of status requests would
    make ~3,500 status replies. Past ``write_buffer_max`` the connection is closed there and
    then, long before any timeout."""
    limits = ServerLimits(write_timeout=30, write_buffer_max=256 * 1024, **QUICK)
    server = await start_server(limits=limits)
    greedy = await NonReader.connect(server.address)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(greedy.sock, statuses(3500))
        assert await greedy.reset_within(3)
        assert not server.connections
    finally:
        greedy.close()


# ------------------------------------------------- the latency of everyone else, 1,000 hostile


async def renew(peer: RawPeer, lease: bytes, deadline: float) -> float:
    """One renewal of ``lease``, answered within ``deadline`` s and keeping it; its round trip."""
    started = time.perf_counter()
    rid = peer.next_id()
    await peer.send({"t": "renew", "id": rid, "leases": [lease]})
    reply = await peer.recv(timeout=deadline)
    took = time.perf_counter() - started
    assert (reply["id"], reply["leases"]) == (rid, [lease]), reply
    return took


async def renew_latencies(
    peers: list[tuple[RawPeer, bytes]], rounds: int, deadline: float
) -> list[float]:
    """Each peer renews its seat ``rounds`` times, 5 ms apart; the round-trip times, s."""
    samples: list[float] = []

    async def one(peer: RawPeer, lease: bytes) -> None:
        for _ in range(rounds):
            samples.append(await renew(peer, lease, deadline))
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(p, lease) for p, lease in peers))
    return samples


HOSTILE_WAIT = 10.0
"""The shortest time a hostile peer can hold up a server that waits for it: the handshake and
frame timeouts (the write timeout is 30 s, the dripped hello takes about 150 s)."""


def ms(samples: list[float]) -> str:
    return "median {:.2f}, p99 {:.2f}, max {:.2f} ms".format(
        *(1000 * x for x in (statistics.median(samples), p99(samples), max(samples)))
    )


async def test_well_behaved_latency_stays_bounded_with_1000_hostile_connections(
    tmp_path: Path,
) -> None:
    """Two ``lanlic serve`` processes side by side: 1,000 hostile connections open on one, none
    on the other (the control), 8 well-behaved clients renewing on each at the same moments.
    A loaded machine slows both alike, so the comparison holds where a bound in milliseconds
    would not; a server that let the crowd hold up its loop is slow only where the crowd is.
    (How fast renewals are is the benchmark's business.)"""
    server = await ServeProcess.start(tmp_path / "data")
    control: ServeProcess | None = None
    hostile: list[Any] = []
    good: list[tuple[RawPeer, bytes]] = []
    calm: list[tuple[RawPeer, bytes]] = []
    dripping: asyncio.Task[None] | None = None
    try:
        control = await ServeProcess.start(tmp_path / "control")
        for seats, address in ((good, server.address), (calm, control.address)):
            for _ in range(8):
                peer = await connect(address, hello=False)
                welcome = await peer.hello()
                granted = await peer.request("checkout", product="cad", version="16")
                seats.append((peer, granted["lease"]))
        # A renewal is on time if it is answered before the next one is due: the client then
        # never falls behind and keeps its seat.
        deadline = welcome["heartbeat_s"]
        await renew_latencies(good + calm, 20, deadline)  # warm up
        before = await renew_latencies(good, 150, deadline)

        # 1,000 hostile connections: 250 of each kind.
        silent = [await connect(server.address, hello=False) for _ in range(250)]
        drippers = [await connect(server.address, hello=False) for _ in range(250)]
        halves = [await connect(server.address) for _ in range(250)]
        for peer in halves:
            await peer.send_raw(header(4096) + b"h" * 2000)
        readers = [await NonReader.connect(server.address) for _ in range(250)]
        hostile += silent + drippers + halves + readers
        flood = statuses(300)
        loop = asyncio.get_running_loop()
        for r in readers:
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(loop.sock_sendall(r.sock, flood), 0.05)
        # The readers' 75,000 pipelined status requests are real work (1 to 8 s of the server's
        # CPU on these machines, by the load): renewals sent now wait for it, on time.
        flooded = await asyncio.gather(*(renew(p, lease, deadline) for p, lease in good))
        hello = hello_frame(drippers[0], app="d" * 200)

        async def drip_all() -> None:
            for i in range(len(hello)):
                for peer in drippers:
                    with contextlib.suppress(ConnectionError):
                        peer.writer.write(hello[i : i + 1])
                await asyncio.sleep(0.5)

        dripping = asyncio.create_task(drip_all())
        # The same renewals on both servers at the same moments, interleaved on this one loop.
        during, alone = await asyncio.gather(
            renew_latencies(good, 150, deadline), renew_latencies(calm, 150, deadline)
        )
        assert (await good[0][0].request("status"))["t"] == "status_reply"
    finally:
        if dripping is not None:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
        for peer in hostile:
            peer.close()
        for peer, _ in good + calm:
            peer.close()
        codes = (await server.stop(), None if control is None else await control.stop())
    assert codes == (0, 0)
    assert control is not None
    print(
        f"\nrenew round trips, 8 clients: {ms(before)} before; {max(flooded):.2f} s behind the "
        f"readers' flood; {ms(during)} among 1,000 hostile connections; {ms(alone)} at the "
        "same moments on the control"
    )
    # Every renewal was answered on time and kept its seat (``renew``); among the crowd none
    # waited as long as a hostile peer's timeout, and the typical and the slowest in a hundred
    # were about as quick as the control's: a server that waited for the crowd, or spent its
    # loop on the crowd's bytes (a 2 ms cost per trickled read: p99 0.9 s against 4.5 ms),
    # is slow where the crowd is. The floor of 0.1 s covers one lone stall of either process.
    assert max(during) < HOSTILE_WAIT, (max(during), max(alone))
    for stat in (statistics.median, p99):
        crowd, calm_ = stat(during), stat(alone)
        assert crowd < 4 * calm_ + 0.1, (stat.__name__, crowd, calm_)
    assert "Traceback" not in server.stderr() + control.stderr()


# ------------------------------------------------------------------- out of descriptors


REFUSALS = 200
"""Connections the capped server refuses in the CPU check."""


async def test_the_connection_cap_refuses_before_the_descriptors_run_out(
    tmp_path: Path,
) -> None:
    """RLIMIT_NOFILE 256 in the server process: its cap (256 less a reserve of 64 and the admin
    page's share of 64) answers
    ``server_busy`` before ``accept`` could fail; heartbeats go on; refusing costs little CPU
    and idling at the cap costs none (no accept loop spinning on EMFILE)."""
    nofile = 256
    cap = nofile - ServerLimits().fd_reserve - ServerLimits().admin_connections
    server = await ServeProcess.start(tmp_path / "data", nofile=nofile)
    held: list[RawPeer] = []
    try:
        bystander = await connect(server.address)
        granted = await bystander.request("checkout", product="cad", version="16")
        lease = granted["lease"]
        # Fill every slot but the bystander's; each of these has said hello.
        for _ in range(cap - 1):
            held.append(await connect(server.address))
        # The next ones are refused, with a reason, and closed.
        for _ in range(20):
            peer = await connect(server.address, hello=False)
            reply = await peer.recv(timeout=5)
            assert (reply["code"], reply["id"]) == ("server_busy", 0)
            assert await peer.closed_by_server()
            peer.close()
        assert (await bystander.request("renew", leases=[lease]))["leases"] == [lease]

        # A stream of refused connections: the server stays under its descriptor limit, the
        # heartbeat still works, and each refusal costs little CPU. A fixed number of them (not
        # as many as fit in a time), so that the server's own fixed costs (housekeeping, the
        # lease batch) are not divided by however few a loaded machine gets through.
        refused = 0
        most_fds = 0
        cpu0, wall0 = cpu_seconds(server.pid), time.monotonic()
        while refused < REFUSALS and time.monotonic() - wall0 < 120.0:
            batch = [await connect(server.address, hello=False) for _ in range(10)]
            for peer in batch:
                assert (await peer.recv(timeout=5))["code"] == "server_busy"
                peer.close()
                refused += 1
            most_fds = max(most_fds, open_fds(server.pid))
            assert (await bystander.request("renew", leases=[lease]))["leases"] == [lease]
        busy_cpu = cpu_seconds(server.pid) - cpu0
        busy_wall = time.monotonic() - wall0
        assert refused == REFUSALS, f"only {refused} refusals in {busy_wall:.0f} s"

        # Idle at the cap: CPU time is counted only while the process runs, so a loaded
        # machine does not inflate it; an accept loop spinning on EMFILE would take its whole
        # share of a core (a quarter of one even with eight busy processes on two cores).
        await asyncio.sleep(1.0)  # the last refusals' closes are done with
        cpu1, wall1 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(3.0)
        idle_cpu = cpu_seconds(server.pid) - cpu1
        idle_wall = time.monotonic() - wall1
        # What the refusals cost beyond the server's own housekeeping over the same time.
        refusal_cpu = busy_cpu - idle_cpu / idle_wall * busy_wall
        print(
            f"\nfd cap {cap} of RLIMIT_NOFILE {nofile}: {refused} refused in {busy_wall:.1f} s "
            f"using {busy_cpu:.2f} s CPU ({refusal_cpu / refused * 1000:.2f} ms each, idling "
            "aside); "
            f"{most_fds} fds open at most; {idle_cpu:.3f} s CPU over {idle_wall:.1f} s idle "
            "at the cap"
        )
        assert most_fds < nofile
        assert idle_cpu < 0.1 * idle_wall, (idle_cpu, idle_wall)
        # Well above what a refusal costs (a fraction of a millisecond: accept, one small
        # write, close), far below a handshake or a stall per refusal.
        assert refusal_cpu < 0.005 * refused, (busy_cpu, refusal_cpu, refused)
        # Those already in keep being served.
        assert (await held[0].request("status"))["t"] == "status_reply"
        bystander.close()
    finally:
        for peer in held:
            peer.close()
        code = await server.stop()
    assert code == 0
    log = server.stderr()
    assert "Traceback" not in log
    assert "Too many open files" not in log and "out of system resource" not in log


# ------------------------------------------------- greedy borrowers, over raw frames


class Container:
    """A borrowing container made by hand: its enrollment request and signed borrow frames."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = signing.public_bytes(self.key.public_key())

    def enroll(self, rid: int) -> dict[str, Any]:
        req = borrowing.make_enrollment_request(self.key, "act", "mfp:x", "ann", "lt", time.time())
        return {"t": "enroll", "id": rid, "request": req}

    def borrow(self, server_id: str, rid: int, days: Any, request_id: bytes) -> dict[str, Any]:
        signed_days = float(days) if isinstance(days, int | float) else 0.0
        proof = signing.sign(
            self.key,
            signing.DOMAIN_CONTAINER_REQUEST,
            borrowing.container_proof_payload(
                "borrow", server_id, [request_id, "cad", "16", signed_days]
            ),
        )
        return {
            "t": "borrow",
            "id": rid,
            "request_id": request_id,
            "product": "cad",
            "days": days,
            "container_key": self.pub,
            "proof": proof,
            "version": "16",
        }


@pytest.mark.parametrize(
    ("days", "code"),
    [
        (math.nan, "bad_message"),
        (math.inf, "bad_message"),
        (-math.inf, "bad_message"),
        (-1.0, "bad_message"),
        (-0.0, "bad_message"),  # days > 0 is the message's own range (SPEC 12, issue 13)
        (0.0, "bad_message"),
        (14.000001, "borrow_too_long"),
        (1e9, "borrow_too_long"),
        (1e11, "borrow_too_long"),
        (1e300, "bad_message"),
        (2**64 - 1, "bad_message"),
        ("7", "bad_message"),
        (None, "bad_message"),
    ],
)
async def test_a_borrow_for_longer_than_allowed_is_refused(
    start_server: Any, raw_peer: PeerFactory, tmp_path: Path, days: Any, code: str
) -> None:
    store = Store(tmp_path / "lanlic.db")
    server: LicenseServer = await start_server(store=store)  # cad: 2 borrowable, 14 days
    try:
        peer = await raw_peer(server.address)
        box = Container()
        await peer.send(box.enroll(1))
        assert (await peer.recv())["t"] == "enrolled"
        await peer.send(box.borrow(server.service.server_id, 2, days, os.urandom(16)))
        reply = await peer.recv()
        assert (reply["t"], reply.get("code"), reply["id"]) == ("error", code, 2)
        assert server.service.pool.borrowed("cad") == 0
    finally:
        await server.stop()
        store.close()


async def test_more_borrows_than_allowed_are_refused_and_retries_never_extend(
    start_server: Any, raw_peer: PeerFactory, tmp_path: Path
) -> None:
    store = Store(tmp_path / "lanlic.db")
    server: LicenseServer = await start_server(store=store)  # cad: 3 seats, 2 borrowable
    sid = server.service.server_id
    try:
        peer = await raw_peer(server.address)
        boxes = [Container() for _ in range(4)]
        for i, box in enumerate(boxes):
            await peer.send(box.enroll(10 + i))
            assert (await peer.recv())["t"] == "enrolled"
        first_rid = os.urandom(16)
        await peer.send(boxes[0].borrow(sid, 20, 14.0, first_rid))  # exactly the longest
        first = await peer.recv()
        assert first["t"] == "borrowed"
        assert first["end"] - time.time() <= 14 * DAY
        # Pipelined: the same container again, and two more, all at once.
        for i, box in enumerate(boxes[:3]):
            await peer.send(box.borrow(sid, 21 + i, 1.0, os.urandom(16)))
        got = sorted(
            (r["id"], r.get("code", r["t"])) for r in [await peer.recv() for _ in range(3)]
        )
        assert [c for _, c in got].count("borrowed") == 1
        assert [c for _, c in got].count("no_borrowable_seat") == 2
        # A retry of the first borrow asking for far longer gets the same borrow, unchanged.
        await peer.send(boxes[0].borrow(sid, 30, 1e9, first_rid))
        again = await peer.recv()
        assert (again["t"], again["borrow_id"], again["end"]) == (
            "borrowed", first["borrow_id"], first["end"],
        )  # fmt: skip
        pool = server.service.pool
        assert pool.borrowed("cad") == 2
        pool.check_invariant()
        # The floating seat left over is still there for a checkout.
        async with Client(server.address) as client:
            await client.acquire("cad", "16")
    finally:
        await server.stop()
        store.close()
