"""The seat queue of a cluster (SPEC 16, ``wait``): one line per product shared by every member.

A waiter is a key ``{prefix}/queue/{product}/{member}/{ticket}`` put under its member's etcd lease
(a dead member's waiters vanish with its lease; their clients reconnect elsewhere and ``wait``
again, as after a single server's restart). Its place in line is the key's create revision, which
etcd orders the same for every member. Each member sees the line through the watch that feeds its
seat mirror (``WaitLine``, pure) and:

- tells its own waiters their position whenever it changes;
- when seats are free (the mirror), the first that many waiters of the line are the ones served:
  the member holding one claims a free seat for it in one transaction that also deletes its
  waiter key (``claim_for_waiter``: the seat's ``create_revision == 0`` keeps never-over-grant,
  the waiter key's ``create_revision`` makes a waiter that left get nothing);
- refuses a plain ``checkout`` while the line is not empty and the free seats do not exceed the
  waiters (nobody jumps the line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lanlic.cluster.mirror import seat_key
from lanlic.core.pool import Holder
from lanlic.errors import LanlicError, NoSeat, ServerUnavailable
from lanlic.proto import messages as m

if TYPE_CHECKING:
    from lanlic.cluster.etcd import EtcdSeats, SeatHold
    from lanlic.cluster.service import ClusterService
    from lanlic.core.service import Session

log = logging.getLogger("lanlic.cluster")

__all__ = [
    "MemberQueue", "WaitLine", "claim_for_waiter", "join_line", "leave_line", "queue_prefix",
    "waiter_key",
]  # fmt: skip


def queue_prefix(prefix: str) -> bytes:
    return f"{prefix}/queue/".encode()


def waiter_key(prefix: str, product: str, member: str, ticket: bytes) -> bytes:
    return f"{prefix}/queue/{product}/{member}/{ticket.hex()}".encode()


def parse_waiter_key(prefix: str, key: bytes) -> tuple[str, str, bytes] | None:
    """(product, member, ticket) for a waiter key under the prefix, None for anything else."""
    head = queue_prefix(prefix)
    if not key.startswith(head):
        return None
    parts = key[len(head) :].decode("utf-8", "replace").rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    try:
        return parts[0], parts[1], bytes.fromhex(parts[2])
    except ValueError:
        return None


@dataclass
class WaitLine:
    """The waiters of every product as last seen through the watch: key -> create revision."""

    prefix: str
    lines: dict[str, dict[bytes, int]] = field(default_factory=dict)
    who: dict[bytes, tuple[str, str, float]] = field(default_factory=dict)
    """Waiter key -> (user, host, since: UTC seconds) from its value, for status."""
    _gone: set[bytes] = field(default_factory=set)
    """Keys seen deleted: a late put (a join's own reply after the watch showed its delete, the
    member's lease lost meanwhile) never brings one back. Keys are never reused (random tickets)."""

    def load(self, keys: list[tuple[bytes, int, bytes]]) -> None:
        self.lines = {}
        self.who = {}
        for key, created, value in keys:
            self.put(key, created, value)

    def put(self, key: bytes, create_revision: int, value: bytes = b"") -> None:
        got = parse_waiter_key(self.prefix, key)
        if got is not None and key not in self._gone:
            self.lines.setdefault(got[0], {})[key] = create_revision
            if value:
                try:
                    d = json.loads(value)
                    self.who[key] = (str(d["user"]), str(d["host"]), float(d.get("since", 0)))
                except (ValueError, KeyError, TypeError):
                    pass

    def delete(self, key: bytes) -> None:
        got = parse_waiter_key(self.prefix, key)
        if got is not None:
            self._gone.add(key)
            self.who.pop(key, None)
            line = self.lines.get(got[0])
            if line is not None:
                line.pop(key, None)
                if not line:
                    del self.lines[got[0]]

    def waiting(self, product: str) -> int:
        return len(self.lines.get(product, ()))

    def order(self, product: str) -> list[bytes]:
        """The product's waiter keys, first in line first."""
        line = self.lines.get(product, {})
        return sorted(line, key=line.__getitem__)

    def __contains__(self, key: bytes) -> bool:
        got = parse_waiter_key(self.prefix, key)
        return got is not None and key in self.lines.get(got[0], {})


async def join_line(
    seats: EtcdSeats, product: str, ticket: bytes, who: dict[str, str | int]
) -> bytes:
    """Put the waiter's key under this member's lease; its create revision is its place."""
    from lanlic.cluster.etcd import Unreachable

    seats.check_fence()
    key = waiter_key(seats.prefix, product, seats.member, ticket)
    value = json.dumps(who).encode()
    try:
        await seats.put(key, value, leased=True)
    except Unreachable as e:
        # It may have committed: a key of ours the member does not know is deleted by its drain.
        raise ServerUnavailable("etcd did not answer; try again") from e
    # Read the product's whole line back, not only our key: a waiter that joined just before
    # us through another member may not have reached this member's watch yet, and the place we
    # tell must count it (it did: once, dan was told 1 and then 2 behind a cat of another member).
    line_head = queue_prefix(seats.prefix) + f"{product}/".encode()
    try:
        got = await seats.read_prefix(line_head)
    except Unreachable as e:
        raise ServerUnavailable("etcd did not answer; try again") from e
    ours = False
    for kv in got:
        seats.line.put(kv.key, kv.create_revision, kv.value)
        ours = ours or kv.key == key
    if not ours:  # pragma: no cover - our lease was lost meanwhile
        raise ServerUnavailable("the place in line was lost; try again")
    return key


async def leave_line(seats: EtcdSeats, key: bytes) -> None:
    """Delete a waiter's key (it gave up, its client went away, or it is a ghost)."""
    await seats.delete(key)
    seats.line.delete(key)


async def claim_for_waiter(
    seats: EtcdSeats,
    product: str,
    key: bytes,
    client: str,
    client_lease: str,
    who: tuple[str, str, int],
) -> SeatHold | None:
    """Claim a free seat for the waiter ``key`` and delete its key, in one transaction. Returns
    the seat, None if the seat's race was lost (try again), or raises NoSeat if the waiter left
    the line meanwhile (its key is gone), ServerUnavailable if etcd did not answer."""
    from lanlic.cluster.etcd import Created, Delete, Get, KeyState, Put, SeatHold, Unreachable
    from lanlic.cluster.etcd import Holder as SeatHolder

    seats.check_fence()
    created = seats.line.lines.get(product, {}).get(key)
    if created is None:
        raise NoSeat("no longer in line")
    free = seats.free_seats(product)
    if not free:
        return None
    index = free[secrets.randbelow(len(free))]
    skey = seat_key(seats.prefix, product, index)
    holder = SeatHolder(seats.member, client, client_lease, secrets.token_hex(8), *who)
    with seats.reserving(product, index):
        try:
            won, responses = await seats.txn(
                [Created(skey), Created(key, created)],
                [Put(skey, holder.encode(), leased=True), Delete(key), Get(skey)],
                [Get(skey), Get(key)],
            )
        except Unreachable:
            got = await seats.read_back_claim(skey, holder)
            if isinstance(got, KeyState):
                seats.line.delete(key)
                return SeatHold(product, index, skey, got.mod_revision, holder)
            if isinstance(got, Exception):
                raise got from None
            return None
    if won:
        state = responses[-1][0]
        seats.mirror.put(skey, state.mod_revision, holder.lease)
        seats.line.delete(key)
        return SeatHold(product, index, skey, state.mod_revision, holder)
    seat_kvs, waiter_kvs = responses[0], responses[1]
    if seat_kvs:
        seats.note_seat(seat_kvs[0])
    if not waiter_kvs:
        seats.line.delete(key)
        raise NoSeat("no longer in line")
    return None


@dataclass
class _Waiter:
    """One of this member's own waiters."""

    ticket: bytes
    product: str
    version: str
    owner: bytes
    holder: Holder
    key: bytes
    rid: int
    told: int = 0
    """The position last told the client (0: its ``queued`` reply is not sent yet)."""


class MemberQueue:
    """This member's waiters in the shared line: joins, leaves, grants and their news. The
    messages go to the service's ``outbox`` (the adapter sends them, as for a single server)."""

    def __init__(self, service: ClusterService) -> None:
        self.service = service
        self.seats = service.seats
        self.mine: dict[bytes, _Waiter] = {}
        """Ticket -> waiter, for the waiters that joined through this member."""
        self._by_key: dict[bytes, bytes] = {}
        self._granting: set[bytes] = set()
        self._deleting: set[bytes] = set()

    # -------------------------------------------------------------------- requests

    async def join(self, session: Session, msg: m.Wait, wall: float) -> m.Message:
        """A ``wait`` that found no seat it may take at once: into the line."""
        h = session.holder
        ticket = secrets.token_bytes(16)
        key = waiter_key(self.seats.prefix, msg.product, self.seats.member, ticket)
        w = _Waiter(ticket, msg.product, msg.version, session.client_id,
                    h.at_version(msg.version), key, msg.id)  # fmt: skip
        self.mine[ticket] = w
        self._by_key[key] = ticket  # before the put: the watch may show it before etcd answers
        who: dict[str, str | int] = {"member": self.seats.member, "client": session.client_id.hex(),
               "user": h.user, "host": h.host, "since": int(wall)}  # fmt: skip
        try:
            await join_line(self.seats, msg.product, ticket, who)
        except LanlicError as exc:
            self._forget(w)
            return m.Error(msg.id, exc.code, exc.message)
        if ticket not in self.mine:  # its client went away meanwhile
            self._delete(key)
            return m.Error(msg.id, "no_seat", "left the line")
        order = self.seats.line.order(msg.product)
        w.told = order.index(key) + 1 if key in order else 1
        self.service._event("queue_join", msg.product, h.user, h.host, f"position {w.told}")
        return m.Queued(msg.id, ticket, msg.product, w.told)

    def unwait(self, session: Session, msg: m.Unwait) -> m.Unwaited:
        w = self.mine.get(msg.ticket)
        if w is None or w.owner != session.client_id:
            return m.Unwaited(msg.id, msg.ticket, False)
        self._leave(w, "gave up")
        return m.Unwaited(msg.id, msg.ticket, True)

    def owner_gone(self, owner: bytes, why: str = "vanished") -> list[_Waiter]:
        """Every waiter of this client leaves the line (its last connection closed)."""
        gone = [w for w in self.mine.values() if w.owner == owner]
        for w in gone:
            self._leave(w, why)
        return gone

    def owners(self) -> set[bytes]:
        return {w.owner for w in self.mine.values()}

    # ------------------------------------------------------------------- the drain

    def drain(self) -> None:
        """Serve the heads of the line that are ours while seats are free, delete our keys no
        waiter knows (a join whose reply was lost), and tell our waiters their positions."""
        line = self.seats.line
        products = set(line.lines) | {w.product for w in self.mine.values()}
        for product in products:
            seats = self.seats.products.get(product, 0)
            free = seats - self.seats.mirror.in_use(product)
            order = line.order(product)
            for i, key in enumerate(order):
                ticket = self._by_key.get(key)
                if ticket is None:
                    got = parse_waiter_key(self.seats.prefix, key)
                    if got is not None and got[1] == self.seats.member:
                        self._delete(key)
                    continue
                w = self.mine[ticket]
                if not w.told or ticket in self._granting:
                    continue
                if i < free:
                    self._granting.add(ticket)
                    self.service._spawn(self._grant(w))
                elif i + 1 != w.told:
                    w.told = i + 1
                    self.service.outbox.append(
                        (w.owner, m.Queued(w.rid, w.ticket, product, w.told))
                    )
        for w in list(self.mine.values()):
            if w.told and w.key not in line and w.ticket not in self._granting:
                # Its key is gone though it never left: this member's etcd lease ended.
                self._forget(w)
                self.service._event("queue_leave", w.product, w.holder.user, w.holder.host, "lost")
                self.service.outbox.append((w.owner, m.Error(
                    w.rid, "no_seat",
                    "the place in line was lost with this member's etcd lease: wait again",
                )))  # fmt: skip

    async def _grant(self, w: _Waiter) -> None:
        """Claim a seat for a head of the line; on a lost race it is tried again at the next
        drain (a change of the line or of the seats, or the next request)."""
        svc = self.service
        lease_id = svc.pool.random_bytes(16)
        _now, wall = svc.clock()
        who = (w.holder.user, w.holder.host, int(wall))
        try:
            hold = await claim_for_waiter(
                self.seats, w.product, w.key, w.owner.hex(), lease_id.hex(), who
            )
        except NoSeat:
            hold = None  # it left the line meanwhile (drain tells it if it did not)
        except LanlicError as exc:
            log.info("queue: a seat for a waiter of %s failed (%s); tried again", w.product, exc)
            hold = None
        finally:
            self._granting.discard(w.ticket)
        if hold is None:
            return
        self._forget(w)
        granted = svc._hold(hold, lease_id, w.owner, w.holder)
        if isinstance(granted, m.Error):
            svc.outbox.append((w.owner, m.Error(w.rid, granted.code, granted.message)))
            return
        svc._lease_event("checkout", granted, w.version)
        svc.outbox.append((w.owner, svc._granted_msg(w.rid, granted)))

    # -------------------------------------------------------------------- plumbing

    def _forget(self, w: _Waiter) -> None:
        self.mine.pop(w.ticket, None)
        self._by_key.pop(w.key, None)

    def _leave(self, w: _Waiter, why: str) -> None:
        self._forget(w)
        self.service._event("queue_leave", w.product, w.holder.user, w.holder.host, why)
        if w.told:
            self._delete(w.key)

    def _delete(self, key: bytes) -> None:
        """Delete a waiter key in the background, retried while etcd does not answer (it is
        under this member's lease: at worst it goes with the lease)."""
        if key in self._deleting:
            return
        self._deleting.add(key)

        async def delete() -> None:
            from lanlic.cluster.etcd import Unreachable

            try:
                for _ in range(20):
                    try:
                        await leave_line(self.seats, key)
                        return
                    except Unreachable:
                        await asyncio.sleep(0.25)
            finally:
                self._deleting.discard(key)

        self.service._spawn(delete())
