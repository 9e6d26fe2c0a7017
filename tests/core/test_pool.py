"""Unit tests for the seat pool; the invariants over long runs are in test_pool_state_machine."""

from __future__ import annotations

import itertools

import pytest

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Denied, Granted, Holder, Lease, SeatPool

LEASE = 60.0
T0 = 1000.0
A = b"client-a"
B = b"client-b"
HOLDER = Holder("ann", "ws1", "cad", "3.0")


def entitlement(
    name: str, seats: int, versions: tuple[str, str] | None = None
) -> ProductEntitlement:
    return ProductEntitlement(
        name=name,
        seats=seats,
        borrowable=0,
        max_borrow_days=0,
        versions=versions,
        addon=False,
    )


def make_pool(seats: int = 2, versions: tuple[str, str] | None = None) -> SeatPool:
    counter = itertools.count(1)
    return SeatPool(
        [entitlement("cad", seats, versions), entitlement("sim", 1)],
        lease_seconds=LEASE,
        new_lease_id=lambda: b"lease-%d" % next(counter),
    )


def take(pool: SeatPool, owner: bytes = A, now: float = T0, product: str = "cad") -> Lease:
    result = pool.checkout(product, "3.0", owner, HOLDER, now)
    assert isinstance(result, Granted), result
    return result.lease


def test_fill_to_seat_count_then_no_seat() -> None:
    pool = make_pool(seats=3)
    leases = [take(pool, now=T0 + i) for i in range(3)]
    assert len({x.id for x in leases}) == 3
    assert (pool.in_use("cad"), pool.free("cad")) == (3, 0)
    result = pool.checkout("cad", "3.0", B, HOLDER, T0 + 5)
    assert isinstance(result, Denied)
    assert result.code == "no_seat"
    assert pool.in_use("cad") == 3
    assert pool.free("sim") == 1  # other products are untouched
    pool.check_invariant()


def test_granted_lease_fields() -> None:
    pool = make_pool()
    lease = take(pool, now=T0)
    assert (lease.product, lease.owner, lease.holder) == ("cad", A, HOLDER)
    assert lease.since == lease.renewed == T0
    assert lease.expires == T0 + LEASE
    assert pool.lease(lease.id) is lease


def test_release_frees_seat_at_once() -> None:
    pool = make_pool(seats=1)
    lease = take(pool)
    result = pool.release([lease.id], A, T0 + 1)
    assert result.released == [lease]
    assert result.lost == []
    assert pool.free("cad") == 1
    assert pool.lease(lease.id) is None
    take(pool, owner=B, now=T0 + 1)
    pool.check_invariant()


def test_release_twice_is_lost_the_second_time() -> None:
    pool = make_pool()
    lease = take(pool)
    result = pool.release([lease.id, lease.id], A, T0 + 1)
    assert result.released == [lease]
    assert result.lost == [lease.id]


def test_expiry_exactly_at_the_deadline() -> None:
    pool = make_pool()
    lease = take(pool)
    deadline = T0 + LEASE
    assert pool.expire(deadline - 0.001) == []
    assert pool.lease(lease.id) is lease
    assert pool.expire(deadline) == [lease]
    assert pool.lease(lease.id) is None
    assert pool.free("cad") == 2
    assert pool.expire(deadline + 1) == []


def test_renew_extends() -> None:
    pool = make_pool()
    lease = take(pool)
    result = pool.renew([lease.id], A, T0 + 50)
    assert result.renewed == [lease.id]
    assert result.lost == []
    assert lease.expires == T0 + 50 + LEASE
    assert lease.renewed == T0 + 50
    assert lease.since == T0
    assert pool.expire(T0 + LEASE) == []  # the old deadline has no effect
    assert pool.lease(lease.id) is lease
    assert pool.expire(T0 + 50 + LEASE) == [lease]


def test_expired_unswept_lease_cannot_be_renewed() -> None:
    pool = make_pool()
    lease = take(pool)
    result = pool.renew([lease.id], A, T0 + LEASE)
    assert result.renewed == []
    assert result.lost == [lease.id]
    assert pool.lease(lease.id) is None
    assert pool.in_use("cad") == 0
    pool.check_invariant()


def test_expired_unswept_lease_cannot_be_released() -> None:
    pool = make_pool()
    lease = take(pool)
    result = pool.release([lease.id], A, T0 + LEASE)
    assert result.released == []
    assert result.lost == [lease.id]
    assert pool.in_use("cad") == 0


def test_checkout_sweeps_expired_unswept_seat() -> None:
    pool = make_pool(seats=1)
    old = take(pool, owner=A, now=T0)
    denied = pool.checkout("cad", "3.0", B, HOLDER, T0 + LEASE - 1)
    assert isinstance(denied, Denied)
    assert denied.code == "no_seat"
    new = take(pool, owner=B, now=T0 + LEASE)  # no expire() call in between
    assert new.id != old.id
    assert pool.lease(old.id) is None
    assert pool.leases_of(A) == []
    assert pool.renew([old.id], A, T0 + LEASE).lost == [old.id]
    pool.check_invariant()


def test_other_owners_lease_cannot_be_renewed_or_released() -> None:
    pool = make_pool()
    lease = take(pool, owner=A)
    assert pool.renew([lease.id], B, T0 + 10).lost == [lease.id]
    assert lease.expires == T0 + LEASE
    result = pool.release([lease.id], B, T0 + 10)
    assert result.released == []
    assert result.lost == [lease.id]
    assert pool.lease(lease.id) is lease
    assert pool.renew([lease.id], A, T0 + 10).renewed == [lease.id]


def test_unknown_lease_ids_are_lost() -> None:
    pool = make_pool()
    lease = take(pool)
    result = pool.renew([b"nope", lease.id], A, T0 + 1)
    assert result.renewed == [lease.id]
    assert result.lost == [b"nope"]
    assert pool.release([b"nope"], None, T0 + 1).lost == [b"nope"]


def test_release_owner() -> None:
    pool = make_pool(seats=3)
    a1 = take(pool, owner=A)
    a2 = take(pool, owner=A, product="sim")
    b1 = take(pool, owner=B)
    released = pool.release_owner(A, T0 + 1)
    assert sorted(x.id for x in released) == sorted([a1.id, a2.id])
    assert pool.leases_of(A) == []
    assert pool.leases_of(B) == [b1.id]
    assert (pool.in_use("cad"), pool.in_use("sim")) == (1, 0)
    assert pool.release_owner(A, T0 + 2) == []
    assert pool.release_owner(b"stranger", T0 + 2) == []
    pool.check_invariant()


def test_release_owner_skips_but_drops_dead_leases() -> None:
    pool = make_pool(seats=3)
    dead = take(pool, owner=A, now=T0)
    live = take(pool, owner=A, now=T0 + 30)
    released = pool.release_owner(A, T0 + LEASE)
    assert released == [live]
    assert pool.lease(dead.id) is None
    assert len(pool) == 0


def test_admin_release_with_owner_none() -> None:
    pool = make_pool()
    a = take(pool, owner=A)
    b = take(pool, owner=B)
    result = pool.release([a.id, b.id, b"nope"], None, T0 + 1)
    assert result.released == [a, b]
    assert result.lost == [b"nope"]
    assert len(pool) == 0
    pool.check_invariant()


def test_heap_stays_bounded_without_expire() -> None:
    pool = make_pool(seats=2)
    keeper = take(pool, owner=B)
    for i in range(10_000):
        now = T0 + i * 0.001
        lease = take(pool, now=now)
        assert pool.release([lease.id], A, now).released == [lease]
        assert len(pool._heap) <= 70
    assert pool.renew([keeper.id], B, T0 + 10).renewed == [keeper.id]
    assert len(pool) == 1
    pool.check_invariant()


def test_heap_compaction_keeps_every_deadline() -> None:
    pool = make_pool(seats=3)
    a = take(pool, owner=A, now=T0)
    b = take(pool, owner=B, now=T0 + 1)
    pool.renew([a.id], A, T0 + 30)
    for _ in range(200):  # enough stale entries to force several rebuilds
        lease = take(pool, owner=B, now=T0 + 2)
        pool.release([lease.id], B, T0 + 2)
    assert len(pool._heap) < 70
    assert pool.next_deadline() == T0 + 1 + LEASE
    assert pool.expire(T0 + 1 + LEASE) == [b]
    assert pool.expire(T0 + 30 + LEASE - 1) == []
    assert pool.expire(T0 + 30 + LEASE) == [a]
    assert pool.next_deadline() is None
    pool.check_invariant()


def test_heap_stays_bounded_with_renew_and_expire() -> None:
    pool = make_pool(seats=2)
    lease = take(pool)
    for i in range(1, 10_000):
        now = T0 + i
        assert pool.renew([lease.id], A, now).renewed == [lease.id]
        assert pool.expire(now) == []
        assert len(pool._heap) == 1


def test_next_deadline() -> None:
    pool = make_pool(seats=3)
    assert pool.next_deadline() is None
    first = take(pool, now=T0)
    take(pool, now=T0 + 5)
    assert pool.next_deadline() == T0 + LEASE
    pool.renew([first.id], A, T0 + 20)
    # Possibly early, never late: the old deadline may still be reported.
    deadline = pool.next_deadline()
    assert deadline is not None
    assert deadline <= T0 + 5 + LEASE
    assert pool.expire(deadline) == []
    assert pool.next_deadline() == T0 + 5 + LEASE
    assert [x.expires for x in pool.expire(T0 + 5 + LEASE)] == [T0 + 5 + LEASE]
    assert pool.next_deadline() == T0 + 20 + LEASE
    pool.expire(T0 + 20 + LEASE)
    assert pool.next_deadline() is None


def test_version_not_licensed() -> None:
    pool = make_pool(seats=3, versions=("2.0", "4.0"))
    for version in ("2.0", "3.0", "4.0"):
        assert isinstance(pool.checkout("cad", version, A, HOLDER, T0), Granted), version
    pool = make_pool(versions=("2.0", "4.0"))
    for version in ("1.9", "4.1", "10.0", "x"):
        result = pool.checkout("cad", version, A, HOLDER, T0)
        assert isinstance(result, Denied), version
        assert result.code == "version_not_licensed"
        assert result.message == (f"cad version {version!r} is not licensed (licensed: 2.0 to 4.0)")
    assert pool.in_use("cad") == 0


def test_unknown_product() -> None:
    pool = make_pool()
    result = pool.checkout("nope", "3.0", A, HOLDER, T0)
    assert isinstance(result, Denied)
    assert result.code == "unknown_product"
    assert result.message == "no product 'nope' in the network key"
    assert len(pool) == 0
    with pytest.raises(KeyError):
        pool.free("nope")


def test_borrowed_seats_count_against_the_pool() -> None:
    pool = make_pool(seats=2)
    assert pool.take_borrowed("cad")
    take(pool)
    assert not pool.take_borrowed("cad")
    denied = pool.checkout("cad", "3.0", B, HOLDER, T0)
    assert isinstance(denied, Denied)
    assert "1 borrowed" in denied.message
    pool.return_borrowed("cad")
    take(pool, owner=B)
    with pytest.raises(ValueError, match="no borrowed seat"):
        pool.return_borrowed("sim")
    pool.check_invariant()


# ------------------------------------------------------------------ expiry past renewed and stale


def test_expire_sweeps_past_a_renewed_lease_and_a_released_one() -> None:
    """The heap holds a renewed lease's old deadline and a released lease's entry ahead of a dead
    lease: the sweep must step over both, not stop at them (a full product would otherwise refuse
    a checkout although one of its leases is dead)."""
    pool = make_pool(seats=3)
    renewed = take(pool, now=T0)  # old heap entry T0 + 60
    gone = take(pool, now=T0 + 1)  # released: a stale entry at T0 + 61
    dead = take(pool, now=T0 + 2)  # dies at T0 + 62
    assert pool.renew([renewed.id], A, T0 + 30).renewed == [renewed.id]
    assert pool.release([gone.id], A, T0 + 30).released == [gone]
    take(pool, owner=B, now=T0 + 30)
    expired = pool.expire(T0 + 62)
    assert [x.id for x in expired] == [dead.id]
    assert pool.lease(renewed.id) is renewed and pool.lease(dead.id) is None
    assert pool.in_use("cad") == 2
    # and a checkout into the product, full until that sweep, is granted
    take(pool, owner=B, now=T0 + 62)
    pool.check_invariant()


def test_a_full_product_checkout_finds_the_dead_lease_behind_a_renewed_one() -> None:
    pool = make_pool(seats=2)
    renewed = take(pool, now=T0)
    take(pool, now=T0 + 1)
    pool.renew([renewed.id], A, T0 + 30)
    lease = take(pool, owner=B, now=T0 + 61)  # full: the checkout sweeps, past the renewed entry
    assert lease.owner == B
    assert pool.in_use("cad") == 2


def test_expire_returns_nothing_before_the_deadline_and_everything_at_it() -> None:
    pool = make_pool(seats=2)
    a = take(pool, now=T0)
    b = take(pool, now=T0)
    assert pool.expire(T0 + LEASE - 0.001) == []
    assert sorted(x.id for x in pool.expire(T0 + LEASE)) == sorted([a.id, b.id])
    assert len(pool) == 0
    assert pool.expire(T0 + 999) == []


# ------------------------------------------------------------------ hold, adopt, release_holds


def test_hold_takes_only_free_seats_and_replaces_the_earlier_hold() -> None:
    pool = make_pool(seats=3)
    take(pool)
    pool.take_borrowed("cad")
    assert pool.hold("cad", 5) == 1  # 3 seats - 1 in use - 1 borrowed
    assert pool.held("cad") == 1 and pool.free("cad") == 0
    assert pool.hold("cad", 0) == 0  # a hold is set, not added to
    assert pool.held("cad") == 0 and pool.free("cad") == 1
    assert pool.hold("cad", -2) == 0
    assert pool.hold("sim", 1) == 1
    pool.check_invariant()


def test_held_seats_refuse_checkouts_and_borrows_until_released() -> None:
    pool = make_pool(seats=2)
    assert pool.hold("cad", 2) == 2
    denied = pool.checkout("cad", "3.0", A, HOLDER, T0)
    assert isinstance(denied, Denied) and denied.code == "no_seat"
    assert "2 held for clients reconnecting after a restart" in denied.message
    assert not pool.take_borrowed("cad", T0)
    assert pool.release_holds() == {"cad": 2}
    assert pool.held("cad") == 0 and pool.free("cad") == 2
    assert pool.release_holds() == {}
    take(pool)
    pool.check_invariant()


def test_adopt_takes_a_held_seat_under_the_old_id() -> None:
    pool = make_pool(seats=2)
    pool.hold("cad", 2)
    result = pool.adopt(b"old-id", "cad", A, HOLDER, T0)
    assert isinstance(result, Granted)
    lease = result.lease
    assert (lease.id, lease.product, lease.owner, lease.holder) == (b"old-id", "cad", A, HOLDER)
    assert (lease.since, lease.renewed, lease.expires) == (T0, T0, T0 + LEASE)
    assert (pool.held("cad"), pool.in_use("cad"), pool.free("cad")) == (1, 1, 0)
    assert pool.leases_of(A) == [b"old-id"]
    assert pool.next_deadline() == T0 + LEASE
    pool.check_invariant()


def test_adopt_again_by_its_owner_is_the_same_lease_and_no_second_seat() -> None:
    pool = make_pool(seats=2)
    pool.hold("cad", 1)
    first = pool.adopt(b"old-id", "cad", A, HOLDER, T0)
    again = pool.adopt(b"old-id", "cad", A, HOLDER, T0 + 5)
    assert isinstance(first, Granted) and isinstance(again, Granted)
    assert again.lease is first.lease
    assert (pool.in_use("cad"), pool.held("cad")) == (1, 0)


@pytest.mark.parametrize(("owner", "product"), [(B, "cad"), (A, "sim"), (B, "sim")])
def test_adopt_of_someone_elses_lease_is_refused(owner: bytes, product: str) -> None:
    pool = make_pool(seats=2)
    lease = take(pool)
    result = pool.adopt(lease.id, product, owner, HOLDER, T0)
    assert isinstance(result, Denied) and result.code == "lease_unknown"
    assert pool.lease(lease.id) is lease and lease.owner == A
    assert (pool.in_use("cad"), pool.in_use("sim")) == (1, 0)


def test_adopt_without_held_seats_takes_a_free_one_or_is_refused() -> None:
    pool = make_pool(seats=2)
    take(pool)
    assert isinstance(pool.adopt(b"x", "cad", B, HOLDER, T0), Granted)
    denied = pool.adopt(b"y", "cad", B, HOLDER, T0)
    assert isinstance(denied, Denied) and denied.code == "no_seat"
    assert pool.lease(b"y") is None and pool.in_use("cad") == 2
    unknown = pool.adopt(b"z", "nope", B, HOLDER, T0)
    assert isinstance(unknown, Denied) and unknown.code == "unknown_product"


def test_adopt_into_a_full_product_sweeps_dead_leases_first() -> None:
    pool = make_pool(seats=1)
    take(pool, now=T0)
    assert isinstance(pool.adopt(b"x", "cad", B, HOLDER, T0 + LEASE), Granted)
    assert pool.in_use("cad") == 1 and pool.leases_of(A) == []


def test_adopt_uses_a_held_seat_even_when_the_rest_are_taken() -> None:
    pool = make_pool(seats=2)
    take(pool)
    assert pool.hold("cad", 2) == 1
    assert isinstance(pool.adopt(b"x", "cad", B, HOLDER, T0), Granted)
    assert (pool.held("cad"), pool.in_use("cad")) == (0, 2)
    pool.check_invariant()


# ------------------------------------------------------------------ borrows: sweep and force


def test_take_borrowed_with_now_sweeps_a_dead_lease_and_without_does_not() -> None:
    pool = make_pool(seats=1)
    take(pool, now=T0)
    assert not pool.take_borrowed("cad")  # dead but unswept: still taken without a `now`
    assert pool.in_use("cad") == 1
    assert pool.take_borrowed("cad", T0 + LEASE)
    assert (pool.in_use("cad"), pool.borrowed("cad")) == (0, 1)


def test_a_forced_borrow_is_counted_over_the_seats_and_blocks_grants_until_paid_back() -> None:
    pool = make_pool(seats=1)
    take(pool)
    assert pool.take_borrowed("cad", force=True) is False  # did not fit, counted all the same
    assert (pool.in_use("cad"), pool.borrowed("cad"), pool.free("cad")) == (1, 1, 0)
    pool.check_invariant()  # over its seats by exactly the forced borrow: allowed
    assert pool.take_borrowed("cad", force=True) is False
    assert pool.borrowed("cad") == 2
    pool.check_invariant()
    pool.release_owner(A, T0)
    # 0 in use + 2 borrowed on 1 seat: nothing is granted
    assert isinstance(pool.checkout("cad", "3.0", B, HOLDER, T0), Denied)
    assert not pool.take_borrowed("cad")
    pool.return_borrowed("cad")
    assert isinstance(pool.checkout("cad", "3.0", B, HOLDER, T0), Denied)
    pool.return_borrowed("cad")
    take(pool, owner=B)
    pool.check_invariant()


def test_a_forced_borrow_that_fits_is_an_ordinary_borrow() -> None:
    pool = make_pool(seats=2)
    assert pool.take_borrowed("cad", force=True) is True
    pool.return_borrowed("cad")
    pool.take_borrowed("cad")
    pool.take_borrowed("cad")
    # no forced borrow is outstanding: the invariant holds with no slack at all
    pool._products["cad"].borrowed += 1
    with pytest.raises(AssertionError):
        pool.check_invariant()


def test_returning_a_forced_borrow_gives_back_its_slack() -> None:
    pool = make_pool(seats=1)
    take(pool)
    pool.take_borrowed("cad", force=True)
    pool.return_borrowed("cad")
    # the slack went with the borrow: one seat over is an error again
    pool._products["cad"].borrowed += 1
    with pytest.raises(AssertionError):
        pool.check_invariant()


# ------------------------------------------------------------------ the invariant check itself


@pytest.mark.parametrize("field", ["in_use", "borrowed", "held"])
def test_check_invariant_catches_one_seat_too_many(field: str) -> None:
    """Each count, one over the key, is caught: the check is an oracle only if it can fail."""
    pool = make_pool(seats=2)
    take(pool)
    pool.take_borrowed("cad")
    pool.check_invariant()
    p = pool._products["cad"]
    if field == "in_use":
        pool._add(b"extra", p, B, HOLDER, T0)  # bypasses the seat check
    else:
        setattr(p, field, getattr(p, field) + 1)
    with pytest.raises(AssertionError):
        pool.check_invariant()


def test_check_invariant_catches_counts_out_of_step() -> None:
    pool = make_pool(seats=3)
    lease = take(pool)
    p = pool._products["cad"]
    p.in_use += 1
    with pytest.raises(AssertionError):
        pool.check_invariant()
    p.in_use -= 1
    p.borrowed = -1
    with pytest.raises(AssertionError):
        pool.check_invariant()
    p.borrowed = 0
    p.held = -1
    with pytest.raises(AssertionError):
        pool.check_invariant()
    p.held = 0
    pool._by_owner[A] = b"another lease"  # an owner of one lease holds its id, no set
    with pytest.raises(AssertionError):
        pool.check_invariant()
    pool._by_owner[A] = lease.id
    pool._by_owner[B] = b"ghost"
    with pytest.raises(AssertionError):
        pool.check_invariant()
    pool._by_owner[B] = {b"ghost"}
    with pytest.raises(AssertionError):
        pool.check_invariant()
    del pool._by_owner[B]
    pool.check_invariant()
    pool._by_owner[A] = {lease.id}  # a set of one: the owner of one lease keeps just the id
    with pytest.raises(AssertionError):
        pool.check_invariant()
    pool._by_owner[A] = lease.id
    pool.check_invariant()
    owned = pool._by_owner.pop(A)  # the owner missing altogether
    with pytest.raises(AssertionError):
        pool.check_invariant()
    pool._by_owner[A] = owned
    pool.check_invariant()


# ------------------------------------------------------------------ the watcher and changes


class Recorder:
    """A watcher (the policy's ``Tally`` in the server) that writes down what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[Holder, int, bool]] = []

    def count(self, who: Holder, delta: int, borrowed: bool = False) -> None:
        self.told.append((who, delta, borrowed))


def test_a_watcher_is_told_of_every_seat_taken_and_given_back_with_its_holder() -> None:
    """The policy counts holders from what the pool tells it: each lease taken (checkout,
    adopt) and gone (release, an owner's release, expiry) with its own holder, each borrow
    begun and ended as a borrowed seat; another product's watcher hears nothing of it."""
    pool = make_pool(seats=4)
    cad, sim = Recorder(), Recorder()
    pool.watch("cad", cad)
    pool.watch("sim", sim)
    bob = Holder("bob", "ws2", "cad", "3.0")
    a = take(pool)
    b = pool.checkout("cad", "3.0", B, bob, T0)
    assert isinstance(b, Granted)
    assert cad.told == [(HOLDER, 1, False), (bob, 1, False)]
    pool.release([b.lease.id], B, T0 + 1)
    assert cad.told[2:] == [(bob, -1, False)]
    back = pool.adopt(b"old-id", "cad", B, bob, T0 + 2)
    assert isinstance(back, Granted) and cad.told[3:] == [(bob, 1, False)]
    pool.release_owner(B, T0 + 3)
    assert cad.told[4:] == [(bob, -1, False)]
    pool.borrower("cad", bob, 1)
    pool.borrower("cad", bob, -1)
    assert cad.told[5:] == [(bob, 1, True), (bob, -1, True)]
    assert pool.expire(a.expires + 1) == [a]
    assert cad.told[7:] == [(HOLDER, -1, False)]
    assert sim.told == []
    pool.watch("cad", None)  # no watcher: nothing is told, and nothing fails
    take(pool, now=a.expires + 2)
    pool.borrower("cad", bob, 1)
    pool.borrower("nope", bob, 1)  # a product the key does not have
    assert len(cad.told) == 8 and sim.told == []


def test_changes_counts_each_lease_taken_and_gone_and_nothing_else() -> None:
    """The restart guard's batch skips its look at the leases while ``changes`` stands still:
    every lease taken or gone must move it, a renewal must not."""
    pool = make_pool(seats=3)
    assert pool.changes == 0
    a, b = take(pool), take(pool, owner=B)
    assert pool.changes == 2
    pool.renew([a.id], A, T0 + 1)
    assert pool.changes == 2
    pool.release([a.id], A, T0 + 2)
    assert pool.changes == 3
    assert pool.expire(b.expires + 1) == [b]
    assert pool.changes == 4


# ------------------------------------------------------------------ peak, postpone, lease ids


def test_take_peak_reports_the_most_in_use_since_the_last_call() -> None:
    pool = make_pool(seats=3)
    assert pool.take_peak("cad") == 0
    a, b = take(pool), take(pool)
    take(pool)
    pool.release([a.id, b.id], A, T0)
    assert pool.take_peak("cad") == 3
    assert pool.take_peak("cad") == 1  # a new period starts at the seats in use now
    pool.release_owner(A, T0)
    assert pool.take_peak("cad") == 1
    assert pool.take_peak("cad") == 0
    pool.hold("cad", 1)
    assert isinstance(pool.adopt(b"x", "cad", B, HOLDER, T0), Granted)
    assert pool.take_peak("cad") == 1  # an adopted lease counts as in use
    assert pool.take_peak("sim") == 0


def test_postpone_moves_every_deadline_and_the_timer() -> None:
    pool = make_pool(seats=2)
    a = take(pool, now=T0)
    b = take(pool, owner=B, now=T0 + 10)
    pool.postpone(30)
    assert (a.expires, b.expires) == (T0 + LEASE + 30, T0 + LEASE + 40)
    assert pool.next_deadline() == T0 + LEASE + 30
    assert pool.expire(T0 + LEASE + 29) == []
    assert pool.renew([a.id], A, T0 + LEASE + 29).renewed == [a.id]
    assert [x.id for x in pool.expire(T0 + LEASE + 40)] == [b.id]


def test_default_lease_ids_are_16_random_bytes_and_unique() -> None:
    assert SeatPool([entitlement("cad", 1)]).lease_seconds == 60.0
    pool = SeatPool([entitlement("cad", 600)], lease_seconds=LEASE)
    assert dict(pool.products) == {"cad": entitlement("cad", 600)}
    ids = [take(pool).id for _ in range(600)]  # more than one 4 KiB draw
    assert all(type(x) is bytes and len(x) == 16 for x in ids)
    assert len(set(ids)) == len(ids)


# ------------------------------------------------------------------ messages, filters, the heap


def test_the_no_seat_message_says_what_holds_the_seats() -> None:
    def denied(pool: SeatPool) -> str:
        result = pool.checkout("cad", "3.0", B, HOLDER, T0)
        assert isinstance(result, Denied) and result.code == "no_seat"
        return result.message

    pool = make_pool(seats=2)
    take(pool)
    take(pool)
    assert denied(pool) == "all 2 seats of cad are in use"
    pool = make_pool(seats=2)
    take(pool)
    pool.take_borrowed("cad")
    assert denied(pool) == "all 2 seats of cad are in use (1 borrowed)"
    pool = make_pool(seats=3)
    pool.take_borrowed("cad")
    pool.hold("cad", 2)
    assert denied(pool) == (
        "all 3 seats of cad are in use (1 borrowed, 2 held for clients reconnecting after a "
        "restart)"
    )
    full = pool.adopt(b"x", "cad", B, HOLDER, T0)  # takes a held seat
    assert isinstance(full, Granted)
    pool.adopt(b"y", "cad", B, HOLDER, T0)
    refused = pool.adopt(b"z", "cad", B, HOLDER, T0)
    assert isinstance(refused, Denied)
    assert refused.message == "all 3 seats of cad are in use (1 borrowed)"


def test_adopt_refusals_say_why() -> None:
    pool = make_pool(seats=1)
    lease = take(pool)
    theirs = pool.adopt(lease.id, "cad", B, HOLDER, T0)
    assert theirs == Denied("lease_unknown", "that lease belongs to someone else")
    unknown = pool.adopt(b"x", "nope", B, HOLDER, T0)
    assert unknown == Denied("unknown_product", "no product 'nope' in the network key")


def test_leases_of_one_product() -> None:
    pool = make_pool(seats=2)
    a = take(pool)
    s = take(pool, product="sim")
    assert [x.id for x in pool.leases("cad")] == [a.id]
    assert [x.id for x in pool.leases("sim")] == [s.id]
    assert sorted(x.id for x in pool.leases()) == sorted([a.id, s.id])


@pytest.mark.parametrize("blocked_by", ["held", "borrowed"])
def test_a_borrow_with_now_sweeps_when_held_or_borrowed_seats_fill_the_rest(
    blocked_by: str,
) -> None:
    pool = make_pool(seats=2)
    take(pool, now=T0)  # dead at T0 + LEASE, not swept
    if blocked_by == "held":
        assert pool.hold("cad", 1) == 1
    else:
        assert pool.take_borrowed("cad")
    assert pool.take_borrowed("cad", T0 + LEASE)
    assert pool.in_use("cad") == 0


@pytest.mark.parametrize("n", [65, 66, 85, 200])
def test_released_leases_leave_stale_heap_entries_until_they_dominate(n: int) -> None:
    """Lazy deletion, as the module says: a release costs no heap work; once the entries pass
    64 and twice the live leases plus 64, one rebuild keeps only the live ones."""
    pool = SeatPool([entitlement("cad", n)], lease_seconds=LEASE)
    leases = [take(pool) for _ in range(n)]
    heap, live = n, n
    for lease in leases:
        pool.release([lease.id], A, T0)
        live -= 1
        if heap > 64 and heap > 2 * live + 64:
            heap = live
        assert len(pool._heap) == heap, (n, live)
    assert heap < n  # it was rebuilt at least once


def test_a_lease_id_already_in_use_is_drawn_again() -> None:
    ids = iter([b"same", b"same", b"other"])
    pool = SeatPool([entitlement("cad", 2)], lease_seconds=LEASE, new_lease_id=lambda: next(ids))
    assert [take(pool).id, take(pool).id] == [b"same", b"other"]


def test_a_pool_with_a_mint_takes_its_lease_ids_from_it_and_draws_again_on_a_clash() -> None:
    """The restart guard's ids: made from (owner, product), drawn again if one is in use."""
    asked: list[tuple[bytes, str]] = []
    made = iter([b"m-1", b"m-1", b"m-2"])

    def mint(owner: bytes, product: str) -> bytes:
        asked.append((owner, product))
        return next(made)

    pool = make_pool(seats=2)
    pool.mint = mint
    assert [take(pool).id, take(pool, owner=B).id] == [b"m-1", b"m-2"]
    assert asked == [(A, "cad"), (B, "cad"), (B, "cad")]


def test_a_holder_at_another_version_is_a_new_holder_and_at_its_own_is_itself() -> None:
    """``Holder.at_version``: what every checkout records as its holder (the hello's user,
    host, app and address, and the version checked out)."""
    ann = Holder("ann", "ws1", "cad", "16", "10.0.0.5")
    assert ann.at_version("16") is ann
    assert ann.at_version("17") == Holder("ann", "ws1", "cad", "17", "10.0.0.5")
    assert ann.at_version("") == Holder("ann", "ws1", "cad", "", "10.0.0.5")


def test_every_lease_of_a_product_names_it_by_one_string() -> None:
    """A lease keeps the product's own name, not the request's copy of it: 50-odd bytes a held
    seat, and a string the history's counts hash once instead of once a checkout."""
    pool = SeatPool([ProductEntitlement("cad", seats=4)])
    asked = ["".join(["c", "ad"]) for _ in range(3)]  # three equal strings, three objects
    assert len({id(x) for x in asked}) == 3
    leases = [pool.grant(x, "", bytes([i]) * 16, HOLDER, T0, 10) for i, x in enumerate(asked)]
    leases.append(pool.checkout("".join(["ca", "d"]), "", B, HOLDER, T0).lease)  # type: ignore[union-attr]
    names = [x.product for x in leases if x is not None]
    assert len(names) == 4 and all(x is names[0] for x in names)
