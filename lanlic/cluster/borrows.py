"""Borrows and enrollments of a cluster, as keys in etcd that no etcd lease times.

A borrow takes a seat out of the pool the same way a checkout does: it *creates the seat's key*
``{prefix}/seats/{product}/{index}`` (valued ``{"borrow": ID}``, under no etcd lease), so the
watch-fed mirror and every member's claim path count it against the key with no code of their own,
and seats in use + borrowed can never exceed the key whatever the interleaving: both are keys in
one range of indexes, each created only with ``create_revision == 0``. The borrowable count is kept
the same way: one of ``borrowable`` slot keys ``{prefix}/lent/{product}/{slot}``. One transaction
creates the seat key, the slot key, the request record ``{prefix}/requests/{request id}`` and the
borrow's record ``{prefix}/borrows/{borrow id}`` (the signed file, the borrower, the end), each
compared absent: so a retry with the same request id, through any member, finds the borrow made
and gets it back, never a second seat.

Ending a borrow (return, expiry, through any member) is one transaction: compare the record's
``mod_revision`` and that ``{prefix}/ended/{borrow id}`` is absent; delete the record, the seat,
the slot and the request, and create the ``ended`` key (state, container, end, which member).
Two members ending the same borrow at once (two reapers, a return racing the reaper): one
transaction wins, the other's compare fails, and the ``ended`` key is written once.

Why no etcd leases: etcd resets every lease to its full TTL on a leader change, so a lease cannot
time a borrow of days. Every member runs a reaper (``lanlic.cluster.service``) on its anchored
wall clock (``lanlic.core.clock``); the borrow's end is the date signed in its file.

Durability: a borrow, a return and an enrollment are answered after etcd committed them, that is
after a majority of the etcd members fsynced them to their logs: that stands for the single
server's fsync before yes. A transaction whose reply was lost (its etcd member died, a timeout)
may have committed: the request record is read back (linearizable, across endpoints) before
answering; if it cannot be read, the answer is ``server_unavailable`` and the laptop retries with
the same request id, which the request record makes safe.

Enrollments: ``{prefix}/enrolled/{container fingerprint}``, a JSON record, no lease.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from dataclasses import asdict, dataclass

from lanlic.cluster.etcd import (
    Compare,
    Created,
    Delete,
    EtcdSeats,
    Get,
    KeyState,
    Modified,
    Op,
    Put,
    Unreachable,
)
from lanlic.cluster.mirror import seat_key
from lanlic.core.records import EnrollmentRecord
from lanlic.errors import ServerUnavailable

__all__ = ["BorrowEntry", "Ended", "EtcdBorrows"]

log = logging.getLogger("lanlic.cluster")

ENDED_RETENTION = 30 * 86400.0
"""Seconds an ``ended`` key is kept past the borrow's end (the date signed in its file). Until its
end a laptop may still present or return the file, and the key answers ``returned`` or
``already``; once the end has passed, ``present`` answers ``expired`` from the file itself and a
late return hears ``borrow_unknown``, so the key serves nothing. A month's slack keeps it for
people reading etcd after an incident; the members' histories keep the borrow for good."""


@dataclass(frozen=True, slots=True)
class BorrowEntry:
    """An active borrow as kept in etcd (``{prefix}/borrows/{borrow_id}``): written by the
    borrow's transaction, deleted by its end, whose outcome is a key of its own (``Ended``).

    Not the single server's ``lanlic.core.lending.ActiveBorrow`` (in memory, mutable, with a
    write in flight) nor its ``lanlic.core.records.BorrowRecord`` (the database's row, kept after
    the end with its state), though it starts with their fields: it names the seat and the
    ``lent`` slot keys the borrow holds in etcd, which its end deletes."""

    borrow_id: str
    request_id: str
    product: str
    container_fp: str
    user: str
    host: str
    start: float
    end: float
    file: bytes
    seat: int
    slot: int
    """The ``lent`` slot it holds; -1 for a borrow adopted from a presented file with none free."""

    def encode(self) -> bytes:
        d = asdict(self)
        d["file"] = base64.b64encode(self.file).decode()
        return json.dumps(d).encode()

    @classmethod
    def decode(cls, raw: bytes) -> BorrowEntry | None:
        try:
            d = json.loads(raw)
            return cls(
                str(d["borrow_id"]), str(d["request_id"]), str(d["product"]),
                str(d["container_fp"]), str(d["user"]), str(d["host"]), float(d["start"]),
                float(d["end"]), base64.b64decode(d["file"]), int(d["seat"]), int(d["slot"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Ended:
    """How a borrow ended (``{prefix}/ended/{borrow_id}``): written once, by whoever ended it."""

    state: str
    """``returned`` or ``expired``."""
    container_fp: str
    end: float
    """The borrow's end as signed in its file."""
    at: float
    by: str
    """The member that ended it."""

    @classmethod
    def decode(cls, raw: bytes) -> Ended | None:
        try:
            d = json.loads(raw)
            return cls(
                str(d["state"]), str(d["container_fp"]), float(d["end"]), float(d["at"]),
                str(d["by"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None


def _enrollment_json(e: EnrollmentRecord) -> bytes:
    d = asdict(e)
    d["container_key"] = e.container_key.hex()
    return json.dumps(d).encode()


def _enrollment_of(raw: bytes) -> EnrollmentRecord | None:
    try:
        d = json.loads(raw)
        return EnrollmentRecord(
            str(d["container_fp"]), bytes.fromhex(d["container_key"]), str(d["kind"]),
            str(d["machine_fp"]), str(d["user"]), str(d["host"]), float(d["enrolled_at"]),
            str(d["via"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


class EtcdBorrows:
    """The cluster's borrowing records, through a member's ``EtcdSeats`` (its endpoints, its
    rotation on failure, its mirror)."""

    def __init__(self, seats: EtcdSeats) -> None:
        self.seats = seats
        self.prefix = seats.prefix

    # -- keys ------------------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> bytes:
        return f"{self.prefix}/{kind}/{name}".encode()

    def lent_prefix(self, product: str) -> bytes:
        return f"{self.prefix}/lent/{product}/".encode()

    # -- enrollment ------------------------------------------------------------------------------

    async def enrollment(self, container_fp: str) -> EnrollmentRecord | None:
        if not container_fp:
            return None
        state = await self._read(self._key("enrolled", container_fp))
        return None if state is None else _enrollment_of(state.value)

    async def enrollments(self) -> list[EnrollmentRecord]:
        """Every enrollment (one range read: the admin page's list of machines)."""
        head = self._key("enrolled", "")
        got = await self.seats.read_prefix(head)
        found = (_enrollment_of(kv.value) for kv in got)
        return [e for e in found if e is not None]

    async def enroll(self, record: EnrollmentRecord) -> None:
        """Keep the enrollment (a put: enrolling again replaces it, as on a single server).
        A put whose reply was lost is read back, and put again if it is not there."""
        key, value = self._key("enrolled", record.container_fp), _enrollment_json(record)
        for _ in range(3):
            try:
                await self.seats.put(key, value)
                return
            except Unreachable:
                state = await self._read(key)
                if state is not None and state.value == value:
                    return
        raise ServerUnavailable("etcd did not take the enrollment; try again")

    # -- reading ---------------------------------------------------------------------------------

    async def _read(self, key: bytes) -> KeyState | None:
        try:
            return await self.seats.read(key)
        except Unreachable as e:
            raise ServerUnavailable("etcd did not answer; try again") from e

    async def by_request(self, request_id: str) -> BorrowEntry | None:
        """The borrow a request id made, if it is still active."""
        state = await self._read(self._key("requests", request_id))
        if state is None:
            return None
        got = await self.get(state.value.decode())
        return None if got is None else got[0]

    async def get(self, borrow_id: str) -> tuple[BorrowEntry, int] | None:
        """An active borrow and its record's ``mod_revision``."""
        state = await self._read(self._key("borrows", borrow_id))
        if state is None:
            return None
        entry = BorrowEntry.decode(state.value)
        return None if entry is None else (entry, state.mod_revision)

    async def ended(self, borrow_id: str) -> Ended | None:
        state = await self._read(self._key("ended", borrow_id))
        return None if state is None else Ended.decode(state.value)

    async def lent(self, product: str) -> set[int]:
        """The ``lent`` slots of ``product`` in use (a linearizable read)."""
        head = self.lent_prefix(product)
        try:
            got = await self.seats.read_prefix(head, keys_only=True)
        except Unreachable as e:
            raise ServerUnavailable("etcd did not answer; try again") from e
        slots = set()
        for kv in got:
            tail = kv.key[len(head) :]
            if tail.isdigit():
                slots.add(int(tail))
        return slots

    async def active(self) -> list[tuple[BorrowEntry, int]]:
        """Every active borrow with its record's ``mod_revision``."""
        head = self._key("borrows", "")
        got = await self.seats.read_prefix(head)
        out = []
        for kv in got:
            entry = BorrowEntry.decode(kv.value)
            if entry is not None:
                out.append((entry, kv.mod_revision))
        return out

    # -- writing ---------------------------------------------------------------------------------

    async def create(self, entry: BorrowEntry) -> tuple[BorrowEntry | None, bool]:
        """Make the borrow in one transaction. Returns (the borrow, True) if this call made it,
        (the borrow its request id made earlier, False) if that exists, (None, False) if the
        seat or the slot was taken meanwhile (the mirror learns the seat's holder)."""
        seat = seat_key(self.prefix, entry.product, entry.seat)
        request = self._key("requests", entry.request_id)
        record = self._key("borrows", entry.borrow_id)
        compare: list[Compare] = [Created(seat), Created(request)]
        success: list[Op] = [
            Put(seat, json.dumps({"borrow": entry.borrow_id}).encode()),
            Put(request, entry.borrow_id.encode()),
            Put(record, entry.encode()),
        ]
        if entry.slot >= 0:
            slot = self._key("lent", f"{entry.product}/{entry.slot}")
            compare.append(Created(slot))
            success.append(Put(slot, entry.borrow_id.encode()))
        success.append(Get(seat))
        try:
            won, responses = await self.seats.txn(compare, success, [Get(request), Get(seat)])
        except Unreachable as e:
            # It may have committed (the etcd member died with its reply): read back.
            made = await self.by_request(entry.request_id)
            if made is not None:
                return made, made.borrow_id == entry.borrow_id
            raise ServerUnavailable(
                "etcd did not answer the borrow: ask again with the same request"
            ) from e
        if won:
            kvs = responses[-1]
            if kvs:
                self.seats.mirror.put(seat, kvs[0].mod_revision)
            return entry, True
        request_kvs, seat_kvs = responses[0], responses[1]
        if seat_kvs:
            self.seats.mirror.put(seat, seat_kvs[0].mod_revision)
        if request_kvs:
            got = await self.get(request_kvs[0].value.decode())
            if got is not None:
                return got[0], False
        return None, False

    async def end(self, entry: BorrowEntry, mod_revision: int, state: str, at: float) -> bool:
        """End an active borrow (``returned``, ``expired``): True if this call ended it, False
        if someone else did first (the record changed or the ``ended`` key exists)."""
        record = self._key("borrows", entry.borrow_id)
        ended = self._key("ended", entry.borrow_id)
        value = json.dumps(
            {"state": state, "container_fp": entry.container_fp, "end": entry.end, "at": at,
             "by": self.seats.member}
        ).encode()  # fmt: skip
        success: list[Op] = [
            Delete(record),
            Delete(seat_key(self.prefix, entry.product, entry.seat)),
            Delete(self._key("requests", entry.request_id)),
            Put(ended, value),
        ]
        if entry.slot >= 0:
            success.append(Delete(self._key("lent", f"{entry.product}/{entry.slot}")))
        try:
            won, _ = await self.seats.txn(
                [Modified(record, mod_revision), Created(ended)], success, []
            )
        except Unreachable as e:
            # It may have committed: the ``ended`` key says who ended it.
            got = await self.ended(entry.borrow_id)
            if got is not None:
                return got.by == self.seats.member and got.at == at
            raise ServerUnavailable("etcd did not answer; try again") from e
        return bool(won)

    async def prune_ended(self, wall: float, retention: float = ENDED_RETENTION) -> list[str]:
        """Delete the ``ended`` keys of borrows whose end is more than ``retention`` before
        ``wall`` (``old_ended``, then ``delete_ended``). Returns the borrow ids this call
        deleted; another member pruning at once deletes the others."""
        return await self.delete_ended(await self.old_ended(wall, retention))

    async def old_ended(self, wall: float, retention: float = ENDED_RETENTION) -> list[KeyState]:
        """The ``ended`` keys whose borrow's end is more than ``retention`` before ``wall`` (an
        unreadable one is kept: not ours to judge)."""
        got = await self.seats.read_prefix(self._key("ended", ""))
        return [
            kv
            for kv in got
            if (e := Ended.decode(kv.value)) is not None and e.end + retention <= wall
        ]

    async def delete_ended(self, keys: list[KeyState]) -> list[str]:
        """Delete each ``ended`` key with a compare on the ``mod_revision`` read: members pruning
        at once delete each key once (the others' compare fails, the key being gone). Returns
        the borrow ids this call deleted. A delete that went unanswered is left to a later
        prune (had it gone through, that one no longer finds the key)."""
        head = self._key("ended", "")
        pruned = []
        for kv in keys:
            try:
                won, _ = await self.seats.txn(
                    [Modified(kv.key, kv.mod_revision)], [Delete(kv.key)], []
                )
            except Unreachable:
                break
            if won:
                pruned.append(kv.key[len(head) :].decode())
        return pruned

    def free_seat(self, product: str, seats: int, tried: set[int]) -> int | None:
        """A seat index free as far as the mirror knows (not in ``tried``), picked at random
        so that members borrowing at once seldom race for one seat."""
        free = [i for i in self.seats.mirror.free(product, seats) if i not in tried]
        return random.choice(free) if free else None  # noqa: S311 (spreads members; not secret)
