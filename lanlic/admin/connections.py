"""The admin port's connections: a cap, and timeouts aiohttp does not have.

aiohttp keeps an idle connection an hour by default and has no timeout for a request's head
or body, so a peer that opens connections and trickles (or sends nothing) holds them, and
their descriptors, as long as it likes: 300 of them once stopped new licence clients being
served. Each connection of the admin port is therefore wrapped (``Watched``) on its way to
aiohttp's own protocol, which it feeds unchanged, and watched from outside:

* a request's **head** must be complete within ``header_timeout`` of its first byte (of the
  connect, for the first request: a peer that connects and says nothing is closed too);
* its **body** (``Content-Length``, or chunked up to the last chunk) within ``body_timeout`` of
  the end of the head;
* a response the peer does not read may stand ``write_timeout``;
* between requests aiohttp's own keep-alive timeout, set to ``idle_timeout``, closes it.

Past ``max_connections`` a new connection is answered 503 and closed at once. The cap comes out
of the same descriptor budget as the licence port's (``ServerLimits.admin_connections``), so
the licence port always keeps its share. A refusal and every timeout are logged, at most one
line per kind every ``LOG_EVERY`` seconds.

The head scanner only finds where requests end; aiohttp parses them. If it ever misjudges a
boundary, the bytes it mistakes for a new head meet the header timeout: every state has a
deadline but the one where aiohttp's handler runs or its keep-alive timer does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

__all__ = ["AdminLimits", "ConnectionGuard", "Watched"]

log = logging.getLogger("lanlic.admin")

#: Seconds between two log lines of the same kind (refusals, timeouts).
LOG_EVERY: Final = 10.0
#: Bytes of a request head kept to find its Content-Length (aiohttp refuses longer lines).
HEAD_KEEP: Final = 64 * 1024
BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n"
    b"Connection: close\r\n\r\nadmin page: too many connections\n"
)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,18})[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)

#: Where a connection is: in a request's head, its body (by length, or chunked), between
#: requests (aiohttp's handler or keep-alive has it), or refused.
_HEAD, _BODY, _CHUNKS, _WAIT, _BUSY = range(5)


@dataclass(frozen=True, slots=True)
class AdminLimits:
    """What one connection of the admin port may cost (README, Security model)."""

    header_timeout: float = 10.0
    """Seconds a request's head has to arrive in full (the first: counted from the connect)."""
    body_timeout: float = 30.0
    """Seconds a request's body has to arrive in full, counted from the end of its head."""
    idle_timeout: float = 15.0
    """Seconds a connection may sit idle between requests (aiohttp's keep-alive timeout)."""
    write_timeout: float = 30.0
    """Seconds a response may stand unread (the socket's buffer full) before the close."""
    max_connections: int | None = None
    """Connections at once; None: ``ServerLimits.admin_connections`` of the licence server."""
    sweep_interval: float = 1.0
    """Seconds between two checks of the timeouts."""


class Watched(asyncio.Protocol):
    """One admin connection: aiohttp's protocol inside, its timing watched outside."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._carry = b""
        self.state = _HEAD
        self.since = guard.loop.time()
        """When the current head or body started (the connect, for the first head)."""
        self.left = 0
        """Body bytes still to come (``_BODY``)."""
        self.write_paused: float | None = None

    # asyncio.Protocol, passed through to aiohttp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = t = cast(asyncio.Transport, transport)
        if not self._guard.admit(self):
            self.state = _BUSY
            t.write(BUSY)
            t.close()
            return
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        self._scan(data, self._guard.loop.time())
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = self._guard.loop.time()
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = None
        if self._inner is not None:
            self._inner.resume_writing()

    # watching

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def stalled(self, now: float, limits: AdminLimits) -> str | None:
        if self.write_paused is not None and now - self.write_paused > limits.write_timeout:
            return "response not read within the write timeout"
        if self.state == _HEAD and now - self.since > limits.header_timeout:
            return "request head not complete within the header timeout"
        if self.state in (_BODY, _CHUNKS) and now - self.since > limits.body_timeout:
            return "request body not complete within the body timeout"
        return None

    def _scan(self, data: bytes, now: float) -> None:
        """Follow request boundaries through ``data`` (heads, bodies, the next head)."""
        view = memoryview(data)
        while view:
            if self.state == _WAIT:  # between requests: these bytes begin the next head
                self.state, self.since = _HEAD, now
                self._head.clear()
                self._carry = b""
            if self.state == _HEAD:
                view = self._scan_head(view, now)
            elif self.state == _BODY:
                take = min(self.left, len(view))
                self.left -= take
                view = view[take:]
                if not self.left:
                    self.state = _WAIT
            else:  # _CHUNKS: up to the last chunk (a zero size line and the blank line)
                found = (self._carry + bytes(view)).find(b"0\r\n\r\n")
                if found < 0:
                    self._carry = (self._carry + bytes(view[-4:]))[-4:]
                    return
                view = view[max(0, found + 5 - len(self._carry)) :]
                self._carry = b""
                self.state = _WAIT

    def _scan_head(self, view: memoryview, now: float) -> memoryview:
        head = self._head
        tail = bytes(head[-3:])
        chunk = bytes(view)
        found = (tail + chunk).find(b"\r\n\r\n")
        if found < 0:
            room = HEAD_KEEP - len(head)
            head += chunk[:room] if room > 0 else chunk[-3:]
            return view[len(view) :]
        used = found + 4 - len(tail)
        if len(head) < HEAD_KEEP:
            head += chunk[:used]
        rest = view[used:]
        if _CHUNKED.search(head):
            self.state, self.since, self._carry = _CHUNKS, now, b""
        else:
            m = _CONTENT_LENGTH.search(head)
            self.left = int(m.group(1)) if m else 0
            self.state, self.since = (_BODY if self.left else _WAIT), now
        return rest


class ConnectionGuard:
    """The admin port's live connections: the cap, the sweep that enforces the timeouts."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: AdminLimits, cap: int) -> None:
        self.loop = loop
        self.limits = limits
        self.cap = cap
        self.connections: set[Watched] = set()
        self.refused = 0
        self._logged: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Watched]:
        return lambda: Watched(self, inner)

    def start(self) -> None:
        self._timer = self.loop.call_later(self.limits.sweep_interval, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def admit(self, conn: Watched) -> bool:
        if len(self.connections) >= self.cap:
            self.refused += 1
            self._note("cap", f"admin page: refused connections past the cap of {self.cap} at once")
            return False
        self.connections.add(conn)
        return True

    def discard(self, conn: Watched) -> None:
        self.connections.discard(conn)

    def _note(self, kind: str, message: str) -> None:
        """Log ``message`` with how many times it happened, at most once per ``LOG_EVERY``."""
        self._pending[kind] = self._pending.get(kind, 0) + 1
        now = self.loop.time()
        if now - self._logged.get(kind, -LOG_EVERY) >= LOG_EVERY:
            log.warning("%s (%d since the last such line)", message, self._pending.pop(kind))
            self._logged[kind] = now

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            reason = conn.stalled(now, self.limits)
            if reason is not None:
                self._note(reason, f"admin page: closed a connection: {reason}")
                self.connections.discard(conn)
                conn.abort()
        self._timer = self.loop.call_later(self.limits.sweep_interval, self._sweep)
