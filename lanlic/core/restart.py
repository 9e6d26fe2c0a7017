"""Never over-grant across a crash: durable seat reservations, epochs and the reclaim window.

After a crash the server cannot know which floating leases are still in use: they live in
memory, and writing each checkout to disk before answering would cost the fast path an fsync.
Instead the server keeps, per product, a durable *reservation*: an upper bound on the floating
seats in use. A grant that would pass it first raises it on disk (in chunks of an eighth of the
seats, so a rush costs a handful of fsyncs, not one per checkout) and only then answers. Lowering
is lazy: a higher number on disk is merely more cautious.

On start the server reads the reservations and holds that many seats out of the pool for one
lease period, the *reclaim window*. Every start is a new *epoch*; grants carry it. A client that
comes back with leases from an older epoch asks for them with ``reclaim`` and gets them back
under the same ids from the held seats; a renew of such a lease is answered ``reclaim``, never a
silent success. Leases written in the last batch (about once a second) must come back from their
owner; one granted after that batch is taken on its word (its 128-bit id is the proof). When the
window closes, unclaimed seats return to the pool.

Pure: time is passed in, the store is the adapter's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from lanlic.core.pool import Denied, Holder, SeatPool
from lanlic.core.records import LeaseRecord

__all__ = ["RestartGuard"]


class RestartGuard:
    def __init__(self, pool: SeatPool) -> None:
        self.pool = pool
        self.enabled = False
        """Reservations are kept only when the server has a store."""
        self.epoch = 0
        self.reserved: dict[str, int] = {}
        """Per product, the reservation as last made durable (or lower, lazily)."""
        self.reclaim_until = 0.0
        """Monotonic end of the reclaim window (0: no window)."""
        self._recorded: dict[bytes, LeaseRecord] = {}
        self.pending: Counter[str] = Counter()
        """Reservation writes in flight per product: each will cover one more grant."""

    def start(
        self,
        epoch: int,
        reserved: dict[str, int],
        recorded: Iterable[LeaseRecord],
        now: float,
    ) -> dict[str, int]:
        """Begin an epoch after reading the store; returns the seats held per product."""
        self.enabled = True
        self.epoch = epoch
        products = self.pool.products
        self.reserved = {p: n for p, n in reserved.items() if p in products}
        held = {p: self.pool.hold(p, n) for p, n in self.reserved.items() if n > 0}
        held = {p: n for p, n in held.items() if n}
        self._recorded = {r.lease_id: r for r in recorded if r.product in products}
        self.reclaim_until = now + self.pool.lease_seconds if held else 0.0
        return held

    # ------------------------------------------------------------------------- reservations

    def needed(self, product: str) -> int | None:
        """The reservation to make durable before one more seat of ``product`` is granted, or
        None when the current one covers it."""
        reserved = self.reserved.get(product, 0)
        # Held seats stand for leases of an older epoch that may still be in use: the
        # reservation must cover them as well as the live ones.
        in_use = self.pool.in_use(product) + self.pool.held(product)
        # Grants waiting for a reservation write have a claim on the room below it: a grant
        # that skips the write must not take that room from under them.
        claimed = in_use + self.pending[product]
        if claimed < reserved:
            return None
        seats = self.pool.seats(product)
        chunk = max(1, -(-seats // 8))
        return min(seats, max(claimed + 1, reserved + chunk))

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
        """Reservations well above the seats in use, lowered now in memory; the caller writes
        them when convenient (a stale higher number on disk is only more cautious)."""
        out = {}
        for product, reserved in self.reserved.items():
            seats = self.pool.seats(product)
            chunk = max(1, -(-seats // 8))
            # At most one chunk of slack above the most seats in use since the last batch
            # stays reserved: after a crash, that is how many seats beyond those in use are held
            # for a lease period. Following the peak, not the moment, keeps a busy product from
            # lowering and raising (an fsync) every second.
            peak = self.pool.take_peak(product)
            target = min(seats, peak + self.pool.held(product))
            if reserved > target + chunk and not self.pending[product]:
                self.reserved[product] = target
                out[product] = target
        return out

    # ---------------------------------------------------------------------- reclaim window

    def in_window(self, now: float) -> bool:
        return now < self.reclaim_until

    def close_window(self, now: float) -> dict[str, int]:
        """At the window's end, give the unclaimed held seats back; returns them."""
        if not self.reclaim_until or now < self.reclaim_until:
            return {}
        self.reclaim_until = 0.0
        self._recorded.clear()
        return self.pool.release_holds()

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
        rec = self._recorded.get(lease_id)
        if rec is not None and (rec.owner != owner or rec.product != product):
            return Denied("lease_unknown", "that lease was someone else's")
        # A lease granted after the last batch was never written down; it takes a held seat
        # like any other. The held seats cover every lease that can be in use (the reservation
        # bounds them), while some written ones may have been released just before the crash,
        # so keeping seats back for the written ones could refuse a real lease.
        result = self.pool.adopt(lease_id, product, owner, holder, now)
        if isinstance(result, Denied):
            return result
        if rec is not None:
            del self._recorded[lease_id]
        return None
