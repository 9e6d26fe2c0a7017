"""The queue for a seat: clients waiting for a product, first come first served.

Pure, with time passed in. The service joins a client here when a checkout with ``wait`` finds no
seat it may take, and offers freed seats to the waiters in order (``drain``): a waiter that may
not take the seat that freed (it is reserved for others, or the waiter is at its MAX) stays in
its place and the one behind it is asked, so nobody blocks the line for a seat they cannot have.

A waiter is alive while its client keeps renewing (the same heartbeat as a lease); one silent
for longer than the lease period is dropped by ``drop_silent``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from lanlic.core.policy import Asker

__all__ = ["Offer", "SeatQueue", "Waiter"]

#: What a waiter makes of a freed seat: it took it, it may not take this one (it stays), it may
#: never take one (it leaves), or no seat is left for anyone (stop asking).
Offer = Literal["granted", "skip", "drop", "full"]


@dataclass(slots=True)
class Waiter:
    ticket: bytes
    """The waiter's id: knowing it is the capability to leave the queue."""
    product: str
    version: str
    owner: bytes
    """The client id that joined; its heartbeat keeps the waiter alive."""
    who: Asker
    app: str
    since: float
    """Monotonic time of joining."""
    seen: float
    """Monotonic time of the last sign of life from the owner."""


class SeatQueue:
    def __init__(self) -> None:
        self._lines: dict[str, dict[bytes, Waiter]] = {}
        """Per product, waiters in the order they joined (dicts keep insertion order)."""
        self._by_ticket: dict[bytes, Waiter] = {}
        self._by_owner: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_ticket)

    def __contains__(self, ticket: bytes) -> bool:
        return ticket in self._by_ticket

    def get(self, ticket: bytes) -> Waiter | None:
        return self._by_ticket.get(ticket)

    def waiting(self, product: str) -> int:
        line = self._lines.get(product)
        return len(line) if line else 0

    def waiters(self, product: str | None = None) -> Iterator[Waiter]:
        if product is not None:
            yield from list(self._lines.get(product, {}).values())
            return
        for line in list(self._lines.values()):
            yield from list(line.values())

    def position(self, ticket: bytes) -> int:
        """1 for the head of its line; 0 if the ticket is not queued."""
        waiter = self._by_ticket.get(ticket)
        if waiter is None:
            return 0
        for i, t in enumerate(self._lines[waiter.product], 1):
            if t == ticket:
                return i
        return 0  # pragma: no cover - the indexes agree (check_invariant)

    def join(self, waiter: Waiter) -> int:
        """Put ``waiter`` at the end of its product's line; returns its position."""
        if waiter.ticket in self._by_ticket:
            raise ValueError("ticket already queued")
        line = self._lines.setdefault(waiter.product, {})
        line[waiter.ticket] = waiter
        self._by_ticket[waiter.ticket] = waiter
        self._by_owner.setdefault(waiter.owner, set()).add(waiter.ticket)
        return len(line)

    def leave(self, ticket: bytes, owner: bytes | None = None) -> Waiter | None:
        """Take a waiter out (it gave up, or ``owner=None``: the admin removed it)."""
        waiter = self._by_ticket.get(ticket)
        if waiter is None or (owner is not None and waiter.owner != owner):
            return None
        del self._by_ticket[ticket]
        line = self._lines[waiter.product]
        del line[ticket]
        if not line:
            del self._lines[waiter.product]
        owned = self._by_owner[waiter.owner]
        owned.discard(ticket)
        if not owned:
            del self._by_owner[waiter.owner]
        return waiter

    def leave_owner(self, owner: bytes) -> list[Waiter]:
        """Every waiter of one client (it said goodbye)."""
        return [w for t in list(self._by_owner.get(owner, ())) if (w := self.leave(t))]

    def tickets_of(self, owner: bytes) -> list[bytes]:
        return list(self._by_owner.get(owner, ()))

    def touch(self, owner: bytes, now: float) -> None:
        """The owner showed it is alive (a renew): its waiters stay."""
        for ticket in self._by_owner.get(owner, ()):
            self._by_ticket[ticket].seen = now

    def drop_silent(self, now: float, silence: float) -> list[Waiter]:
        """Drop every waiter whose owner has been silent for ``silence`` seconds or more."""
        gone = [w for w in self._by_ticket.values() if now - w.seen >= silence]
        for w in gone:
            self.leave(w.ticket)
        return gone

    def drain(self, product: str, offer: Callable[[Waiter], Offer]) -> list[tuple[Waiter, Offer]]:
        """Offer the free seats of ``product`` to its waiters in order. Returns the waiters that
        left the line with what happened to each (granted or dropped), in order."""
        line = self._lines.get(product)
        if not line:
            return []
        out: list[tuple[Waiter, Offer]] = []
        for waiter in list(line.values()):
            result = offer(waiter)
            if result == "full":
                break
            if result in ("granted", "drop"):
                self.leave(waiter.ticket)
                out.append((waiter, result))
        return out

    def check_invariant(self) -> None:
        n = 0
        for product, line in self._lines.items():
            assert line, product
            for ticket, w in line.items():
                assert w.product == product and self._by_ticket[ticket] is w
                assert ticket in self._by_owner[w.owner]
                n += 1
        assert n == len(self._by_ticket) == sum(len(s) for s in self._by_owner.values())
