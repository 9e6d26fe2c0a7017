"""The seat pool: floating leases per product, in memory, with time passed in.

The invariant everything else leans on: for every product, seats in use plus seats borrowed never
exceed the seats the network key grants. ``check_invariant`` states it in code and the Hypothesis
state machine in tests/core holds it over thousands of steps.

Why it looks like this:

* Checkout, renew and release are O(1): a dict of leases by id, a dict of lease ids by owner,
  and a per-product counter. No task or timer exists per lease.
* Expiry is driven by one min-heap of (deadline, lease id). Renewal does not touch the heap: it
  only moves the lease's own deadline, and an entry popped early is pushed back with the lease's
  current deadline (lazy deletion). Released leases leave stale entries behind; when the stale
  entries outnumber the live ones the heap is rebuilt, so memory stays proportional to the seats
  held and the cost stays amortised O(1) per operation.
* A lease is dead from the moment ``now >= expires``, whether or not the sweep has run: renew
  refuses it, and a checkout that finds no free seat sweeps first, so a late sweep can never make
  a seat look taken.
* ``now`` is the server's monotonic clock in seconds: a wall-clock jump can neither expire nor
  extend a lease.
"""

from __future__ import annotations

import heapq
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from lanlic.core.netkey import ProductEntitlement

__all__ = [
    "Denied",
    "Granted",
    "Holder",
    "Lease",
    "ReleaseResult",
    "RenewResult",
    "SeatPool",
    "Watcher",
]


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a seat, as the client introduced itself in its hello."""

    user: str
    host: str
    app: str = ""
    version: str = ""
    """The application version given at checkout."""
    addr: str = ""
    """The connection's peer address as the server saw it (seat policy subnets)."""

    def at_version(self, version: str) -> Holder:
        """This holder checking out ``version`` (itself when that is its version already: the
        commonest checkout makes no new object)."""
        if version == self.version:
            return self
        return Holder(self.user, self.host, self.app, version, self.addr)


@dataclass(slots=True)
class Lease:
    id: bytes
    """128 random bits: knowing it is the capability to renew or release the seat."""
    product: str
    owner: bytes
    """The client id that took the seat; only it may renew or release."""
    holder: Holder
    since: float
    """Monotonic time of the checkout."""
    renewed: float
    """Monotonic time of the last heartbeat (or the checkout)."""
    expires: float
    """Monotonic deadline; at or after it the seat is free."""


@dataclass(frozen=True, slots=True)
class Granted:
    lease: Lease


@dataclass(frozen=True, slots=True)
class Denied:
    code: str
    """A stable error code: no_seat, unknown_product, version_not_licensed."""
    message: str


@dataclass(frozen=True, slots=True)
class RenewResult:
    renewed: list[bytes]
    lost: list[bytes]


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: list[Lease]
    lost: list[bytes]


class Watcher(Protocol):
    """Counts a product's holders as they change (the seat policy's ``Tally``)."""

    def count(self, who: Holder, delta: int, borrowed: bool = False) -> None: ...


class _Product:
    __slots__ = ("borrowed", "entitlement", "held", "in_use", "name", "over", "peak", "watcher")

    def __init__(self, entitlement: ProductEntitlement) -> None:
        self.entitlement = entitlement
        self.name = entitlement.name
        """The one string every lease of the product names it by: not the request's copy, which
        each lease kept (50-odd bytes a seat) and each history event hashed afresh."""
        self.in_use = 0
        self.borrowed = 0
        self.held = 0
        """Seats held out after a restart for clients to reclaim (see ``hold``)."""
        self.peak = 0
        """The most seats in use since ``take_peak`` last asked (reservations follow it)."""
        self.over = 0
        """Borrows counted although no seat was free (``take_borrowed(force=True)``): a bound
        on how far the product may be over its seats until they end."""
        self.watcher: Watcher | None = None
        """Told of every seat taken and given back (``watch``); None costs a grant nothing."""


class _LeaseIds:
    """128-bit lease ids from the OS's CSPRNG, drawn 4 KiB at a time.

    One ``getrandom`` call per 256 checkouts instead of one per checkout (it was a tenth of a
    checkout's cost). The bytes are the same CSPRNG output ``secrets`` would hand out; a child
    process made by ``fork`` throws the inherited buffer away, so no two processes share ids.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def reset(self) -> None:
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int = 16) -> bytes:
        return self.take(n)

    def take(self, n: int) -> bytes:
        """``n`` bytes (a plain method: a call through ``__call__`` costs more)."""
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf = secrets.token_bytes(4096)
            pos = 0
        self._pos = pos + n
        return self._buf[pos : pos + n]


_lease_ids = _LeaseIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_lease_ids.reset)


class SeatPool:
    """Floating seats for the products of one network key."""

    def __init__(
        self,
        products: Iterable[ProductEntitlement],
        lease_seconds: float = 60.0,
        new_lease_id: Callable[[], bytes] = _lease_ids,
    ) -> None:
        self.lease_seconds = lease_seconds
        self._new_lease_id = new_lease_id
        self._products: dict[str, _Product] = {p.name: _Product(p) for p in products}
        # The entitlements never change after this: one read-only view, not a dict per call
        # (checkout asks on every request).
        self._entitlements: Mapping[str, ProductEntitlement] = MappingProxyType(
            {name: p.entitlement for name, p in self._products.items()}
        )
        self._leases: dict[bytes, Lease] = {}
        self._by_owner: dict[bytes, bytes | set[bytes]] = {}
        """Lease ids per owner: the id itself while an owner holds one (most do: a set of one
        costs 216 bytes a seat), a set from the second on."""
        self.changes = 0
        """Counts leases added and removed: the restart guard's batch looks for changes only
        when it moved."""
        self._heap: list[tuple[float, bytes]] = []
        self.random_bytes: Callable[[int], bytes] = _lease_ids.take
        """``n`` bytes from the OS's CSPRNG (the lease ids' buffer). An attribute, not a static
        method: the compiled build supports no class-level callable default."""
        self.mint: Callable[[bytes, str], bytes] | None = None
        """Makes lease ids from (owner, product) instead of ``new_lease_id`` when set: the
        restart guard's ids, which prove their owner after a restart (core/restart.py)."""
        self.on_expired: Callable[[list[Lease]], None] | None = None
        """Told of the leases every ``expire`` frees, whoever called it: the service records
        them. A checkout, adopt or borrow on a full product frees dead leases in passing, before
        the sweep gets to them, and those must reach the history as expiries too."""

    # ------------------------------------------------------------------------------ queries

    @property
    def products(self) -> Mapping[str, ProductEntitlement]:
        return self._entitlements

    def seats(self, product: str) -> int:
        return self._products[product].entitlement.seats

    def in_use(self, product: str) -> int:
        return self._products[product].in_use

    def borrowed(self, product: str) -> int:
        return self._products[product].borrowed

    def held(self, product: str) -> int:
        return self._products[product].held

    def free(self, product: str) -> int:
        p = self._products[product]
        return max(0, p.entitlement.seats - p.in_use - p.borrowed - p.held)

    def lease(self, lease_id: bytes) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self, product: str | None = None) -> Iterator[Lease]:
        for lease in self._leases.values():
            if product is None or lease.product == product:
                yield lease

    def lease_ids(self) -> Iterable[bytes]:
        return self._leases.keys()

    def leases_of(self, owner: bytes) -> list[bytes]:
        owned = self._by_owner.get(owner)
        if owned is None:
            return []
        return [owned] if isinstance(owned, bytes) else list(owned)

    def __len__(self) -> int:
        return len(self._leases)

    def next_deadline(self) -> float | None:
        """The earliest time ``expire`` may have work to do (possibly early, never late)."""
        return self._heap[0][0] if self._heap else None

    def check_invariant(self) -> None:
        """Raise AssertionError if any count is off or any product is over-granted."""
        counts: dict[str, int] = dict.fromkeys(self._products, 0)
        for lease in self._leases.values():
            counts[lease.product] += 1
            assert lease.id in self.leases_of(lease.owner)
        for name, p in self._products.items():
            assert p.in_use == counts[name], (name, p.in_use, counts[name])
            assert p.borrowed >= 0 and p.held >= 0
            assert p.in_use + p.borrowed + p.held <= p.entitlement.seats + p.over, (
                f"{name}: {p.in_use} in use + {p.borrowed} borrowed + {p.held} held"
                f" > {p.entitlement.seats}"
            )
        assert sum(len(self.leases_of(o)) for o in self._by_owner) == len(self._leases)
        assert all(isinstance(s, bytes) or len(s) > 1 for s in self._by_owner.values())

    # ---------------------------------------------------------------------------- changes

    def checkout(
        self, product: str, version: str, owner: bytes, holder: Holder, now: float
    ) -> Granted | Denied:
        p = self._products.get(product)
        if p is None:
            return Denied("unknown_product", f"no product {product!r} in the network key")
        if not p.entitlement.allows_version(version):
            lo, hi = p.entitlement.versions or ("", "")
            return Denied(
                "version_not_licensed",
                f"{product} version {version!r} is not licensed (licensed: {lo} to {hi})",
            )
        if p.in_use + p.borrowed + p.held >= p.entitlement.seats:
            self.expire(now)
            if p.in_use + p.borrowed + p.held >= p.entitlement.seats:
                return Denied("no_seat", self._full_message(product, p))
        mint = self.mint
        lease_id = self._new_lease_id() if mint is None else mint(owner, product)
        while lease_id in self._leases:  # pragma: no cover - 2**-128 (minted: 2**-32 a batch)
            lease_id = self._new_lease_id() if mint is None else mint(owner, product)
        return Granted(self._add(lease_id, p, owner, holder, now))

    def grant(
        self, product: str, version: str, owner: bytes, holder: Holder, now: float, room: int
    ) -> Lease | None:
        """``checkout`` for the server's fast path: the new lease, or None where ``checkout``
        has more to do or to say (an unknown product, a version the key does not license, no
        seat free before a sweep), or where the seats in use and held already reach ``room``
        (the restart guard's reservation bound). The same count is checked: never a seat more."""
        p = self._products.get(product)
        if (
            p is None
            or p.in_use + p.borrowed + p.held >= p.entitlement.seats
            or p.in_use + p.held >= room
        ):
            return None
        if version and not p.entitlement.allows_version(version):
            return None
        mint = self.mint
        lease_id = self._new_lease_id() if mint is None else mint(owner, product)
        if lease_id in self._leases:  # pragma: no cover - 2**-128 (minted: 2**-32 a batch)
            return None
        return self._add(lease_id, p, owner, holder, now)

    @staticmethod
    def _full_message(product: str, p: _Product) -> str:
        why = [f"{n} {what}" for n, what in ((p.borrowed, "borrowed"), (p.held, "held for "
               "clients reconnecting after a restart")) if n]  # fmt: skip
        return f"all {p.entitlement.seats} seats of {product} are in use" + (
            f" ({', '.join(why)})" if why else ""
        )

    def _add(self, lease_id: bytes, p: _Product, owner: bytes, holder: Holder, now: float) -> Lease:
        expires = now + self.lease_seconds
        lease = Lease(lease_id, p.name, owner, holder, now, now, expires)
        self._leases[lease_id] = lease
        owned = self._by_owner.get(owner)
        if owned is None:
            self._by_owner[owner] = lease_id
        elif isinstance(owned, bytes):
            self._by_owner[owner] = {owned, lease_id}
        else:
            owned.add(lease_id)
        self.changes += 1
        p.in_use += 1
        if p.in_use > p.peak:
            p.peak = p.in_use
        if p.watcher is not None:
            p.watcher.count(holder, 1)
        heapq.heappush(self._heap, (expires, lease_id))
        return lease

    def take_peak(self, product: str) -> int:
        """The most seats of ``product`` in use since the last call; starts a new period."""
        p = self._products[product]
        peak, p.peak = max(p.peak, p.in_use), p.in_use
        return peak

    def adopt(
        self,
        lease_id: bytes,
        product: str,
        owner: bytes,
        holder: Holder,
        now: float,
    ) -> Granted | Denied:
        """Take a lease back under its old id after a restart: from the held seats if any are
        left, else from the free ones. A lease already held by ``owner`` is
        simply granted."""
        existing = self._leases.get(lease_id)
        if existing is not None:
            if existing.owner == owner and existing.product == product:
                return Granted(existing)
            return Denied("lease_unknown", "that lease belongs to someone else")
        p = self._products.get(product)
        if p is None:
            return Denied("unknown_product", f"no product {product!r} in the network key")
        if p.held > 0:
            p.held -= 1
        elif p.in_use + p.borrowed + p.held >= p.entitlement.seats:
            self.expire(now)
            if p.in_use + p.borrowed + p.held >= p.entitlement.seats:
                return Denied("no_seat", self._full_message(product, p))
        return Granted(self._add(lease_id, p, owner, holder, now))

    def hold(self, product: str, seats: int) -> int:
        """Hold up to ``seats`` free seats out of the pool (for reclaim after a restart);
        returns how many are now held."""
        p = self._products[product]
        room = p.entitlement.seats - p.in_use - p.borrowed
        p.held = max(0, min(seats, room))
        return p.held

    def release_holds(self) -> dict[str, int]:
        """End the reclaim window: every seat still held goes back to the pool."""
        freed = {name: p.held for name, p in self._products.items() if p.held}
        for p in self._products.values():
            p.held = 0
        return freed

    def renew(self, lease_ids: Iterable[bytes], owner: bytes, now: float) -> RenewResult:
        return RenewResult(*self.renew_pair(lease_ids, owner, now))

    def renew_pair(
        self, lease_ids: Iterable[bytes], owner: bytes, now: float
    ) -> tuple[list[bytes], list[bytes]]:
        """``renew`` as a plain (renewed, lost) pair, for the server's fast path: making the
        frozen result object costs as much as the renewal."""
        renewed: list[bytes] = []
        lost: list[bytes] = []
        expires = now + self.lease_seconds
        leases = self._leases
        for lease_id in lease_ids:
            lease = leases.get(lease_id)
            if lease is None or lease.owner != owner:
                lost.append(lease_id)
            elif lease.expires <= now:
                self._remove(lease)
                lost.append(lease_id)
            else:
                lease.expires = expires
                lease.renewed = now
                renewed.append(lease_id)
        return renewed, lost

    def renew_one(self, lease_id: bytes, owner: bytes, now: float) -> bool:
        """Renew one live lease of ``owner``; False (nothing changed) when ``renew`` would call
        it lost, which the caller then asks ``renew`` to settle."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.owner != owner or lease.expires <= now:
            return False
        lease.expires = now + self.lease_seconds
        lease.renewed = now
        return True

    def release_one(self, lease_id: bytes, owner: bytes, now: float) -> Lease | None:
        """Release one live lease of ``owner`` and return it; None (nothing changed) when
        ``release`` would call it lost, which the caller then asks ``release`` to settle."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.owner != owner or lease.expires <= now:
            return None
        self._remove(lease)
        return lease

    def release(self, lease_ids: Iterable[bytes], owner: bytes | None, now: float) -> ReleaseResult:
        """Give seats back. ``owner=None`` is the admin's remove: any lease, whoever holds it."""
        return ReleaseResult(*self.release_pair(lease_ids, owner, now))

    def release_pair(
        self, lease_ids: Iterable[bytes], owner: bytes | None, now: float
    ) -> tuple[list[Lease], list[bytes]]:
        """``release`` as a plain (released, lost) pair (see ``renew_pair``)."""
        released: list[Lease] = []
        lost: list[bytes] = []
        for lease_id in lease_ids:
            lease = self._leases.get(lease_id)
            if lease is None or (owner is not None and lease.owner != owner):
                lost.append(lease_id)
            elif lease.expires <= now:
                self._remove(lease)
                lost.append(lease_id)
            else:
                self._remove(lease)
                released.append(lease)
        return released, lost

    def release_owner(self, owner: bytes, now: float) -> list[Lease]:
        """Release every seat of one client (its clean goodbye)."""
        return self.release(self.leases_of(owner), owner, now).released

    def expire(self, now: float) -> list[Lease]:
        """Free every lease whose deadline has passed; return them (``on_expired`` is told)."""
        heap = self._heap
        leases = self._leases
        expired: list[Lease] = []
        while heap and heap[0][0] <= now:
            _, lease_id = heapq.heappop(heap)
            lease = leases.get(lease_id)
            if lease is None:
                continue  # released earlier: a stale entry
            if lease.expires > now:
                heapq.heappush(heap, (lease.expires, lease_id))  # renewed since it was pushed
                continue
            self._remove(lease, from_heap=False)
            expired.append(lease)
        if expired and self.on_expired is not None:
            self.on_expired(expired)
        return expired

    def take_borrowed(self, product: str, now: float | None = None, force: bool = False) -> bool:
        """Move one free seat out of the pool as borrowed; False if none is free.

        With ``now`` given, a full product is swept first, as checkout does, so a lease that is
        dead but not yet swept does not block a borrow.

        ``force`` counts a borrow that is out already whatever the pool says (one the server
        learns of after its database was restored from an old backup): with no seat free it is
        counted all the same, the product is over its seats, and since every grant checks
        ``in_use + borrowed + held < seats``, nothing new is granted until enough seats come
        back to pay for it. Returns whether it fitted."""
        p = self._products[product]
        if p.in_use + p.borrowed + p.held >= p.entitlement.seats and now is not None:
            self.expire(now)
        if p.in_use + p.borrowed + p.held >= p.entitlement.seats:
            if not force:
                return False
            p.over += 1
            p.borrowed += 1
            return False
        p.borrowed += 1
        return True

    def return_borrowed(self, product: str) -> None:
        p = self._products[product]
        if p.borrowed <= 0:
            raise ValueError(f"no borrowed seat of {product} to return")
        p.borrowed -= 1
        if p.over:
            p.over -= 1

    def watch(self, product: str, watcher: Watcher | None) -> None:
        """Tell ``watcher`` of every lease of ``product`` from now on, taken or gone (a lease
        expired but not yet swept counts until the sweep). None stops it."""
        self._products[product].watcher = watcher

    def borrower(self, product: str, who: Holder, delta: int) -> None:
        """``who`` now holds one more (``delta`` 1) or one less (-1) borrowed seat of
        ``product``: the lending desk says so as its borrows begin and end, for the watcher
        (the pool itself counts borrowed seats without names)."""
        p = self._products.get(product)
        if p is not None and p.watcher is not None:
            p.watcher.count(who, delta, borrowed=True)

    def postpone(self, seconds: float) -> None:
        """Move every lease's deadline ``seconds`` later: the server's loop stalled that long,
        and a client cannot be blamed for not renewing while nobody was listening."""
        for lease in self._leases.values():
            lease.expires += seconds
        self._heap = [(x.expires, x.id) for x in self._leases.values()]
        heapq.heapify(self._heap)

    # ---------------------------------------------------------------------------- internal

    def _remove(self, lease: Lease, from_heap: bool = True) -> None:
        del self._leases[lease.id]
        owned = self._by_owner[lease.owner]
        if isinstance(owned, bytes):
            del self._by_owner[lease.owner]
        else:
            owned.discard(lease.id)
            if len(owned) == 1:
                self._by_owner[lease.owner] = next(iter(owned))
        self.changes += 1
        p = self._products[lease.product]
        p.in_use -= 1
        if p.watcher is not None:
            p.watcher.count(lease.holder, -1)
        # The heap entry stays behind as stale; rebuild once stale entries dominate.
        if from_heap and len(self._heap) > 64 and len(self._heap) > 2 * len(self._leases) + 64:
            self._heap = [(x.expires, x.id) for x in self._leases.values()]
            heapq.heapify(self._heap)
