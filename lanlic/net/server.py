"""The asyncio TCP server: a thin adapter that feeds bytes to the sans-IO core.

One ``asyncio.Protocol`` per connection (cheaper than streams: no reader task per client; the
benchmark's bare servers measured streams at about a third of Protocol's rate). Every
``data_received`` decodes all complete frames of that read, handles them in order, and writes all
replies with one ``transport.write``, so a pipelining client costs one syscall per read, not per
request. Renew, release and checkout, when the state table allows them, take a fast path from
wire map to frame bytes (``LicenseService.renew_frame`` and friends: the same checks, no message
objects); every other frame, and any the fast path does not accept, goes through ``parse`` and
``handle``. Lease expiry is driven by exactly one ``loop.call_at`` timer armed at the pool's next
deadline; the loop's clock is monotonic, so wall-clock jumps do not touch leases. A stall of the
loop itself (the process stopped, its VM paused) is noticed by the first callback after it, which
gives every lease the stalled time back before anything expires (``now``); the wall clock, used
for borrows, is checked against a clock that never jumps (``wall``, ``lanlic.core.clock``).

Connections that stall are closed by one housekeeping sweep a second (no timer per connection):
no hello within ``handshake_timeout`` of the connect, a frame not complete within
``frame_timeout`` of its first byte (a trickle does not reset it), or replies left unread above
``write_buffer_high`` for ``write_timeout`` (reading stops meanwhile, and the rest of the read
being handled waits, so a peer that does not read cannot make the server buffer more). Past
``max_connections`` (by default the open-file limit less a reserve) a new connection is told
``server_busy`` and closed, before ``accept`` could run out of descriptors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from lanlic import osdeps
from lanlic.core import welcomebatch
from lanlic.core.clock import STALL_THRESHOLD, WALL_TOLERANCE, StallWatch, WallGuard
from lanlic.core.lending import Durable, ReservationRaise
from lanlic.core.policy import PolicyError
from lanlic.core.refusals import RefusalTally
from lanlic.core.restart import RestartState
from lanlic.core.service import EventFields, LicenseService, UnsignedWelcome, raise_to
from lanlic.core.service import Session as _Session
from lanlic.errors import BadFrame
from lanlic.proto import messages as m
from lanlic.proto.connection import ConnState, FatalError, RequestError, ServerConnection
from lanlic.server.policyfile import PolicyWatch
from lanlic.store import Store
from lanlic.store import history as hist

__all__ = ["LicenseServer", "ServerLimits"]

#: How long a version-3 hello waits for others to share its welcome's signature. A batch of one
#: loop turn's hellos (``call_soon``) was one hello in 9 of 10 under a burst of 10,000 clients:
#: they arrive a few at a time, as their connections are accepted. Waiting 1 ms made the median
#: batch 12 and seated the burst in 1.25 s instead of 2.2 s (pure build); a client sees 1 ms more.
WELCOME_BATCH_WAIT = 0.001

#: History rows kept in memory while the store cannot take them (about 100 bytes each).
MAX_PENDING_HISTORY = 100_000
#: Seconds between two log lines about connections refused at the cap.
BUSY_LOG_EVERY = 10.0
#: Seconds between two prunings of the history to its retention (the first soon after start).
PRUNE_INTERVAL = 600.0

log = logging.getLogger("lanlic.server")


class Replier(Protocol):
    """Whom a durable change answers: a connection (``_Protocol``), or a test's stand-in. A
    structural type, so the compiled build checks no class here (setup.py)."""

    def send(self, msg: m.Message) -> None: ...


_encode = ServerConnection.send

#: Requests answered on the fast path, by wire type.
_FAST: dict[str, Callable[[LicenseService, _Session, dict[str, Any], float, float], Any]] = {
    "renew": LicenseService.renew_frame,
    "release": LicenseService.release_frame,
    "checkout": LicenseService.checkout_frame,
}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one peer may cost the server, and how long it may stall (protocol/SPEC.md, 9)."""

    handshake_timeout: float = 10.0
    """Seconds a new connection has to send its hello, counted from the connect."""
    frame_timeout: float = 10.0
    """Seconds a frame has to arrive in full, counted from its first byte: a peer that drips
    a byte at a time cannot keep a half frame (and its buffer) alive by trickling."""
    write_timeout: float = 30.0
    """Seconds a connection's unsent replies may stay above ``write_buffer_high`` (its peer
    is not reading them) before the connection is closed."""
    write_buffer_high: int = 256 * 1024
    """Unsent bytes a connection may have before the server stops reading its requests
    (and starts its write timeout); it reads again below a quarter of this. A read's replies
    are written in slices of a quarter of this, and the requests after the slice that crossed
    it wait until the peer reads: a connection holds at most this, a slice and one reply."""
    write_buffer_max: int = 4 * 1024 * 1024
    """Bytes of replies one read of requests may ask for (small requests with big replies,
    such as ``status``, pipelined by a peer that does not read): past it the connection is
    closed, so a connection never holds more than about this plus ``write_buffer_high``."""
    reply_budget: int = 64 * 1024 * 1024
    """Bytes of unsent replies all connections together may hold. Past it the connections
    holding the most are closed, largest first, until the rest fit: peers that pipeline and
    never read cannot add up to more memory than this, however many they are (the server
    holds at most this plus one connection's share, ``write_buffer_high`` and a slice)."""
    max_connections: int | None = None
    """New connections beyond this are told ``server_busy`` and closed. None: the process's
    open-file limit (``RLIMIT_NOFILE``) less ``fd_reserve``, so the cap is met before the OS
    limit and ``accept`` never fails for want of a descriptor."""
    fd_reserve: int = 64
    """File descriptors kept back from connections (store, logs, mDNS, the admin page's own)."""
    admin_connections: int = 64
    """Connections the admin page may hold at once: its share of the one descriptor budget.
    The licence port's cap is what is left, so the admin port can never take its descriptors
    (``lanlic.admin.connections``)."""
    housekeeping_interval: float = 1.0
    """Seconds between sweeps that close stalled connections."""
    stall_threshold: float = STALL_THRESHOLD
    """A gap this long between two turns of the event loop is a stall of the server itself
    (stopped, paused, swapping): every lease gets the gap back before anything expires. Never
    less than twice ``housekeeping_interval``, which bounds the gap of a healthy loop."""

    def connection_cap(self) -> int:
        """``max_connections``, or the one derived from ``RLIMIT_NOFILE`` when it is None."""
        if self.max_connections is not None:
            return self.max_connections
        soft = osdeps.fd_limit()  # None: unlimited, or no such limit (Windows)
        if soft is None:
            soft = _UNLIMITED_FDS
        return max(1, min(soft, _UNLIMITED_FDS) - self.fd_reserve - self.admin_connections)


#: History events that are also logged as warnings for the admin.
_WARN_ADMIN = frozenset({"stall", "borrow_adopted"})

#: Lease events, counted rather than written one by one: a batch writes one row per (event,
#: product, user, host, detail) with its count, stamped with the first (``_history_event``).
_COUNTED = frozenset({"checkout", "release", "expiry", "reclaim"})


#: A clock that never jumps and, unlike the monotonic one, counts a suspended host's sleep
#: (Linux's CLOCK_BOOTTIME; see osdeps.uptime): the anchor the wall clock is checked against.
_uptime = osdeps.uptime

#: Descriptors counted for an unlimited (or absurdly high) RLIMIT_NOFILE.
_UNLIMITED_FDS = 1 << 20


class _Protocol(asyncio.Protocol):
    __slots__ = (
        "_closing",
        "_conn",
        "_server",
        "_session",
        "_transport",
        "frame_started",
        "heard",
        "held",
        "opened",
        "queued",
        "welcoming",
        "write_paused",
    )

    def __init__(self, server: LicenseServer) -> None:
        self._server = server
        self._conn = ServerConnection()
        self._session = _Session()
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self.opened = server.loop.time()
        self.heard = self.opened
        """When the peer last sent anything (a waiter in the queue silent too long is dropped)."""
        self.frame_started: float | None = None
        """When the first byte of the frame now half-received arrived (None: no half frame)."""
        self.write_paused: float | None = None
        """Since when replies have piled up past the high-water mark (None: they have not)."""
        self.queued = 0
        """Unsent reply bytes when last looked at (counted in ``LicenseServer.queued_bytes``)."""
        self.held: tuple[list[dict[str, Any] | BadFrame], FatalError | None] | None = None
        """Frames already read but not yet handled, and the fatal error after them: kept while
        the peer does not read its replies (``write_buffer_high``), handled once it does, and
        while its welcome waits for a signature (``welcoming``)."""
        self.welcoming = False
        """A version-3 welcome waits for its batch's signature: what the peer sent after its
        hello is ``held`` until the welcome is written (``welcome_sent``), so it comes first."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = t = cast(asyncio.Transport, transport)
        srv = self._server
        if len(srv.connections) >= srv.max_connections:
            t.write(_encode(m.Error(0, "server_busy", "connection limit reached")))
            t.close()
            self._closing = True
            srv.note_busy()
            return
        srv.connections.add(self)
        srv.watched.add(self)  # until its hello
        peer = t.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._session.addr = str(peer[0])  # subnet rules trust this, never the hello
        high = srv.limits.write_buffer_high
        t.set_write_buffer_limits(high=high, low=high // 4)

    def pause_writing(self) -> None:
        # The peer is not reading its replies: read no more of its requests (which would only
        # make more replies) and start the write timeout.
        self.write_paused = self._server.loop.time()
        self._server.watched.add(self)
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = None
        self._server.note_queued(self)
        if self.frame_started is not None:
            self.frame_started = self._server.loop.time()  # its rest waited on us, not the peer
        self._go_on()

    def welcome_sent(self) -> None:
        """The welcome of a version-3 hello is written: handle what came after the hello."""
        self.welcoming = False
        if self.write_paused is None:
            self._go_on()

    def _go_on(self) -> None:
        """Handle the frames held back, then read again (unless they held it up once more)."""
        if self.welcoming:
            return  # ``welcome_sent`` goes on
        t = self._transport
        if t is None or self._closing or t.is_closing():
            self.held = None
            return
        held, self.held = self.held, None
        if held is not None:
            self._handle(*held, self._server.now())  # may pile replies up past the mark again
        if not self._closing and self.write_paused is None and not self.welcoming:
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # Leases stay: a client that vanished keeps its seats until they expire, so one that
        # reconnects in time keeps them. A clean goodbye (``bye``) already released them.
        self._server.connections.discard(self)
        self._server.watched.discard(self)
        self._server.queued_bytes -= self.queued
        self.queued = 0
        self.held = None
        self._server.forget_owner(self._session.client_id, self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        now = self._server.now()
        conn = self._conn
        self.heard = now
        frames, fatal = conn.receive_frames(data)
        # The frame timeout runs from a frame's first byte, so a trickle cannot reset it.
        if not conn.has_partial_frame:
            self.frame_started = None
        elif frames or self.frame_started is None:
            self.frame_started = now
            self._server.watched.add(self)
        if self.held is not None:  # not expected (reading pauses as frames are held): in order
            kept, kept_fatal = self.held
            self.held = None
            frames, fatal = kept + frames, kept_fatal or fatal
        if self.welcoming:  # requests sent without waiting for the welcome: after it
            self.held = (frames, fatal)
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._handle(frames, fatal, now)

    def _handle(
        self, frames: list[dict[str, Any] | BadFrame], fatal: FatalError | None, now: float
    ) -> None:
        """Handle a read's frames in order and write their replies, until the peer stops taking
        its replies: the frames left are ``held`` for ``resume_writing``."""
        srv = self._server
        wall = srv.wall()
        out: list[bytes] = []
        spent = 0  # bytes of replies made off the fast path (whose replies are small)
        written = 0  # of them, already written during this read
        # One read of small requests with big replies (status) may ask for megabytes: write
        # them in slices and stop at the first one that leaves the peer's unsent replies past
        # the high-water mark, so what a connection pins is that mark and a slice, however
        # many requests its peer packs into one send (the kernel takes more per read on 3.12+).
        pile = max(srv.limits.write_buffer_high // 4, 1)
        close = False
        service = srv.service
        fast_path = srv.fast_path
        session = self._session
        conn = self._conn
        transport = self._transport
        assert transport is not None
        steady = conn.steady_types
        for index, item in enumerate(frames):
            # The fast path: a well-formed renew, release or checkout that the state table
            # allows here goes from wire map to frame bytes (see LicenseService.renew_frame).
            if type(item) is dict:
                t = item.get("t")
                fast = fast_path.get(t) if type(t) is str else None
                if fast is not None and t in steady:
                    try:
                        frame = fast(service, session, item, now, wall)
                    except Exception:
                        log.exception("internal error handling %s", t)
                        frame = _encode(m.Error(m.request_id_of(item), "internal_error", ""))
                    if frame is not None:
                        out.append(frame)
                        continue
            # A well-formed hello (every connection starts with one) is read without building
            # a message too; any other frame, or a hello it does not take, becomes an event.
            hello = None
            if type(item) is dict and item.get("t") == "hello":
                hello = conn.take_hello(item)
            event = None if hello is not None else conn.event_for(item)
            if hello is not None or isinstance(event, m.Message):
                try:
                    if hello is not None:
                        reply = service.hello(session, hello, wall)
                    else:
                        reply = service.handle(session, cast(m.Message, event), now, wall)
                except Exception:
                    what = "hello" if hello is not None else cast(m.Message, event).TYPE
                    log.exception("internal error handling %s", what)
                    rid = hello[0] if hello is not None else getattr(event, "id", 0)
                    out.append(_encode(m.Error(rid, "internal_error", "")))
                    continue
                if reply.message is not None:
                    answer = _encode(reply.message)
                    spent += len(answer)
                    out.append(answer)
                elif reply.durable is not None:
                    srv.run_durable(reply.durable, self)
                elif reply.later is not None:
                    srv.run_later(reply.later, self)
                elif reply.welcome is not None:
                    srv.queue_welcome(reply.welcome, self)
                if (hello is not None or isinstance(event, m.Hello)) and not reply.close:
                    srv.owner_connected(session.client_id, self)
                if reply.close:
                    close = True
                    break
                if reply.welcome is not None:
                    # The welcome comes first: the rest of this read waits for it.
                    self.welcoming = True
                    if index + 1 < len(frames) or fatal is not None:
                        self.held = (frames[index + 1 :], fatal)
                        transport.pause_reading()
                    fatal = None
                    break
                steady = conn.steady_types
            elif isinstance(event, RequestError):
                answer = _encode(m.Error(event.id, event.error.code, event.error.message))
                spent += len(answer)
                out.append(answer)
            if spent > srv.limits.write_buffer_max:
                # Small requests with big replies (status, errors), pipelined: one read must not
                # make the server hold an unbounded heap of replies for a peer that never reads.
                log.info("closing a connection: its requests asked for over %d bytes at once",
                         srv.limits.write_buffer_max)  # fmt: skip
                close = True
                break
            if spent - written > pile:
                transport.write(b"".join(out))
                out.clear()
                written = spent
                if self.write_paused is not None:  # the peer is not reading: hold the rest
                    if index + 1 < len(frames) or fatal is not None:
                        self.held = (frames[index + 1 :], fatal)
                    fatal = None
                    break
        if fatal is not None and not close:
            conn.fail(fatal)
            log.info("closing connection: %s", fatal.error)
            out.append(_encode(m.Error(0, fatal.error.code, fatal.error.message)))
            close = True
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if (out or written) and (self.queued or transport.get_write_buffer_size()):
            srv.note_queued(self)
        if close:
            self._closing = True
            transport.close()
        if service.outbox or service.waiting:
            srv.flush_queue()  # after the replies: a "queued" reply precedes its "granted"
        srv.arm_expiry_timer()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def send(self, msg: m.Message) -> None:
        self.send_frame(_encode(msg))

    def send_frame(self, frame: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(frame)
            self._server.note_queued(self)

    def unsent(self) -> int:
        """Reply bytes written but not yet taken by the peer's socket."""
        t = self._transport
        return 0 if t is None else t.get_write_buffer_size()

    def watched(self) -> bool:
        """Whether a timeout runs on this connection (``LicenseServer.watched``)."""
        return (
            self._conn.state is ConnState.AWAIT_HELLO
            or self.write_paused is not None
            or self.frame_started is not None
        )

    def stalled(self, now: float, limits: ServerLimits) -> str | None:
        if (
            self._conn.state is ConnState.AWAIT_HELLO
            and now - self.opened > limits.handshake_timeout
        ):
            return "no hello within the handshake timeout"
        if self.write_paused is not None:
            if now - self.write_paused > limits.write_timeout:
                return "replies not read within the write timeout"
        elif self.frame_started is not None and now - self.frame_started > limits.frame_timeout:
            return "frame not completed within the frame timeout"
        return None

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


class LicenseServer:
    """Serve a ``LicenseService`` on TCP. ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        service: LicenseService,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ServerLimits = ServerLimits(),
        store: Store | None = None,
        wall: Callable[[], float] = time.time,
        uptime: Callable[[], float] | None = None,
        wall_tolerance: float = WALL_TOLERANCE,
        history_store: Store | None = None,
    ) -> None:
        self.service = service
        self.fast_path = _FAST if service.wire_fast_path else {}
        """The requests answered from wire map to frame bytes (none: the seats are elsewhere)."""
        self.store = store
        self.history_store = store if store is not None else history_store
        """Where the history goes: the store, or (a cluster member, whose seats are in etcd) a
        database in the data folder kept for the history only."""
        self._wall_clock = wall
        self._uptime = uptime or _uptime
        self._wall_guard = WallGuard(wall_tolerance)
        self._wall_band = (1.0, 0.0)
        """(lo, hi): wall - uptime in this band is believed at once (the guard's fast path)."""
        self.wall: Callable[[], float] = self._checked_wall
        """UTC time: borrow periods, the key's expiry and display only (leases use the loop's
        monotonic clock). It is ``wall`` checked against ``uptime``, a clock that never jumps
        (``lanlic.core.clock.WallGuard``); tests pass controllable ones, the same clock for
        both when days are to pass rather than the wall clock to jump."""
        self._stall = StallWatch(max(limits.stall_threshold, 2 * limits.housekeeping_interval))
        # One thread owns the database: store calls never block the event loop, and writes
        # are serialised in the order the loop issued them.
        self._store_thread = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lanlic-store")
            if self.history_store is not None
            else None
        )
        self._durables: set[asyncio.Task[None]] = set()
        self._raises: list[tuple[ReservationRaise, Replier | None]] = []
        """Reservation raises waiting for the write under way (``_write_raises``)."""
        self._raise_task: asyncio.Task[None] | None = None
        self._policy_task: asyncio.Task[None] | None = None
        self._history: list[Sequence[object]] = []
        """(at, event, product, user, host, detail[, count]): the store's row, built once."""
        self._counted: dict[EventFields, list[Any]] = {}
        """Lease events of the batch under way: [time of the first, count] per event fields."""
        self._welcomes: list[tuple[UnsignedWelcome, _Protocol]] = []
        """Version-3 welcomes waiting for their batch's signature (``queue_welcome``)."""
        self.refusals = RefusalTally()
        """Refusals counted per client, product and code per interval (``core.refusals``)."""
        # Reads of the history (admin page, exports) have a connection and a thread of their
        # own: a long export neither waits for the writer nor holds up a seat's fsync.
        self._reader_thread = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lanlic-history")
            if self.history_store is not None
            else None
        )
        self._reader: sqlite3.Connection | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._pruned_at = -PRUNE_INTERVAL + 5.0  # the first pruning a few seconds after start
        service.set_event_sink(self._history_event)
        self.host = host
        self.port = port
        self.limits = limits
        self.max_connections = limits.connection_cap()
        """Connections served at once; the next is told ``server_busy``."""
        self.connections: set[_Protocol] = set()
        self.watched: set[_Protocol] = set()
        """Connections a timeout may run on (no hello yet, half a frame, replies unread): the
        sweep looks at these, not at every connection (10k of them cost the loop ms a second)."""
        self.queued_bytes = 0
        """Unsent reply bytes of all connections, as last looked at (``reply_budget``)."""
        self._busy = (0, -BUSY_LOG_EVERY)
        """Connections refused at the cap since the last log line, and when that was."""
        self._owners: dict[bytes, _Protocol] = {}
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._housekeeping: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        service.clock = lambda: (self.now(), self.wall())
        self._synced_leases: set[bytes] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.policy_watch = (
            PolicyWatch(store.path.parent, {n: e.seats for n, e in service.pool.products.items()})
            if store is not None
            else None
        )
        """The seat policy file of the data folder (lanlic.server.policyfile)."""

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Protocol(self), self.host, self.port, backlog=4096, reuse_address=True
        )
        # uvloop's ``sockets`` is a list where typeshed says tuple, which the compiled build
        # checks at run time: read it untyped.
        sock = cast(Any, self._server).sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self._housekeeping = self.loop.call_later(self.limits.housekeeping_interval, self._sweep)
        log.info("serving on %s:%d", self.host, self.port)

    async def load_store(self) -> list[str]:
        """Take the store's borrows, enrollments and policy into memory (before ``start``)."""
        if self.store is None:
            return []
        store = self.store

        def read() -> tuple[list[str], RestartState]:
            warnings = self.service.desk.load(store, self.wall())
            return warnings, store.restart_state()

        warnings, state = await self.loop.run_in_executor(self._store_thread, read)
        watch = self.policy_watch
        if watch is not None:
            # The seat policy file is in force from the first request, not from the first
            # reload a second later, and its state file (the key's products, which
            # `admin policy --load` checks against) is written before anyone can connect.
            found = await self.loop.run_in_executor(self._store_thread, watch.check)
            if isinstance(found, PolicyError):
                log.error("seat policy not applied: %s", found)
                self._history_event(("policy_refused", "", "", "", str(found)[:2000]))
            elif found is not None:
                self.service.set_policy(found, self.now())
        epoch = state.epoch
        held = self.service.guard.start(state, self.loop.time())
        for w in warnings:
            log.warning("%s", w)
        if held:
            log.warning(
                "epoch %d: holding %s for clients to reclaim during the next %.0f s",
                epoch,
                ", ".join(f"{n} seat(s) of {p}" for p, n in held.items()),
                self.service.pool.lease_seconds,
            )
        return warnings

    async def stop(self) -> None:
        """Stop accepting, tell connected clients, close every connection. (Once: a second
        call does nothing.)"""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for h in (self._timer, self._housekeeping):
            if h is not None:
                h.cancel()
        notice = m.Notice(kind="shutdown", message="server is stopping")
        for conn in list(self.connections):
            conn.send(notice)
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._durables:
            await asyncio.wait(list(self._durables), timeout=10)
        for task in (self._policy_task, self._lease_task):
            if task is not None:
                await asyncio.wait([task], timeout=10)
        if self._prune_task is not None:
            await asyncio.wait([self._prune_task], timeout=10)
        # Nothing is granted any more: the last batch records exactly the leases still out,
        # so the next start holds exactly their seats (SPEC section 13).
        await self.sync_leases(clean=True)
        await self.flush_history(refusals=True)
        reader, self._reader_thread = self._reader_thread, None  # stop may be called twice
        if reader is not None:
            reader.submit(self._close_reader)
            reader.shutdown(wait=True)
        if self._store_thread is not None:
            self._store_thread.shutdown(wait=True)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def store_call(self, fn: Callable[[Store], Any]) -> Any:
        """Run ``fn(store)`` on the store's own thread, in order with the server's writes (the
        admin page reads and writes through this). RuntimeError without a data folder."""
        if self.store is None or self._store_thread is None:
            raise RuntimeError("this server runs without a data folder")
        return await self.loop.run_in_executor(self._store_thread, fn, self.store)

    async def history_call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(db)`` on the history's read connection and thread (``store.history``), not
        the writer's: keep each call to a page, so no read holds a snapshot for long."""
        if self.history_store is None or self._reader_thread is None:
            raise RuntimeError("this server runs without a data folder")
        return await self.loop.run_in_executor(self._reader_thread, self._read, fn)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._reader is None:
            assert self.history_store is not None
            self._reader = hist.open_reader(self.history_store.path)
        return fn(self._reader)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # --------------------------------------------------------------- owners (push notices)

    def owner_connected(self, client_id: bytes, conn: _Protocol) -> None:
        self._owners[client_id] = conn

    def forget_owner(self, client_id: bytes, conn: _Protocol) -> None:
        if self._owners.get(client_id) is conn:
            del self._owners[client_id]
        if client_id:  # the connection got past its hello
            self.service.client_gone(client_id)

    def flush_queue(self) -> None:
        """Offer freed seats to the queue and send its news to the clients it concerns."""
        service = self.service
        service.drain_queue(self.now())
        outbox, service.outbox = service.outbox, []
        for owner, msg in outbox:
            conn = self._owners.get(owner)
            if conn is not None:
                conn.send(msg)

    def _drop_silent_waiters(self) -> None:
        """A waiter whose client sent nothing for a lease period (no heartbeat: the machine
        vanished without closing its connection) leaves the line, as a lease would expire."""
        now = self.loop.time()
        limit = self.service.pool.lease_seconds
        silent = set()
        for owner in self.service.waiting_owners():
            conn = self._owners.get(owner)
            if conn is None or now - conn.heard >= limit:
                silent.add(owner)
        if silent:
            self.service.drop_waiters(silent)

    def remove_waiter(self, ticket: bytes) -> bool:
        """Take a client out of the queue (admin) and tell it."""
        removed = self.service.remove_waiter(ticket) is not None
        self.flush_queue()
        return removed

    def remove_lease(self, lease_id: bytes) -> bool:
        """End a lease now (admin) and tell its client if it is connected."""
        lease = self.service.remove(lease_id, self.now())
        if lease is None:
            return False
        conn = self._owners.get(lease.owner)
        if conn is not None:
            conn.send(
                m.Notice(
                    kind="lease_removed", message="removed by the administrator", leases=[lease_id]
                )
            )
        if self.service.waiting:
            self.flush_queue()
        return True

    # ------------------------------------------------------------------------------ time

    def now(self) -> float:
        """The loop's monotonic time, for leases. Every callback that may expire something
        reads it through here, so a stall of the loop is noticed, and every lease given the
        stalled time back, before anything expires (``lanlic.core.clock.StallWatch``)."""
        now = self.loop.time()
        gap = self._stall.gap(now)
        if gap:
            self._stalled(gap)
        return now

    def _stalled(self, gap: float) -> None:
        extended = self.service.postpone(gap)
        for conn in self.connections:  # their timeouts did not run while we were stopped
            conn.opened += gap
            if conn.frame_started is not None:
                conn.frame_started += gap
            if conn.write_paused is not None:
                conn.write_paused += gap
        self._history_event(
            ("stall", "", "", "", f"the server did not run for {gap:.1f} s (stopped, paused or "
             f"overloaded); {extended} lease(s) extended by that much")
        )  # fmt: skip

    def _checked_wall(self) -> float:
        wall = self._wall_clock()
        uptime = self._uptime()
        lo, hi = self._wall_band
        if lo <= wall - uptime <= hi:
            return wall  # agrees with the anchor: the common case, on every read of requests
        guard = self._wall_guard
        t = guard.now(uptime, wall)
        anchor = guard.anchored(0.0)
        if anchor is not None and not guard.suspect:
            self._wall_band = (anchor - guard.tolerance, anchor + guard.tolerance)
        else:
            self._wall_band = (1.0, 0.0)
        if guard.changed:
            guard.changed = False
            if guard.suspect:
                detail = (
                    f"the wall clock jumped {guard.skew:+.0f} s against the server's own count "
                    "of time; borrows, the key's expiry and history use the server's count "
                    "until the clock is right again or the server restarts"
                )
            else:
                detail = "the wall clock agrees with the server's count of time again"
            self._history.append((t, "clock_jump", "", "", "", detail))
            log.warning("clock_jump: %s", detail)
        return t

    # ---------------------------------------------------------------------- reply budget

    def note_busy(self) -> None:
        """A connection was refused at the cap: say so, a line per ``BUSY_LOG_EVERY`` at most."""
        count, logged = self._busy
        now = self.loop.time()
        if now - logged >= BUSY_LOG_EVERY:
            log.warning(
                "connection cap of %d reached: refused %d connection(s) with server_busy",
                self.max_connections, count + 1,
            )  # fmt: skip
            self._busy = (0, now)
        else:
            self._busy = (count + 1, logged)

    def note_queued(self, conn: _Protocol) -> None:
        """``conn``'s unsent replies changed: count them, and keep all within the budget."""
        size = conn.unsent()
        self.queued_bytes += size - conn.queued
        conn.queued = size
        if self.queued_bytes > self.limits.reply_budget:
            self._shed_replies()

    def _shed_replies(self) -> None:
        """Over the reply budget: close the connections holding the most until the rest fit.
        (Counted afresh first: buffers that drained did not say so.)"""
        total = 0
        for c in self.connections:
            c.queued = c.unsent()
            total += c.queued
        self.queued_bytes = total
        budget = self.limits.reply_budget
        if total <= budget:
            return
        closed, freed = 0, 0
        for c in sorted(self.connections, key=lambda c: c.queued, reverse=True):
            if total - freed <= budget:
                break
            freed += c.queued
            closed += 1
            self.queued_bytes -= c.queued
            c.queued = 0
            # Out of the count now: a transport (uvloop's) may report its buffer until the
            # close completes, and an aborted connection must not be closed again for it.
            self.connections.discard(c)
            c.abort()
        log.warning(
            "reply budget: closed %d connection(s) holding %d bytes of replies their peers do "
            "not read (all connections held %d, over the budget of %d)",
            closed, freed, total, budget,
        )  # fmt: skip

    # ---------------------------------------------------------------------------- timers

    def arm_expiry_timer(self) -> None:
        deadline = self.service.pool.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        expired = self.service.expire(self.now())
        if expired:
            log.info("%d lease(s) expired", len(expired))
        if self.service.waiting:
            self.flush_queue()
        self.arm_expiry_timer()

    # ------------------------------------------------------------------- durable changes

    def run_durable(self, durable: Durable, conn: Replier | None) -> None:
        """Write to the store on its thread, then commit (or abort) and answer ``conn``."""
        if isinstance(durable, ReservationRaise) and self.store is not None:
            # Raises go to disk as a group: one write at a time, the next one for every raise
            # asked for meanwhile (see _write_raises).
            self._raises.append((durable, conn))
            if self._raise_task is not None:
                return
            task = self._raise_task = self.loop.create_task(self._write_raises())
        else:
            task = self.loop.create_task(self._durable(durable, conn))
        self._durables.add(task)
        task.add_done_callback(self._durables.discard)

    def queue_welcome(self, unsigned: UnsignedWelcome, conn: _Protocol) -> None:
        """Sign ``unsigned`` with the other version-3 welcomes that come within
        ``WELCOME_BATCH_WAIT`` of it, then send it to ``conn``."""
        if not self._welcomes:
            self.loop.call_later(WELCOME_BATCH_WAIT, self._send_welcomes)
        self._welcomes.append((unsigned, conn))

    def _send_welcomes(self) -> None:
        batch, self._welcomes = self._welcomes, []
        for at in range(0, len(batch), welcomebatch.MAX_BATCH):
            part = batch[at : at + welcomebatch.MAX_BATCH]
            try:
                frames = self.service.welcome_frames([u for u, _ in part])
            except Exception:
                log.exception("internal error signing welcomes")
                for u, conn in part:
                    conn.send(m.Error(u.id, "internal_error", ""))
                    conn.abort()
                continue
            for frame, (_, conn) in zip(frames, part, strict=True):
                conn.send_frame(frame)  # nothing, if it closed meanwhile
                conn.welcome_sent()

    def run_later(self, work: Callable[[], Awaitable[m.Message]], conn: _Protocol) -> None:
        """Await ``work`` (a seat store's round trip, ``Reply.later``), then answer ``conn``."""
        task = self.loop.create_task(self._later(work, conn))
        self._durables.add(task)
        task.add_done_callback(self._durables.discard)

    async def _later(self, work: Callable[[], Awaitable[m.Message]], conn: _Protocol) -> None:
        try:
            reply = await work()
        except Exception:
            log.exception("internal error answering a request")
            reply = m.Error(0, "internal_error", "")
        conn.send(reply)
        if self.service.waiting or self.service.outbox:
            self.flush_queue()
        self.arm_expiry_timer()

    async def _durable(self, durable: Durable, conn: Replier | None) -> None:
        if self.store is None:
            reply = durable.abort(RuntimeError("this server runs without a data folder"))
        else:
            try:
                result = await self.loop.run_in_executor(
                    self._store_thread, durable.write, self.store
                )
            except Exception as exc:
                log.error("store write failed: %s", exc)
                reply = durable.abort(exc)
            else:
                reply = durable.commit(result)
        self._answer_durables([(reply, conn)])

    def _answer_durables(self, replies: list[tuple[m.Message, Replier | None]]) -> None:
        """Send what written (or failed) durables answer, then what they may have changed:
        a seat freed for the queue (a borrow returned, a raise refused), the next expiry."""
        for reply, conn in replies:
            if conn is not None:
                conn.send(reply)
        if self.service.waiting:
            self.flush_queue()
        self.arm_expiry_timer()

    async def _write_raises(self) -> None:
        """Write the reservation raises asked for, a group at a time: one trip to the store's
        thread and one transaction (fsync) for the highest value per product in the group, then
        each grant of the group in the order asked. At the start of a rush every checkout needs
        a raise: one trip (and, each chunk, one fsync) per checkout, all in a row, kept the
        checkouts behind them waiting about a second at the saturate bench's start.

        Still in order with the lease batch (``sync_leases``): a raise asked for before a
        batch was made keeps its product from being lowered in it (``RestartGuard.pending``),
        and one asked for after it reaches the store's one writer after it."""
        store = self.store
        assert store is not None
        try:
            while self._raises:
                group, self._raises = self._raises, []
                seats: dict[str, int] = {}
                for durable, _ in group:
                    for product, n in durable.seats.items():
                        if n > seats.get(product, -1):
                            seats[product] = n
                try:
                    written = await self.loop.run_in_executor(
                        self._store_thread, raise_to, store, seats
                    )
                except Exception as exc:
                    log.error("store write failed: %s", exc)
                    replies = [(durable.abort(exc), conn) for durable, conn in group]
                else:
                    # Raises asked while this one was on disk, for no more than it wrote, are
                    # on disk now: granted with it, not after one more trip to the store's
                    # thread (in a burst that trip waited 5-120 ms for the GIL and a CPU, and
                    # wrote nothing). No lease batch lowered these products meanwhile: one
                    # made while a raise is pending leaves its product alone.
                    asked, self._raises = self._raises, []
                    for item in asked:
                        covered = all(n <= written.get(p, -1) for p, n in item[0].seats.items())
                        (group if covered else self._raises).append(item)
                    replies = [(durable.commit(written), conn) for durable, conn in group]
                self._answer_durables(replies)
        finally:
            self._raise_task = None

    async def sync_leases(self, clean: bool = False) -> None:
        """Write the batch of lease changes since the last one, and lowered reservations (exact
        ones for a clean stop). A crash loses at most this batch: the reservations still bound
        what was granted, and lease ids granted after it prove their owner (SPEC section 13)."""
        store = self.store
        guard = self.service.guard
        if store is None or not guard.enabled:
            self._lease_task = None
            return
        # The batch is handed to the store's one writer in the same turn as it lowered the
        # reservations in memory: a raise asked for after this is written after it.
        batch = guard.snapshot(clean)
        write = self.loop.run_in_executor(self._store_thread, store.write_batch, batch)
        try:
            await write
        except Exception as exc:
            log.error("could not write the lease batch: %s", exc)
        else:
            guard.batch_written(batch)
        finally:
            self._lease_task = None

    async def _reload_policy(self) -> None:
        assert self.store is not None
        try:
            self.service.desk.policy = await self.loop.run_in_executor(
                self._store_thread, self.store.policy
            )
            watch = self.policy_watch
            if watch is not None:
                found = await self.loop.run_in_executor(self._store_thread, watch.check)
                if isinstance(found, PolicyError):
                    log.error("seat policy not applied, the one in force stays: %s", found)
                    self._history_event(("policy_refused", "", "", "", str(found)[:2000]))
                elif found is not None:
                    changes = self.service.set_policy(found, self.now())
                    log.info("seat policy applied: %s", "; ".join(changes) or "no change")
        except Exception as exc:
            log.error("could not read the borrowing policy: %s", exc)
        finally:
            self._policy_task = None

    def _history_event(self, fields: EventFields) -> None:
        kind = fields[0]
        if kind in _COUNTED:
            # A checkout and a release are two rows each, at 100k a second; as one row per
            # client, product and detail per batch with its count, the rows a second follow
            # the clients, not their requests, and SQLite stays off the loop's GIL.
            seen = self._counted.get(fields)
            if seen is None:
                self._counted[fields] = [self.wall(), 1]
            else:
                seen[1] += 1
            return
        if kind == "refusal":
            # Counted, not written one by one: a client can send refusals without end.
            _, product, user, host, code = fields
            known = product in self.service.pool.products
            row = self.refusals.add(self.wall(), user, host, product, code, known)
            if row is not None:  # the first of its kind this minute is written at once
                self._history.append(row)
            return
        self._history.append((self.wall(), *fields))  # stamped here; rows go to SQLite as is
        if fields[0] in _WARN_ADMIN:
            log.warning("%s: %s%s", fields[0], f"{fields[1]}: " if fields[1] else "", fields[4])

    async def flush_history(self, refusals: bool = False) -> None:
        """Write the pending history rows in one batch (a crash loses at most this batch);
        ``refusals``: also the refusals counted so far, their intervals over or not. Returns
        once every row recorded before the call is written, a batch already on its way
        included: the history's readers have a connection of their own and would not wait
        for it otherwise."""
        if refusals:
            self._history.extend(self.refusals.drain())
        self._batch_counted()
        if self.history_store is None or self._store_thread is None:
            self._history.clear()  # no data folder: nothing to keep them in
            return
        async with self._flushing:
            await self._flush_history()

    def _batch_counted(self) -> None:
        """The lease events counted so far join the batch as rows with their counts."""
        if self._counted:
            counted, self._counted = self._counted, {}
            self._history.extend([(at, *f, n) for f, (at, n) in counted.items()])

    async def _flush_history(self) -> None:
        if not self._history:
            return
        assert self.history_store is not None
        pending = self._history
        self._history = []
        try:
            # The rows go to executemany as they are: nothing is built per row on the event
            # loop (at 100k checkouts a second that cost the loop a tenth of a second a batch).
            await self.loop.run_in_executor(
                self._store_thread, self.history_store.append_history_rows, pending
            )
        except Exception as exc:
            # Keep them for the next try (a full disk may free up), within a bound.
            kept = pending[-MAX_PENDING_HISTORY:]
            self._history[:0] = kept
            log.error(
                "could not write %d history rows (%s); keeping %d to retry",
                len(pending), exc, len(kept),
            )  # fmt: skip

    async def _prune_history(self) -> None:
        """Delete the history beyond its retention, a small batch per turn of the store's
        thread, so the seats' writes queued behind it wait for one batch at most."""
        store = self.history_store
        assert store is not None
        gone = 0
        try:
            while True:
                n = await self.loop.run_in_executor(
                    self._store_thread, store.prune_history, self.wall()
                )
                gone += n
                if n < hist.PRUNE_BATCH:
                    break
            if gone:
                log.info("history: %d row(s) past the retention deleted", gone)
        except Exception as exc:
            log.error("could not prune the history: %s", exc)
        finally:
            self._prune_task = None

    def _sweep(self) -> None:
        self.now()  # a stall is noticed, and made good, before anything here expires
        for durable in self.service.desk.due(self.wall()):
            self.run_durable(durable, None)
        freed = self.service.guard.close_window(self.loop.time())
        if freed:
            log.info("reclaim window over: %s back in the pool", freed)
        if self.service.waiting:
            self._drop_silent_waiters()
        if self.service.waiting or self.service.outbox:
            self.flush_queue()
        if self.store is not None and self._lease_task is None:
            self._lease_task = self.loop.create_task(self.sync_leases())
        if self.store is not None and self._policy_task is None:
            # The admin lowers borrowing terms in the database (lanlic admin policy).
            self._policy_task = self.loop.create_task(self._reload_policy())
        self._history.extend(self.refusals.due(self.wall()))
        self._batch_counted()
        if self.history_store is not None and self._prune_task is None:
            if self.loop.time() - self._pruned_at >= PRUNE_INTERVAL:
                self._pruned_at = self.loop.time()
                self._prune_task = self.loop.create_task(self._prune_history())
        if self._history:
            task = self.loop.create_task(self.flush_history())
            self._durables.add(task)
            task.add_done_callback(self._durables.discard)
        if self.queued_bytes:
            self._shed_replies()  # a recount: buffers that drained did not say so
        now = self.loop.time()
        for conn in list(self.watched):
            reason = conn.stalled(now, self.limits)
            if reason is not None:
                log.info("closing a stalled connection: %s", reason)
                conn.abort()
            elif not conn.watched():
                self.watched.discard(conn)
        self._housekeeping = self.loop.call_later(self.limits.housekeeping_interval, self._sweep)
