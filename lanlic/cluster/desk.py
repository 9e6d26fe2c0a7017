"""A cluster member's borrowing desk: enroll, borrow, return, present and the reaper, with the
records in etcd (``lanlic.cluster.borrows``) instead of the single server's SQLite.

The rules are the single server's, called, not copied: ``lanlic.core.lending`` decides who may
borrow (``check_borrow``: key, version, enrollment, proof, terms, the borrowable count), return
(``check_return``) and present (``check_presented``), and its ``BorrowDesk.enroll`` makes the
enrollment response and record. The file is issued by ``lanlic.core.borrowing`` with the shared
``server.key`` exactly as a single server issues it, so a laptop cannot tell which member, or
whether a cluster, lent it. What differs is where the seat is counted: a borrow creates the
seat's key in etcd (see ``lanlic.cluster.borrows``), so the count is the cluster's.

Every method returns the answer (an error too) for ``Reply.later``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.cluster.borrows import BorrowEntry, EtcdBorrows
from lanlic.cluster.etcd import Unreachable
from lanlic.core import borrowing
from lanlic.core.lending import (
    BorrowDesk,
    _utc_text,
    check_borrow,
    check_presented,
    check_return,
    container_fp,
)
from lanlic.core.netkey import NetworkKey
from lanlic.core.records import EnrollmentRecord
from lanlic.errors import LanlicError
from lanlic.proto import messages as m

if TYPE_CHECKING:
    pass

__all__ = ["ClusterDesk"]

log = logging.getLogger("lanlic.cluster")

#: Seats tried per borrow before answering ``server_busy`` (each loss is another member's win).
BORROW_ATTEMPTS = 8

#: Seconds between two prunes of the ``ended`` keys by one member's reaper (a range read of
#: them all, so not at every reap).
PRUNE_INTERVAL = 3600.0

Event = Callable[..., None]


def _error(rid: int, exc: LanlicError) -> m.Error:
    return m.Error(rid, exc.code, exc.message)


class ClusterDesk:
    def __init__(
        self,
        key: NetworkKey,
        desk: BorrowDesk,
        server_key: Ed25519PrivateKey,
        records: EtcdBorrows,
        event: Callable[[str, str, str, str, str], None],
    ) -> None:
        self.key = key
        self.desk = desk
        self.records = records
        self._server_key = server_key
        self._event = event
        self.view: list[BorrowEntry] = []
        """The active borrows as the reaper last read them (for status)."""
        self.raced = 0
        """Expiries this member's reaper found ended by another member first."""
        self.pruned = 0
        """``ended`` keys this member's reaper deleted past their retention."""
        self._next_prune = 0.0

    @property
    def server_id(self) -> str:
        return self.desk.server_id

    # ------------------------------------------------------------------------ enrollment

    async def enroll(self, msg: m.Enroll, wall: float) -> m.Message:
        made = self.desk.enroll(msg, wall)
        if isinstance(made, m.Message):
            return made
        assert made.record is not None  # BorrowDesk.enroll's write names its record
        try:
            await self.records.enroll(made.record)
        except LanlicError as exc:
            return _error(msg.id, exc)
        return made.commit(None)

    # ---------------------------------------------------------------------------- borrow

    async def borrow(self, msg: m.Borrow, wall: float) -> m.Message:
        try:
            return await self._borrow(msg, wall)
        except LanlicError as exc:
            return _error(msg.id, exc)

    async def _borrow(self, msg: m.Borrow, wall: float) -> m.Message:
        rid = msg.request_id.hex()
        # A retry of a borrow made already (through any member) gets it back, never a second.
        made = await self.records.by_request(rid)
        if made is not None:
            return m.Borrowed(msg.id, made.borrow_id, made.file, made.end)
        fp = container_fp(msg.container_key)
        ent = self.desk.pool.products.get(msg.product)
        enrollment = await self.records.enrollment(fp)
        terms = self.desk.terms(msg.product) if ent is not None else None
        lent = await self.records.lent(msg.product) if ent is not None else set()
        try:
            enrollment, ent = check_borrow(
                msg, ent, enrollment,
                server_id=self.server_id, key_kind=self.key.borrow_kind, terms=terms,
                active_borrows=len(lent),
            )  # fmt: skip
        except LanlicError as exc:
            who = enrollment or EnrollmentRecord("", b"", "", "", "", "", 0.0, "")
            self._event("refusal", msg.product, who.user, who.host, exc.code)
            return _error(msg.id, exc)
        assert terms is not None
        borrow_id, start, end, file = self.desk.issue(msg, ent, enrollment, wall)
        tried: set[int] = set()
        for _ in range(BORROW_ATTEMPTS):
            seat = self.records.free_seat(msg.product, ent.seats, tried)
            if seat is None:
                self._event("refusal", msg.product, enrollment.user, enrollment.host, "no_seat")
                return m.Error(msg.id, "no_seat", f"no seat of {msg.product} is free to borrow")
            slots = [i for i in range(terms.borrowable) if i not in lent]
            if not slots:
                code = "no_borrowable_seat"
                self._event("refusal", msg.product, enrollment.user, enrollment.host, code)
                return m.Error(
                    msg.id, code,
                    f"all {terms.borrowable} borrowable seats of {msg.product} are borrowed",
                )  # fmt: skip
            tried.add(seat)
            entry = BorrowEntry(
                borrow_id, rid, msg.product, enrollment.container_fp, enrollment.user,
                enrollment.host, start, end, file, seat, secrets.choice(slots),
            )  # fmt: skip
            got, mine = await self.records.create(entry)
            if got is not None:
                if mine:
                    self._event(
                        "borrow", msg.product, enrollment.user, enrollment.host,
                        f"{borrow_id} until {_utc_text(end)}",
                    )  # fmt: skip
                return m.Borrowed(msg.id, got.borrow_id, got.file, got.end)
            lent = await self.records.lent(msg.product)
        return m.Error(msg.id, "server_busy", "other borrows kept taking the seats; try again")

    # ---------------------------------------------------------------------------- return

    async def return_(self, msg: m.Return, wall: float) -> m.Message:
        fp = check_return(msg, self.server_id)
        if isinstance(fp, m.Error):
            return fp
        unknown = m.Error(msg.id, "borrow_unknown", f"no borrow {msg.borrow_id!r}")
        try:
            got = await self.records.get(msg.borrow_id)
            if got is None:
                # Ended already (returned, expired) or never ours: returning again does no
                # harm, but only the container that borrowed may hear about it.
                ended = await self.records.ended(msg.borrow_id)
                if ended is None or ended.container_fp != fp:
                    return unknown
                return m.Returned(msg.id, msg.borrow_id, already=True)
            entry, mod = got
            if entry.container_fp != fp:
                return unknown
            mine = await self.records.end(entry, mod, "returned", wall)
        except LanlicError as exc:
            return _error(msg.id, exc)
        if mine:
            self._event("return", entry.product, entry.user, entry.host, entry.borrow_id)
        return m.Returned(msg.id, msg.borrow_id, already=not mine)

    # --------------------------------------------------------------------------- present

    async def present(self, msg: m.Present, wall: float) -> m.Message:
        lic = check_presented(msg, self._server_key, self.server_id)
        if isinstance(lic, m.Error):
            return lic
        try:
            return await self._present(msg, lic, wall)
        except LanlicError as exc:
            return _error(msg.id, exc)

    async def _present(
        self, msg: m.Present, lic: borrowing.BorrowedLicense, wall: float
    ) -> m.Message:
        got = await self.records.get(lic.borrow_id)
        if got is not None:
            return m.Presented(msg.id, lic.borrow_id, "active", got[0].end)
        ended = await self.records.ended(lic.borrow_id)
        if ended is not None:
            return m.Presented(msg.id, lic.borrow_id, ended.state, ended.end)
        if lic.end <= wall:
            return m.Presented(msg.id, lic.borrow_id, "expired", lic.end)
        ent = self.desk.pool.products.get(lic.product)
        if ent is None:
            return m.Error(
                msg.id, "not_borrowable",
                f"the network key served now has no product {lic.product!r}; not counted",
            )  # fmt: skip
        # A genuine file etcd has no record of (etcd restored from an older backup): written
        # down and counted until its end, over the seats if it must be, as a single server does.
        fp = container_fp(lic.container_key)
        if await self.records.enrollment(fp) is None:
            await self.records.enroll(
                EnrollmentRecord(
                    fp,
                    lic.container_key,
                    lic.kind,
                    lic.machine_fp,
                    lic.user,
                    lic.host,
                    wall,
                    "adopted",
                )
            )
        terms = self.desk.terms(lic.product)
        tried: set[int] = set()
        for _ in range(BORROW_ATTEMPTS):
            seat = self.records.free_seat(lic.product, ent.seats, tried)
            over = seat is None
            if seat is None:  # counted over the seats: nothing is granted until one is back
                seat = ent.seats
                while self.records.seats.mirror.mod_revision(lic.product, seat) is not None:
                    seat += 1
            tried.add(seat)
            lent = await self.records.lent(lic.product)
            slots = [i for i in range(terms.borrowable) if i not in lent]
            entry = BorrowEntry(
                lic.borrow_id, "adopted:" + lic.borrow_id, lic.product, fp, lic.user, lic.host,
                lic.start, lic.end, msg.file, seat, secrets.choice(slots) if slots else -1,
            )  # fmt: skip
            made, mine = await self.records.create(entry)
            if made is not None:
                if mine:
                    note = "; no seat was free: the product is over its seats" if over else ""
                    self._event(
                        "borrow_adopted", lic.product, lic.user, lic.host,
                        f"{lic.borrow_id} until {_utc_text(lic.end)}, unknown to etcd{note}",
                    )  # fmt: skip
                    return m.Presented(msg.id, lic.borrow_id, "adopted", lic.end)
                return m.Presented(msg.id, lic.borrow_id, "active", lic.end)
        return m.Error(msg.id, "server_busy", "the seats kept changing; try again")

    # ---------------------------------------------------------------------------- reaper

    async def reap(self, wall: float) -> tuple[list[BorrowEntry], float | None]:
        """End every borrow whose end has come, as of the anchored ``wall``: (those this call
        ended, the next end still to come). Another member's reaper may end some first: its
        transaction wins, ours finds the record changed, and the borrow is ended once."""
        active = await self.records.active()
        self.view = [e for e, _ in active if e.end > wall]
        ended = []
        upcoming = []
        for entry, mod in active:
            if entry.end > wall:
                upcoming.append(entry.end)
            elif await self.records.end(entry, mod, "expired", wall):
                ended.append(entry)
                self._event("expiry_borrow", entry.product, entry.user, entry.host, entry.borrow_id)
            else:
                self.raced += 1
                log.info("borrow %s: another member ended it first", entry.borrow_id)
        if wall >= self._next_prune:
            await self._prune(wall)
        return ended, min(upcoming) if upcoming else None

    async def _prune(self, wall: float) -> None:
        """At most every ``PRUNE_INTERVAL``: delete the ``ended`` keys past their retention
        (``EtcdBorrows.prune_ended``; every member's reaper does, and each key goes once)."""
        try:
            gone = await self.records.prune_ended(wall)
        except (LanlicError, Unreachable) as exc:
            log.info("pruning ended borrows failed (%s); tried at the next reap", exc)
            return
        self._next_prune = wall + PRUNE_INTERVAL
        self.pruned += len(gone)
        if gone:
            log.info("pruned %d ended borrow key(s) past their retention", len(gone))

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"borrow_id": b.borrow_id, "product": b.product, "user": b.user, "host": b.host,
             "start": b.start, "end": b.end}
            for b in sorted(self.view, key=lambda b: b.end)
        ]  # fmt: skip
