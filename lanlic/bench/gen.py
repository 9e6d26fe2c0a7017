"""The load generator: one process of many connections, driven by the runner over a pipe.

Each generator process runs one event loop (uvloop where installed) with hundreds or thousands of
raw connections: no ``Client``, no task per request. A connection is an ``asyncio.Protocol`` whose
replies are matched in order to its outstanding requests; closed-loop scenarios send the next
request from inside ``data_received`` and write everything one read produced at once.

The runner and a generator talk in small tuples over a ``multiprocessing`` pipe:

    runner -> ("run", spec)        generator prepares (connects, takes seats)
    generator -> ("ready", info)
    runner -> ("go", t0)           start at monotonic time t0 (the clock is system-wide)
    generator -> ("progress", n)   now and then while it runs
    generator -> ("result", data)  counters, latency samples and its own CPU time
    runner -> ("finish",)          close every connection
    generator -> ("closed",)
    runner -> ("quit",)

Every loop here is bounded by the spec's duration and timeouts, and targets are loopback only
(the runner checks the address before it hands it out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from lanlic.bench import wire as w

__all__ = ["worker_main"]

_perf = time.perf_counter

#: A request's reply callback: (conn, op, sent, now, status, value).
Handler = Callable[["GenConn", int, float, float, int, Any], None]
#: An outstanding request: (op, sent, arg, future or None).
Entry = tuple[int, float, Any, "asyncio.Future[Any] | None"]


class GenConn(asyncio.Protocol):
    """One generator connection: requests out, replies matched by id (or in order for Redis)."""

    def __init__(self, wire: w.Wire, handler: Handler | None = None) -> None:
        self.wire = wire
        self.handler = handler
        self.buf = bytearray()
        self.by_id = wire.by_id
        self.pending: dict[int, Entry] | deque[Entry] = {} if wire.by_id else deque()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lease: Any = None
        self.rid = 0
        self.batch: list[bytes] | None = None
        self.errors = 0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        entries = list(self.pending.values() if isinstance(self.pending, dict) else self.pending)
        self.pending.clear()
        for _, _, _, fut in entries:
            if fut is not None and not fut.done():
                fut.set_result((w.ERROR, "connection_lost", 0.0))

    def data_received(self, data: bytes) -> None:
        replies = self.wire.feed(self.buf, data)
        if not replies:
            return
        now = _perf()
        batch: list[bytes] = []
        self.batch = batch
        pending = self.pending
        classify = self.wire.classify
        for reply in replies:
            if isinstance(pending, dict):
                entry = pending.pop(reply.get("id"), None)
            else:
                entry = pending.popleft() if pending else None
            if entry is None:
                self.errors += 1  # a reply to nothing: count it, do not crash the generator
                continue
            op, sent, arg, fut = entry
            status, value = classify(op, reply, arg)
            if fut is not None:
                if not fut.done():
                    fut.set_result((status, value, now - sent))
            elif self.handler is not None:
                self.handler(self, op, sent, now, status, value)
        self.batch = None
        if batch and self.transport is not None:
            self.transport.write(b"".join(batch))

    # sending

    def send(
        self,
        op: int,
        rid: int,
        data: bytes,
        arg: Any = None,
        fut: asyncio.Future[Any] | None = None,
    ) -> None:
        entry = (op, _perf(), arg, fut)
        pending = self.pending
        if isinstance(pending, dict):
            if rid in pending:
                self.errors += 1  # an id still unanswered after a whole cycle: count it
            pending[rid] = entry
        else:
            pending.append(entry)
        if self.batch is not None:
            self.batch.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def next_id(self) -> int:
        self.rid = rid = self.rid % self.wire.IDS + 1
        return rid

    def send_op(self, op: int, product: str = "", lease: Any = None) -> None:
        """Send one request of kind ``op`` with no future (the handler gets the reply)."""
        wire = self.wire
        rid = self.next_id()
        if op == w.RENEW:
            self.send(op, rid, wire.renew(rid, lease), lease)
        elif op == w.CHECKOUT:
            data, arg = wire.checkout(rid, product)
            self.send(op, rid, data, arg)
        elif op == w.RELEASE:
            self.send(op, rid, wire.release(rid, lease), lease)
        else:  # pragma: no cover - not used closed-loop
            raise ValueError(op)

    def request(self, op: int, rid: int, data: bytes, arg: Any = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send(op, rid, data, arg, fut)
        return fut

    async def hello(self, client_id: bytes) -> tuple[int, Any, float]:
        rid = self.next_id()
        result: tuple[int, Any, float] = await self.request(
            w.HELLO, rid, self.wire.hello(rid, client_id)
        )
        return result

    async def checkout(self, product: str) -> tuple[int, Any, float]:
        rid = self.next_id()
        data, arg = self.wire.checkout(rid, product)
        result: tuple[int, Any, float] = await self.request(w.CHECKOUT, rid, data, arg)
        return result

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Control:
    """The generator's end of the runner's pipe, read without blocking the loop.

    The pipe is polled, not registered with the loop: uvloop would make its descriptor
    non-blocking, and the large result message is then sent with a blocking write.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    async def recv(self) -> Any:
        while not self.conn.poll():  # noqa: ASYNC110 - polled on purpose, see the docstring
            await asyncio.sleep(0.005)
        return self.conn.recv()

    async def expect(self, kind: str) -> Any:
        msg = await self.recv()
        if msg[0] == "quit":
            raise _Quit
        if msg[0] != kind:
            raise RuntimeError(f"generator expected {kind!r}, got {msg[0]!r}")
        return msg


class _Quit(Exception):
    pass


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Stats:
    """Counters and latency samples of one run in one generator."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.lat = array("d")
        self.extra: dict[str, array[float]] = {}

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def samples(self, key: str) -> array[float]:
        a = self.extra.get(key)
        if a is None:
            a = self.extra[key] = array("d")
        return a


class Run:
    """Context for one scenario in one generator process."""

    def __init__(self, spec: dict[str, Any], ctl: Control) -> None:
        self.spec = spec
        self.ctl = ctl
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.members: list[tuple[str, int]] = [(h, p) for h, p in spec.get("members", ())]
        """The members of a cluster target (lanlic.bench.cluster): connections go to each in
        turn, starting from this generator's own offset; else only ``host:port``."""
        self._next_member = int(spec.get("worker", 0))
        self.target: str = spec["target"]
        self.product: str = spec["product"]
        self.stats = Stats()
        self.conns: list[GenConn] = []
        self.sem = asyncio.Semaphore(spec.get("max_connecting", 256))
        self.progress = 0

    def new_wire(self) -> w.Wire:
        return w.wire_for(self.target, self.spec.get("redis"))

    async def connect(self, handler: Handler | None = None) -> GenConn | None:
        async with self.sem:
            return await self._open(handler)

    async def _open(self, handler: Handler | None) -> GenConn | None:
        loop = asyncio.get_running_loop()
        conn = GenConn(self.new_wire(), handler)
        host, port = self.host, self.port
        if self.members:
            host, port = self.members[self._next_member % len(self.members)]
            self._next_member += 1
        try:
            async with asyncio.timeout(10.0):
                await loop.create_connection(lambda: conn, host, port)
        except (OSError, TimeoutError):
            self.stats.inc("connect_failed")
            return None
        return conn

    async def session(self, handler: Handler | None = None, seat: bool = True) -> GenConn | None:
        """Connect, say hello, take a seat: the start of every client's life.

        At most ``max_connecting`` sessions per generator are starting at once. Bounding the
        connects alone is not enough: the kernel completes a handshake before the server accepts
        it, so clients would run ahead, overflow the listen queue, and wait out a 1 s SYN
        retransmit; the bound covers the whole start, as clients that each wait for their
        answer would.
        """
        async with self.sem:
            conn = await self._open(handler)
            if conn is None:
                return None
            if conn.wire.needs_hello:
                status, value, _ = await conn.hello(secrets.token_bytes(16))
                if status != w.OK:
                    self.stats.inc(f"hello_{value}")
                    conn.close()
                    return None
            if seat:
                status, value, _ = await conn.checkout(self.product)
                if status != w.OK:
                    self.stats.inc("refused" if status == w.NO_SEAT else f"checkout_{value}")
                    conn.close()
                    return None
                conn.lease = value
            return conn

    async def prepare_many(
        self, n: int, handler: Handler | None = None, seat: bool = True, limit: float = 120.0
    ) -> None:
        async def one() -> None:
            conn = await self.session(handler, seat)
            if conn is not None:
                self.conns.append(conn)
                self.progress += 1

        await self._bounded(asyncio.gather(*(one() for _ in range(n))), limit, "prepare")

    async def _bounded(self, aw: Awaitable[Any], limit: float, what: str) -> None:
        task = asyncio.ensure_future(aw)
        try:
            async with asyncio.timeout(limit):
                await task
        except TimeoutError:
            self.stats.inc(f"{what}_timeout")

    async def ticker(self, period: float = 0.5) -> None:
        while True:
            await asyncio.sleep(period)
            self.ctl.send("progress", self.progress)

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` s for replies still outstanding; return how many never came."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not any(c.pending for c in self.conns):
                return 0
            await asyncio.sleep(0.01)
        return sum(len(c.pending) for c in self.conns)

    async def close_all(self) -> None:
        # Reset, not close: a close leaves each generator port in TIME_WAIT for a minute, and a
        # full run opens some 60,000 connections from a range of 28,000 ports.
        for c in self.conns:
            c.abort()
        if self.conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*(c.closed for c in self.conns))
        self.conns.clear()


# ------------------------------------------------------------------------------------ scenarios


async def burst(run: Run) -> None:
    """Every client connects, says hello and checks out at once; time until all hold a seat."""
    n = run.spec["n"]
    run.ctl.send("ready", {})
    (_, t0) = await run.ctl.expect("go")
    await _sleep_until(t0)
    start = _perf()
    seated = run.stats.samples("seated_at")

    async def one() -> None:
        t = _perf()
        conn = await run.session()
        if conn is not None:
            now = _perf()
            run.stats.lat.append(now - t)
            seated.append(now - start)
            run.conns.append(conn)
            run.progress += 1

    await run._bounded(asyncio.gather(*(one() for _ in range(n))), run.spec["timeout"], "burst")
    run.stats.inc("seated", len(run.conns))


async def steady(run: Run) -> None:
    """Open loop: every connection renews its seat once a period, whatever the replies do."""
    spec = run.spec
    n, period, duration = spec["n"], spec["period"], spec["duration"]
    lat = run.stats.lat
    lag = run.stats.samples("lag")

    def on_reply(conn: GenConn, op: int, sent: float, now: float, status: int, value: Any) -> None:
        if now <= end_perf + spec["grace"]:
            lat.append(now - sent)
        run.progress += 1
        if status == w.OK:
            run.stats.inc("renewed")
        elif status == w.LOST:
            run.stats.inc("lost")
        else:
            run.stats.inc(f"error_{value}")

    end_perf = float("inf")
    await run.prepare_many(n, on_reply, limit=spec["timeout"])
    run.ctl.send("ready", {"held": len(run.conns)})
    (_, t0) = await run.ctl.expect("go")
    await _sleep_until(t0)
    conns = run.conns
    if conns:
        # Spread the renewals evenly over the period, interleaved with the other generators.
        k, nw = spec["worker"], spec["nworkers"]
        step = period / len(conns)
        offset = period * k / max(nw, 1) / max(len(conns), 1)
        start = time.monotonic()
        end = start + duration
        end_perf = _perf() + duration
        nconns = len(conns)
        i = 0
        rounds = 0
        sent = 0
        due = start + offset
        while due < end:
            now = time.monotonic()
            if due > now:
                # Sleep to the next renewal, but never less than the loop's 1 ms timer tick:
                # shorter sleeps spin. Each renewal is timed from when it is really sent, and
                # ``lag`` (sent minus due) shows how late the generator was.
                await asyncio.sleep(max(due - now, 0.001))
                now = time.monotonic()
            while due <= now and due < end:
                c = conns[i]
                if c.transport is not None and not c.transport.is_closing():
                    c.send_op(w.RENEW, lease=c.lease)
                    lag.append(now - due)
                    sent += 1
                else:
                    run.stats.inc("closed_conn")
                i += 1
                if i == nconns:
                    i = 0
                    rounds += 1
                due = start + offset + (rounds * nconns + i) * step
        run.stats.inc("sent", sent)
    run.stats.inc("unanswered", await run.drain(spec["grace"]))


async def saturate(run: Run) -> None:
    """Closed loop with pipelining: each connection keeps ``depth`` requests in flight."""
    spec = run.spec
    n, depth, duration, op_kind = spec["n"], spec["depth"], spec["duration"], spec["op"]
    product = run.product
    lat = run.stats.lat
    counts = {"ok": 0, "no_seat": 0, "lost": 0, "error": 0}
    end_perf = float("inf")

    def on_reply(conn: GenConn, op: int, sent: float, now: float, status: int, value: Any) -> None:
        if now > end_perf:
            return
        lat.append(now - sent)
        if status == w.OK:
            counts["ok"] += 1
        elif status == w.NO_SEAT:
            counts["no_seat"] += 1
        elif status == w.LOST:
            counts["lost"] += 1
        else:
            counts["error"] += 1
        if op == w.RENEW:
            conn.send_op(w.RENEW, lease=conn.lease)
        elif op == w.CHECKOUT and status == w.OK:
            conn.send_op(w.RELEASE, lease=value)
        else:
            conn.send_op(w.CHECKOUT, product)

    await run.prepare_many(n, on_reply, seat=op_kind == "renew", limit=spec["timeout"])
    run.ctl.send("ready", {"held": len(run.conns)})
    (_, t0) = await run.ctl.expect("go")
    await _sleep_until(t0)
    end_perf = _perf() + duration
    for c in run.conns:
        batch: list[bytes] = []
        c.batch = batch
        for _ in range(depth):
            if op_kind == "renew":
                c.send_op(w.RENEW, lease=c.lease)
            else:
                c.send_op(w.CHECKOUT, product)
        c.batch = None
        assert c.transport is not None
        c.transport.write(b"".join(batch))
    while _perf() < end_perf:
        await asyncio.sleep(0.05)
        run.progress = len(lat)
    for key, value in counts.items():
        run.stats.inc(key, value)
    run.stats.inc("unanswered", await run.drain(spec["grace"]))


async def churn(run: Run) -> None:
    """Clients come and go: connect, hello, check out, hold, then release or vanish."""
    spec = run.spec
    slots, duration = spec["n"], spec["duration"]
    hold_max, vanish, heartbeat = spec["hold_max"], spec["vanish"], spec["heartbeat"]
    stats = run.stats
    checkout_lat = stats.lat
    rng = random.Random(os.getpid())  # noqa: S311 - think times, not secrets
    run.ctl.send("ready", {})
    (_, t0) = await run.ctl.expect("go")
    await _sleep_until(t0)
    end = time.monotonic() + duration

    async def client() -> None:
        while time.monotonic() < end:
            conn = await run.connect()
            if conn is None:
                await asyncio.sleep(0.05)
                continue
            try:
                if conn.wire.needs_hello:
                    status, value, _ = await conn.hello(secrets.token_bytes(16))
                    if status != w.OK:
                        stats.inc(f"hello_{value}")
                        continue
                status, value, lat = await conn.checkout(run.product)
                if status == w.NO_SEAT:
                    stats.inc("refused")
                    await asyncio.sleep(0.02 + rng.random() * 0.03)
                    continue
                if status != w.OK:
                    stats.inc(f"checkout_{value}")
                    continue
                checkout_lat.append(lat)
                stats.inc("granted")
                hold_until = time.monotonic() + rng.random() * hold_max
                while time.monotonic() < hold_until:
                    await asyncio.sleep(min(heartbeat, max(hold_until - time.monotonic(), 0)))
                    if time.monotonic() < hold_until:
                        rid = conn.next_id()
                        st, _, _ = await conn.request(
                            w.RENEW, rid, conn.wire.renew(rid, value), value
                        )
                        stats.inc("renewed" if st == w.OK else "renew_lost")
                if rng.random() < vanish:
                    conn.abort()  # gone without a word: the lease must run out by itself
                    stats.inc("vanished")
                    continue
                rid = conn.next_id()
                st, _, _ = await conn.request(w.RELEASE, rid, conn.wire.release(rid, value), value)
                stats.inc("released" if st == w.OK else "release_lost")
                rid = conn.next_id()
                bye = conn.wire.bye(rid)
                if bye is not None:
                    await conn.request(w.BYE, rid, bye)
                stats.inc("sessions")
                run.progress += 1
            finally:
                conn.close()

    await run._bounded(
        asyncio.gather(*(client() for _ in range(slots))),
        duration + spec["grace"] + 10,
        "churn",
    )


async def laptops(run: Run) -> None:
    """The churn's laptops: each borrows a seat and returns it, over and over.

    They stand for other machines, so they run in a generator process of their own, beside
    the churn's (lanlic only: the baselines have no borrowing). On a thread of a churn
    generator they took 41% of its CPU and held its GIL against 250 churn clients (whose
    hold times then ran late); on its event loop each fsync of a laptop's container held up
    every client. They borrow ``spec["product"]``, a product of their own in the bench key
    (``run.LAPTOP_PRODUCT``): borrowing from the churn's product took seats out of its pool,
    which was then smaller than the Redis semaphore it is compared with.
    """
    from lanlic.errors import LanlicError

    spec = run.spec
    stats = run.stats
    borrow_lat = stats.samples("borrow")
    return_lat = stats.samples("return")
    pairs: list[tuple[Any, Any]] = []

    async def borrower(b: Any, client: Any, end: float) -> None:
        # Each borrow and return is written to the server's database before it is answered,
        # and to the laptop's container (its own disk, on another machine).
        while time.monotonic() < end:
            t = _perf()
            try:
                await b.borrow(client, run.product, days=1.0)
            except LanlicError as exc:
                stats.inc(f"borrow_{exc.code}")
                await asyncio.sleep(0.05)
                continue
            borrow_lat.append(_perf() - t)
            stats.inc("borrowed")
            t = _perf()
            try:
                await b.return_(client, run.product)
            except LanlicError as exc:
                stats.inc(f"return_{exc.code}")
                continue
            return_lat.append(_perf() - t)
            stats.inc("returned")
            run.progress += 1

    try:
        for i in range(spec["n"]):
            pairs.append(await _enroll(run, i))
        run.ctl.send("ready", {"enrolled": len(pairs)})
        (_, t0) = await run.ctl.expect("go")
        await _sleep_until(t0)
        end = time.monotonic() + spec["duration"]
        await run._bounded(
            asyncio.gather(*(borrower(b, c, end) for b, c in pairs)),
            spec["duration"] + spec["grace"] + 10,
            "laptops",
        )
    finally:
        for _, client in pairs:
            await client.close()


async def _enroll(run: Run, i: int) -> tuple[Any, Any]:
    """A laptop for the churn's borrows: its own container home, enrolled with the server."""
    from pathlib import Path

    from lanlic.laptop.borrower import Borrower
    from lanlic.laptop.trust import TrustStore
    from lanlic.net.client import Client

    spec = run.spec
    name = f"bench-w{spec['worker']}-b{i}"
    b = Borrower(Path(spec["borrow_dir"]) / name, machine_fp=name, clock=time.time)
    # Pins in memory only: the benchmark must not pin its throwaway servers for the user.
    client = Client((run.host, run.port), app="lanlic-bench", trust=TrustStore(None))
    await client.connect()
    await b.enroll(client, "bench", name)
    return b, client


_SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "burst": burst,
    "steady": steady,
    "saturate": saturate,
    "churn": churn,
    "laptops": laptops,
}


async def _one_run(spec: dict[str, Any], ctl: Control) -> None:
    run = Run(spec, ctl)
    ticker = asyncio.ensure_future(run.ticker())
    cpu0 = time.process_time()
    try:
        await _SCENARIOS[spec["scenario"]](run)
        ticker.cancel()
        unmatched = sum(c.errors for c in run.conns)
        if unmatched:
            run.stats.inc("unmatched_replies", unmatched)
        cpu = time.process_time() - cpu0
        stats = run.stats
        ctl.send(
            "result",
            {
                "counts": stats.counts,
                "lat": stats.lat,
                "extra": stats.extra,
                "cpu": cpu,
                "conns": len(run.conns),
            },
        )
        await ctl.expect("finish")
    finally:
        ticker.cancel()
        await run.close_all()
    ctl.send("closed")


def worker_main(conn: Connection, loop_kind: str) -> None:
    """A generator process: serve runs from the runner until it says quit."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_kind == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    ctl = Control(conn)
    try:
        while True:
            msg = conn.recv()
            if msg[0] != "run":
                break
            try:
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(_one_run(msg[1], ctl))
            except _Quit:
                break
            except Exception as exc:
                conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
