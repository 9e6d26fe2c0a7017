"""The seat pool against a model of the truth, driven by Hypothesis.

The model is deliberately naive: a dict of the leases the pool still holds (alive, or dead but not
yet swept) with their owner and deadline, and per product the seats borrowed, the borrows forced
in over the seats (a restored database), and the seats held for reclaim after a restart. A lease
is alive while ``now < deadline``. Every rule computes the expected outcome from the model alone,
calls the pool, and compares; the invariants compare the pool's counts and leases with the model
after every step, and check the promise (in use + borrowed + held never above the seats, but for
forced borrows) from the model's own counts: an oracle independent of ``check_invariant``.

Seat counts are small (1 to 5) and the lease period is 20 time units advanced in whole steps, so
products fill up, deadlines are hit exactly, and expired-but-unswept leases are common.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Denied, Granted, Holder, SeatPool

LEASE = 20.0
START = 1000.0
OWNERS = (b"owner-a", b"owner-b", b"owner-c")
NAMES = ("cad", "sim", "viewer")
UNKNOWN = "no-such-product"
RANGE = ("2.0", "4.0")
VERSIONS_IN = ("2.0", "3.0", "3.5", "4.0")
VERSIONS_OUT = ("1.0", "1.9", "4.1", "10.0")
MADE_UP = (b"made-up-1", b"made-up-2", b"\x00" * 16)


@dataclass
class ModelLease:
    product: str
    owner: bytes
    deadline: float


class SeatPoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: SeatPool
        self.now = START
        self.seats: dict[str, int] = {}
        self.ranged: dict[str, bool] = {}
        self.held: dict[bytes, ModelLease] = {}
        """Leases the pool should still hold: alive, or dead and not yet swept."""
        self.borrowed: dict[str, int] = {}
        self.over: dict[str, int] = {}
        """Forced borrows not yet paid back by a return (``take_borrowed(force=True)``)."""
        self.held_seats: dict[str, int] = {}
        """Seats held out of the pool for reclaim after a restart."""
        self.peak: dict[str, int] = {}
        self.issued: list[bytes] = []
        """Every lease id ever granted, including ones long gone."""

    # ------------------------------------------------------------------------------ model

    def alive(self, lease_id: bytes) -> bool:
        m = self.held.get(lease_id)
        return m is not None and self.now < m.deadline

    def count(self, product: str, *, alive_only: bool) -> int:
        return sum(
            1
            for lid, m in self.held.items()
            if m.product == product and (not alive_only or self.now < m.deadline)
        )

    def sweep(self) -> set[bytes]:
        dead = {lid for lid, m in self.held.items() if m.deadline <= self.now}
        for lid in dead:
            del self.held[lid]
        return dead

    def draw_ids(self, data: st.DataObject) -> list[bytes]:
        """Mostly leases the pool holds, also long-gone and made-up ids."""
        anything = st.sampled_from([*self.issued, *MADE_UP])
        held = st.sampled_from(sorted(self.held)) if self.held else anything
        return data.draw(st.lists(st.one_of(held, held, anything), max_size=4), label="ids")

    def draw_owner(self, data: st.DataObject, ids: list[bytes]) -> bytes:
        """Often the owner of the first id, so that renew and release can succeed."""
        owners = st.sampled_from(OWNERS)
        if ids and ids[0] in self.held:
            owners = st.one_of(st.just(self.held[ids[0]].owner), owners)
        return data.draw(owners, label="owner")

    # ------------------------------------------------------------------------------ rules

    @initialize(
        seats=st.lists(st.integers(1, 5), min_size=2, max_size=3),
        ranged=st.lists(st.booleans(), min_size=3, max_size=3),
    )
    def setup(self, seats: list[int], ranged: list[bool]) -> None:
        products = []
        for name, n, r in zip(NAMES, seats, ranged, strict=False):
            self.seats[name] = n
            self.ranged[name] = r
            self.borrowed[name] = 0
            self.over[name] = 0
            self.held_seats[name] = 0
            self.peak[name] = 0
            products.append(
                ProductEntitlement(
                    name=name,
                    seats=n,
                    borrowable=n,
                    max_borrow_days=7,
                    versions=RANGE if r else None,
                    addon=False,
                )
            )
        counter = itertools.count(1)
        self.pool = SeatPool(
            products, lease_seconds=LEASE, new_lease_id=lambda: b"lease-%d" % next(counter)
        )

    @rule(data=st.data(), owner=st.sampled_from(OWNERS))
    def checkout_valid(self, data: st.DataObject, owner: bytes) -> None:
        """The common case, drawn more often so that products fill up."""
        product = data.draw(st.sampled_from(sorted(self.seats)), label="product")
        self.checkout(data, version_ok=True, owner=owner, product=product)

    @rule(data=st.data(), version_ok=st.booleans(), owner=st.sampled_from(OWNERS))
    def checkout_any(self, data: st.DataObject, version_ok: bool, owner: bytes) -> None:
        product = data.draw(st.sampled_from([*sorted(self.seats), UNKNOWN]), label="product")
        self.checkout(data, version_ok=version_ok, owner=owner, product=product)

    def checkout(self, data: st.DataObject, version_ok: bool, owner: bytes, product: str) -> None:
        version = data.draw(
            st.sampled_from(VERSIONS_IN if version_ok else VERSIONS_OUT), label="version"
        )
        holder = Holder("user", "host", "app", version)
        result = self.pool.checkout(product, version, owner, holder, self.now)

        if product not in self.seats:
            assert isinstance(result, Denied)
            assert result.code == "unknown_product"
            return
        if self.ranged[product] and not version_ok:
            assert isinstance(result, Denied)
            assert result.code == "version_not_licensed"
            return
        if not self.fits(product):
            assert isinstance(result, Denied)
            assert result.code == "no_seat"
            event("checkout refused: no seat")
            return
        assert isinstance(result, Granted), result
        self.granted(result, product, owner, holder)

    @rule(data=st.data(), version_ok=st.booleans(), owner=st.sampled_from(OWNERS))
    def grant(self, data: st.DataObject, version_ok: bool, owner: bytes) -> None:
        """The fast path's checkout: a lease exactly where one fits without a sweep, else
        nothing at all (the caller then asks ``checkout``)."""
        product = data.draw(st.sampled_from([*sorted(self.seats), UNKNOWN]), label="product")
        version = data.draw(
            st.sampled_from(VERSIONS_IN if version_ok else VERSIONS_OUT), label="version"
        )
        holder = Holder("user", "host", "app", version)
        before = self.pool.changes
        room = data.draw(st.integers(0, 8), label="room")  # the restart guard's bound
        lease = self.pool.grant(product, version, owner, holder, self.now, room)
        taken = self.borrowed.get(product, 0) + self.held_seats.get(product, 0)
        in_use = self.count(product, alive_only=False)
        fits = (
            product in self.seats
            and (version_ok or not self.ranged[product])
            and in_use + taken < self.seats[product]
            and in_use + self.held_seats[product] < room
        )
        if not fits:
            assert lease is None
            assert self.pool.changes == before
            return
        assert lease is not None
        self.granted(Granted(lease), product, owner, holder)

    def fits(self, product: str) -> bool:
        """Whether one more seat fits, sweeping first if the product looks full (as the pool
        does for a checkout, an adopt and a borrow with ``now``)."""
        taken = self.borrowed[product] + self.held_seats[product]
        if self.count(product, alive_only=False) + taken >= self.seats[product]:
            self.sweep()
        return self.count(product, alive_only=True) + taken < self.seats[product]

    def granted(self, result: Granted, product: str, owner: bytes, holder: Holder) -> None:
        lease = result.lease
        assert lease.id not in self.held
        assert (lease.product, lease.owner, lease.holder) == (product, owner, holder)
        assert lease.since == lease.renewed == self.now
        assert lease.expires == self.now + LEASE
        self.held[lease.id] = ModelLease(product, owner, self.now + LEASE)
        self.issued.append(lease.id)
        self.peak[product] = max(self.peak[product], self.count(product, alive_only=False))

    @rule(owner=st.sampled_from(OWNERS))
    def heartbeat(self, owner: bytes) -> None:
        """A client renews every lease it believes it holds (some may be dead by now)."""
        self.renew_ids(sorted(lid for lid, m in self.held.items() if m.owner == owner), owner)

    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        ids = self.draw_ids(data)
        self.renew_ids(ids, self.draw_owner(data, ids))

    def renew_ids(self, ids: list[bytes], owner: bytes) -> None:
        result = self.pool.renew(ids, owner, self.now)
        renewed, lost = [], []
        for lid in ids:
            m = self.held.get(lid)
            if m is None or m.owner != owner:
                lost.append(lid)
            elif m.deadline <= self.now:
                del self.held[lid]  # renew finds it dead and drops it
                lost.append(lid)
            else:
                m.deadline = self.now + LEASE
                renewed.append(lid)
        assert result.renewed == renewed
        assert result.lost == lost

    def draw_one(self, data: st.DataObject) -> tuple[bytes, bytes, ModelLease | None] | None:
        """A lease id and an owner for a one-lease call, and the model's lease when the call
        must act on it (alive and the owner's), else None; None for nothing drawn."""
        ids = self.draw_ids(data)[:1]
        if not ids:
            return None
        owner = self.draw_owner(data, ids)
        m = self.held.get(ids[0])
        ok = m is not None and m.owner == owner and self.now < m.deadline
        return ids[0], owner, m if ok else None

    @rule(data=st.data())
    def renew_one(self, data: st.DataObject) -> None:
        """The fast path's renew of one lease: renewed if alive and the owner's, else nothing
        changes (the caller then asks ``renew``, which says what became of it)."""
        drawn = self.draw_one(data)
        if drawn is None:
            return
        lease_id, owner, m = drawn
        before = self.pool.changes
        assert self.pool.renew_one(lease_id, owner, self.now) is (m is not None)
        if m is not None:
            m.deadline = self.now + LEASE
        assert self.pool.changes == before

    @rule(data=st.data())
    def release_one(self, data: st.DataObject) -> None:
        """The fast path's release of one lease: freed if alive and the owner's, else nothing
        changes (the caller then asks ``release``)."""
        drawn = self.draw_one(data)
        if drawn is None:
            return
        lease_id, owner, m = drawn
        before = {p: self.pool.in_use(p) for p in self.seats}
        lease = self.pool.release_one(lease_id, owner, self.now)
        if m is None:
            assert lease is None
            assert {p: self.pool.in_use(p) for p in self.seats} == before
            return
        assert lease is not None and lease.id == lease_id
        product = self.held.pop(lease_id).product
        assert self.pool.in_use(product) == before[product] - 1

    @rule(data=st.data(), admin=st.booleans())
    def release(self, data: st.DataObject, admin: bool) -> None:
        ids = self.draw_ids(data)
        owner = None if admin else self.draw_owner(data, ids)
        in_use_before = {p: self.pool.in_use(p) for p in self.seats}
        result = self.pool.release(ids, owner, self.now)
        released, lost, removed = [], [], []
        for lid in ids:
            m = self.held.get(lid)
            if m is None or (owner is not None and m.owner != owner):
                lost.append(lid)
            else:
                (released if self.now < m.deadline else lost).append(lid)
                removed.append(self.held.pop(lid).product)
        assert [x.id for x in result.released] == released
        assert result.lost == lost
        for p in self.seats:  # released seats (and dead ones found on the way) are free at once
            assert self.pool.in_use(p) == in_use_before[p] - removed.count(p)

    @rule(owner=st.sampled_from(OWNERS))
    def release_owner(self, owner: bytes) -> None:
        mine = {lid for lid, m in self.held.items() if m.owner == owner}
        expected = {lid for lid in mine if self.alive(lid)}
        released = self.pool.release_owner(owner, self.now)
        assert sorted(x.id for x in released) == sorted(expected)
        for lid in mine:
            del self.held[lid]
        assert self.pool.leases_of(owner) == []

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """Mostly small steps, so that leases live long enough to be renewed; sometimes up to two
        lease periods, or exactly to a deadline the model knows."""
        deadlines = sorted({m.deadline for m in self.held.values() if m.deadline >= self.now})
        small = st.integers(0, 3).map(lambda dt: self.now + dt)
        large = st.integers(0, int(2 * LEASE)).map(lambda dt: self.now + dt)
        exact = st.sampled_from(deadlines) if deadlines else small
        self.now = data.draw(st.one_of(small, small, large, exact), label="now")

    @precondition(lambda self: self.pool.next_deadline() is not None)
    @rule()
    def timer_fires(self) -> None:
        """What the adapter does: sleep until next_deadline (maybe a stale one), then expire."""
        deadline = self.pool.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.expire()

    @rule()
    def expire(self) -> None:
        expired = self.pool.expire(self.now)
        ids = [x.id for x in expired]
        assert len(ids) == len(set(ids))
        assert set(ids) == self.sweep()
        assert all(x.expires <= self.now for x in expired)

    @rule(data=st.data(), sweep=st.booleans(), force=st.sampled_from([False, False, True]))
    def take_borrowed(self, data: st.DataObject, sweep: bool, force: bool) -> None:
        product = data.draw(st.sampled_from(sorted(self.seats)), label="product")
        if sweep:  # with `now`, a full product is swept first, as for a checkout
            expected = self.fits(product)
            got = self.pool.take_borrowed(product, self.now, force=force)
        else:  # no `now`, so no sweep: a dead but unswept lease still counts as taken
            taken = self.borrowed[product] + self.held_seats[product]
            expected = self.count(product, alive_only=False) + taken < self.seats[product]
            got = self.pool.take_borrowed(product, force=force)
        assert got is expected
        if expected or force:
            self.borrowed[product] += 1
        if force and not expected:
            self.over[product] += 1
            event("forced borrow over the seats")

    @rule(data=st.data())
    def hold(self, data: st.DataObject) -> None:
        """A restart holds seats for the clients that held them before it."""
        product = data.draw(st.sampled_from(sorted(self.seats)), label="product")
        want = data.draw(st.integers(-1, 6), label="seats")
        room = self.seats[product] - self.count(product, alive_only=False) - self.borrowed[product]
        expected = max(0, min(want, room))
        assert self.pool.hold(product, want) == expected
        self.held_seats[product] = expected
        event("hold", "some" if expected else "none")

    @rule()
    def release_holds(self) -> None:
        expected = {p: n for p, n in self.held_seats.items() if n}
        assert self.pool.release_holds() == expected
        for p in self.held_seats:
            self.held_seats[p] = 0
        event("held seats returned" if expected else "no held seat to return")

    @rule(data=st.data(), owner=st.sampled_from(OWNERS))
    def adopt(self, data: st.DataObject, owner: bytes) -> None:
        """A client reclaims a lease under its old id: its own (again), someone else's, a
        long-gone one, or a made-up one; for a product of the key or not."""
        lease_id = data.draw(
            st.sampled_from([*sorted(self.held), *self.issued, b"reclaim-%d" % len(self.issued)]),
            label="lease_id",
        )
        product = data.draw(st.sampled_from([*sorted(self.seats), UNKNOWN]), label="product")
        holder = Holder("user", "host", "app", "3.0")
        result = self.pool.adopt(lease_id, product, owner, holder, self.now)
        m = self.held.get(lease_id)
        if m is not None:
            if m.owner == owner and m.product == product:
                assert isinstance(result, Granted) and result.lease.id == lease_id
                assert result.lease.expires == m.deadline  # the same lease, not a second seat
                event("reclaim: again by its owner")
            else:
                assert isinstance(result, Denied) and result.code == "lease_unknown"
                event("reclaim refused: someone else's lease")
            return
        if product not in self.seats:
            assert isinstance(result, Denied) and result.code == "unknown_product"
            return
        if self.held_seats[product] > 0:
            self.held_seats[product] -= 1
            event("reclaim from a held seat")
        elif not self.fits(product):
            assert isinstance(result, Denied) and result.code == "no_seat"
            event("reclaim refused: no seat")
            return
        else:
            event("reclaim from a free seat")
        assert isinstance(result, Granted), result
        assert result.lease.id == lease_id
        self.granted(result, product, owner, holder)

    @rule(data=st.data())
    def take_peak(self, data: st.DataObject) -> None:
        product = data.draw(st.sampled_from(sorted(self.seats)), label="product")
        in_use = self.count(product, alive_only=False)
        assert self.pool.take_peak(product) == max(self.peak[product], in_use)
        self.peak[product] = in_use

    @rule(seconds=st.integers(1, int(LEASE)))
    def stall(self, seconds: int) -> None:
        """The server's loop stalled for ``seconds``: that time passed with nobody listening, and
        the server postpones every deadline by it (a stall is never longer than the time that
        passed, so a renewal after it never moves a deadline earlier)."""
        self.now += seconds
        self.pool.postpone(seconds)
        for m in self.held.values():
            m.deadline += seconds

    @precondition(lambda self: any(self.borrowed.values()))
    @rule(data=st.data())
    def return_borrowed(self, data: st.DataObject) -> None:
        product = data.draw(
            st.sampled_from(sorted(p for p, n in self.borrowed.items() if n)), label="product"
        )
        self.pool.return_borrowed(product)
        self.borrowed[product] -= 1
        if self.over[product]:
            self.over[product] -= 1

    @precondition(lambda self: not all(self.borrowed.values()))
    @rule(data=st.data())
    def return_unborrowed(self, data: st.DataObject) -> None:
        product = data.draw(
            st.sampled_from(sorted(p for p, n in self.borrowed.items() if not n)), label="product"
        )
        with pytest.raises(ValueError, match="no borrowed seat"):
            self.pool.return_borrowed(product)

    # ------------------------------------------------------------------------------ invariants

    @invariant()
    def never_over_granted(self) -> None:
        """The promise, from the model's own counts (an oracle that does not trust the pool's
        check): in use + borrowed + held never exceed the seats, except by the forced borrows
        still out, and only while borrows are out to pay for them."""
        for p, seats in self.seats.items():
            taken = self.count(p, alive_only=False) + self.borrowed[p] + self.held_seats[p]
            assert taken <= seats + self.over[p], (p, taken, seats, self.over[p])
            assert self.over[p] <= self.borrowed[p]

    @invariant()
    def pool_is_consistent(self) -> None:
        self.pool.check_invariant()
        for p, seats in self.seats.items():
            taken = self.borrowed[p] + self.held_seats[p]
            assert self.pool.seats(p) == seats
            assert self.pool.in_use(p) + self.pool.borrowed(p) + self.pool.held(p) <= (
                seats + self.over[p]
            )
            assert self.pool.in_use(p) == self.count(p, alive_only=False)
            assert self.pool.borrowed(p) == self.borrowed[p]
            assert self.pool.held(p) == self.held_seats[p]
            assert self.pool.free(p) == max(0, seats - self.pool.in_use(p) - taken)

    @invariant()
    def pool_matches_model(self) -> None:
        assert len(self.pool) == len(self.held)
        leases = {x.id: x for x in self.pool.leases()}
        assert leases.keys() == self.held.keys()
        for lid, m in self.held.items():
            x = leases[lid]
            assert (x.product, x.owner, x.expires) == (m.product, m.owner, m.deadline)
            assert self.pool.lease(lid) is x
        for owner in OWNERS:
            mine = {lid for lid, m in self.held.items() if m.owner == owner}
            assert set(self.pool.leases_of(owner)) == mine

    @invariant()
    def deadline_never_late_and_heap_bounded(self) -> None:
        nd = self.pool.next_deadline()
        if self.held:
            assert nd is not None
            assert nd <= min(m.deadline for m in self.held.values())
        # Stale heap entries stay proportional to the seats held (plus a constant).
        assert len(self.pool._heap) <= 2 * len(self.held) + 64 + sum(self.seats.values())


SeatPoolMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_seat_pool = SeatPoolMachine.TestCase
