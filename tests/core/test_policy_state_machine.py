"""The seat gate (pool + policy + queue) against an independent oracle, driven by Hypothesis.

The oracle knows nothing of the gate's flow computation: who a rule matches is written again
here, and whether the holders fit the reservations is found by trying every assignment of holders
to pools (seat counts are tiny, so that is cheap). Every step computes the expected answer from
the model, calls the gate, compares, and the invariants hold after each step:

* never over-grant: leased + borrowed <= seats;
* a reserved seat never goes to a non-member: the holders who do not fit the pools never grow
  (only a policy change may leave some over, and those stay until they give their seat back);
* a MAX is never exceeded (same proviso);
* the queue is FIFO among those who may take the freed seat: the model drains its own line in
  order, skipping who may not take the seat, and must grant exactly whom the gate granted; and
  after every step no waiter is left in line who could take a free seat;
* a policy change never takes a held seat away;
* the counts the gate keeps per product (``Tally``: holders, per MAX rule, per set of
  reservations, borrowed per user), updated on every grant, release, expiry, borrow and return,
  equal a recount from the model's holders after every step.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lanlic.core.gate import Joined, QueueOutcome, SeatGate
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.policy import Asker, Policy, ProductRules, Rule, Tally
from lanlic.core.pool import Denied, Granted, Holder, SeatPool

LEASE = 20.0
NAMES = ("cad", "sim")
USER_GROUPS = {"designers": frozenset({"alice", "bob"}), "interns": frozenset({"carol"})}
HOST_GROUPS = {"lab": frozenset({"ws1"})}
PEOPLE = (
    Asker("alice", "ws1", "10.0.0.1"),
    Asker("bob", "ws2", "10.0.0.2"),
    Asker("carol", "ws1", "10.0.1.2"),
    Asker("dave", "ws3", "10.0.1.3"),
)
WHO = st.sampled_from(
    [Rule("user", u) for u in ("alice", "bob", "carol", "dave")]
    + [Rule("group", g) for g in USER_GROUPS]
    + [Rule("host", h) for h in ("ws1", "ws2", "ws3")]
    + [Rule("host_group", "lab")]
    + [Rule("subnet", s) for s in ("10.0.0.0/24", "10.0.1.0/24")]
)
LIMIT_WHO = st.sampled_from(
    [Rule("user", u) for u in ("alice", "bob", "carol", "dave")]
    + [Rule("group", g) for g in USER_GROUPS]
)


def member(rule: Rule, who: Asker) -> bool:
    """Who a rule names, written again for the oracle."""
    if rule.kind == "user":
        return who.user == rule.name
    if rule.kind == "group":
        return who.user in USER_GROUPS[rule.name]
    if rule.kind == "host":
        return who.host == rule.name
    if rule.kind == "host_group":
        return who.host in HOST_GROUPS[rule.name]
    prefix = rule.name.rsplit(".", 1)[0] + "."  # the /24s above
    return who.addr.startswith(prefix)


def fitting(rules: ProductRules | None, seats: int, holders: list[Asker]) -> int:
    """The most holders that can sit in the pools, found by trying every assignment."""
    if rules is None or not rules.reserve:
        return min(len(holders), seats)
    caps = [seats - sum(r.seats for r in rules.reserve)] + [r.seats for r in rules.reserve]
    choices = [
        [None, 0] + [i + 1 for i, r in enumerate(rules.reserve) if member(r, h)] for h in holders
    ]
    best = 0
    for pick in itertools.product(*choices):
        used = [0] * len(caps)
        for p in pick:
            if p is not None:
                used[p] += 1
        if all(u <= c for u, c in zip(used, caps, strict=True)):
            best = max(best, sum(1 for p in pick if p is not None))
    return best


def over_max(rules: ProductRules | None, holders: list[Asker]) -> int:
    if rules is None:
        return 0
    return sum(max(0, sum(1 for h in holders if member(r, h)) - r.seats) for r in rules.max)


@st.composite
def product_rules(draw: st.DrawFn, seats: int) -> ProductRules | None:
    if draw(st.booleans()):
        return None
    reserve: list[Rule] = []
    left = seats
    for who in draw(st.lists(WHO, max_size=2, unique=True)):
        if left <= 0:
            break
        n = draw(st.integers(1, left))
        left -= n
        reserve.append(Rule(who.kind, who.name, n))
    limits = [
        Rule(w.kind, w.name, draw(st.integers(1, 2)))
        for w in draw(st.lists(LIMIT_WHO, max_size=2, unique=True))
    ]
    include = draw(st.lists(WHO, max_size=2, unique=True)) if draw(st.booleans()) else []
    exclude = draw(st.lists(WHO, max_size=1, unique=True))
    lowwater = draw(st.integers(0, seats))
    per_user = draw(st.none() | st.integers(0, 2))
    return ProductRules(
        tuple(reserve), tuple(limits), tuple(include), tuple(exclude), lowwater, per_user
    )


@dataclass
class ModelLease:
    product: str
    who: Asker
    deadline: float


@dataclass
class ModelWaiter:
    ticket: bytes
    product: str
    who: Asker


@dataclass
class Model:
    leases: dict[bytes, ModelLease] = field(default_factory=dict)
    borrows: list[tuple[str, Asker]] = field(default_factory=list)
    queue: list[ModelWaiter] = field(default_factory=list)


def as_holder(who: Asker) -> Holder:
    return Holder(who.user, who.host, "app", "", who.addr)


def owner_of(who: Asker) -> bytes:
    return f"{who.user}@{who.host}".encode()


class PolicyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.model = Model()
        self.tickets = itertools.count(1)
        self.seats: dict[str, int] = {}
        self.rules: dict[str, ProductRules | None] = {}
        self.slack: dict[str, int] = {}
        """Holders not fitting the pools that a policy change left (may only shrink)."""
        self.max_slack: dict[str, int] = {}
        self.gate: SeatGate

    @initialize(seats=st.tuples(st.integers(1, 3), st.integers(1, 2)), data=st.data())
    def start(self, seats: tuple[int, int], data: st.DataObject) -> None:
        self.seats = dict(zip(NAMES, seats, strict=True))
        ids = itertools.count(1)
        pool = SeatPool(
            [ProductEntitlement(n, s) for n, s in self.seats.items()],
            LEASE,
            new_lease_id=lambda: next(ids).to_bytes(16, "big"),  # reproducible for shrinking
        )
        self.gate = SeatGate(pool, lambda p: [who for q, who in self.model.borrows if q == p])
        self.rules = dict.fromkeys(NAMES)
        self.slack = dict.fromkeys(NAMES, 0)
        self.max_slack = dict.fromkeys(NAMES, 0)
        self.change_policy(data)  # most runs should have rules from the first step

    # ---------------------------------------------------------------------- the oracle

    def holders(self, product: str) -> list[Asker]:
        live = [x.who for x in self.model.leases.values() if x.product == product]
        return live + [who for p, who in self.model.borrows if p == product]

    def verdict(self, product: str, who: Asker) -> str:
        """granted, no_seat, limit_reached or not_allowed."""
        rules = self.rules[product]
        holders = self.holders(product)
        if rules is not None:
            if any(member(r, who) for r in rules.exclude):
                return "not_allowed"
            if rules.include and not any(member(r, who) for r in rules.include):
                return "not_allowed"
            for r in rules.max:
                if member(r, who) and sum(1 for h in holders if member(r, h)) >= r.seats:
                    return "limit_reached"
        seats = self.seats[product]
        if len(holders) >= seats:
            return "no_seat"
        if fitting(rules, seats, [*holders, who]) <= fitting(rules, seats, holders):
            return "no_seat"
        return "granted"

    def model_drain(self, product: str) -> list[tuple[bytes, str]]:
        """The line in order: each waiter gets the seat if it may take it; refusals that
        waiting cannot change leave the line; the others keep their place."""
        out = []
        skipped = False
        for w in list(self.model.queue):
            if w.product != product:
                continue
            if len(self.holders(product)) >= self.seats[product]:
                break
            v = self.verdict(product, w.who)
            if v == "granted" and skipped:
                event("a waiter that may not take the seat was passed over")
            skipped = skipped or v in ("no_seat", "limit_reached")
            if v == "granted":
                self.model.leases[self.pending_lease(w)] = ModelLease(
                    product, w.who, self.now + LEASE
                )
                self.model.queue.remove(w)
                out.append((w.ticket, v))
            elif v == "not_allowed":
                self.model.queue.remove(w)
                out.append((w.ticket, v))
        return out

    def pending_lease(self, w: ModelWaiter) -> bytes:
        return b"pending-" + w.ticket  # replaced by the real id in check_drain

    def check_drain(self, outcomes: list[QueueOutcome], expected: list[tuple[bytes, str]]) -> None:
        got = [
            (o.waiter.ticket, "granted" if isinstance(o.result, Granted) else o.result.code)
            for o in outcomes
        ]
        assert got == expected, (got, expected)
        for o in outcomes:
            if isinstance(o.result, Granted):
                fake = self.model.leases.pop(b"pending-" + o.waiter.ticket)
                self.model.leases[o.result.lease.id] = fake

    def freed(self, products: set[str]) -> None:
        for product in sorted(products):
            expected = self.model_drain(product)
            self.check_drain(self.gate.drain(product, self.now), expected)

    # --------------------------------------------------------------------------- rules

    # Three rules take seats and two give them back, against one of each other kind: Hypothesis
    # picks rules uniformly, and the queue is only interesting when products are full.
    @rule(product=st.sampled_from(NAMES), who=st.sampled_from(PEOPLE))
    def take(self, product: str, who: Asker) -> None:
        self.checkout(product, who, wait=False)

    @rule(product=st.sampled_from(NAMES), who=st.sampled_from(PEOPLE))
    def wait(self, product: str, who: Asker) -> None:
        self.checkout(product, who, wait=True)

    @rule(product=st.sampled_from(NAMES), who=st.sampled_from(PEOPLE))
    def wait_too(self, product: str, who: Asker) -> None:
        self.checkout(product, who, wait=True)

    @precondition(lambda self: self.model.leases)
    @rule(data=st.data())
    def release_too(self, data: st.DataObject) -> None:
        self.release(data)

    def checkout(self, product: str, who: Asker, wait: bool) -> None:
        expected = self.verdict(product, who)
        holder = as_holder(who)
        if wait:
            ticket = next(self.tickets).to_bytes(4, "big")
            result = self.gate.join(ticket, product, "", owner_of(who), holder, self.now)
        else:
            result = self.gate.checkout(product, "", owner_of(who), holder, self.now)
        if expected == "granted":
            assert isinstance(result, Granted), result
            self.model.leases[result.lease.id] = ModelLease(product, who, self.now + LEASE)
        elif wait and expected != "not_allowed":
            assert isinstance(result, Joined), (expected, result)
            ahead = sum(1 for w in self.model.queue if w.product == product)
            assert result.position == ahead + 1
            self.model.queue.append(ModelWaiter(ticket, product, who))
        else:
            assert isinstance(result, Denied) and result.code == expected, (expected, result)

    @precondition(lambda self: self.model.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.model.leases)))
        gone = self.model.leases.pop(lease_id)
        released = self.gate.pool.release([lease_id], owner_of(gone.who), self.now).released
        assert [x.id for x in released] == [lease_id]
        self.freed({gone.product})

    @rule(dt=st.sampled_from([1.0, 5.0, 10.0, LEASE]))
    def advance(self, dt: float) -> None:
        self.now += dt
        dead = [k for k, x in self.model.leases.items() if x.deadline <= self.now]
        products = {self.model.leases[k].product for k in dead}
        for k in dead:
            del self.model.leases[k]
        expired = self.gate.pool.expire(self.now)
        assert sorted(x.id for x in expired) == sorted(dead)
        self.freed(products)

    @precondition(lambda self: self.model.leases)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.model.leases)))
        lease = self.model.leases[lease_id]
        renewed = self.gate.pool.renew([lease_id], owner_of(lease.who), self.now).renewed
        assert renewed == [lease_id]
        lease.deadline = self.now + LEASE

    @rule(product=st.sampled_from(NAMES), who=st.sampled_from(PEOPLE))
    def borrow(self, product: str, who: Asker) -> None:
        mine = sum(1 for p, w in self.model.borrows if p == product and w.user == who.user)
        borrowed = sum(1 for p, _ in self.model.borrows if p == product)
        rules = self.rules[product]
        if (
            rules is not None
            and rules.max_borrowed_per_user is not None
            and (mine >= rules.max_borrowed_per_user)
        ):
            expected = "limit_reached"
        elif (
            rules is not None
            and borrowed + rules.borrow_lowwater >= self.seats[product]
            and (rules.borrow_lowwater)
        ):
            expected = "no_borrowable_seat"
        else:
            expected = self.verdict(product, who)
        refused = self.gate.borrow_refused(product, who, self.now)
        if expected == "granted":
            assert refused is None
            assert self.gate.pool.take_borrowed(product, self.now)
            # What the lending desk does as a borrow begins (lanlic.core.lending).
            self.gate.pool.borrower(product, as_holder(who), 1)
            self.model.borrows.append((product, who))
        elif expected == "no_seat" and refused is None:
            # No rule on the product refuses it: the pool has no free seat.
            assert not self.gate.pool.take_borrowed(product, self.now)
        else:
            assert refused is not None and refused.code == expected, (expected, refused)

    @precondition(lambda self: self.model.borrows)
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.model.borrows) - 1))
        product, who = self.model.borrows.pop(i)
        self.gate.pool.borrower(product, as_holder(who), -1)
        self.gate.pool.return_borrowed(product)
        self.freed({product})

    @precondition(lambda self: self.model.queue)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(self.model.queue))
        self.model.queue.remove(w)
        gone = self.gate.queue.leave(w.ticket, owner_of(w.who))
        assert gone is not None and gone.ticket == w.ticket
        # A waiter leaving frees no seat; the others keep their order.

    @rule(data=st.data())
    def change_policy(self, data: st.DataObject) -> None:
        new = {n: data.draw(product_rules(self.seats[n])) for n in NAMES}
        held_before = sorted(self.gate.pool.lease_ids())
        policy = Policy(USER_GROUPS, HOST_GROUPS, {n: r for n, r in new.items() if r is not None})
        self.gate.set_policy(policy)
        self.rules = new
        assert sorted(self.gate.pool.lease_ids()) == held_before, "a policy change took a seat"
        for n in NAMES:
            holders = self.holders(n)
            self.slack[n] = len(holders) - fitting(new[n], self.seats[n], holders)
            self.max_slack[n] = over_max(new[n], holders)
        self.freed(set(NAMES))

    # ---------------------------------------------------------------------- invariants

    @invariant()
    def never_over_granted(self) -> None:
        if not self.seats:
            return
        self.gate.pool.check_invariant()
        self.gate.queue.check_invariant()
        for n in NAMES:
            assert len(self.holders(n)) <= self.seats[n]
            live = sum(1 for x in self.gate.pool.leases(n) if x.expires > self.now)
            assert live + self.gate.pool.borrowed(n) == len(self.holders(n))

    @invariant()
    def reservations_and_limits_hold(self) -> None:
        for n in self.seats:
            holders = self.holders(n)
            misfits = len(holders) - fitting(self.rules[n], self.seats[n], holders)
            assert misfits <= self.slack[n], f"{n}: a reserved seat went to a non-member"
            self.slack[n] = misfits
            over = over_max(self.rules[n], holders)
            assert over <= self.max_slack[n], f"{n}: a MAX was exceeded"
            self.max_slack[n] = over

    @invariant()
    def counts_kept_equal_a_recount(self) -> None:
        for n in self.seats:
            rules = self.rules[n]
            kept = self.gate.tallies.get(n)
            if rules is None or not rules.counts_holders:
                assert kept is None, n
                continue
            assert kept is not None, n
            leased = [x.who for x in self.model.leases.values() if x.product == n]
            borrowers = [who for p, who in self.model.borrows if p == n]
            fresh = Tally.of(self.gate.policy, rules, leased, borrowers)
            assert kept.counts() == fresh.counts(), (n, kept.counts(), fresh.counts())
            # And against the oracle's own matching, not the policy's:
            holders = leased + borrowers
            assert kept.total == len(holders)
            assert kept.limits == [sum(member(r, h) for h in holders) for r in rules.max]
            classes = Counter(
                sum(1 << i for i, r in enumerate(rules.reserve) if member(r, h)) for h in holders
            )
            assert dict(kept.classes) == (dict(classes) if rules.reserve else {})
            assert dict(kept.borrowed_by_user) == dict(Counter(w.user for w in borrowers))
            again = self.gate.recount(n, self.now)
            assert again is not None and again.counts() == kept.counts()

    @invariant()
    def nobody_waits_for_a_seat_they_may_take(self) -> None:
        for w in self.model.queue:
            assert self.verdict(w.product, w.who) != "granted", w
        for n in NAMES:
            model_line = [w.ticket for w in self.model.queue if w.product == n]
            assert model_line == [w.ticket for w in self.gate.queue.waiters(n)]


PolicyMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_policy_machine = pytest.mark.filterwarnings("error")(PolicyMachine.TestCase)
