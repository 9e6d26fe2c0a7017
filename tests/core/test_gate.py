"""The seat gate (pool + policy + queue), one rule at a time; the long runs against an oracle are
in test_policy_state_machine.py. Each test here pins what a mutation run of lanlic/core/gate.py
showed no other test held: the version and the app a waiter asked for, the product named in a
refusal, a recount's edges, the queue drained for every product."""

from __future__ import annotations

from lanlic.core.gate import Joined, SeatGate
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.policy import Asker, parse
from lanlic.core.pool import Denied, Granted, Holder, SeatPool
from lanlic.core.queue import Waiter

LEASE = 60.0
ANN = Holder("ann", "ann-pc", "cadapp", "16")
BOB = Holder("bob", "bob-pc", "cadapp", "16")


def gate(policy: str = "", seats: int = 1) -> SeatGate:
    pool = SeatPool(
        [
            ProductEntitlement("cad", seats, versions=("10", "16")),
            ProductEntitlement("sim", 1),
        ],
        LEASE,
    )
    g = SeatGate(pool)
    g.set_policy(parse(policy))
    return g


MAX_ONE = '[products.cad]\nmax = [{ seats = 1, user = "ann" }]\n'


def test_a_checkout_through_the_gate_asks_for_its_own_version() -> None:
    g = gate(MAX_ONE, seats=2)
    refused = g.checkout("cad", "20", b"a", ANN, 0.0)
    assert isinstance(refused, Denied) and refused.code == "version_not_licensed"
    # Waiting cannot make version 20 licensed: the refusal comes at once, nobody joins.
    again = g.join(b"t", "cad", "20", b"a", ANN, 0.0)
    assert isinstance(again, Denied) and again.code == "version_not_licensed"
    assert len(g.queue) == 0


def test_a_waiter_is_queued_as_it_asked_and_drained_with_its_version() -> None:
    g = gate(MAX_ONE)
    held = g.checkout("cad", "16", b"b", BOB, 0.0)
    assert isinstance(held, Granted)
    joined = g.join(b"t", "cad", "10", b"a", ANN, 5.0)
    assert isinstance(joined, Joined) and joined.position == 1
    want = Waiter(b"t", "cad", "10", b"a", Asker("ann", "ann-pc"), "cadapp", 5.0, 5.0)
    assert joined.waiter == want
    g.pool.release([held.lease.id], b"b", 6.0)
    [out] = g.drain_all(6.0)
    assert out.waiter == want and isinstance(out.result, Granted)
    lease = out.result.lease
    assert (lease.holder.user, lease.holder.app, lease.holder.version) == ("ann", "cadapp", "10")
    assert lease.expires == 6.0 + LEASE  # granted at the drain's time


def test_a_refusal_names_the_product_and_why() -> None:
    g = gate(MAX_ONE, seats=2)
    assert isinstance(g.checkout("cad", "16", b"a", ANN, 0.0), Granted)
    refused = g.checkout("cad", "16", b"a2", ANN, 0.0)
    assert isinstance(refused, Denied) and refused.code == "limit_reached"
    assert refused.message.startswith("cad: ") and "ann" in refused.message


def test_a_borrow_refusal_names_the_product_and_why() -> None:
    g = gate('[products.cad]\nexclude = [{ user = "ann" }]\n')
    refused = g.borrow_refused("cad", Asker("ann", "lt-1"), 0.0)
    assert refused is not None and refused.code == "not_allowed"
    assert "cad" in refused.message and "ann" in refused.message
    assert g.borrow_refused("cad", Asker("bob", "lt-2"), 0.0) is None
    assert g.borrow_refused("sim", Asker("ann", "lt-1"), 0.0) is None  # no rule for sim


def test_a_recount_leaves_out_a_lease_dead_at_its_deadline_and_products_without_counts() -> None:
    g = gate(MAX_ONE, seats=2)
    granted = g.checkout("cad", "16", b"a", ANN, 0.0)
    assert isinstance(granted, Granted)
    at = granted.lease.expires
    alive = g.recount("cad", at - 0.5)
    assert alive is not None and alive.counts()[:2] == (1, (1,))
    dead = g.recount("cad", at)  # expired at its deadline, swept or not
    assert dead is not None and dead.counts()[:2] == (0, (0,))
    assert g.recount("sim", 0.0) is None  # no rule: nothing to count
    assert gate('[products.cad]\nexclude = [{ user = "x" }]\n').recount("cad", 0.0) is None


def test_seats_held_for_a_restart_are_not_counted_as_the_policy_s_capacity() -> None:
    """Three seats, one held for a client reconnecting after a restart, one reserved for carl:
    once ann has a seat, the last one the policy may give is carl's, not bob's."""
    g = gate('[products.cad]\nreserve = [{ seats = 1, user = "carl" }]\n', seats=3)
    assert g.pool.hold("cad", 1) == 1 and g.capacity("cad") == 2
    assert isinstance(g.checkout("cad", "16", b"a", ANN, 0.0), Granted)
    refused = g.checkout("cad", "16", b"b", BOB, 0.0)
    assert isinstance(refused, Denied), refused
    assert isinstance(g.checkout("cad", "16", b"c", Holder("carl", "carl-pc"), 0.0), Granted)


def test_a_gate_without_a_policy_lets_checkouts_through_and_a_policy_says_what_changed() -> None:
    g = SeatGate(SeatPool([ProductEntitlement("cad", 1)], LEASE))
    assert isinstance(g.checkout("cad", "", b"a", ANN, 0.0), Granted)
    assert g.borrow_refused("cad", Asker("ann", "lt-1"), 0.0) is None
    changes = g.set_policy(parse(MAX_ONE))
    assert changes and any("cad" in line for line in changes), changes
    assert g.set_policy(parse(MAX_ONE)) == []  # the same policy again: nothing changed


def test_a_waiter_gets_the_seat_of_a_lease_that_died_unswept() -> None:
    g = gate(MAX_ONE)
    held = g.checkout("cad", "16", b"b", BOB, 0.0)
    assert isinstance(held, Granted)
    joined = g.join(b"t", "cad", "16", b"a", ANN, 5.0)
    assert isinstance(joined, Joined)
    assert g.drain("cad", held.lease.expires - 1) == []  # bob's lease still runs: full
    [out] = g.drain("cad", held.lease.expires)  # dead, not yet swept: the drain sweeps it
    assert out.waiter.ticket == b"t" and isinstance(out.result, Granted)
    assert g.pool.lease(held.lease.id) is None


def test_a_wait_for_a_free_seat_takes_it_at_once_with_its_version() -> None:
    g = gate(MAX_ONE)
    got = g.join(b"t", "cad", "16", b"a", ANN, 0.0)
    assert isinstance(got, Granted) and got.lease.holder.version == "16"
    assert len(g.queue) == 0
