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
        assert version in result.message
    assert pool.in_use("cad") == 0


def test_unknown_product() -> None:
    pool = make_pool()
    result = pool.checkout("nope", "3.0", A, HOLDER, T0)
    assert isinstance(result, Denied)
    assert result.code == "unknown_product"
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
