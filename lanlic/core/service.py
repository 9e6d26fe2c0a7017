"""The licence service: maps one validated request to its reply and the changes it makes.

It is sans-IO like the rest of ``core``: the adapter hands it a message, the connection's
``Session`` and the time (monotonic ``now`` for leases, ``wall`` UTC seconds only for display and
the key's expiry date), and sends back what it returns. Expected refusals (``no_seat`` ...) are
``Error`` replies, not exceptions.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import signing, welcomebatch
from lanlic.core.gate import Joined, SeatGate
from lanlic.core.lending import BorrowCheck, BorrowDesk, Durable, ReservationRaise
from lanlic.core.netkey import NetworkKey
from lanlic.core.policy import Asker, Policy
from lanlic.core.pool import Denied, Granted, Holder, Lease, SeatPool
from lanlic.core.queue import Waiter
from lanlic.core.restart import RestartGuard
from lanlic.proto import messages as m
from lanlic.proto import replybytes
from lanlic.proto.framing import encode_frame
from lanlic.proto.requests import HelloFields, checkout_request, lease_request

if TYPE_CHECKING:  # the store is the adapter's; the core only names its interface
    from lanlic.store import Store

__all__ = [
    "EventFields",
    "LicenseService",
    "ReservationRaise",
    "ServiceConfig",
    "Session",
    "UnsignedWelcome",
    "handshake_payload",
    "handshake_v2_payload",
    "server_time_payload",
]

#: Hello nonces remembered per client id (the newest), to refuse a recorded session played back.
MAX_NONCES_PER_CLIENT = 64

#: A history event as the service hands it out: (event, product, user, host, detail).
EventFields = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    lease_seconds: float = 60.0
    """A seat not renewed for this long returns to the pool."""
    heartbeat_seconds: float = 20.0
    """How often clients are told to renew; a third of the lease leaves room for two misses."""


def raise_to(store: Store, seats: dict[str, int]) -> dict[str, int]:
    """Raise ``store``'s reservations to ``seats`` (never lowering one); return ``seats``."""
    store.raise_reservations(seats)
    return seats


def _raising(
    seats: dict[str, int],
    commit: Callable[[dict[str, int]], m.Message],
    abort: Callable[[Exception], m.Message],
) -> ReservationRaise:
    """A raise to ``seats`` written alone (``write``) or in a group (the adapter's)."""
    return ReservationRaise(
        write=lambda store: raise_to(store, seats), commit=commit, abort=abort, seats=seats
    )


#: The holder of a connection before its hello (frozen, so every such connection shares it).
_NOBODY = Holder("", "")


class Session:
    """What the server knows of one connection after its hello."""

    __slots__ = ("addr", "client_id", "holder", "version")

    def __init__(self, addr: str = "") -> None:
        self.client_id = b""
        self.holder = _NOBODY  # a Holder of its own cost each connection 1.5 us at its accept
        self.version = 0
        self.addr = addr
        """The peer's address as the adapter saw the connection (seat policy subnets)."""


class _Client:
    """What the server remembers of a client id between its connections."""

    __slots__ = ("connections", "nonces")

    def __init__(self) -> None:
        self.connections = 0
        self.nonces: list[bytes] = []


def _once(leases: list[bytes]) -> list[bytes]:
    """A renew's or release's leases, each once, in the order of first mention (SPEC 6): the
    reply then says once what became of each, and a release never reports a lease it has just
    freed as unknown."""
    if len(leases) < 2:
        return leases
    return list(dict.fromkeys(leases))


def handshake_payload(nonce: bytes, client_id: bytes, server_id: str, vendor_fp: str) -> bytes:
    """The bytes the server signs in its welcome (after the handshake domain prefix)."""
    out: bytes = msgpack.packb([nonce, client_id, server_id, vendor_fp], use_bin_type=True)
    return out


def handshake_v2_payload(
    nonce: bytes, client_id: bytes, server_id: str, vendor_fp: str, time: float
) -> bytes:
    """The bytes a version-2 welcome signs (after the version-2 handshake domain prefix): the
    handshake and the server's wall time under one signature, ``time`` always a float64."""
    out: bytes = msgpack.packb(
        [nonce, client_id, server_id, vendor_fp, float(time)],
        use_bin_type=True,
        use_single_float=False,
    )
    return out


def server_time_payload(nonce: bytes, client_id: bytes, server_id: str, time: float) -> bytes:
    """The bytes the server signs over its wall time in a welcome (after the server-time domain
    prefix): the client's nonce makes the signed time fresh, so no recorded one can be replayed."""
    out: bytes = msgpack.packb(
        [nonce, client_id, server_id, float(time)], use_bin_type=True, use_single_float=False
    )
    return out


@dataclass(frozen=True, slots=True)
class Reply:
    message: m.Message | None
    """The answer, or None when ``durable`` will make it."""
    durable: Durable | None = None
    """A change to write to the store before answering (borrow, return, enrollment)."""
    close: bool = False
    """Close the connection once the reply is written."""
    later: Callable[[], Awaitable[m.Message]] | None = None
    """The answer, from work the adapter awaits on its loop first: a seat store that is not
    this process's memory (``lanlic.cluster``). The core itself never makes one."""
    welcome: UnsignedWelcome | None = None
    """A version-3 welcome, signed with the others of its batch (``sign_welcomes``) before it
    is sent: the adapter makes a batch of the hellos that reach it within a moment."""


@dataclass(frozen=True, slots=True)
class UnsignedWelcome:
    """A version-3 welcome before its batch is signed: what differs from one welcome to the
    next (the hello's id, the server's time), and the handshake it answers (the bytes version 2
    signs: its leaf in the batch's tree). The rest of a welcome is the server's own."""

    id: int
    time: float
    handshake: bytes


#: Holders listed in one status reply, in all products (about 150 bytes each on the wire).
MAX_STATUS_HOLDERS = 1000


def _no_clock() -> tuple[float, float]:
    raise RuntimeError("the adapter must set LicenseService.clock to finish durable work")


class LicenseService:
    wire_fast_path: bool = True
    """Whether the adapter may answer renew, release and checkout from ``*_wire`` (the seats are
    this process's pool). A service whose seats live elsewhere (``lanlic.cluster``) says no."""

    def __init__(
        self,
        key: NetworkKey,
        server_key: Ed25519PrivateKey,
        config: ServiceConfig = ServiceConfig(),
        on_event: Callable[[EventFields], None] | None = None,
    ) -> None:
        self.key = key
        self.config = config
        self.pool = SeatPool(key.products, config.lease_seconds)
        self.pool.on_expired = self._expired
        self._server_key = server_key
        self.server_pub = signing.public_bytes(server_key.public_key())
        self.server_id = signing.fingerprint(self.server_pub)
        self._on_event = on_event
        self._expiry_day = (0.0, 0.0, False)  # (start, end, expired) of the last UTC day asked
        self._tails: dict[tuple[str, int], bytes] = {}
        """Packed ends of ``granted`` by (product, epoch) (``_granted_tail``)."""
        self._welcome_parts: tuple[int, tuple[bytes, bytes]] | None = None
        """The epoch, and the fixed parts of a version-3 welcome in it (``welcome_frames``)."""
        self.desk = BorrowDesk(key, self.pool, server_key, self.server_id, self._event)
        self.guard = RestartGuard(self.pool)
        self.gate = SeatGate(self.pool, self._borrowers)
        """The seat policy and the queue (lanlic.core.gate)."""
        self.gate.sweep = self.expire  # leases the gate finds dead are recorded as expired
        self._waits: dict[bytes, tuple[int, int]] = {}
        """Per queue ticket: the ``wait`` request's id, and the position last told the client."""
        self.outbox: list[tuple[bytes, m.Message]] = []
        """(client id, message) the adapter sends to connected clients: news of the queue."""
        self._clients: dict[bytes, _Client] = {}
        """Client ids the server knows (connected, or holding leases): their recent nonces."""
        self.clock: Callable[[], tuple[float, float]] = _no_clock
        """(monotonic now, UTC wall) for work finished after a durable write; the adapter
        sets it (the core reads no clock of its own)."""

    # ------------------------------------------------------------------------ the queue

    def _wait(self, session: Session, msg: m.Wait, now: float, wall: float) -> m.Message:
        if self._key_expired(wall):
            return m.Error(
                msg.id, "license_expired", f"the network key expired on {self.key.expires}"
            )
        h = session.holder
        holder = h.at_version(msg.version)
        ticket = secrets.token_bytes(16)
        result = self.gate.join(ticket, msg.product, msg.version, session.client_id, holder, now)
        if isinstance(result, Joined):
            self._waits[ticket] = (msg.id, result.position)
            self._event("queue_join", msg.product, h.user, h.host, f"position {result.position}")
            return m.Queued(msg.id, ticket, msg.product, result.position)
        if isinstance(result, Denied):
            self._event("refusal", msg.product, h.user, h.host, result.code)
            return m.Error(msg.id, result.code, result.message)
        self._lease_event("checkout", result.lease, msg.version)
        return self._granted_msg(msg.id, result.lease)

    def _granted_msg(self, rid: int, lease: Lease) -> m.Granted:
        return m.Granted(
            id=rid,
            lease=lease.id,
            product=lease.product,
            lease_s=self.pool.lease_seconds,
            epoch=self.guard.epoch,
        )

    def _waiter_left(self, w: Waiter, why: str) -> None:
        self._waits.pop(w.ticket, None)
        self._event("queue_leave", w.product, w.who.user, w.who.host, why)

    @property
    def waiting(self) -> bool:
        """Whether anyone is in the queue."""
        return bool(self._waits)

    def drain_queue(self, now: float) -> None:
        """Give freed seats to waiters in order, and tell every waiter whose place changed
        (messages go to ``outbox``). Costs one length check with nobody waiting."""
        if not self._waits:
            return
        for out in self.gate.drain_all(now):
            w = out.waiter
            rid, _ = self._waits.pop(w.ticket, (0, 0))
            if isinstance(out.result, Granted):
                self._lease_event("checkout", out.result.lease, w.version)
                self.outbox.append((w.owner, self._granted_msg(rid, out.result.lease)))
            else:
                self._event("queue_leave", w.product, w.who.user, w.who.host, out.result.code)
                self.outbox.append((w.owner, m.Error(rid, out.result.code, out.result.message)))
        for product in self.pool.products:
            for position, w in enumerate(self.gate.queue.waiters(product), 1):
                rid, told = self._waits.get(w.ticket, (0, 0))
                if told != position:
                    self._waits[w.ticket] = (rid, position)
                    self.outbox.append((w.owner, m.Queued(rid, w.ticket, product, position)))

    def waiting_owners(self) -> set[bytes]:
        return {w.owner for w in self.gate.queue.waiters()}

    def drop_waiters(self, owners: set[bytes]) -> None:
        """These clients went silent: out of the line (told, should they still be there)."""
        for owner in owners:
            for w in self.gate.queue.leave_owner(owner):
                rid, _ = self._waits.get(w.ticket, (0, 0))
                self._waiter_left(w, "vanished")
                self.outbox.append(
                    (owner, m.Error(rid, "no_seat", "dropped from the queue: no heartbeat"))
                )

    def remove_waiter(self, ticket: bytes) -> Waiter | None:
        """The admin takes a client out of the line; it is told at once."""
        w = self.gate.queue.leave(ticket)
        if w is None:
            return None
        rid, _ = self._waits.get(ticket, (0, 0))
        self._waiter_left(w, "removed by admin")
        self.outbox.append(
            (w.owner, m.Error(rid, "no_seat", "removed from the queue by the administrator"))
        )
        return w

    def _borrowers(self, product: str) -> list[Asker]:
        return [Asker(b.user, b.host) for b in self.desk.active.values() if b.product == product]

    def set_policy(self, policy: Policy, now: float, who: str = "") -> list[str]:
        """Apply a seat policy to new requests at once (held seats stay held). Returns what
        changed, written to the history with ``who``."""
        changes = self.gate.set_policy(policy)
        self.desk.file_policy = policy.borrow_terms()
        if changes:
            self._event("policy_applied", "", who, "", "; ".join(changes)[:2000])
        self.gate.drain_all(now)
        return changes

    def _borrow_policy(self, session: Session, now: float) -> BorrowCheck | None:
        """The seat policy's check for a borrow by the enrolled user and host (None: no
        policy, nothing to ask)."""
        if not self.gate.policy.products:
            return None

        def check(product: str, user: str, host: str) -> Denied | None:
            return self.gate.borrow_refused(product, Asker(user, host, session.addr), now)

        return check

    def set_event_sink(self, sink: Callable[[EventFields], None] | None) -> None:
        """Where history events go: ``(event, product, user, host, detail)``, a ``HistoryRow``
        without its time (the adapter stamps and batches them, and builds the rows off the hot
        path: a frozen dataclass costs more to make than the checkout it records)."""
        self._on_event = sink

    def _event(
        self, kind: str, product: str = "", user: str = "", host: str = "", detail: str = ""
    ) -> None:
        """Hand one history row to the adapter (``at`` is stamped there, off the core)."""
        if self._on_event is not None:
            self._on_event((kind, product, user, host, detail))

    def _lease_event(self, kind: str, lease: Lease, detail: str = "") -> None:
        if self._on_event is not None:
            h = lease.holder
            self._on_event((kind, lease.product, h.user, h.host, detail))

    def handle(self, session: Session, msg: m.Message, now: float, wall: float) -> Reply:
        if isinstance(msg, m.Renew):
            return self._renew(session, msg, now)
        if isinstance(msg, m.Checkout):
            return self._checkout(session, msg, now, wall)
        if isinstance(msg, m.Release):
            return self._release(session, msg, now)
        if isinstance(msg, m.Hello):
            return self._hello(session, msg, wall)
        if isinstance(msg, m.Status):
            return Reply(self.status(msg.id, now, wall))
        if isinstance(msg, m.Borrow):
            return self._durable(
                self.desk.borrow(msg, wall, now, self._borrow_policy(session, now))
            )
        if isinstance(msg, m.Return):
            return self._durable(self.desk.return_(msg, wall))
        if isinstance(msg, m.Present):
            return self._durable(self.desk.present(msg, wall))
        if isinstance(msg, m.Enroll):
            return self._durable(self.desk.enroll(msg, wall))
        if isinstance(msg, m.Reclaim):
            return self._reclaim(session, msg, now)
        if isinstance(msg, m.Wait):
            return Reply(self._wait(session, msg, now, wall))
        if isinstance(msg, m.Unwait):
            left = self.gate.queue.leave(msg.ticket, session.client_id)
            if left is not None:
                self._waiter_left(left, "gave up")
            return Reply(m.Unwaited(msg.id, msg.ticket, left is not None))
        if isinstance(msg, m.Bye):
            released = self.pool.release_owner(session.client_id, now)
            for lease in released:
                self._lease_event("release", lease, "bye")
            return Reply(m.Goodbye(id=msg.id, released=len(released)), close=True)
        # The connection state machine admits only the requests above.
        return Reply(m.Error(0, "unexpected_message", f"{msg.TYPE!r} is not a request"))

    @staticmethod
    def _durable(result: Durable | m.Message) -> Reply:
        if isinstance(result, Durable):
            return Reply(None, durable=result)
        return Reply(result)

    def _hello(self, session: Session, msg: m.Hello, wall: float) -> Reply:
        fields = (msg.id, msg.versions, msg.client_id, msg.user, msg.host, msg.app, msg.nonce)
        return self.hello(session, fields, wall)

    def hello(self, session: Session, fields: HelloFields, wall: float) -> Reply:
        """Answer a hello, given its fields (``requests.hello_request``, the adapter's fast
        path, or a parsed ``Hello``)."""
        rid, versions, client_id, user, host, app, nonce = fields
        common = set(versions).intersection(m.PROTOCOL_VERSIONS)
        if not common:
            return Reply(
                m.Error(
                    rid,
                    "unsupported_version",
                    f"server speaks protocol versions {list(m.PROTOCOL_VERSIONS)}, "
                    f"client offered {versions[:8]}",
                ),
                close=True,
            )
        client = self._clients.get(client_id)
        if nonce and client is not None and nonce in client.nonces:
            self._event("refusal", "", user, host, "replayed_hello")
            return Reply(
                m.Error(
                    rid,
                    "replayed_hello",
                    "this hello's nonce was used before by the same client id: a recorded "
                    "session played back? (a client makes a fresh nonce for every connection)",
                ),
                close=True,
            )
        if client is None:
            client = self._clients[client_id] = _Client()
        client.connections += 1
        if nonce:
            client.nonces.append(nonce)
            del client.nonces[:-MAX_NONCES_PER_CLIENT]
        session.version = max(common)
        session.client_id = client_id
        session.holder = Holder(user, host, app, "", session.addr)
        # The time is sent only over a nonce: without one it could be a recording (SPEC 12).
        time = wall if nonce else 0.0
        vendor_fp = self.key.vendor_fp
        if session.version >= 3:
            # Signed later, with the other hellos of its batch (``welcome_frames``, SPEC 4).
            handshake = handshake_v2_payload(nonce, client_id, self.server_id, vendor_fp, time)
            return Reply(None, welcome=UnsignedWelcome(rid, time, handshake))
        time_sig = b""
        if session.version == 2:
            # One signature for the handshake and the time (SPEC 4): an Ed25519 signature is
            # most of what a hello costs the server, and version 1 made two.
            signed = handshake_v2_payload(nonce, client_id, self.server_id, vendor_fp, time)
            signature = signing.sign(self._server_key, signing.DOMAIN_HANDSHAKE_V2, signed)
        else:
            signed = handshake_payload(nonce, client_id, self.server_id, vendor_fp)
            signature = signing.sign(self._server_key, signing.DOMAIN_HANDSHAKE, signed)
            if nonce:
                signed = server_time_payload(nonce, client_id, self.server_id, time)
                time_sig = signing.sign(self._server_key, signing.DOMAIN_SERVER_TIME, signed)
        return Reply(self._welcome(rid, session.version, signature, time, time_sig))

    def _welcome(
        self,
        rid: int,
        version: int,
        signature: bytes,
        time: float,
        time_signature: bytes = b"",
        batch_path: bytes = b"",
    ) -> m.Welcome:
        return m.Welcome(
            id=rid,
            version=version,
            server_id=self.server_id,
            lease_s=self.config.lease_seconds,
            heartbeat_s=self.config.heartbeat_seconds,
            server_key=self.server_pub,
            signature=signature,
            vendor_fp=self.key.vendor_fp,
            customer=self.key.customer,
            epoch=self.guard.epoch,
            time=time,
            time_signature=time_signature,
            batch_path=batch_path,
        )

    def _sign_batch(self, unsigned: list[UnsignedWelcome]) -> tuple[bytes, list[bytes]]:
        """One signature over the root of a batch's tree (at most ``welcomebatch.MAX_BATCH``
        welcomes), and each welcome's path to it, in the batch's order."""
        root, paths = welcomebatch.build([welcomebatch.leaf(u.handshake) for u in unsigned])
        return signing.sign(self._server_key, signing.DOMAIN_HANDSHAKE_V3, root), paths

    def sign_welcomes(self, unsigned: list[UnsignedWelcome]) -> list[m.Welcome]:
        """The version-3 welcomes of one batch, in its order, under one signature over their
        tree's root: each carries its own path."""
        signature, paths = self._sign_batch(unsigned)
        return [
            self._welcome(u.id, 3, signature, u.time, batch_path=path)
            for u, path in zip(unsigned, paths, strict=True)
        ]

    def welcome_frames(self, unsigned: list[UnsignedWelcome]) -> list[bytes]:
        """``sign_welcomes`` as frames, byte for byte ``encode_frame(to_wire(welcome))``, made
        from the parts every welcome of this server shares (``replybytes.welcome_v3``): the
        adapter's way, as a burst of clients has one each."""
        signature, paths = self._sign_batch(unsigned)
        epoch = self.guard.epoch
        parts = self._welcome_parts
        if parts is None or parts[0] != epoch:
            parts = self._welcome_parts = (
                epoch,
                replybytes.welcome_v3_parts(
                    self.server_id,
                    self.config.lease_seconds,
                    self.config.heartbeat_seconds,
                    self.server_pub,
                    self.key.vendor_fp,
                    self.key.customer,
                    epoch,
                ),
            )
        fixed = parts[1]
        return [
            replybytes.welcome_v3(u.id, fixed, signature, u.time, path)
            for u, path in zip(unsigned, paths, strict=True)
        ]

    def _key_expired(self, wall: float) -> bool:
        """Whether the network key has expired on the UTC day of ``wall`` (asked once a day)."""
        start, end, expired = self._expiry_day
        if not start <= wall < end:
            day = dt.datetime.fromtimestamp(wall, dt.UTC).date()
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
            end = start + 86400.0
            expired = self.key.is_expired(day)
            self._expiry_day = (start, end, expired)
        return expired

    def _take_seat(
        self, session: Session, rid: int, product: str, version: str, now: float, wall: float
    ) -> Lease | m.Error:
        if self._key_expired(wall):
            return m.Error(rid, "license_expired", f"the network key expired on {self.key.expires}")
        holder = session.holder.at_version(version)
        if product in self.gate.rules:  # the one lookup a product without seat rules pays
            result = self.gate.checkout(product, version, session.client_id, holder, now)
        else:
            result = self.pool.checkout(product, version, session.client_id, holder, now)
        if isinstance(result, Denied):
            self._event("refusal", product, holder.user, holder.host, result.code)
            return m.Error(rid, result.code, result.message)
        lease = result.lease
        self._lease_event("checkout", lease, version)
        return lease

    def _checkout(self, session: Session, msg: m.Checkout, now: float, wall: float) -> Reply:
        need = self._reservation_needed(msg.product, msg.version, now)
        if need is not None:
            return Reply(None, durable=self._reserve_then_checkout(session, msg, need))
        return Reply(self._granted(session, msg, now, wall))

    def _granted(self, session: Session, msg: m.Checkout, now: float, wall: float) -> m.Message:
        lease = self._take_seat(session, msg.id, msg.product, msg.version, now, wall)
        if isinstance(lease, m.Error):
            return lease
        return m.Granted(
            id=msg.id,
            lease=lease.id,
            product=lease.product,
            lease_s=self.pool.lease_seconds,
            epoch=self.guard.epoch,
        )

    def _reservation_needed(self, product: str, version: str, now: float) -> int | None:
        """With a store: the reservation to make durable before this grant (None: go ahead;
        also for requests that will be refused anyway)."""
        guard = self.guard
        if not guard.enabled or product not in self.pool.products:
            return None
        need = guard.needed(product)
        if need is None:
            return None
        if self.pool.free(product) <= 0:
            self.pool.expire(now)
            if self.pool.free(product) <= 0:
                return None  # no_seat: nothing to reserve
        return need

    def _reserve_then_checkout(self, session: Session, msg: m.Checkout, need: int) -> Durable:
        product = msg.product

        guard = self.guard
        guard.pending[product] += 1

        def commit(written: dict[str, int]) -> m.Message:
            guard.pending[product] -= 1
            guard.raised(product, max(need, written.get(product, 0)))
            now, wall = self.clock()  # time moved on while the store wrote
            # With no seat free, the checkout below says no_seat (the raise was capped at the
            # key's seats); with one free, the reservation must cover it.
            if self.pool.free(product) > 0 and not guard.covers_one_more(product):
                # Cannot happen while reservations count the ones in flight; never grant past
                # what is on disk all the same.
                return m.Error(msg.id, "server_busy", "seat reservation raced; retry")
            return self._granted(session, msg, now, wall)

        def abort(exc: Exception) -> m.Message:
            guard.pending[product] -= 1
            # The disk refused the write (full, read-only, failing): nothing was granted, and
            # the client may retry once the administrator has made room.
            self._event("refusal", product, session.holder.user, session.holder.host,
                        "store_failed")  # fmt: skip
            return m.Error(
                msg.id,
                "store_failed",
                f"the seat could not be reserved on disk (the server cannot write its data "
                f"folder; seats already held keep working): {exc}",
            )

        return _raising({product: need}, commit, abort)

    def _renew(self, session: Session, msg: m.Renew, now: float) -> Reply:
        renewed, gone = self.pool.renew_pair(_once(msg.leases), session.client_id, now)
        if not gone:
            return Reply(m.Renewed(id=msg.id, leases=renewed, lost=[]))
        # After a restart, a lease this server granted to this client before it is taken back
        # as its ``reclaim`` would (SPEC section 13); the others are ``lease_unknown``.
        guard = self.guard
        items, lost = [], []
        for lease_id in gone:
            product = guard.identify(lease_id, session.client_id) if guard.reclaimable() else None
            if product is None:
                lost.append(m.Lost(lease_id, "lease_unknown"))
            else:
                items.append((lease_id, product, ""))

        def answer(results: list[tuple[bytes, str | None]]) -> m.Message:
            back = [x for x, code in results if code is None]
            more = [m.Lost(x, code) for x, code in results if code is not None]
            return m.Renewed(id=msg.id, leases=renewed + back, lost=lost + more)

        return self._take_back(session, items, now, answer)

    def _reclaim(self, session: Session, msg: m.Reclaim, now: float) -> Reply:
        items = [(x["lease"], x["product"], x.get("version", "")) for x in msg.seats]

        def answer(results: list[tuple[bytes, str | None]]) -> m.Message:
            return m.Reclaimed(
                id=msg.id,
                leases=[x for x, code in results if code is None],
                epoch=self.guard.epoch,
                lost=[m.Lost(x, code) for x, code in results if code is not None],
            )

        return self._take_back(session, items, now, answer)

    def _take_back(
        self,
        session: Session,
        items: list[tuple[bytes, str, str]],
        now: float,
        answer: Callable[[list[tuple[bytes, str | None]]], m.Message],
    ) -> Reply:
        """Reclaim ``items`` (lease id, product, version), then ``answer`` with each one's
        outcome (None: taken back; else the code). A lease that finds no held seat takes a free
        one, and the reservation must cover that first, as for a checkout."""
        guard = self.guard
        extra = guard.beyond_held(items, session.client_id) if guard.enabled else {}
        needs = {p: n for p, k in extra.items() if (n := guard.needed(p, k)) is not None}
        if not needs:
            return Reply(answer(self._reclaim_each(session, items, now)))
        for p, k in extra.items():
            guard.pending[p] += k

        def done() -> None:
            for p, k in extra.items():
                guard.pending[p] -= k

        def commit(written: dict[str, int]) -> m.Message:
            done()
            for p, n in needs.items():
                guard.raised(p, max(n, written.get(p, 0)))
            now, _wall = self.clock()
            return answer(self._reclaim_each(session, items, now))

        def abort(exc: Exception) -> m.Message:
            done()
            return answer([(x, "store_failed") for x, _, _ in items])

        return Reply(
            None,
            durable=_raising(needs, commit, abort),
        )

    def _reclaim_each(
        self, session: Session, items: list[tuple[bytes, str, str]], now: float
    ) -> list[tuple[bytes, str | None]]:
        out: list[tuple[bytes, str | None]] = []
        h = session.holder
        for lease_id, product, version in items:
            holder = h.at_version(version)
            denied = self.guard.reclaim(lease_id, product, version, session.client_id, holder, now)
            if denied is None:
                out.append((lease_id, None))
                self._event("reclaim", product, h.user, h.host, version)
            else:
                out.append((lease_id, denied.code))
        return out

    # ----------------------------------------------------------- the fast path (wire maps)
    # The adapter's fast path for the three commonest requests: the same checks, changes and
    # events as ``handle``, but from and to wire maps, so no message object is built on the way.
    # None means "not a well-formed request of this type": the adapter then takes ``parse`` and
    # ``handle``, which say what is wrong. tests/test_fastpath.py holds both paths to the same
    # bytes and the same pool. The caller has checked the connection's state table.

    # The fast path: renew, release and checkout from wire map to frame bytes (the adapter
    # answers them without building message objects; ``None``: hand the map to ``handle``).
    # The same checks as ``handle``, the same replies: tests/net/test_fastpath.py holds the two
    # paths to the same answers. Only maps with no field but the known ones are taken, every
    # one checked here: the adapter's maps have not been through ``framing.check_map``. The
    # common cases (one lease, a seat free, nothing lost) take the pool's one-lease calls and
    # the packed replies of ``lanlic.proto.replybytes``.

    def renew_frame(
        self, session: Session, wire: dict[str, Any], now: float, wall: float
    ) -> bytes | None:
        req = lease_request(wire) if len(wire) == 3 else None  # t, id, leases: nothing else
        if req is None:
            return None
        rid, leases = req
        if len(leases) == 1 and self.pool.renew_one(leases[0], session.client_id, now):
            return replybytes.renewed(rid, leases)
        renewed, gone = self.pool.renew_pair(_once(leases), session.client_id, now)
        if not gone:
            return replybytes.renewed(rid, renewed)
        if self.guard.reclaimable():
            return None  # may be a reclaim (SPEC section 13): the general path does it
        lost = [{"lease": x, "code": "lease_unknown"} for x in gone]
        return encode_frame({"t": "renewed", "id": rid, "leases": renewed, "lost": lost})

    def release_frame(
        self, session: Session, wire: dict[str, Any], now: float, wall: float
    ) -> bytes | None:
        req = lease_request(wire) if len(wire) == 3 else None  # t, id, leases: nothing else
        if req is None:
            return None
        rid, leases = req
        if len(leases) == 1:
            lease = self.pool.release_one(leases[0], session.client_id, now)
            if lease is not None:
                self._lease_event("release", lease, "release")
                return replybytes.released_one(rid, lease.id)
        released, gone = self.pool.release_pair(_once(leases), session.client_id, now)
        for lease in released:
            self._lease_event("release", lease, "release")
        lost = [{"lease": x, "code": "lease_unknown"} for x in gone] if gone else []
        return encode_frame(
            {"t": "released", "id": rid, "leases": [x.id for x in released], "lost": lost}
        )

    def checkout_frame(
        self, session: Session, wire: dict[str, Any], now: float, wall: float
    ) -> bytes | None:
        fields = 4 if "version" in wire else 3  # t, id, product, maybe version: nothing else
        req = checkout_request(wire) if len(wire) == fields else None
        if req is None:
            return None
        rid, product, version = req
        guard = self.guard
        pool = self.pool
        if not self._key_expired(wall) and product not in self.gate.rules:
            # With a store, the grant must also fit under the reservation on disk (``room``:
            # where ``RestartGuard.needed`` says None).
            room = guard.room(product)
            holder = session.holder.at_version(version)
            lease = pool.grant(product, version, session.client_id, holder, now, room)
            if lease is not None:
                self._lease_event("checkout", lease, version)
                return replybytes.granted(rid, lease.id, self._granted_tail(product))
        if guard.enabled and product in pool.products and guard.needed(product) is not None:
            return None  # a reservation must be written first: the general path does that
        # Anything else (no seat free before a sweep, seat rules, a new day) as ``handle``
        # does it, refusals included.
        taken = self._take_seat(session, rid, product, version, now, wall)
        if isinstance(taken, m.Error):
            return encode_frame(m.to_wire(taken))
        return replybytes.granted(rid, taken.id, self._granted_tail(product))

    def _granted_tail(self, product: str) -> bytes:
        """The packed end of a ``granted`` of ``product``: the same for every grant of an
        epoch (the lease period is the pool's, fixed), so made once per product and epoch."""
        key = (product, self.guard.epoch)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = replybytes.granted_tail(
                product, self.pool.lease_seconds, key[1]
            )
        return tail

    def _release(self, session: Session, msg: m.Release, now: float) -> Reply:
        result = self.pool.release(_once(msg.leases), session.client_id, now)
        for lease in result.released:
            self._lease_event("release", lease, "release")
        lost = [m.Lost(lease, "lease_unknown") for lease in result.lost]
        return Reply(
            m.Released(id=msg.id, leases=[x.id for x in result.released], lost=lost),
        )

    def expire(self, now: float) -> list[Lease]:
        """The sweep: free the leases dead by ``now`` (recorded by ``_expired``)."""
        return self.pool.expire(now)

    def _expired(self, leases: list[Lease]) -> None:
        """Leases the pool freed as dead, by the sweep or in passing (a checkout, borrow or
        drain on a full product): each is an expiry in the history."""
        for lease in leases:
            self._lease_event("expiry", lease)
            self._forget_if_gone(lease.owner)

    def client_gone(self, client_id: bytes) -> None:
        """A connection of ``client_id`` (after an accepted hello) closed."""
        client = self._clients.get(client_id)
        if client is not None:
            client.connections -= 1
            if client.connections <= 0 and self._waits:
                # A waiter lives as long as a connection of its client: one that vanished
                # leaves the line.
                for w in self.gate.queue.leave_owner(client_id):
                    self._waiter_left(w, "vanished")
            self._forget_if_gone(client_id)

    def _forget_if_gone(self, client_id: bytes) -> None:
        """A client id with no connection and no lease is forgotten: a replay of its hello can
        no longer reach anything of its own."""
        client = self._clients.get(client_id)
        if client is not None and client.connections <= 0 and not self.pool.leases_of(client_id):
            del self._clients[client_id]

    def postpone(self, seconds: float) -> int:
        """The server's loop stalled for ``seconds``: give every lease (and the reclaim window)
        that time back before anything expires. Returns the number of leases extended."""
        self.pool.postpone(seconds)
        if self.guard.reclaim_until:
            self.guard.reclaim_until += seconds
        return len(self.pool)

    def remove(self, lease_id: bytes, now: float) -> Lease | None:
        """The admin ends a lease, whoever holds it (FlexNet's lmremove)."""
        released = self.pool.release([lease_id], None, now).released
        for lease in released:
            self._lease_event("release", lease, "removed by admin")
            self._forget_if_gone(lease.owner)
        return released[0] if released else None

    def status(self, request_id: int, now: float, wall: float) -> m.StatusReply:
        """Counts per product and who holds the seats. The holder lists are cut to
        ``MAX_STATUS_HOLDERS`` in all (oldest first) so the reply always fits in one frame;
        ``holders_total`` says how many there are (the admin page pages through all of them)."""
        products: list[dict[str, Any]] = []
        budget = MAX_STATUS_HOLDERS
        # Seats held after a restart for their clients to reclaim are held until then (UTC),
        # or until each is reclaimed.
        held_until = wall + max(0.0, self.guard.reclaim_until - now)
        for name, ent in self.pool.products.items():
            live = sorted(
                (x for x in self.pool.leases(name) if x.expires > now), key=lambda x: x.since
            )
            holders: list[dict[str, Any]] = [
                {
                    "user": x.holder.user,
                    "host": x.holder.host,
                    "app": x.holder.app,
                    "version": x.holder.version,
                    "since": wall - (now - x.since),
                    "last_heartbeat": wall - (now - x.renewed),
                }
                for x in live[: max(0, budget)]
            ]
            budget -= len(holders)
            borrowed, held = self.pool.borrowed(name), self.pool.held(name)
            products.append(
                {
                    "name": name,
                    "seats": ent.seats,
                    "in_use": len(live),
                    "borrowed": borrowed,
                    "held": held,
                    "held_until": held_until if held else None,
                    "free": max(0, ent.seats - len(live) - borrowed - held),
                    "borrowable": self.desk.terms(name).borrowable,
                    "max_borrow_days": self.desk.terms(name).max_days,
                    "addon": ent.addon,
                    "versions": list(ent.versions) if ent.versions else None,
                    "holders": holders,
                    "holders_total": len(live),
                    "queue": [
                        {
                            "position": i,
                            "user": w.who.user,
                            "host": w.who.host,
                            "since": wall - (now - w.since),
                        }
                        for i, w in enumerate(self.gate.queue.waiters(name), 1)
                    ],
                }
            )
        return m.StatusReply(
            id=request_id,
            server_id=self.server_id,
            customer=self.key.customer,
            expires=self.key.expires.isoformat(),
            products=products,
            borrows=self.desk.listing()[:MAX_STATUS_HOLDERS],
        )
