"""Never over-grant across a crash: durable seat reservations, epochs and the reclaim window.

After a crash the server cannot know which floating leases are still in use: they live in
memory, and writing each checkout to disk before answering would cost the fast path an fsync.
Instead the server keeps, per product, a durable *reservation*: an upper bound on the floating
seats in use. A grant that would pass it first raises it on disk (in chunks of an eighth of the
seats, so a rush costs a handful of fsyncs, not one per checkout) and only then answers. Lowering
is lazy, in the lease batch (about once a second), and is ordered before any later raise: the
adapter hands the batch to the store's one writer in the same turn of its loop as
``snapshot`` lowered the number in memory, so a raise asked for after it is written after it,
and a raise asked for before it (still ``pending``) keeps its product from being lowered.

Who may take a seat back. Every lease id carries its *batch number* (the lease batches of this
epoch written before it was granted, plus one), a random part, and a tag: a keyed hash, under a
secret kept in the database, of those, the epoch, the client id and the product. A reclaim
succeeds only for

* a lease the last batch recorded as live, asked for by the client id it records; or
* a lease granted after the last batch the store holds for its epoch (its batch number says so),
  whose tag proves it was granted to this client id for this product in that epoch.

A lease that was live at a recorded batch but is not in the table was released or expired before
it: refused. A made-up id, or another client's, is refused. What remains open (SPEC section 13):
a lease granted in the last batch interval before a crash and released in that same interval can
be taken back once by the client it was granted to.

How many seats are held. A clean stop writes the live leases and an exact reservation, so the
next start holds exactly the seats of leases still out. After a crash it holds the reservation
(the bound). Each reclaim turns one held seat into its lease; seats nobody reclaimed return to
the pool when the window (one lease period) ends.

Pure: time is passed in, the store is the adapter's.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from lanlic.core.pool import Denied, Granted, Holder, SeatPool
from lanlic.core.records import LeaseRecord

__all__ = ["LeaseBatch", "RestartGuard", "RestartState"]

#: Bytes of a lease id: batch number, random part, tag.
_BATCH, _NONCE, _TAG = 4, 4, 8
#: ``RestartGuard.room`` with no store to keep a reservation: no bound at all.
NO_BOUND: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class RestartState:
    """What the store holds for a start (``Store.restart_state``)."""

    epoch: int
    """The epoch this start begins (already counted on disk)."""
    lease_key: bytes
    """The secret the lease ids' tags are made with (kept in the database)."""
    reservations: dict[str, int]
    leases: list[LeaseRecord]
    """Leases recorded as live by the last batches (of any epoch not yet closed)."""
    dead: frozenset[bytes] = frozenset()
    """Leases of older, still open epochs that were reclaimed and then ended."""
    open_epochs: dict[int, int] = field(default_factory=dict)
    """Older epochs whose leases granted after their last batch may still be reclaimed: epoch
    to the number of the last batch of it on disk."""


@dataclass(frozen=True, slots=True)
class LeaseBatch:
    """One write of the lease batch (``RestartGuard.snapshot``), for ``Store.write_batch``."""

    epoch: int
    number: int
    added: list[LeaseRecord]
    removed: list[tuple[bytes, bool]]
    """(lease id, keep as ended): a lease taken back from an epoch still open is kept, marked
    ended, so that it is not taken back again after another crash; the others are deleted."""
    reservations: dict[str, int]
    """Reservations to write as they are (lowered, or exact at a clean stop)."""
    close_below: int = 0
    """Epochs below this can no longer be reclaimed from (their window is over)."""
    clean: bool = False
    """The last batch of a clean stop: the leases and reservations are exact."""
    seen: tuple[int, int] = (-1, 0)
    """The guard's view of the pool when it made the batch (``RestartGuard.batch_written``)."""


def _tagger(key: bytes, epoch: int) -> hashlib.blake2s:
    h = hashlib.blake2s(key=key, digest_size=_TAG, person=b"lanlicLs")
    h.update(epoch.to_bytes(8, "big"))
    return h


class RestartGuard:
    def __init__(self, pool: SeatPool) -> None:
        self.pool = pool
        self.enabled = False
        """Reservations are kept only when the server has a store."""
        self.epoch = 0
        self.reserved: dict[str, int] = {}
        """Per product, the reservation once the store writes queued so far are done."""
        self.reclaim_until = 0.0
        """Monotonic end of the reclaim window (0: no window)."""
        self.pending: Counter[str] = Counter()
        """Reservation writes in flight per product: each will cover one more grant."""
        self.batch_no = 1
        """The number of the next lease batch; lease ids granted now carry it."""
        self._head_no = 0
        self._head = b""
        """``batch_no`` (when it was ``_head_no``) as a lease id's first bytes (``mint``)."""
        self._names: dict[str, bytes] = {}
        """Product names as bytes, for ``mint`` (the products of the key: a few)."""
        self._key = b""
        self._tag = _tagger(b"\0" * 32, 0)
        self._recorded: dict[bytes, LeaseRecord] = {}
        """Recorded leases of older epochs not reclaimed yet."""
        self._dead: set[bytes] = set()
        self._open: dict[int, int] = {}
        self._taggers: dict[int, hashlib.blake2s] = {}
        self._origin: dict[bytes, int] = {}
        """Leases of older epochs taken back in this one, by the epoch they were granted in."""
        self._synced: dict[bytes, int] = {}
        """The leases the store holds as live, with their records' epochs."""
        self._close = False
        """The window closed: the next batch closes the older epochs."""
        self._asked: tuple[int, int] = (-1, 0)
        """(pool changes, reclaim records' version) at the last snapshot (``LeaseBatch.seen``)."""
        self._written: tuple[int, int] = (-2, 0)
        """The same, for the last snapshot the store took: when it equals the pool's now,
        the leases on disk are the live ones and the batch need not look at them."""
        self._records = 0
        """Bumped when the reclaim records change other than by a pool change."""

    def start(self, state: RestartState, now: float) -> dict[str, int]:
        """Begin an epoch after reading the store; returns the seats held per product."""
        self.enabled = True
        self.epoch = state.epoch
        self.batch_no = 1
        self._key = state.lease_key
        self._tag = _tagger(self._key, self.epoch)
        self.pool.mint = self.mint
        products = self.pool.products
        self.reserved = {p: n for p, n in state.reservations.items() if p in products}
        held = {p: self.pool.hold(p, n) for p, n in self.reserved.items() if n > 0}
        held = {p: n for p, n in held.items() if n}
        self._synced = {r.lease_id: r.epoch for r in state.leases}
        self._recorded = {r.lease_id: r for r in state.leases if r.product in products}
        self._dead = set(state.dead)
        self._open = {e: b for e, b in state.open_epochs.items() if e < self.epoch}
        self._taggers = {e: _tagger(self._key, e) for e in self._open}
        self._origin = {}
        self._records += 1
        if held or self._recorded:
            self.reclaim_until = now + self.pool.lease_seconds
        else:
            # Nothing was bound on disk, so no lease can have been out: nothing to take back,
            # and the older epochs close with the first batch.
            self.reclaim_until = 0.0
            self._open.clear()
            self._taggers.clear()
            self._close = bool(state.open_epochs)
        return held

    # ------------------------------------------------------------------------- lease ids

    def mint(self, owner: bytes, product: str) -> bytes:
        """A new lease id: batch number, random part, and the tag that proves, after a
        restart, which client it was granted to, for which product, in this epoch."""
        # Every checkout mints: the batch number's bytes and the product's are made once
        # (a tenth of a mint each).
        if self._head_no != self.batch_no:
            self._head_no = self.batch_no
            self._head = self.batch_no.to_bytes(_BATCH, "big")
        name = self._names.get(product)
        if name is None:
            name = self._names[product] = product.encode()
        head = self._head + self.pool.random_bytes(_NONCE)
        h = self._tag.copy()
        h.update(head + owner + name)
        return head + h.digest()

    def _granted_to(self, lease_id: bytes, owner: bytes, product: str) -> int | None:
        """The open older epoch in which ``lease_id`` was granted to ``owner`` for ``product``
        after that epoch's last recorded batch, or None."""
        if len(lease_id) != _BATCH + _NONCE + _TAG:
            return None
        head, tag = lease_id[: _BATCH + _NONCE], lease_id[_BATCH + _NONCE :]
        batch = int.from_bytes(head[:_BATCH], "big")
        for epoch, last in self._open.items():
            if batch <= last:
                continue  # granted before a batch that did not record it: it had ended
            h = self._taggers[epoch].copy()
            h.update(head + owner + product.encode())
            if h.digest() == tag:
                return epoch
        return None

    # ------------------------------------------------------------------------- reservations

    def room(self, product: str) -> int:
        """How far the seats of ``product`` in use and held may go with no reservation write:
        the reservation less the claims of the writes under way (grants waiting for a write
        have a claim on the room below it, which a grant that skips the write must not take
        from under them). ``NO_BOUND`` with no store. ``SeatPool.grant`` takes it as is."""
        if not self.enabled:
            return NO_BOUND
        # ``get``: a Counter's missing key costs a Python call, and every checkout asks.
        return self.reserved.get(product, 0) - self.pending.get(product, 0)

    def needed(self, product: str, more: int = 1) -> int | None:
        """The reservation to make durable before ``more`` seats of ``product`` are granted,
        or None when the current one covers them (``room``)."""
        # Held seats stand for leases of an older epoch that may still be in use: the
        # reservation must cover them as well as the live ones.
        in_use = self.pool.in_use(product) + self.pool.held(product)
        if in_use + more <= self.room(product):
            return None
        reserved = self.reserved.get(product, 0)
        claimed = in_use + self.pending.get(product, 0)
        seats = self.pool.seats(product)
        chunk = max(1, -(-seats // 8))
        # Whole chunks above the reservation: the grants that queue up behind one raise (a
        # burst, a pipelined connection) ask for the same value, not one more seat each, so the
        # store writes (and fsyncs) it once (``Store.raise_reservations`` skips a value reached).
        return min(seats, reserved + chunk * -(-(claimed + more - reserved) // chunk))

    def covers_one_more(self, product: str) -> bool:
        """Whether the durable reservation allows one more grant now (for a grant whose own
        write just finished: the claims of writes still under way are theirs to cover)."""
        in_use = self.pool.in_use(product) + self.pool.held(product)
        return in_use < self.reserved.get(product, 0)

    def raised(self, product: str, seats: int) -> None:
        """The store confirmed a reservation."""
        if seats > self.reserved.get(product, 0):
            self.reserved[product] = seats

    def to_lower(self) -> dict[str, int]:
        """Reservations well above the seats in use, lowered now in memory. The caller must
        queue their write before any later raise (``snapshot`` does, with the lease batch)."""
        out = {}
        for product, reserved in self.reserved.items():
            seats = self.pool.seats(product)
            chunk = max(1, -(-seats // 8))
            # At most one chunk of slack above the most seats in use since the last batch
            # stays reserved: after a crash, that is how many seats beyond those in use are held
            # for a lease period. Following the peak, not the moment, keeps a busy product from
            # lowering and raising (an fsync) every second.
            # Lowered to one chunk above the peak, not to the peak itself: a load that wavers
            # by a few seats from one second to the next would otherwise lower the bound every
            # batch and raise it again (an fsync, with every checkout behind it waiting) the
            # next moment.
            peak = self.pool.take_peak(product)
            target = min(seats, peak + self.pool.held(product) + chunk)
            if reserved > target and not self.pending[product]:
                self.reserved[product] = target
                out[product] = target
        return out

    def snapshot(self, clean: bool = False) -> LeaseBatch:
        """The lease batch to write now: leases granted and ended since the last one written,
        lowered reservations (exact ones for a clean stop, when nothing is granted any more),
        and older epochs to close. Hand it to the store's writer in the same turn."""
        pool = self.pool
        self._asked = (pool.changes, self._records)
        if self._asked == self._written:
            # No lease came or went since the store took the last batch: nothing to look for
            # (a scan of every lease, 10k of them in a few ms on the loop, every second).
            live: dict[bytes, int] = {}
            fresh: Iterable[bytes] = ()
        else:
            live = {x: self._origin.get(x, self.epoch) for x in pool.lease_ids()}
            for lease_id, rec in self._recorded.items():  # still reclaimable: keep them
                live[lease_id] = rec.epoch
            fresh = live.keys() - self._synced.keys()
        added = []
        for lease_id in fresh:
            lease = pool.lease(lease_id)
            if lease is not None:
                h = lease.holder
                added.append(
                    LeaseRecord(
                        lease_id, lease.product, lease.owner, h.user, h.host, live[lease_id]
                    )
                )
        removed = (
            [(x, e in self._open) for x, e in self._synced.items() if x not in live]
            if self._asked != self._written
            else []
        )
        if clean:
            reservations = {
                p: pool.in_use(p) + pool.held(p) + self.pending[p] for p in pool.products
            }
            self.reserved.update(reservations)
        else:
            reservations = self.to_lower()
        batch = LeaseBatch(
            self.epoch, self.batch_no, added, removed, reservations,
            close_below=self.epoch if self._close else 0, clean=clean, seen=self._asked,
        )  # fmt: skip
        self.batch_no += 1
        return batch

    def batch_written(self, batch: LeaseBatch) -> None:
        """The store took ``batch``: the next one starts from it."""
        self._written = batch.seen
        for lease_id, _ in batch.removed:
            self._synced.pop(lease_id, None)
        for rec in batch.added:
            self._synced[rec.lease_id] = rec.epoch
        if batch.close_below:
            self._close = False

    # ---------------------------------------------------------------------- reclaim window

    def in_window(self, now: float) -> bool:
        return now < self.reclaim_until

    def close_window(self, now: float) -> dict[str, int]:
        """At the window's end, give the unclaimed held seats back; returns them."""
        if not self.reclaim_until or now < self.reclaim_until:
            return {}
        self.reclaim_until = 0.0
        self._records += 1
        self._recorded.clear()
        self._open.clear()
        self._taggers.clear()
        self._close = True
        return self.pool.release_holds()

    def reclaimable(self) -> bool:
        """Whether a lease of an older epoch can still be taken back."""
        return bool(self._recorded or self._open)

    def reclaim(
        self, lease_id: bytes, product: str, version: str, owner: bytes, holder: Holder,
        now: float,
    ) -> Denied | None:  # fmt: skip
        """Take a lease of an older epoch back under its id; None on success."""
        ent = self.pool.products.get(product)
        if ent is None:
            return Denied("unknown_product", f"no product {product!r} in the network key")
        if not ent.allows_version(version):
            return Denied("version_not_licensed", f"{product} version {version!r} not licensed")
        existing = self.pool.lease(lease_id)
        if existing is not None:  # taken back already (a retry), or a lease of this epoch
            if existing.owner == owner and existing.product == product:
                return None
            return Denied("lease_unknown", "that lease is not this client's")
        rec = self._recorded.get(lease_id)
        origin: int | None
        if rec is not None:
            if rec.owner != owner or rec.product != product:
                return Denied("lease_unknown", "that lease was someone else's")
            origin = rec.epoch
        elif lease_id in self._dead or lease_id in self._origin:
            return Denied("lease_unknown", "that lease ended after it was taken back")
        else:
            origin = self._granted_to(lease_id, owner, product)
            if origin is None:
                return Denied("lease_unknown", "this server granted no such lease to this client")
        if self.enabled and not self.pool.held(product) and self.needed(product) is not None:
            # No held seat left: a free one is taken, and the reservation must cover it.
            return Denied("server_busy", "the seat's reservation is being raised; retry")
        result = self.pool.adopt(lease_id, product, owner, holder, now)
        if not isinstance(result, Granted):
            return result
        self._recorded.pop(lease_id, None)
        self._origin[lease_id] = origin
        return None

    def _may_take(self, lease_id: bytes, product: str, owner: bytes) -> bool:
        if self.pool.lease(lease_id) is not None:
            return False  # taken back already, or someone else's: no seat either way
        rec = self._recorded.get(lease_id)
        if rec is not None:
            return rec.owner == owner and rec.product == product
        if lease_id in self._dead or lease_id in self._origin:
            return False
        return self._granted_to(lease_id, owner, product) is not None

    def beyond_held(self, items: Iterable[tuple[bytes, str, str]], owner: bytes) -> dict[str, int]:
        """Per product, how many of these reclaims would find no held seat and take a free
        one (whose reservation must be raised first, as for a checkout)."""
        wanted: Counter[str] = Counter()
        for lease_id, product, _ in items:
            if product in self.pool.products and self._may_take(lease_id, product, owner):
                wanted[product] += 1
        extra = {p: n - self.pool.held(p) for p, n in wanted.items()}
        return {p: n for p, n in extra.items() if n > 0}

    def identify(self, lease_id: bytes, owner: bytes) -> str | None:
        """The product of a lease of an older epoch that ``owner`` may take back (for a renew
        that names one: it is taken as its reclaim), or None."""
        rec = self._recorded.get(lease_id)
        if rec is not None:
            return rec.product if rec.owner == owner else None
        if lease_id in self._dead or lease_id in self._origin:
            return None
        for product in self.pool.products:
            if self._granted_to(lease_id, owner, product) is not None:
                return product
        return None
