"""The asyncio client: one connection, a background heartbeat, reconnects that keep the seats.

Usage::

    async with Client("licserver:7766", app="MyCAD 16.2") as client:
        async with client.checkout("cad", version="16") as seat:
            ...  # work; seat.state says held / lost / waiting / regained / gone

How it keeps seats through trouble:

* One heartbeat task renews every held lease in one ``renew`` frame every ``heartbeat_s`` (the
  server says how often in its welcome).
* When the connection drops, one reconnect task retries with backoff, says hello again with the
  same client id, and re-presents the leases in a ``renew``; the server still holds them if the
  lease has not run out, so the application does not notice.
* The client gives up on a seat a margin *before* the server would free it
  (``sent + lease_s - margin``, where ``sent`` is when the last successful renew left), so the
  same seat is never in use on two machines. It then tells the application: ``seat.lost`` is set
  and the ``on_seat_lost`` callback runs.
* It cannot tell a server cut off from one that is stalled (stopped, its VM paused): a stalled
  server gives every lease the stalled time back, so the seat may still be the client's. It goes
  on presenting a seat given up for want of contact in its renews; if the server renews it, it
  was held for this client throughout and is handed back (``seat.lost`` clears and
  ``on_seat_regained`` runs).
* A seat lost for any reason but the application's or the administrator's doing (the lease ran
  out, the server restarted and could not give it back) is *regained*: once the server answers
  again the client checks out the same product and version anew, under the same ``Seat`` handle
  (a new ``lease_id``; a seat given up while the server restarted is first reclaimed under its
  old one, SPEC section 13), and the application is told: lost, then regained. While the
  server refuses for want of a free seat the seat is ``waiting`` and the client asks again with
  the reconnect backoff, until one frees. ``Client(regain=False)`` turns this off: such a seat
  is then gone for good (``seat.state == "gone"``) once the server confirms it no longer holds
  it.

Several members (redundant servers sharing one pool, ``Client("a:7766,b:7766")``): the client
connects to the first that answers and proves itself. When the connection to the member in use
is lost, or that member answers ``server_unavailable`` (it cannot vouch for its seats), or its
renewals go unanswered for a heartbeat, the client moves to the next member, wrapping around, and
presents its seats there in a ``reclaim`` (SPEC section 13): a member of the same pool takes them
over under the same lease ids, so the application notices nothing. A seat the new member cannot
take over is lost and regained as above. Every member must prove the same server key.

Who the server is: every handshake sends a fresh nonce and checks the welcome's signature, then
the server key against the key pinned for its site (``lanlic.laptop.trust``; the first connection to
a site pins it). A client made by ``Client.discover`` finds its server over mDNS, and when the old
address stops answering it finds the same server (same site, same key) wherever it moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import getpass
import inspect
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanlic.errors import (
    BadFrame,
    LanlicError,
    LicenseRefused,
    NoSeat,
    ProtocolError,
    SeatLost,
    ServerUnavailable,
    ServerUntrusted,
    error_for_code,
)
from lanlic.laptop.trust import (
    TrustStore,
    configured_server,
    fingerprint_of,
    verify_server_time,
    verify_welcome,
)
from lanlic.proto import messages as m
from lanlic.proto.framing import FrameDecoder, encode_frame

if TYPE_CHECKING:
    from lanlic.net.finder import Found

__all__ = [
    "DEFAULT_PORT",
    "DISCOVER_TIMEOUT",
    "REDISCOVER_TIMEOUT",
    "Client",
    "Seat",
    "SeatState",
    "format_address",
    "parse_address",
    "parse_servers",
]

log = logging.getLogger("lanlic.client")

DEFAULT_PORT = 7766
#: Seconds ``Client.discover`` browses by default (a server on a quiet LAN answers in ~0.1 s).
DISCOVER_TIMEOUT: Final = 3.0
#: Seconds one re-discovery may take when the server stopped answering at its old address.
REDISCOVER_TIMEOUT: Final = 2.0
#: The reconnect backoff, seconds: the first retry, doubled up to the last. Regaining a seat the
#: server refused for want of a free one retries on the same schedule.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 1.0

VendorKey = Ed25519PublicKey | bytes | str
"""A vendor's public key, its raw 32 bytes, or its fingerprint (``sha256:...``)."""

Address = tuple[str, int]
ServerSpec = str | Address | Sequence[str | Address]
"""Where the server is: ``HOST:PORT``, a list ``HOST:PORT,HOST:PORT`` of the members of one pool,
``(host, port)``, or a sequence of these."""


class _LineLost(m.Error):
    """Told to a client waiting in line when its connection closes (never from a server)."""


@dataclass(frozen=True, slots=True)
class _Discovery:
    """How a client made by ``discover`` finds its server again."""

    product: str | None
    interfaces: Sequence[str] | None


class BorrowedSource(Protocol):
    """What the client needs of ``lanlic.laptop.borrower.Borrower`` (kept apart: no cycle)."""

    def offline(self, product: str, version: str = "") -> Any: ...

    async def check_online(self, client: Client, product: str | None = None) -> dict[str, str]: ...


def parse_address(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``v6`` -> (host, port)."""
    text = text.strip()
    if not text:
        raise ValueError("empty server address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in server address {text!r}")
    try:
        port_no = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in server address {text!r}") from None
    if not 0 < port_no < 65536:
        raise ValueError(f"port out of range in server address {text!r}")
    return host, port_no


def parse_servers(text: str) -> list[Address]:
    """``HOST:PORT[,HOST:PORT...]`` -> the members' addresses in order, each once."""
    members: list[Address] = []
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"empty address in server list {text!r}")
        address = parse_address(part)
        if address not in members:
            members.append(address)
    return members


def server_list(server: ServerSpec) -> list[Address]:
    """Every member named by ``server`` (see ``ServerSpec``), in order, each once."""
    if isinstance(server, str):
        return parse_servers(server)
    if isinstance(server, tuple) and len(server) == 2 and isinstance(server[1], int):
        return [(str(server[0]), server[1])]
    members: list[Address] = []
    for item in server:
        for address in server_list(item):
            if address not in members:
                members.append(address)
    if not members:
        raise ValueError("empty server list")
    return members


class SeatState(enum.StrEnum):
    """Where a seat stands (``Seat.state``). Only ``held`` and ``regained`` may be used."""

    HELD = "held"
    """Granted, and renewed by the client."""
    LOST = "lost"
    """Not to be used: the server may have given it to someone else. It may come back: the
    client checks out again when the server answers (or finds the server held it throughout)."""
    WAITING = "waiting"
    """Being regained, but the server has no free seat: the client asks again until one frees."""
    REGAINED = "regained"
    """Held again after a loss (``lease_id`` is the new lease's, or the same if the server kept
    it)."""
    GONE = "gone"
    """Lost for good: released, the client closed, removed by the administrator, refused for
    good (the product or version is no longer licensed), or lost with ``regain=False``."""


#: The states in which a seat may be used.
USABLE: Final = frozenset({SeatState.HELD, SeatState.REGAINED})


class Seat:
    """A floating seat held by this client.

    ``state`` says where it stands (``SeatState``); ``await wait_state(...)``, ``wait_lost()``
    and ``wait_regained()`` wait for a change, and ``Client(on_seat_lost=..., on_seat_regained=...,
    on_seat_state=...)`` calls back on one."""

    def __init__(self, client: Client, product: str, version: str, lease_id: bytes, sent: float):
        self.product = product
        self.version = version
        self.lease_id = lease_id
        """The lease the seat is held under now (a regained seat gets a new one)."""
        self.source = "network"
        """Where the seat came from: ``network`` (a floating seat), ``borrowed (license file)``
        or ``borrowed (portable key)`` (used offline; releasing it does nothing)."""
        self.license: Any = None
        """The ``BorrowedLicense`` behind a borrowed seat."""
        self._client = client
        self._renew_sent = sent
        self._held_at: Address = client.address
        """The member whose lease this is: presented to another one, it is reclaimed."""
        self.epoch = 0
        """The server epoch the seat was granted (or reclaimed) in."""
        self.state = SeatState.HELD
        self.reason: LanlicError | None = None
        """Why the seat is not usable (lost, gone, or the refusal it is waiting on); else None."""
        self._lost = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def lost(self) -> bool:
        """True while the seat must not be used (any state but ``held`` and ``regained``)."""
        return self.state not in USABLE

    @property
    def member(self) -> tuple[str, int]:
        """The address of the server (the member of a pool) its lease is held at."""
        return self._held_at

    @property
    def renewed_at(self) -> float:
        """When (the event loop's clock) the last request the server confirmed the seat by was
        sent: its checkout, or its last renew or reclaim."""
        return self._renew_sent

    def _set(self, state: SeatState, reason: LanlicError | None) -> None:
        self.state, self.reason = state, reason
        if state in USABLE:
            self._lost.clear()
        else:
            self._lost.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_state(self, *states: SeatState | str) -> SeatState:
        """Wait until the seat is in one of ``states`` (at once if it is); returns the state."""
        want = {SeatState(s) for s in states}
        while self.state not in want:
            changed = self._changed
            await changed.wait()
        return self.state

    async def wait_lost(self) -> LanlicError:
        """Wait until the seat is lost; returns why."""
        await self._lost.wait()
        assert self.reason is not None
        return self.reason

    async def wait_regained(self) -> None:
        """Wait until the seat may be used again (at once if it may); raises why it was lost if
        it is gone for good instead."""
        if await self.wait_state(*USABLE, SeatState.GONE) is SeatState.GONE:
            assert self.reason is not None
            raise self.reason

    def __repr__(self) -> str:
        state = f"{self.state} ({self.reason})" if self.reason is not None else str(self.state)
        return f"<Seat {self.product} {self.lease_id.hex()[:8]} {state}>"


class Client:
    """An asyncio licence client. Use ``async with``, or ``await connect()`` and ``close()``."""

    def __init__(
        self,
        server: ServerSpec | None = None,
        *,
        user: str | None = None,
        host: str | None = None,
        app: str = "",
        on_seat_lost: Callable[[Seat, LanlicError], Any] | None = None,
        on_seat_regained: Callable[[Seat], Any] | None = None,
        on_seat_state: Callable[[Seat], Any] | None = None,
        regain: bool = True,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        vendor_key: VendorKey | None = None,
        trust: TrustStore | None = None,
        borrowed: BorrowedSource | None = None,
    ) -> None:
        """``server`` is ``HOST:PORT`` or ``(host, port)``, or the members of one pool as a list
        (``"a:7766,b:7766"`` or a sequence: see the module doc); None takes ``$LANLIC_SERVER``,
        then ``server`` in the config folder's ``client.toml`` (to find a server with no
        address, use ``Client.discover``). ``vendor_key`` refuses a server of another vendor.
        ``trust`` holds the pinned server keys (default: the config folder's, see
        ``lanlic.laptop.trust``).

        ``regain`` (default True): check a lost seat out again when the server answers (see the
        module doc). ``on_seat_lost(seat, reason)`` runs when a seat may no longer be used,
        ``on_seat_regained(seat)`` when it may again, ``on_seat_state(seat)`` on every change of
        ``seat.state`` not made by the application itself (lost, waiting, regained, gone). Each
        may be a coroutine function; they run on the client's event loop.

        Make it inside a coroutine (``async with Client(...)``): it belongs to the running event
        loop. Code with no event loop uses ``lanlic.net.blocking.BlockingClient``."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "Client() needs a running asyncio event loop: make it inside a coroutine "
                "(async with Client(...) as client: ...), or use "
                "lanlic.net.blocking.BlockingClient from code that is not asyncio"
            ) from None
        if server is None:
            server = _explicit_server()
        if server is None:
            raise ServerUnavailable(
                "no server address: pass one, set LANLIC_SERVER=HOST:PORT, or find the server "
                "on the LAN with Client.discover"
            )
        self.servers: list[Address] = server_list(server)
        """The members of the pool, in the order they are tried."""
        self.address: Address = self.servers[0]
        """The member in use (or tried last)."""
        self._move_on = False
        """The member at ``address`` was left: connect to the next one first."""
        self.borrowed = borrowed
        """Where borrowed licences are looked up first (``laptop.borrower.Borrower``), or None."""
        self.vendor_fp = fingerprint_of(vendor_key) if vendor_key is not None else None
        """Only a server of this vendor is accepted (None: any vendor)."""
        self.trust = trust if trust is not None else TrustStore.default()
        self.pinned = False
        """The server's key was pinned for its site before this client connected."""
        self._discovery: _Discovery | None = None
        self.user = user if user is not None else _current_user()
        self.host = host if host is not None else socket.gethostname()
        self.app = app
        self.client_id = secrets.token_bytes(16)
        self.on_seat_lost = on_seat_lost
        self.on_seat_regained = on_seat_regained
        """Called (or awaited) with a lost seat that may be used again: checked out anew, or
        one given up for want of contact that the server held for this client throughout."""
        self.on_seat_state = on_seat_state
        self.regain = regain
        """Check lost seats out again by themselves (see the module doc)."""
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.lease_s = 60.0
        self.heartbeat_s = 20.0
        self.server_id = ""
        self.server_key = b""
        self.server_time: float | None = None
        self.customer = ""
        self.epoch = 0
        """The epoch of the server this client last spoke to."""
        self.seats: dict[bytes, Seat] = {}
        self._given_up: dict[bytes, Seat] = {}
        """Seats given up for want of contact, still presented in renews (see the module doc)."""
        self._to_regain: list[Seat] = []
        """Lost seats the server no longer holds, to check out again (``regain``)."""
        self._regain_task: asyncio.Task[None] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[m.Message]] = {}
        self._waiting: dict[int, asyncio.Queue[m.Message]] = {}
        """Per ``wait`` request id: the server's news of that place in line, in order."""
        self._next_id = 1
        self._connected = asyncio.Event()
        self._closing = False
        self._read_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._callbacks: set[asyncio.Future[Any]] = set()

    # ----------------------------------------------------------------------- lifecycle

    @classmethod
    async def discover(
        cls,
        vendor_key: VendorKey | None,
        product: str | None = None,
        *,
        timeout: float = DISCOVER_TIMEOUT,  # noqa: ASYNC109 - a deadline for the whole search
        interfaces: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Client:
        """Find a licence server on the LAN over mDNS and return a client connected to it.

        Only servers of ``vendor_key`` (the vendor's public key or its fingerprint; None takes
        any vendor, for tools) serving ``product`` (if given) are considered; each is proved by
        a handshake. A server pinned for its site is preferred, else the first that proves
        itself (``lanlic.net.finder``). Raises ``ServerUnavailable`` when none fits within
        ``timeout`` seconds, ``ServerKeyChanged`` / ``ServerUntrusted`` when the only ones found
        are refused. ``interfaces``: IP addresses of the interfaces to browse on (None: all).

        An explicit address (``$LANLIC_SERVER`` or ``client.toml``) skips discovery. Other
        keyword arguments are ``Client``'s. The client re-discovers its server if it moves.
        """
        explicit = _explicit_server()
        client = cls(explicit or ("", 0), vendor_key=vendor_key, **kwargs)
        if explicit is None:
            client._discovery = _Discovery(product, None if interfaces is None else [*interfaces])
        try:
            if client._discovery is not None:
                async with client._connect_lock:
                    await client._find_and_open(client._loop.time() + timeout, same_server=False)
            await client.connect()
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def margin(self) -> float:
        """How long before the server's deadline the client stops counting a seat as held."""
        return min(5.0, self.lease_s * 0.1)

    async def connect(self) -> None:
        async with self._connect_lock:
            if self.connected:
                return
            await self._open_members()
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="lanlic-heartbeat")

    async def _open_members(self) -> None:
        """Connect to the first member that answers and proves itself: from the one in use, or
        from the next one if it was left, wrapping around. Raises the most telling reason if
        none does (a member with another key over one that is down)."""
        n = len(self.servers)
        at = self.servers.index(self.address) if self.address in self.servers else 0
        start = at + 1 if self._move_on else at
        error: LanlicError | None = None
        for i in range(n):
            self.address = self.servers[(start + i) % n]
            try:
                await self._open()
            except LanlicError as exc:
                if not isinstance(error, ServerUntrusted):
                    error = exc
                if n > 1:
                    log.info("member %s: %s", format_address(self.address), exc)
                if self._closing:
                    break
                continue
            if self.address != self.servers[at] or self._move_on:
                log.info("connected to member %s", format_address(self.address))
            self._move_on = False
            return
        assert error is not None
        raise error

    def _elsewhere(self) -> bool:
        """Whether there is another member to move to (or a server to find again)."""
        return len(self.servers) > 1 or self._discovery is not None

    def _leave(self, reason: LanlicError) -> None:
        """Drop the connection to a member that cannot serve (answered ``server_unavailable``,
        or left a renew unanswered); the reconnect moves to the next member."""
        if self._writer is not None and not self._closing:
            log.warning("leaving member %s: %s", format_address(self.address), reason)
            self._disconnected(reason)

    async def _open(self) -> None:
        host, port = self.address
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            raise ServerUnavailable(
                f"cannot reach the licence server at {host}:{port}: {exc}"
            ) from exc
        self._reader, self._writer = reader, writer
        self._read_task = asyncio.create_task(self._read_loop(reader), name="lanlic-reader")
        try:
            nonce = secrets.token_bytes(m.NONCE_SIZE)
            hello = m.Hello(
                id=self._take_id(),
                versions=list(m.PROTOCOL_VERSIONS),
                client_id=self.client_id,
                user=self.user[: m.MAX_NAME],
                host=self.host[: m.MAX_NAME],
                app=self.app[: m.MAX_NAME],
                nonce=nonce,
            )
            welcome = await self._send_request(hello, require_connected=False)
            assert isinstance(welcome, m.Welcome)
            self._check_server(welcome, nonce)
        except BaseException:
            # A handshake that failed is not a lost connection: nothing to reconnect.
            self._reader = self._writer = None
            writer.close()
            raise
        self.lease_s, self.heartbeat_s = welcome.lease_s, welcome.heartbeat_s
        self.epoch = welcome.epoch
        self.server_id, self.server_key = welcome.server_id, welcome.server_key
        self.customer = welcome.customer
        # The server's time as of this handshake, if signed over our nonce (re-anchors a
        # borrowing laptop's clock check, SPEC 12); None from a server that does not send it.
        self.server_time = verify_server_time(welcome, nonce, self.client_id)
        self._connected.set()

    def _check_server(self, welcome: m.Welcome, nonce: bytes) -> None:
        """The server proves it holds its key, serves our vendor, and is the one pinned for its
        site (pinning it if the site is new). Reconnects must find the same server."""
        where = format_address(self.address)
        identity = verify_welcome(welcome, nonce, self.client_id, where)
        if self.vendor_fp is not None and identity.vendor_fp != self.vendor_fp:
            raise ServerUntrusted(
                f"{where} serves a network key of vendor {identity.vendor_fp}, not of "
                f"{self.vendor_fp}"
            )
        if self.server_key and identity.server_key != self.server_key:
            self.trust.check(identity, where, pin_new=False)  # ServerKeyChanged if pinned
            raise ServerUntrusted(
                f"{where} presents the key {identity.server_fp}, not {self.server_id} of the "
                "server this client was connected to"
            )
        self.pinned = self.trust.check(identity, where)

    async def _find_and_open(self, deadline: float, *, same_server: bool) -> None:
        """Find the server over mDNS and connect; ``same_server``: the one we had."""
        from lanlic.net.finder import find_server

        assert self._discovery is not None
        while True:
            found: Found = await find_server(
                vendor_fp=self.vendor_fp,
                product=self._discovery.product,
                deadline=deadline,
                interfaces=self._discovery.interfaces,
                trust=self.trust,
                site=self.customer if same_server else None,
                server_key=self.server_key if same_server else None,
            )
            self.servers, self.address = list(found.members), found.address
            self._move_on = False
            try:
                await self._open()
                return
            except ServerUnavailable:
                if self._loop.time() >= deadline:
                    raise
                # Gone between the probe and now: look again while time is left.

    async def close(self) -> None:
        """Release every seat (a clean ``bye``) and close. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
        for task in (self._heartbeat_task, self._reconnect_task, self._regain_task):
            if task is not None:
                task.cancel()
        if self.connected:
            with contextlib.suppress(LanlicError, TimeoutError, OSError):
                async with asyncio.timeout(2.0):
                    await self._send_request(m.Bye(id=self._take_id()))
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
            # Bounded: a member that stopped reading (hung) keeps unsent bytes, and so the
            # close, pending for ever; after the bound the connection is dropped.
            try:
                async with asyncio.timeout(2.0):
                    await self._writer.wait_closed()
            except TimeoutError:
                self._writer.transport.abort()
            except Exception:  # noqa: S110 - closing: the connection's own error is moot
                pass
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        for task in (self._heartbeat_task, self._reconnect_task, self._regain_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        closed = SeatLost("client closed")
        for seat in list(self.seats.values()):
            self._forget(seat, closed, notify=False)
        for seat in [*self._given_up.values(), *self._to_regain]:
            self._change(seat, SeatState.GONE, closed, notify=False)
        self._given_up.clear()
        self._to_regain.clear()

    # -------------------------------------------------------------------------- seats

    def checkout(
        self,
        product: str,
        version: str = "",
        wait: bool = False,
        timeout: float | None = None,
        on_position: Callable[[int], None] | None = None,
    ) -> _SeatContext:
        """``async with client.checkout(...) as seat`` (released on exit) or ``await`` it.
        ``wait=True`` waits in the server's queue for a seat (see ``acquire``)."""
        return _SeatContext(self, product, version, wait, timeout, on_position)

    async def acquire(
        self,
        product: str,
        version: str = "",
        wait: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - the issue's interface: checkout(wait=, timeout=)
        on_position: Callable[[int], None] | None = None,
    ) -> Seat:
        """Take one seat; raises ``NoSeat``, ``UnknownProduct``... on refusal.

        ``wait=True``: with no seat free for this client, join the product's queue and wait,
        first come first served, at most ``timeout`` seconds (None: as long as it takes);
        ``on_position(n)`` is called with the place in line (1 is next) each time it changes.
        At the timeout the client leaves the line and ``NoSeat`` is raised. A refusal that
        waiting cannot change (``not_allowed``...) is raised at once.

        With ``borrowed`` set, a valid borrowed licence for the product is used first, with no
        network at all (``seat.source`` says which kind of seat it is)."""
        if self.borrowed is not None:
            seat = self._borrowed_seat(product, version)
            if seat is not None and self.connected:
                # Online: the server knows whether the borrow is still on (a copy of the file
                # restored from a backup after its return is not); an ended one is deactivated.
                state = (await self.borrowed.check_online(self, product)).get(product)
                if state in ("returned", "expired"):
                    seat = None
            if seat is not None:
                return seat
        sent = self._loop.time()
        reply: m.Message
        if wait:
            await self._ensure_connected()
            reply = await self._wait_in_line(product, version, timeout, on_position)
            where = self.address  # the member it waited at last (it may have moved meanwhile)
        else:
            reply, where = await self._anywhere(
                lambda rid: m.Checkout(id=rid, product=product, version=version)
            )
        assert isinstance(reply, m.Granted)
        seat = Seat(self, product, version, reply.lease, sent)
        seat._held_at = where
        seat.epoch = reply.epoch
        self.seats[seat.lease_id] = seat
        self._arm_give_up()
        return seat

    async def _wait_in_line(
        self,
        product: str,
        version: str,
        timeout: float | None,  # noqa: ASYNC109 - a bound on the wait in line, not on one call
        on_position: Callable[[int], None] | None,
    ) -> m.Granted:
        """Wait in the server's line for a seat. The place in line lives as long as the
        connection (SPEC section 16): when the connection drops (the server restarted), the
        client reconnects as it does for its seats and joins the line again, within the same
        ``timeout``."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            granted = await self._wait_once(product, version, timeout, deadline, on_position)
            if granted is not None:
                return granted
            # The line was lost with the connection: wait for the reconnect, then rejoin.
            left = None if deadline is None else max(0.0, deadline - self._loop.time())
            try:
                async with asyncio.timeout(left):
                    await self._connected.wait()
            except TimeoutError:
                raise NoSeat(
                    f"no seat of {product} within {timeout:g} s; the server could not be "
                    "reached to wait in line"
                ) from None
            log.info("reconnected while waiting for %s: joining the line again", product)

    async def _wait_once(
        self,
        product: str,
        version: str,
        timeout: float | None,  # noqa: ASYNC109 - a bound on the wait in line, not on one call
        deadline: float | None,
        on_position: Callable[[int], None] | None,
    ) -> m.Granted | None:
        """One place in line, on this connection: the seat, or None if the connection (and the
        place with it) was lost while waiting."""
        writer = self._writer
        if writer is None or not self.connected:
            raise ServerUnavailable("not connected to the licence server")
        rid = self._take_id()
        news: asyncio.Queue[m.Message] = asyncio.Queue()
        self._waiting[rid] = news
        ticket = b""
        try:
            writer.write(encode_frame(m.to_wire(m.Wait(id=rid, product=product, version=version))))
            while True:
                left = None if deadline is None else max(0.0, deadline - self._loop.time())
                if not ticket:  # the first answer comes at once, as to any request
                    left = self.request_timeout if left is None else min(left, self.request_timeout)
                try:
                    async with asyncio.timeout(left):
                        msg = await news.get()
                except TimeoutError:
                    if not ticket:
                        raise ServerUnavailable(f"no answer to wait within {left} s") from None
                    raise NoSeat(
                        f"no seat of {product} within {timeout:g} s; left the queue"
                    ) from None
                if isinstance(msg, m.Error):
                    if isinstance(msg, _LineLost) and ticket and not self._closing:
                        # The connection closed under a client in line (the server restarted,
                        # or this member was left): the line is gone; rejoin once back.
                        ticket = b""
                        return None
                    raise error_for_code(msg.code, msg.message)
                if isinstance(msg, m.Granted):
                    ticket = b""
                    return msg
                if isinstance(msg, m.Queued):
                    ticket = msg.ticket
                    if on_position is not None:
                        on_position(msg.position)
        finally:
            self._waiting.pop(rid, None)
            if ticket and self.connected:
                # Gave up (timeout, cancelled): leave the line; a seat granted meanwhile is
                # given back (its "granted" may already be on the way).
                with contextlib.suppress(LanlicError):
                    await self._send_request(m.Unwait(id=self._take_id(), ticket=ticket))
                while not news.empty():
                    late = news.get_nowait()
                    if isinstance(late, m.Granted):
                        with contextlib.suppress(LanlicError):
                            await self._send_request(
                                m.Release(id=self._take_id(), leases=[late.lease])
                            )

    def _borrowed_seat(self, product: str, version: str) -> Seat | None:
        assert self.borrowed is not None
        try:
            lic = self.borrowed.offline(product, version)
        except LanlicError as exc:
            if exc.code != "borrow_unknown":
                log.warning("borrowed licence for %s not usable: %s", product, exc)
            return None
        seat = Seat(self, product, version, lic.borrow_id.encode(), self._loop.time())
        seat.source = "borrowed (license file)" if lic.kind == "act" else "borrowed (portable key)"
        seat.license = lic
        return seat

    async def release(self, seat: Seat) -> None:
        """Give a seat back now. A lost seat is not regained any more (one given up for want of
        contact is released on the server too, if it still holds it)."""
        if seat in self._to_regain:
            self._to_regain.remove(seat)
            self._change(seat, SeatState.GONE, SeatLost("released"), notify=False)
        if self._given_up.pop(seat.lease_id, None) is not None:
            self._change(seat, SeatState.GONE, SeatLost("released"), notify=False)
            if self.connected:
                with contextlib.suppress(LanlicError):
                    await self._send_request(m.Release(id=self._take_id(), leases=[seat.lease_id]))
        if self.seats.get(seat.lease_id) is not seat:
            return
        self._forget(seat, SeatLost("released"), notify=False)
        if self.connected:
            with contextlib.suppress(ServerUnavailable):
                await self._send_request(m.Release(id=self._take_id(), leases=[seat.lease_id]))

    async def status(self) -> dict[str, Any]:
        """The server's status: products, counts and holders (see protocol/SPEC.md)."""
        reply, _ = await self._anywhere(lambda rid: m.Status(id=rid))
        assert isinstance(reply, m.StatusReply)
        return m.to_wire(reply)

    async def renew_now(self) -> None:
        """Send a heartbeat for every held seat at once (the heartbeat task does this itself)."""
        await self._renew_all()

    async def call(self, make: Callable[[int], m.Message]) -> m.Message:
        """Send the request ``make(request_id)`` and return its reply; an error reply raises.
        For requests the client has no method of its own for (borrowing uses it)."""
        await self._ensure_connected()
        return await self._send_request(make(self._take_id()))

    # ------------------------------------------------------------------------- internals

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    async def _anywhere(self, make: Callable[[int], m.Message]) -> tuple[m.Message, Address]:
        """Send ``make(request_id)``; the reply, and the member that gave it. If the member is
        lost meanwhile (or answers ``server_unavailable``), send it again to the next one, each
        member at most once.
        Only for requests that are safe to repeat elsewhere (a checkout whose grant was lost
        with its member ends with that member's lease)."""
        tries = len(self.servers)
        while True:
            await self._ensure_connected()
            where = self.address
            try:
                return await self._send_request(make(self._take_id())), where
            except ServerUnavailable:
                tries -= 1
                if tries <= 0 or self.connected or self._closing or not self._elsewhere():
                    raise

    async def _ensure_connected(self) -> None:
        if self._closing:
            raise ServerUnavailable("client is closed")
        if not self.connected:
            await self.connect()

    async def _send_request(self, msg: m.Message, require_connected: bool = True) -> m.Message:
        writer = self._writer
        if writer is None or (require_connected and not self.connected):
            raise ServerUnavailable("not connected to the licence server")
        rid: int = getattr(msg, "id")  # noqa: B009 - every request has one
        fut: asyncio.Future[m.Message] = self._loop.create_future()
        self._pending[rid] = fut
        try:
            writer.write(encode_frame(m.to_wire(msg)))
            async with asyncio.timeout(self.request_timeout):
                reply = await fut
        except TimeoutError:
            raise ServerUnavailable(
                f"no answer to {msg.TYPE} within {self.request_timeout} s"
            ) from None
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply, m.Error):
            error = error_for_code(reply.code, reply.message)
            if isinstance(error, ServerUnavailable) and self._elsewhere():
                self._leave(error)  # a member that cannot vouch for its seats: move on
            raise error
        return reply

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        reason: LanlicError = ServerUnavailable("connection to the licence server closed")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, BadFrame):
                        log.warning("server sent a bad frame: %s", item)
                        continue
                    try:
                        msg = m.parse(item)
                    except ProtocolError as exc:
                        log.warning("server sent a bad message: %s", exc)
                        continue
                    self._dispatch(msg)
        except (OSError, BadFrame) as exc:
            reason = ServerUnavailable(f"connection to the licence server lost: {exc}")
        finally:
            if self._reader is reader:
                self._disconnected(reason)

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.Notice):
            if msg.kind == "lease_removed":
                for lease_id in msg.leases:
                    # Removed on purpose: gone for good, never regained.
                    why = SeatLost(msg.message or "removed by the administrator")
                    seat = self.seats.get(lease_id)
                    if seat is not None:
                        self._forget(seat, why)
                    elif (seat := self._given_up.pop(lease_id, None)) is not None:
                        self._change(seat, SeatState.GONE, why)
            elif msg.kind == "lease_lost":
                for lease_id in msg.leases:
                    # Lost through nobody's act (a member lost its etcd lease): regained.
                    lost = SeatLost(msg.message or "the server lost this seat")
                    if (seat := self.seats.get(lease_id)) is not None:
                        self._ended(seat, lost)
                    elif (seat := self._given_up.pop(lease_id, None)) is not None:
                        self._not_held(seat, lost)
            return
        rid = getattr(msg, "id", 0)
        news = self._waiting.get(rid)
        if news is not None:
            news.put_nowait(msg)
            return
        fut = self._pending.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif isinstance(msg, m.Error):
            log.warning("server error: %s: %s", msg.code, msg.message)

    def _disconnected(self, reason: LanlicError) -> None:
        self._connected.clear()
        self._move_on = True
        self._reader = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(reason)
        self._pending.clear()
        for rid, news in self._waiting.items():  # the place in line is gone with the connection
            news.put_nowait(_LineLost(rid, reason.code, reason.message))
        if not self._closing and self._reconnect_task is None:
            self._reconnect_task = asyncio.create_task(self._reconnect(), name="lanlic-reconnect")

    async def _reconnect(self) -> None:
        delay = RETRY_FIRST
        try:
            while not self._closing:
                try:
                    async with self._connect_lock:
                        if not self.connected:
                            await self._reopen()
                except LanlicError as exc:
                    log.debug("reconnect failed: %s", exc)
                    self._give_up_overdue()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                log.info("reconnected to %s", format_address(self.address))
                try:
                    await self._renew_all()
                except (LanlicError, TimeoutError) as exc:
                    if self.connected or self._closing:
                        raise
                    # Lost again, or the member could not serve: on to the next one.
                    log.info("reconnect failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                return
        finally:
            self._reconnect_task = None
            if self._to_regain:
                self._start_regain()

    async def _reopen(self) -> None:
        """Reconnect to a member (the next one first); a discovered client looks for its server
        elsewhere when none answers."""
        try:
            await self._open_members()
        except LanlicError:
            if self._discovery is None or self._closing:
                raise
            log.info(
                "no licence server at %s any more: looking for it", format_address(self.address)
            )
            await self._find_and_open(self._loop.time() + REDISCOVER_TIMEOUT, same_server=True)

    async def _heartbeat(self) -> None:
        # Not ``while True``: ``close`` cancels this task and then awaits it, so a cancel lost
        # anywhere below (Python 3.11's ``wait_for`` lost them, gh-86296: lanlic uses
        # ``asyncio.timeout``, tests/test_quality.py) would make it wait for ever.
        while not self._closing:
            await asyncio.sleep(min(self.heartbeat_s, max(self.lease_s - 2 * self.margin, 0.05)))
            self._give_up_overdue()
            if self.connected and (self.seats or self._given_up):
                # A stalled server must not stall the give-up check: wait at most a heartbeat.
                try:
                    async with asyncio.timeout(max(self.heartbeat_s, 0.05)):
                        await self._renew_all()
                except (ServerUnavailable, TimeoutError) as exc:
                    if self.connected and self._elsewhere():
                        # Silent for a heartbeat: another member may answer.
                        self._leave(ServerUnavailable(f"no answer to renew: {exc}"))
            elif self.connected and self._waiting:
                # Waiting in line with no seat: an empty renew says this client is alive, or
                # the server drops it from the line (SPEC section 16).
                with contextlib.suppress(ServerUnavailable, TimeoutError):
                    renew = self._send_request(m.Renew(id=self._take_id(), leases=[]))
                    async with asyncio.timeout(max(self.heartbeat_s, 0.05)):
                        await renew

    async def _renew_all(self) -> None:
        given_up = self._given_up
        if not self.seats and not given_up:
            return
        # Seats granted before the server restarted, or by another member (we moved), are
        # reclaimed, not renewed; so are seats given up meanwhile, when they are to be regained
        # (the restarted server holds a seat for each of them for a while, which nobody else
        # may take; a member of the same pool takes over a live one).
        old = [s for s in self.seats.values() if not self._here(s)]
        old_given_up = [s for s in given_up.values() if not self._here(s)]
        if old_given_up and not self.regain:
            for dropped in old_given_up:
                del given_up[dropped.lease_id]
                self._not_held(dropped, SeatLost("the server restarted: the seat is gone"))
            old_given_up = []
        if old or old_given_up:
            await self._reclaim(old, old_given_up)
        ids = [lease_id for lease_id, s in self.seats.items() if self._here(s)]
        ids.extend(lease_id for lease_id, s in given_up.items() if self._here(s))
        if not ids:
            return
        sent = self._loop.time()
        reply = await self._send_request(m.Renew(id=self._take_id(), leases=ids))
        assert isinstance(reply, m.Renewed)
        for lease_id in reply.leases:
            seat: Seat | None = self.seats.get(lease_id)
            if seat is not None:
                seat._renew_sent = sent
            elif (seat := given_up.pop(lease_id, None)) is not None:
                self._hand_back(seat, sent)
        again: list[Seat] = []
        for lost in reply.lost:
            why = error_for_code(lost.code, "the server no longer holds this seat")
            if (seat := given_up.pop(lost.lease, None)) is not None:
                self._not_held(seat, why)
            elif (seat := self.seats.get(lost.lease)) is None:
                continue
            elif lost.code == "reclaim":
                again.append(seat)
            else:
                self._ended(seat, why)
        if again:
            await self._reclaim(again, [])
        self._arm_give_up()

    def _here(self, seat: Seat) -> bool:
        """The seat's lease is this member's, of its current epoch: renewed, not reclaimed."""
        return seat.epoch == self.epoch and seat._held_at == self.address

    async def _reclaim(self, seats: list[Seat], given_up: list[Seat]) -> None:
        """Ask the server for seats of an older epoch (it restarted) or of another member (we
        moved), under their lease ids: held ones, and given-up ones to be regained."""
        sent, where = self._loop.time(), self.address
        items = [
            {"lease": s.lease_id, "product": s.product, "version": s.version}
            for s in (*seats, *given_up)
        ]
        reply = await self._send_request(m.Reclaim(id=self._take_id(), seats=items))
        assert isinstance(reply, m.Reclaimed)
        for lease_id in reply.leases:
            seat = self.seats.get(lease_id)
            if seat is not None:
                seat.epoch, seat._held_at = reply.epoch, where
                seat._renew_sent = sent
            elif (seat := self._given_up.pop(lease_id, None)) is not None:
                seat.epoch, seat._held_at = reply.epoch, where
                self._hand_back(seat, sent)
        for lost in reply.lost:
            why = error_for_code(
                lost.code, "the server restarted and could not give this seat back"
            )
            seat = self.seats.get(lost.lease)
            if seat is not None:
                self._ended(seat, why)
            elif (seat := self._given_up.pop(lost.lease, None)) is not None:
                self._not_held(seat, why)
        self._arm_give_up()

    def _give_up_overdue(self) -> None:
        now = self._loop.time()
        for seat in list(self.seats.values()):
            if now >= seat._renew_sent + self.lease_s - self.margin:
                self._forget(
                    seat,
                    SeatLost(
                        f"no contact with the licence server for {self.lease_s - self.margin:.0f}"
                        " s: the seat may be given to someone else"
                    ),
                    then=SeatState.LOST,
                )
                self._given_up[seat.lease_id] = seat
        self._arm_give_up()

    def _hand_back(self, seat: Seat, sent: float) -> None:
        """The server renewed (or reclaimed) a seat given up for want of contact: it held it for
        us all along (it had stalled, or restarted and held it for reclaim), so nobody else can
        have had it. Hand it back."""
        seat._renew_sent = sent
        self.seats[seat.lease_id] = seat
        self._change(seat, SeatState.REGAINED, None)

    def _ended(self, seat: Seat, reason: LanlicError) -> None:
        """The server no longer holds a seat the client held (its lease ran out, the restarted
        server could not give it back): regain it, or it is gone for good."""
        if self.seats.get(seat.lease_id) is not seat:
            return
        self._forget(seat, reason, then=SeatState.LOST if self.regain else SeatState.GONE)
        if self.regain:
            self._to_regain.append(seat)
            self._start_regain()

    def _not_held(self, seat: Seat, reason: LanlicError) -> None:
        """A lost seat turned out not to be held by the server any more: regain it, or it is
        gone for good."""
        if self.regain:
            self._to_regain.append(seat)
            self._start_regain()
        else:
            self._change(seat, SeatState.GONE, reason)

    def _start_regain(self) -> None:
        if self._regain_task is None and not self._closing:
            self._regain_task = asyncio.create_task(self._regain_lost(), name="lanlic-regain")

    async def _regain_lost(self) -> None:
        """Check every seat in ``_to_regain`` out again (same product and version) once the
        server answers; retry with the reconnect backoff while it has no free seat."""
        delay = RETRY_FIRST
        try:
            while self._to_regain and not self._closing:
                await self._connected.wait()
                if self._reconnect_task is None:  # let a reconnect's reclaim go first
                    for seat in list(self._to_regain):
                        if not await self._regain_one(seat):
                            break
                        if seat.state in USABLE:
                            delay = RETRY_FIRST
                if self._to_regain:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self._regain_task = None

    async def _regain_one(self, seat: Seat) -> bool:
        """One checkout for a lost seat; False if the connection is gone."""
        sent, where = self._loop.time(), self.address
        try:
            reply = await self._send_request(
                m.Checkout(id=self._take_id(), product=seat.product, version=seat.version)
            )
        except NoSeat as exc:
            if seat in self._to_regain and seat.state is not SeatState.WAITING:
                self._change(seat, SeatState.WAITING, exc)
            return True
        except ServerUnavailable:
            return False  # the reconnect task takes over; we go on once connected
        except LicenseRefused as exc:  # not licensed (any more): asking again will not help
            if seat in self._to_regain:
                self._to_regain.remove(seat)
                self._change(seat, SeatState.GONE, exc)
            return True
        except LanlicError as exc:  # busy, or a bad reply: try again later
            log.info("regaining a seat of %s: %s", seat.product, exc)
            return True
        assert isinstance(reply, m.Granted)
        if seat not in self._to_regain:  # released (or the client closed) while we asked
            if self.connected and not self._closing:
                with contextlib.suppress(LanlicError):
                    await self._send_request(m.Release(id=self._take_id(), leases=[reply.lease]))
            return True
        self._to_regain.remove(seat)
        seat.lease_id, seat.epoch, seat._renew_sent = reply.lease, reply.epoch, sent
        seat._held_at = where
        self.seats[seat.lease_id] = seat
        self._change(seat, SeatState.REGAINED, None)
        self._arm_give_up()
        return True

    def _arm_give_up(self) -> None:
        """One timer at the earliest moment a seat must be given up: exactly then, whatever the
        heartbeat is waiting for (a stalled server must not delay it)."""
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
            self._give_up_timer = None
        if self.seats and not self._closing:
            first = min(s._renew_sent for s in self.seats.values())
            self._give_up_timer = self._loop.call_at(
                first + self.lease_s - self.margin, self._give_up_overdue
            )

    def _forget(
        self,
        seat: Seat,
        reason: LanlicError,
        notify: bool = True,
        *,
        then: SeatState = SeatState.GONE,
    ) -> None:
        """Stop counting ``seat`` as held; ``then``: ``lost`` (it may come back: given up, or
        to be regained) or ``gone``."""
        if self.seats.pop(seat.lease_id, None) is None:
            return
        self._change(seat, then, reason, notify=notify)

    def _change(
        self, seat: Seat, state: SeatState, reason: LanlicError | None, notify: bool = True
    ) -> None:
        """Set a seat's state and tell the application (unless it made the change itself)."""
        was_usable = seat.state in USABLE
        seat._set(state, reason)
        if not notify:
            return
        if was_usable and state not in USABLE:
            log.warning("seat of %s lost: %s", seat.product, reason)
            if self.on_seat_lost is not None:
                self._call_back(self.on_seat_lost, seat, reason)
        elif state in USABLE and not was_usable:
            log.warning("seat of %s regained", seat.product)
            if self.on_seat_regained is not None:
                self._call_back(self.on_seat_regained, seat)
        if self.on_seat_state is not None:
            self._call_back(self.on_seat_state, seat)

    def _call_back(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callbacks.add(task)
                task.add_done_callback(self._callbacks.discard)
        except Exception:
            log.exception("%s callback failed", getattr(fn, "__name__", "seat"))


class _SeatContext:
    def __init__(
        self,
        client: Client,
        product: str,
        version: str,
        wait: bool = False,
        timeout: float | None = None,
        on_position: Callable[[int], None] | None = None,
    ) -> None:
        self._client, self._product, self._version = client, product, version
        self._wait = (wait, timeout, on_position)
        self._seat: Seat | None = None

    def _acquire(self) -> Coroutine[Any, Any, Seat]:
        wait, timeout, on_position = self._wait
        return self._client.acquire(self._product, self._version, wait, timeout, on_position)

    def __await__(self) -> Generator[Any, None, Seat]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Seat:
        self._seat = await self._acquire()
        return self._seat

    async def __aexit__(self, *exc: object) -> None:
        if self._seat is not None:
            await self._client.release(self._seat)


def format_address(address: tuple[str, int]) -> str:
    """``host:port``, or ``[v6]:port``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _explicit_server() -> str | None:
    """An address given outside the code: ``$LANLIC_SERVER``, else ``client.toml``."""
    return os.environ.get("LANLIC_SERVER") or configured_server()


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
