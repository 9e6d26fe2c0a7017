"""The seat policy: parsing with line-exact errors, the diff, and each rule's decision."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanlic.core.policy import (
    HALL_MAX_RESERVATIONS,
    NO_POLICY,
    Allow,
    Asker,
    PolicyError,
    ProductRules,
    Refuse,
    Rule,
    _Fit,
    _Hall,
    decide,
    decide_borrow,
    diff,
    parse,
)
from lanlic.core.queue import SeatQueue, Waiter
from lanlic.errors import LimitReached, NotAllowed, error_for_code

FULL = """\
[groups.users]
designers = ["alice", "bob"]

[groups.hosts]
lab = ["WS-01", "ws-02"]

[products.cad]
reserve = [{ seats = 2, group = "designers" }]
max = [{ seats = 1, user = "carol" }]
exclude = [{ user = "mallory" }]
borrow_lowwater = 1
max_borrowed_per_user = 1
borrowable = 2
max_borrow_days = 7

[products.sim]
include = [{ host_group = "lab" }, { subnet = "10.1.0.0/16" }]
"""

ALICE = Asker("alice", "ws-09", "10.2.0.5")
BOB = Asker("bob", "ws-10", "10.2.0.6")
CAROL = Asker("carol", "ws-11", "10.2.0.7")
DAVE = Asker("dave", "ws-12", "10.2.0.8")


def test_parse_full_file() -> None:
    p = parse(FULL, {"cad": 5, "sim": 2})
    cad = p.products["cad"]
    assert [(r.kind, r.name, r.seats) for r in cad.reserve] == [("group", "designers", 2)]
    assert cad.borrow_lowwater == 1 and cad.max_borrowed_per_user == 1
    assert p.borrow_terms() == {"cad": (2, 7)}
    assert p.host_groups["lab"] == frozenset({"ws-01", "ws-02"})
    assert set(p.seat_rules()) == {"cad", "sim"}
    assert p.to_json()["products"]["cad"]["max"] == [{"user": "carol", "seats": 1}]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("[products.cad]\nreserve = [{ seats = 2 }]\n", 2, "exactly one of"),
        ('[products.cad]\n\nmax = [{ seats = 1, host = "x" }]\n', 3, "exactly one of user, group"),
        ('[products.cad]\nreserve = [{ seats = 0, user = "a" }]\n', 2, "seats must be"),
        ('[products.cad]\nreserve = [{ seats = 9, user = "a" }]\n', 2, "9 seats reserved"),
        ('[products.cad]\ninclude = [{ group = "nope" }]\n', 2, "no user group 'nope'"),
        ('[products.cad]\nexclude = [{ subnet = "10.0.0.0/33" }]\n', 2, "not a subnet"),
        ("[products.cad]\nbogus = 1\n", 2, "unknown key 'bogus'"),
        ("\n[products.nope]\nmax = []\n", 2, "no product 'nope'"),
        ("[products.cad]\nborrowable = -1\n", 2, "whole number"),
        ("[products.cad]\nreserve = [\n", 2, "not valid TOML"),
        ('[groups.users]\nx = "alice"\n', 2, "must be a list of names"),
        ("[groups.people]\n", 1, "unknown group kind"),
        ("a = 1\n", 1, "unknown key 'a'"),
    ],
)
def test_invalid_file_names_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(text, {"cad": 3})
    assert info.value.line == line, str(info.value)
    assert reason in info.value.reason
    assert str(info.value).startswith(f"line {line}: ")


def test_diff_lists_what_changes() -> None:
    old = parse(FULL)
    new = parse(FULL.replace("seats = 2, group", "seats = 1, group").replace('"mallory"', '"eve"'))
    changes = diff(old, new)
    assert "- cad: reserve 2 for group designers" in changes
    assert "+ cad: reserve 1 for group designers" in changes
    assert "- cad: exclude user mallory" in changes and "+ cad: exclude user eve" in changes
    assert len(changes) == 4
    assert diff(old, old) == []
    assert all(x.startswith("- ") for x in diff(old, NO_POLICY))


def test_new_error_codes_travel() -> None:
    assert isinstance(error_for_code("limit_reached", "x"), LimitReached)
    assert isinstance(error_for_code("not_allowed", "x"), NotAllowed)


def test_exclude_and_include() -> None:
    p = parse(FULL)
    assert decide(p, "cad", p.products["cad"], 5, Asker("mallory", "h"), []) == Refuse(
        "not_allowed", "mallory@h may not use cad (policy)"
    )
    sim = p.products["sim"]
    assert isinstance(decide(p, "sim", sim, 2, Asker("x", "WS-02"), []), Allow)
    assert isinstance(decide(p, "sim", sim, 2, Asker("x", "other", "10.1.3.4"), []), Allow)
    assert isinstance(decide(p, "sim", sim, 2, Asker("x", "other", "::ffff:10.1.3.4"), []), Allow)
    refused = decide(p, "sim", sim, 2, Asker("x", "other", "10.2.3.4"), [])
    assert isinstance(refused, Refuse) and refused.code == "not_allowed"


def test_max() -> None:
    p = parse(FULL)
    cad = p.products["cad"]
    assert isinstance(decide(p, "cad", cad, 5, CAROL, [ALICE]), Allow)
    refused = decide(p, "cad", cad, 5, CAROL, [CAROL])
    assert isinstance(refused, Refuse) and refused.code == "limit_reached"


def test_group_max_counts_all_members() -> None:
    p = parse(
        FULL.replace(
            'max = [{ seats = 1, user = "carol" }]', 'max = [{ seats = 2, group = "designers" }]'
        )
    )
    cad = p.products["cad"]
    refused = decide(p, "cad", cad, 9, ALICE, [BOB, BOB.__class__("alice", "h")])
    assert isinstance(refused, Refuse) and refused.code == "limit_reached"


def test_reservation_keeps_seats_for_members() -> None:
    p = parse(FULL)
    cad = p.products["cad"]  # 2 of 5 reserved for designers: 3 general
    assert decide(p, "cad", cad, 5, DAVE, [CAROL, DAVE]) == Allow(False)
    refused = decide(p, "cad", cad, 5, DAVE, [CAROL, DAVE, DAVE])
    assert isinstance(refused, Refuse) and refused.code == "no_seat"
    assert "reserved" in refused.message
    assert decide(p, "cad", cad, 5, ALICE, [CAROL, DAVE, DAVE]) == Allow(True)
    # Designers' seats count against their reservation first: 4 of them leave one general seat.
    assert decide(p, "cad", cad, 5, DAVE, [ALICE, ALICE, ALICE, ALICE]) == Allow(False)
    refused = decide(p, "cad", cad, 5, DAVE, [ALICE, DAVE, DAVE, DAVE])
    assert isinstance(refused, Refuse), "the 5th seat is a designer's reserved one"
    assert decide(p, "cad", cad, 5, BOB, [ALICE, DAVE, DAVE, DAVE]) == Allow(True)
    assert decide(p, "cad", cad, 5, DAVE, [ALICE, ALICE, DAVE]) == Allow(False)


def test_subnet_and_host_reservations() -> None:
    p = parse(
        '[products.cad]\nreserve = [{ seats = 1, subnet = "192.168.7.0/24" }, '
        '{ seats = 1, host = "Plotter" }]\n'
    )
    cad = p.products["cad"]  # 3 seats: 1 general, 1 subnet, 1 host
    assert decide(p, "cad", cad, 3, DAVE, []) == Allow(False)
    assert isinstance(decide(p, "cad", cad, 3, DAVE, [CAROL]), Refuse)
    assert decide(p, "cad", cad, 3, Asker("x", "h", "192.168.7.9"), [CAROL]) == Allow(True)
    assert decide(p, "cad", cad, 3, Asker("x", "plotter"), [CAROL]) == Allow(True)


def test_policy_change_that_holders_do_not_fit() -> None:
    """Three non-members hold 3 of 4 seats, then 2 are reserved for alice: nobody loses a seat,
    a non-member is refused, alice gets the seat left."""
    p = parse('[products.cad]\nreserve = [{ seats = 2, user = "alice" }]\n')
    cad = p.products["cad"]
    holders = [CAROL, DAVE, BOB]
    assert isinstance(decide(p, "cad", cad, 4, DAVE, holders), Refuse)
    assert decide(p, "cad", cad, 4, ALICE, holders) == Allow(True)


def test_borrow_rules() -> None:
    p = parse(FULL)
    cad = p.products["cad"]
    assert isinstance(decide_borrow(p, "cad", cad, 5, DAVE, [], 0, 0), Allow)
    refused = decide_borrow(p, "cad", cad, 5, DAVE, [], 1, 1)
    assert isinstance(refused, Refuse) and refused.code == "limit_reached"
    refused = decide_borrow(p, "cad", cad, 5, DAVE, [], 4, 0)
    assert isinstance(refused, Refuse) and refused.code == "no_borrowable_seat"
    refused = decide_borrow(p, "cad", cad, 5, Asker("mallory", "h"), [], 0, 0)
    assert isinstance(refused, Refuse) and refused.code == "not_allowed"


def _waiter(ticket: bytes, owner: bytes = b"o", product: str = "cad", now: float = 0.0) -> Waiter:
    return Waiter(ticket, product, "", owner, Asker("u", "h"), "", now, now)


def test_queue_fifo_skip_and_drop() -> None:
    q = SeatQueue()
    assert q.join(_waiter(b"1", b"a")) == 1
    assert q.join(_waiter(b"2", b"b")) == 2
    assert q.join(_waiter(b"3", b"c")) == 3
    assert q.join(_waiter(b"x", b"c", "sim")) == 1
    answers = {b"1": "skip", b"2": "granted", b"3": "full"}
    out = q.drain("cad", lambda w: answers[w.ticket])  # type: ignore[arg-type,return-value]
    assert [(w.ticket, r) for w, r in out] == [(b"2", "granted")]
    assert q.position(b"1") == 1 and q.position(b"3") == 2 and q.position(b"2") == 0
    assert q.leave(b"3", owner=b"a") is None  # not its own
    assert [w.ticket for w in q.leave_owner(b"c")] == [b"3", b"x"] or len(q) == 1
    q.check_invariant()


def test_queue_drops_silent_waiters() -> None:
    q = SeatQueue()
    q.join(_waiter(b"1", b"a", now=0.0))
    q.join(_waiter(b"2", b"b", now=0.0))
    q.touch(b"b", 50.0)
    assert [w.ticket for w in q.drop_silent(60.0, 60.0)] == [b"1"]
    assert q.position(b"2") == 1
    q.check_invariant()


def test_gate_waiter_who_may_not_take_the_seat_does_not_block_the_line() -> None:
    from lanlic.core.gate import Joined, SeatGate
    from lanlic.core.netkey import ProductEntitlement
    from lanlic.core.pool import Granted, Holder, SeatPool

    gate = SeatGate(SeatPool([ProductEntitlement("cad", 2)], 60.0))
    gate.set_policy(parse('[products.cad]\nmax = [{ seats = 1, user = "alice" }]\n'))
    alice, bob, dave = (Holder(u, u + "-pc") for u in ("alice", "bob", "dave"))
    a = gate.checkout("cad", "", b"a", alice, 0.0)
    b = gate.checkout("cad", "", b"b", bob, 0.0)
    assert isinstance(a, Granted) and isinstance(b, Granted)
    first = gate.join(b"t1", "cad", "", b"a2", alice, 1.0)  # alice's second seat: over her MAX
    second = gate.join(b"t2", "cad", "", b"d", dave, 2.0)
    assert isinstance(first, Joined) and first.position == 1
    assert isinstance(second, Joined) and second.position == 2
    gate.pool.release([b.lease.id], b"b", 3.0)
    out = gate.drain("cad", 3.0)
    assert [(o.waiter.ticket, type(o.result).__name__) for o in out] == [(b"t2", "Granted")]
    assert gate.queue.position(b"t1") == 1


def _brute_fit(pools: list[int], classes: dict[int, int]) -> int:
    """The most holders that fit, by trying how many of each class sit in each pool."""

    def options(cls: int, n: int) -> list[tuple[int, ...]]:
        allowed = [0] + [i + 1 for i in range(len(pools) - 1) if cls >> i & 1]
        out = []
        for split in itertools.product(range(n + 1), repeat=len(allowed)):
            if sum(split) <= n:
                row = [0] * len(pools)
                for pool, k in zip(allowed, split, strict=True):
                    row[pool] = k
                out.append(tuple(row))
        return out

    best = 0
    for pick in itertools.product(*(options(c, n) for c, n in classes.items())):
        used = [sum(col) for col in zip(*pick, strict=True)] if pick else [0] * len(pools)
        if all(u <= c for u, c in zip(used, pools, strict=True)):
            best = max(best, sum(used))
    return best


@settings(max_examples=300, deadline=None)
@given(
    reserve=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    extra=st.integers(0, 3),
    classes=st.dictionaries(st.integers(0, 7), st.integers(1, 3), max_size=3),
    probe=st.integers(0, 7),
)
def test_hall_cuts_agree_with_the_flow_and_with_brute_force(
    reserve: list[int], extra: int, classes: dict[int, int], probe: int
) -> None:
    """The cuts (few reservations) and the flow (many) answer alike, and both as an
    exhaustive search does."""
    k = len(reserve)
    rules = ProductRules(reserve=tuple(Rule("user", f"u{i}", n) for i, n in enumerate(reserve)))
    capacity = sum(reserve) + extra
    held = Counter({c & ((1 << k) - 1): 0 for c in classes})
    for c, n in classes.items():
        held[c & ((1 << k) - 1)] += n
    probe &= (1 << k) - 1
    hall, flow = _Hall(rules, capacity, held), _Fit(rules, capacity, held)
    pools = [extra, *reserve]
    assert hall.base == flow.base == _brute_fit(pools, dict(held))
    more = Counter(held)
    more[probe] += 1
    assert hall.adds(probe) == flow.adds(probe) == (_brute_fit(pools, dict(more)) > hall.base)


def test_many_reservations_are_decided_by_the_flow() -> None:
    """Past ``HALL_MAX_RESERVATIONS`` the flow decides: same answers, reserved seats kept."""
    users = [f"u{i}" for i in range(HALL_MAX_RESERVATIONS + 2)]
    text = (
        "[products.cad]\nreserve = ["
        + ", ".join(f'{{ seats = 1, user = "{u}" }}' for u in users)
        + "]\n"
    )
    p = parse(text)
    cad = p.products["cad"]
    seats = len(users) + 1
    assert isinstance(decide(p, "cad", cad, seats, Asker("x", "h"), []), Allow)
    refused = decide(p, "cad", cad, seats, Asker("y", "h"), [Asker("x", "h")])
    assert isinstance(refused, Refuse) and refused.code == "no_seat"
    assert decide(p, "cad", cad, seats, Asker("u0", "h"), [Asker("x", "h")]) == Allow(True)


def test_only_products_with_counted_rules_are_counted_and_a_dead_lease_holds_no_seat() -> None:
    """A product without seat rules keeps no counts (its checkout goes straight to the pool),
    a policy dropped stops the counting, and a lease dead but not yet swept is swept before
    the counts decide (as the recount, which skips it, would)."""
    from lanlic.core.gate import SeatGate
    from lanlic.core.netkey import ProductEntitlement
    from lanlic.core.pool import Denied, Granted, Holder, SeatPool

    pool = SeatPool([ProductEntitlement("cad", 3), ProductEntitlement("sim", 3)], 10.0)
    gate = SeatGate(pool)
    gate.set_policy(
        parse(
            '[products.cad]\nmax = [{ seats = 1, user = "ann" }]\n[products.sim]\nborrowable = 1\n'
        )
    )
    assert set(gate.tallies) == {"cad"} and set(gate.rules) == {"cad"}
    ann = Holder("ann", "pc")
    first = gate.checkout("cad", "", b"a", ann, 0.0)
    assert isinstance(first, Granted) and gate.tallies["cad"].counts()[:2] == (1, (1,))
    again = gate.checkout("cad", "", b"a", ann, 5.0)
    assert isinstance(again, Denied) and again.code == "limit_reached"
    # At 10.0 the first lease is dead (not renewed): the gate sweeps it before counting.
    later = gate.checkout("cad", "", b"a", ann, 10.0)
    assert isinstance(later, Granted), later
    assert gate.tallies["cad"].counts()[:2] == (1, (1,))
    tally = gate.tallies["cad"]
    gate.set_policy(parse(""))
    assert gate.tallies == {} and gate.rules == {}
    assert isinstance(gate.checkout("cad", "", b"b", Holder("bob", "pc"), 11.0), Granted)
    assert tally.counts()[:2] == (1, (1,))  # no longer told
