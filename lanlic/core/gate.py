"""The seat pool as the policy and the queue see it: who may take a seat, and who waits for one.

Pure, time passed in. The service asks ``checkout`` instead of the pool; with no seat rule on a
product that costs one failed dict lookup (``rules``), and renew never comes here. Whenever a
seat may have freed (release, expiry, a borrow ended, an admin removal, a policy change, the end
of a restart's reclaim window) the service calls ``drain``, which offers the free seats to the
product's waiters in order. Because every such event drains, a seat that stays free is one no
waiter may take, so a checkout without waiting may have it without jumping the line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lanlic.core.policy import (
    NO_POLICY,
    Asker,
    Policy,
    ProductRules,
    Refuse,
    Tally,
    decide,
    decide_borrow,
    diff,
)
from lanlic.core.pool import Denied, Granted, Holder, SeatPool
from lanlic.core.queue import Offer, SeatQueue, Waiter

__all__ = ["Joined", "QueueOutcome", "SeatGate"]

#: Refusals after which waiting cannot help: the waiter leaves the line with the reason.
FINAL = frozenset({"not_allowed", "unknown_product", "version_not_licensed", "license_expired"})


@dataclass(frozen=True, slots=True)
class Joined:
    waiter: Waiter
    position: int


@dataclass(frozen=True, slots=True)
class QueueOutcome:
    """A waiter that left the line in ``drain``: with its seat, or refused for good."""

    waiter: Waiter
    result: Granted | Denied


def asker_of(holder: Holder) -> Asker:
    return Asker(holder.user, holder.host, holder.addr)


class SeatGate:
    def __init__(
        self, pool: SeatPool, borrowers: Callable[[str], Iterable[Asker]] = lambda p: ()
    ) -> None:
        self.pool = pool
        self.borrowers = borrowers
        """Who holds the product's borrowed seats (they count for MAX and reservations); read
        only when a policy is applied: from then on the lending desk tells the pool of each
        borrow begun and ended (``SeatPool.borrower``)."""
        self.sweep: Callable[[float], object] = pool.expire
        """Frees the leases dead by ``now`` (the service's ``expire``, which records them)."""
        self.policy = NO_POLICY
        self.rules: dict[str, ProductRules] = {}
        """Products whose checkouts consult the policy; absent means "no rule: go ahead"."""
        self.tallies: dict[str, Tally] = {}
        """Per product whose rules need them: its holders, counted as they change."""
        self.queue = SeatQueue()

    # ------------------------------------------------------------------------------ policy

    def set_policy(self, policy: Policy) -> list[str]:
        """Apply ``policy`` to new checkouts at once; held seats are never taken away. Returns
        the diff. The caller drains every product afterwards (rules may have opened seats).
        The holders are counted afresh here, once (O(seats held)); every change after is
        counted as it happens."""
        changes = diff(self.policy, policy)
        self.policy = policy
        self.rules = policy.seat_rules()
        tallies: dict[str, Tally] = {}
        for product in self.pool.products:
            rules = policy.products.get(product)
            if rules is None or not rules.counts_holders:
                self.pool.watch(product, None)
                continue
            tally = Tally.of(
                policy,
                rules,
                (x.holder for x in self.pool.leases(product)),
                self.borrowers(product),
            )
            self.pool.watch(product, tally)
            tallies[product] = tally
        self.tallies = tallies
        return changes

    def recount(self, product: str, now: float) -> Tally | None:
        """The product's holders counted afresh at ``now`` (live leases and borrowers), as the
        kept tally must count them: for tests and checks, O(seats held)."""
        rules = self.policy.products.get(product)
        if rules is None or not rules.counts_holders:
            return None
        return Tally.of(
            self.policy,
            rules,
            (x.holder for x in self.pool.leases(product) if x.expires > now),
            self.borrowers(product),
        )

    def capacity(self, product: str) -> int:
        return self.pool.seats(product) - self.pool.held(product)

    def _counted(self, product: str, now: float) -> Tally:
        """The product's tally with the leases dead by ``now`` swept out first (a dead lease
        holds no seat, swept or not)."""
        deadline = self.pool.next_deadline()
        if deadline is not None and deadline <= now:
            self.sweep(now)
        return self.tallies[product]

    # ----------------------------------------------------------------------------- seats

    def checkout(
        self, product: str, version: str, owner: bytes, holder: Holder, now: float
    ) -> Granted | Denied:
        rules = self.rules.get(product)
        if rules is not None:
            refused = self._refused(product, rules, holder, now)
            if refused is not None:
                return refused
        return self.pool.checkout(product, version, owner, holder, now)

    def _refused(
        self, product: str, rules: ProductRules, holder: Holder, now: float
    ) -> Denied | None:
        if product not in self.tallies:
            if product not in self.pool.products:
                return None  # the pool says unknown_product
            tally: Tally | list[Asker] = []  # INCLUDE/EXCLUDE only: nothing to count
        else:
            tally = self._counted(product, now)
        verdict = decide(
            self.policy, product, rules, self.capacity(product), asker_of(holder), tally
        )
        if isinstance(verdict, Refuse):
            return Denied(verdict.code, verdict.message)
        return None

    def borrow_refused(self, product: str, who: Asker, now: float) -> Denied | None:
        """The policy's word on a borrow (the desk checks the key's terms and the free seat)."""
        rules = self.policy.products.get(product)
        if rules is None or product not in self.pool.products:
            return None
        tally: Tally | list[Asker] = []
        mine = 0
        if product in self.tallies:
            tally = self._counted(product, now)
            mine = tally.borrowed_by_user[who.user]
        verdict = decide_borrow(
            self.policy,
            product,
            rules,
            self.capacity(product),
            who,
            tally,
            self.pool.borrowed(product),
            mine,
        )
        if isinstance(verdict, Refuse):
            return Denied(verdict.code, verdict.message)
        return None

    # ----------------------------------------------------------------------------- queue

    def join(
        self, ticket: bytes, product: str, version: str, owner: bytes, holder: Holder, now: float
    ) -> Granted | Denied | Joined:
        """A checkout that waits: the seat at once if this client may take one now, a refusal
        that waiting cannot change, or a place at the end of the line."""
        result = self.checkout(product, version, owner, holder, now)
        if isinstance(result, Granted) or result.code in FINAL:
            return result
        waiter = Waiter(ticket, product, version, owner, asker_of(holder), holder.app, now, now)
        return Joined(waiter, self.queue.join(waiter))

    def drain(self, product: str, now: float) -> list[QueueOutcome]:
        """Offer ``product``'s free seats to its waiters, first come first served among those
        who may take them."""
        if not self.queue.waiting(product):
            return []
        results: dict[bytes, Granted | Denied] = {}
        pool = self.pool

        def offer(w: Waiter) -> Offer:
            if pool.free(product) <= 0:
                pool.expire(now)
                if pool.free(product) <= 0:
                    return "full"
            who = w.who
            holder = Holder(who.user, who.host, w.app, w.version, who.addr)
            result = self.checkout(product, w.version, w.owner, holder, now)
            results[w.ticket] = result
            if isinstance(result, Granted):
                return "granted"
            return "drop" if result.code in FINAL else "skip"

        return [QueueOutcome(w, results[w.ticket]) for w, _ in self.queue.drain(product, offer)]

    def drain_all(self, now: float) -> list[QueueOutcome]:
        out: list[QueueOutcome] = []
        for product in list(self.pool.products):
            out.extend(self.drain(product, now))
        return out
