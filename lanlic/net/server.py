"""The asyncio TCP server: a thin adapter that feeds bytes to the sans-IO core.

One ``asyncio.Protocol`` per connection (cheaper than streams: no reader task per client). Every
``data_received`` decodes all complete frames of that read, handles them in order, and writes all
replies with one ``transport.write``, so a pipelining client costs one syscall per read, not per
request. Lease expiry is driven by exactly one ``loop.call_at`` timer armed at the pool's next
deadline; the loop's clock is monotonic, so wall-clock jumps do not touch leases.

Connections that stall are closed by one housekeeping sweep a second (no timer per connection):
no hello within ``handshake_timeout``, or half a frame that does not complete within
``frame_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import cast

from lanlic.core.service import LicenseService
from lanlic.core.service import Session as _Session
from lanlic.proto import messages as m
from lanlic.proto.connection import ConnState, FatalError, RequestError, ServerConnection

__all__ = ["LicenseServer", "ServerLimits"]

log = logging.getLogger("lanlic.server")

_encode = ServerConnection.send


@dataclass(frozen=True, slots=True)
class ServerLimits:
    handshake_timeout: float = 10.0
    """Seconds a new connection has to send its hello."""
    frame_timeout: float = 10.0
    """Seconds a started frame has to arrive in full."""
    max_connections: int = 15000
    """New connections beyond this are told ``server_busy`` and closed."""
    housekeeping_interval: float = 1.0


class _Protocol(asyncio.Protocol):
    __slots__ = ("_closing", "_conn", "_server", "_session", "_transport", "last_data", "opened")

    def __init__(self, server: LicenseServer) -> None:
        self._server = server
        self._conn = ServerConnection()
        self._session = _Session()
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self.opened = self.last_data = server.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = t = cast(asyncio.Transport, transport)
        srv = self._server
        if len(srv.connections) >= srv.limits.max_connections:
            t.write(_encode(m.Error(0, "server_busy", "connection limit reached")))
            t.close()
            self._closing = True
            return
        srv.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Leases stay: a client that vanished keeps its seats until they expire, so one that
        # reconnects in time keeps them. A clean goodbye (``bye``) already released them.
        self._server.connections.discard(self)
        self._server.forget_owner(self._session.client_id, self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        srv = self._server
        now = srv.loop.time()
        self.last_data = now
        wall = time.time()
        out: list[bytes] = []
        close = False
        service = srv.service
        for event in self._conn.receive_data(data):
            if isinstance(event, m.Message):
                try:
                    reply = service.handle(self._session, event, now, wall)
                except Exception:
                    log.exception("internal error handling %s", event.TYPE)
                    out.append(_encode(m.Error(getattr(event, "id", 0), "internal_error", "")))
                    continue
                out.append(_encode(reply.message))
                if isinstance(event, m.Hello) and not reply.close:
                    srv.owner_connected(self._session.client_id, self)
                if reply.close:
                    close = True
                    break
            elif isinstance(event, RequestError):
                out.append(_encode(m.Error(event.id, event.error.code, event.error.message)))
            elif isinstance(event, FatalError):
                log.info("closing connection: %s", event.error)
                out.append(_encode(m.Error(0, event.error.code, event.error.message)))
                close = True
                break
        transport = self._transport
        assert transport is not None
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self._closing = True
            transport.close()
        srv.arm_expiry_timer()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def send(self, msg: m.Message) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(_encode(msg))

    def stalled(self, now: float, limits: ServerLimits) -> str | None:
        if (
            self._conn.state is ConnState.AWAIT_HELLO
            and now - self.opened > limits.handshake_timeout
        ):
            return "no hello within the handshake timeout"
        if self._conn.has_partial_frame and now - self.last_data > limits.frame_timeout:
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
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.limits = limits
        self.connections: set[_Protocol] = set()
        self._owners: dict[bytes, _Protocol] = {}
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._housekeeping: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Protocol(self), self.host, self.port, backlog=4096, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self._housekeeping = self.loop.call_later(self.limits.housekeeping_interval, self._sweep)
        log.info("serving on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, tell connected clients, close every connection."""
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

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # --------------------------------------------------------------- owners (push notices)

    def owner_connected(self, client_id: bytes, conn: _Protocol) -> None:
        self._owners[client_id] = conn

    def forget_owner(self, client_id: bytes, conn: _Protocol) -> None:
        if self._owners.get(client_id) is conn:
            del self._owners[client_id]

    def remove_lease(self, lease_id: bytes) -> bool:
        """End a lease now (admin) and tell its client if it is connected."""
        lease = self.service.remove(lease_id, self.loop.time())
        if lease is None:
            return False
        conn = self._owners.get(lease.owner)
        if conn is not None:
            conn.send(
                m.Notice(
                    kind="lease_removed", message="removed by the administrator", leases=[lease_id]
                )
            )
        return True

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
        expired = self.service.expire(self.loop.time())
        if expired:
            log.info("%d lease(s) expired", len(expired))
        self.arm_expiry_timer()

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            reason = conn.stalled(now, self.limits)
            if reason is not None:
                log.info("closing a stalled connection: %s", reason)
                conn.abort()
        self._housekeeping = self.loop.call_later(self.limits.housekeeping_interval, self._sweep)
