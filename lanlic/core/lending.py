"""The server's borrowing desk: enrollment, borrow, return and expiry, over the seat pool.

Every change here must be on disk before the client hears yes, and the disk is not ours to touch
from the core. So each request becomes a ``Durable``: the core reserves what it needs in memory
at once (a borrowed seat leaves the pool immediately, so two borrows in flight can never both
take the last seat), hands the adapter a ``write`` to run against the store on its thread, and
then either ``commit(result)`` (the write was fsynced: make it visible, answer yes) or
``abort(error)`` (the write failed: undo the reservation, answer no). The reservation is the
pessimistic side: a seat is out of the pool from before the write until the borrow ends.

Borrow periods are UTC wall time (a laptop off the network has nothing else to agree on); the
``wall`` passed in is the server's clock.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import borrowing, signing
from lanlic.core.netkey import NetworkKey, ProductEntitlement
from lanlic.core.pool import Denied, Holder, SeatPool
from lanlic.core.records import BorrowRecord, EnrollmentRecord
from lanlic.errors import BorrowedFileError, BorrowRefused, LanlicError
from lanlic.proto import messages as m


def _utc_text(ts: float) -> str:
    """A time in the history's details: ISO 8601, UTC, to the second (never epoch seconds)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if TYPE_CHECKING:  # the store is the adapter's; the core only names its interface
    from lanlic.store import Store

__all__ = ["ActiveBorrow", "BorrowDesk", "Durable", "EnrollmentWrite"]

DAY = 86400.0


@dataclass(slots=True)
class ActiveBorrow:
    """A borrow in force on a single server, in memory (``BorrowDesk.active``), counted against
    the seats from its write (``committed`` False until the write is durable) to its end.

    Its first fields are those of ``lanlic.core.records.BorrowRecord`` (the database's row, which
    keeps the borrow for good, with how and when it ended) and of the cluster's
    ``lanlic.cluster.borrows.BorrowEntry`` (an active borrow's record in etcd, naming the seat
    and ``lent`` slot keys it holds). Kept apart on purpose: each lives as long as, and carries
    what, its own place needs."""

    borrow_id: str
    request_id: str
    product: str
    container_fp: str
    user: str
    host: str
    start: float
    end: float
    file: bytes
    committed: bool = True
    """False while the borrow's write is in flight."""


@dataclass(frozen=True, slots=True)
class Durable:
    """A change to make durable before answering (see the module docstring)."""

    write: Callable[[Store], Any]
    """Runs on the store's thread; its return value goes to ``commit``."""
    commit: Callable[[Any], m.Message]
    abort: Callable[[Exception], m.Message]


@dataclass(frozen=True, slots=True)
class EnrollmentWrite(Durable):
    """``BorrowDesk.enroll``'s write, with the record it writes: a cluster member keeps the
    record in etcd instead of a store (``lanlic.cluster.desk``)."""

    record: EnrollmentRecord | None = None


# The restart guard's raise (``LicenseService``) lives beside its base: a subclass of a class of
# another module cannot be compiled to a native class (the optional compiled build, setup.py).
@dataclass(frozen=True, slots=True)
class ReservationRaise(Durable):
    """A ``Durable`` whose whole write is raising reservations to ``seats`` (SPEC 13 rule 1).

    The adapter may write several at once, the highest value per product: the grants that
    arrive while one raise is on disk then share the next write, however many they are, instead
    of each taking its own trip to the store's thread (and one fsync per chunk, in a row).
    ``write`` and the grouped write both hand ``commit`` the values now on disk, each at least
    the one asked for."""

    seats: dict[str, int] = field(default_factory=dict)


#: The seat policy's check of a borrow: (product, user, host) to a refusal, or None to go on.
BorrowCheck = Callable[[str, str, str], Denied | None]


def _error(rid: int, exc: LanlicError) -> m.Error:
    return m.Error(rid, exc.code, exc.message)


class BorrowDesk:
    def __init__(
        self,
        key: NetworkKey,
        pool: SeatPool,
        server_key: Ed25519PrivateKey,
        server_id: str,
        on_event: Callable[..., None] = lambda kind, **fields: None,
    ) -> None:
        self.key = key
        self.pool = pool
        self._server_key = server_key
        self.server_id = server_id
        self.active: dict[str, ActiveBorrow] = {}
        self._by_request: dict[str, str] = {}
        self.enrollments: dict[str, EnrollmentRecord] = {}
        self.policy: dict[str, tuple[int | None, int | None]] = {}
        self.file_policy: dict[str, tuple[int | None, int | None]] = {}
        """The seat policy file's lowering of the same terms (both apply: the lower wins)."""
        self._event = on_event

    # ------------------------------------------------------------------------------ restart

    def load(self, store: Store, wall: float) -> list[str]:
        """Take the store's state into memory at start; return warnings for the admin.

        Every active borrow is counted out of the pool again, expired or not: the sweep ends the
        overdue ones durably right after, so a crash in between still counts them. One that does
        not fit (the key now has fewer seats) is counted all the same: the product is over its
        seats and nothing new is granted until enough come back (``take_borrowed(force=True)``).
        """
        warnings: list[str] = []
        self.enrollments = {e.container_fp: e for e in store.enrollments()}
        self.policy = store.policy()
        for rec in store.active_borrows():
            if self.pool.products.get(rec.product) is None:
                warnings.append(
                    f"borrow {rec.borrow_id} is of {rec.product!r}, which the current network "
                    "key does not serve; it is kept until it ends"
                )
                continue
            if not self.pool.take_borrowed(rec.product, force=True):
                warnings.append(
                    f"borrow {rec.borrow_id} of {rec.product} does not fit in the current key's "
                    "seats; it is counted all the same, and no seat of it is granted until "
                    "enough come back"
                )
            self._remember(
                ActiveBorrow(
                    rec.borrow_id, rec.request_id, rec.product, rec.container_fp, rec.user,
                    rec.host, rec.start, rec.end, rec.file,
                )
            )  # fmt: skip
        return warnings

    def _remember(self, b: ActiveBorrow) -> None:
        old = self.active.get(b.borrow_id)
        if old is not None:  # counted once: the seat policy counts who is in ``active``
            self.pool.borrower(old.product, Holder(old.user, old.host), -1)
        self.active[b.borrow_id] = b
        self._by_request[b.request_id] = b.borrow_id
        self.pool.borrower(b.product, Holder(b.user, b.host), 1)

    def _forget(self, b: ActiveBorrow) -> None:
        # Only ``b`` itself: a failed return may have remembered the same borrow again over a
        # copy presented meanwhile, and forgetting that copy must not forget the borrow.
        self._by_request.pop(b.request_id, None)
        if self.active.get(b.borrow_id) is b:
            del self.active[b.borrow_id]
            self.pool.borrower(b.product, Holder(b.user, b.host), -1)

    # ------------------------------------------------------------------------------ queries

    def terms(self, product: str) -> borrowing.BorrowTerms:
        ent = self.pool.products[product]
        terms = borrowing.borrow_terms(
            ent.borrowable, ent.max_borrow_days, self.policy.get(product)
        )
        lower = self.file_policy.get(product)
        if lower is None:
            return terms
        return borrowing.borrow_terms(terms.borrowable, terms.max_days, lower)

    def borrowed_count(self, product: str) -> int:
        return sum(1 for b in self.active.values() if b.product == product)

    def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "borrow_id": b.borrow_id,
                "product": b.product,
                "user": b.user,
                "host": b.host,
                "start": b.start,
                "end": b.end,
            }
            for b in sorted(self.active.values(), key=lambda b: b.end)
            if b.committed
        ]

    def next_end(self) -> float | None:
        ends = [b.end for b in self.active.values() if b.committed]
        return min(ends) if ends else None

    # ---------------------------------------------------------------------------- requests

    def enroll(self, msg: m.Enroll, wall: float) -> EnrollmentWrite | m.Error:
        try:
            req = borrowing.read_enrollment_request(msg.request)
        except BorrowedFileError as exc:
            return m.Error(msg.id, "bad_proof", exc.message)
        if req.kind != self.key.borrow_kind:
            return _error(
                msg.id,
                BorrowRefused(
                    f"this site's network key borrows with kind {self.key.borrow_kind!r}; "
                    f"the container is of kind {req.kind!r}",
                    "wrong_borrow_kind",
                ),
            )
        response = borrowing.make_enrollment_response(
            self._server_key, req, self.server_id, self.key.customer, wall
        )
        via = "offline" if msg.via == "offline" else "online"
        record = EnrollmentRecord(
            req.container_fp, req.container_key, req.kind, req.machine_fp, req.user, req.host,
            wall, via,
        )  # fmt: skip

        def commit(_: object) -> m.Message:
            self.enrollments[record.container_fp] = record
            self._event("enroll", product="", user=req.user, host=req.host, detail=via)
            return m.Enrolled(msg.id, response)

        return EnrollmentWrite(
            write=lambda store: store.add_enrollment(record),
            commit=commit,
            abort=lambda exc: m.Error(msg.id, "store_failed", f"enrollment not saved: {exc}"),
            record=record,
        )

    def issue(
        self, msg: m.Borrow, ent: ProductEntitlement, enrollment: EnrollmentRecord, wall: float
    ) -> tuple[str, float, float, bytes]:
        """A new borrow's id, start, end and licence file, signed with the server key (a cluster
        member's desk issues through this too, so a laptop cannot tell who lent it)."""
        borrow_id = "b-" + secrets.token_hex(8)
        start, end = wall, wall + msg.days * DAY
        file = borrowing.issue_borrowed_file(
            self._server_key,
            borrow_id=borrow_id,
            product=msg.product,
            versions=ent.versions,
            kind=self.key.borrow_kind,
            server_id=self.server_id,
            customer=self.key.customer,
            container_key=enrollment.container_key,
            machine_fp=enrollment.machine_fp,
            user=enrollment.user,
            host=enrollment.host,
            start=start,
            end=end,
        )
        return borrow_id, start, end, file

    def borrow(
        self, msg: m.Borrow, wall: float, now: float, policy: BorrowCheck | None = None
    ) -> Durable | m.Message:
        """``wall`` (UTC) dates the borrow; ``now`` (monotonic) lets the pool sweep dead leases;
        ``policy`` is the seat policy's word on this borrower (lanlic.core.policy)."""
        rid = msg.request_id.hex()
        # A retry of a borrow we already made gets the same borrow back, never a second seat.
        existing = self._by_request.get(rid)
        if existing is not None:
            b = self.active[existing]
            if not b.committed:
                return m.Error(msg.id, "borrow_refused", "that borrow is still being recorded")
            return m.Borrowed(msg.id, b.borrow_id, b.file, b.end)
        try:
            enrollment, ent = self._check_borrow(msg)
        except LanlicError as exc:
            self._refused(msg, exc.code)
            return _error(msg.id, exc)
        if policy is not None:
            denied = policy(msg.product, enrollment.user, enrollment.host)
            if denied is not None:
                self._event(
                    "refusal", product=msg.product, user=enrollment.user, host=enrollment.host,
                    detail=denied.code,
                )  # fmt: skip
                return m.Error(msg.id, denied.code, denied.message)
        if not self.pool.take_borrowed(msg.product, now):
            free = self.pool.free(msg.product)
            self._refused(msg, "no_seat")
            return m.Error(
                msg.id, "no_seat", f"no seat of {msg.product} is free to borrow ({free} free)"
            )
        borrow_id, start, end, file = self.issue(msg, ent, enrollment, wall)
        active = ActiveBorrow(
            borrow_id, rid, msg.product, enrollment.container_fp, enrollment.user,
            enrollment.host, start, end, file, committed=False,
        )  # fmt: skip
        self._remember(active)
        record = BorrowRecord(
            borrow_id, rid, msg.product, enrollment.container_fp, enrollment.user,
            enrollment.host, start, end, "active", None, file,
        )  # fmt: skip

        def commit(_: object) -> m.Message:
            active.committed = True
            self._event(
                "borrow", product=msg.product, user=enrollment.user, host=enrollment.host,
                detail=f"{borrow_id} until {_utc_text(end)}",
            )  # fmt: skip
            return m.Borrowed(msg.id, borrow_id, file, end)

        def abort(exc: Exception) -> m.Message:
            self._forget(active)
            self.pool.return_borrowed(msg.product)
            self._refused(msg, "store_failed")
            return m.Error(msg.id, "store_failed", f"the borrow could not be recorded: {exc}")

        return Durable(write=lambda store: store.add_borrow(record), commit=commit, abort=abort)

    def _refused(self, msg: m.Borrow, code: str) -> None:
        """A refused borrow in the history, naming who asked when the machine is enrolled."""
        try:
            who = self.enrollments.get(signing.fingerprint(msg.container_key))
        except ValueError:  # a key that is no key names nobody
            who = None
        user, host = (who.user, who.host) if who is not None else ("", "")
        self._event("refusal", product=msg.product, user=user, host=host, detail=code)

    def _check_borrow(self, msg: m.Borrow) -> tuple[EnrollmentRecord, ProductEntitlement]:
        return check_borrow(
            msg,
            self.pool.products.get(msg.product),
            self.enrollments.get(container_fp(msg.container_key)),
            server_id=self.server_id,
            key_kind=self.key.borrow_kind,
            terms=self.terms(msg.product) if msg.product in self.pool.products else None,
            active_borrows=self.borrowed_count(msg.product),
        )

    def return_(self, msg: m.Return, wall: float) -> Durable | m.Message:
        b = self.active.get(msg.borrow_id)
        fp = check_return(msg, self.server_id)
        if isinstance(fp, m.Error):
            return fp
        if b is None:
            # Ended already (returned, expired) or never ours: returning again does no harm,
            # but only the container that borrowed may hear about it.
            def check(store: Store) -> BorrowRecord | None:
                return store.borrow(msg.borrow_id)

            def known(rec: BorrowRecord | None) -> m.Message:
                if rec is None or rec.container_fp != fp:
                    return m.Error(msg.id, "borrow_unknown", f"no borrow {msg.borrow_id!r}")
                return m.Returned(msg.id, msg.borrow_id, already=True)

            return Durable(
                write=check,
                commit=known,
                abort=lambda exc: m.Error(msg.id, "store_failed", str(exc)),
            )
        if b.container_fp != fp:
            return m.Error(msg.id, "borrow_unknown", f"no borrow {msg.borrow_id!r}")
        if not b.committed:
            return m.Error(msg.id, "borrow_refused", "that borrow is still being recorded")
        return self._end(b, "returned", wall, rid=msg.id)

    def present(self, msg: m.Present, wall: float) -> Durable | m.Message:
        """A container shows a borrowed file it holds (SPEC section 12, "Presenting a file"):
        the answer is the borrow's state; a genuine file of ours that the store does not know
        (the database was restored from a backup older than the borrow) is written down and
        counted until its end, over the seats if it must be, and the admin is warned."""
        lic = check_presented(msg, self._server_key, self.server_id)
        if isinstance(lic, m.Error):
            return lic
        b = self.active.get(lic.borrow_id)
        if b is not None:
            if not b.committed:
                return m.Error(msg.id, "borrow_refused", "that borrow is still being recorded")
            return m.Presented(msg.id, b.borrow_id, "active", b.end)
        if lic.end <= wall:
            return m.Presented(msg.id, lic.borrow_id, "expired", lic.end)
        if lic.product not in self.pool.products:
            return m.Error(
                msg.id, "not_borrowable",
                f"the network key served now has no product {lic.product!r}; not counted",
            )  # fmt: skip
        # Not in memory: ended, or never heard of. The store says which; if it has no record,
        # the borrow is adopted. The seat is out of the pool from now, as for a borrow.
        fp = signing.fingerprint(lic.container_key)
        adopted = ActiveBorrow(
            lic.borrow_id, "adopted:" + lic.borrow_id, lic.product, fp, lic.user, lic.host,
            lic.start, lic.end, msg.file, committed=False,
        )  # fmt: skip
        self._remember(adopted)
        fitted = self.pool.take_borrowed(lic.product, force=True)
        record = BorrowRecord(
            lic.borrow_id, adopted.request_id, lic.product, fp, lic.user, lic.host, lic.start,
            lic.end, "active", None, msg.file,
        )  # fmt: skip
        enrollment = EnrollmentRecord(
            fp, lic.container_key, lic.kind, lic.machine_fp, lic.user, lic.host, wall, "adopted"
        )

        def write(store: Store) -> BorrowRecord | None:
            known = store.borrow(lic.borrow_id)
            if known is not None:
                return known
            if store.enrollment(fp) is None:
                store.add_enrollment(enrollment)
            store.add_borrow(record)
            return None

        def commit(known: BorrowRecord | None) -> m.Message:
            if known is not None and known.state != "active":
                self._forget(adopted)
                self.pool.return_borrowed(lic.product)
                return m.Presented(msg.id, lic.borrow_id, known.state, known.end)
            if known is not None:  # on record but was not counted: it is now
                counted = self.active.get(lic.borrow_id)
                if counted is not None and counted is not adopted:
                    # Counted again meanwhile (a return in flight failed to write): that
                    # count stands, and the seat taken for the presented copy goes back.
                    self._forget(adopted)
                    self.pool.return_borrowed(lic.product)
                    return m.Presented(msg.id, lic.borrow_id, "active", known.end)
                self._forget(adopted)
                adopted.request_id, adopted.committed = known.request_id, True
                self._remember(adopted)
                return m.Presented(msg.id, lic.borrow_id, "active", known.end)
            adopted.committed = True
            self.enrollments.setdefault(fp, enrollment)
            over = (
                "" if fitted else "; no seat was free: the product is over its seats until one is"
            )
            self._event(
                "borrow_adopted", product=lic.product, user=lic.user, host=lic.host,
                detail=f"{lic.borrow_id} until {_utc_text(lic.end)}, unknown to the database "
                f"(restored from an older backup?){over}",
            )  # fmt: skip
            return m.Presented(msg.id, lic.borrow_id, "adopted", lic.end)

        def abort(exc: Exception) -> m.Message:
            self._forget(adopted)
            self.pool.return_borrowed(lic.product)
            return m.Error(msg.id, "store_failed", f"the borrow could not be recorded: {exc}")

        return Durable(write=write, commit=commit, abort=abort)

    def _end(self, b: ActiveBorrow, state: str, wall: float, rid: int = 0) -> Durable:
        # Out of ``active`` at once so a second return or the sweep cannot end it twice; the
        # seat itself stays out of the pool until the end is on disk.
        self._forget(b)

        def commit(changed: object) -> m.Message:
            self.pool.return_borrowed(b.product)
            self._event(
                "return" if state == "returned" else "expiry_borrow",
                product=b.product, user=b.user, host=b.host, detail=b.borrow_id,
            )  # fmt: skip
            return m.Returned(rid, b.borrow_id, already=not changed)

        def abort(exc: Exception) -> m.Message:
            self._remember(b)
            return m.Error(rid, "store_failed", f"the return could not be recorded: {exc}")

        return Durable(
            write=lambda store: store.end_borrow(b.borrow_id, state, wall),
            commit=commit,
            abort=abort,
        )

    def due(self, wall: float) -> list[Durable]:
        """The borrows whose end has come: one Durable each to end them."""
        return [
            self._end(b, "expired", wall)
            for b in list(self.active.values())
            if b.committed and b.end <= wall
        ]


# ------------------------------------------------------------------------- the pure checks
# Shared by the desk above and a cluster member (lanlic.cluster.borrows), whose borrows live in
# etcd: who may borrow, return and present is decided the same wherever the records are kept.


def container_fp(container_key: bytes) -> str:
    """The container's fingerprint, "" for bytes that are no key (it names no enrollment)."""
    try:
        return signing.fingerprint(container_key)
    except ValueError:
        return ""


def check_borrow(
    msg: m.Borrow,
    ent: ProductEntitlement | None,
    enrollment: EnrollmentRecord | None,
    *,
    server_id: str,
    key_kind: borrowing.Kind,
    terms: borrowing.BorrowTerms | None,
    active_borrows: int,
) -> tuple[EnrollmentRecord, ProductEntitlement]:
    """Raise ``BorrowRefused`` unless the key, the enrollment, the proof and the borrowing terms
    allow this borrow (``terms``: the product's, None if the key has no such product); whether
    a seat is free is the pool's to say."""
    if ent is None or terms is None:
        raise BorrowRefused(f"no product {msg.product!r} in the network key", "not_borrowable")
    if not ent.allows_version(msg.version):
        raise BorrowRefused(
            f"{msg.product} version {msg.version!r} is not licensed", "not_borrowable"
        )
    if enrollment is None:
        raise BorrowRefused(
            "this machine is not enrolled for borrowing: run 'lanlic enroll' first "
            "(or 'lanlic enroll --request FILE' when the server cannot be reached)",
            "not_enrolled",
        )
    payload = borrowing.container_proof_payload(
        "borrow", server_id, [msg.request_id, msg.product, msg.version, msg.days]
    )
    pub = signing.public_from_bytes(msg.container_key)
    if not signing.verify(pub, signing.DOMAIN_CONTAINER_REQUEST, payload, msg.proof):
        raise BorrowRefused("the borrow request's proof does not verify", "bad_proof")
    borrowing.check_borrow_request(
        product=msg.product,
        terms=terms,
        key_kind=key_kind,
        container_kind=enrollment.kind,
        days=msg.days,
        active_borrows=active_borrows,
    )
    return enrollment, ent


def check_return(msg: m.Return, server_id: str) -> str | m.Error:
    """The returning container's fingerprint, or the error if its proof does not verify."""
    payload = borrowing.container_proof_payload("return", server_id, [msg.borrow_id])
    pub = signing.public_from_bytes(msg.container_key)
    if not signing.verify(pub, signing.DOMAIN_CONTAINER_REQUEST, payload, msg.proof):
        return m.Error(msg.id, "bad_proof", "the return request's proof does not verify")
    return signing.fingerprint(msg.container_key)


def check_presented(
    msg: m.Present, server_key: Ed25519PrivateKey, server_id: str
) -> borrowing.BorrowedLicense | m.Error:
    """The presented file, if this server issued it and the presenting container holds its key
    (SPEC section 12, "Presenting a file"); else the error to answer."""
    try:
        lic, payload, sig = borrowing.parse_borrowed_file(msg.file)
    except BorrowedFileError as exc:
        return m.Error(msg.id, "borrow_unknown", f"not a borrowed licence file: {exc.message}")
    ours = lic.server_key == signing.public_bytes(server_key.public_key()) and signing.verify(
        server_key.public_key(), signing.DOMAIN_BORROWED_FILE, payload.encode(), sig
    )
    if not ours:
        return m.Error(msg.id, "borrow_unknown", "this file was not issued by this server")
    proof = borrowing.container_proof_payload("present", server_id, [lic.borrow_id])
    if not signing.verify(
        signing.public_from_bytes(lic.container_key),
        signing.DOMAIN_CONTAINER_REQUEST,
        proof,
        msg.proof,
    ):
        return m.Error(msg.id, "bad_proof", "the presenting container does not hold the file's key")
    return lic
