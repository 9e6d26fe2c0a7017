"""Refusals, counted: one history row per client, product and code per interval.

A refused request costs the client nothing, so a client that wants to can send a million of
them a minute, each naming a product of its choosing. One row each would let it fill the disk
(1.29 M rows, 1.1 GiB, in 18 s from one connection). The history keeps what an admin needs of
them, who was refused what and when, and how often, as one row per (user, host, product, code)
per ``interval`` seconds with a count, stamped with the first refusal of the interval:

* The first refusal of a key is written at once, as a row of its own (``add`` returns it): the
  history shows who was refused what as soon as it happens. The interval of the key starts
  there; the refusals that follow within it are one more row, with their count, due
  ``interval`` seconds later (``due``), or at once when the server stops (``drain``). So a key
  costs at most two rows per interval.
* A product the key does not name is the client's free text: it is cut to ``name_limit``
  characters, and past ``unknown_names`` distinct ones in one interval the rest count together
  under ``OTHER_UNKNOWN``, so made-up names cannot multiply the rows either.
* Past ``max_keys`` keys in one interval (many user and host names), the rest count together
  under ``OTHER_CLIENTS``: the memory and the rows of one interval are bounded.

Pure: times are passed in (the server's UTC wall clock, as the history's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["OTHER_CLIENTS", "OTHER_UNKNOWN", "RefusalTally", "Row"]

#: The product of the row that counts unknown products past ``unknown_names``.
OTHER_UNKNOWN: Final = "(other unknown products)"
#: User and host of the row that counts refusals past ``max_keys``.
OTHER_CLIENTS: Final = "(other clients)"

#: A history row: (at, event, product, user, host, detail, count).
Row = tuple[float, str, str, str, str, str, int]
_Key = tuple[str, str, str, str]


@dataclass(slots=True)
class _Count:
    start: float
    """The interval's first refusal (written at once)."""
    first: float = 0.0
    """The first of those counted after it."""
    n: int = 0


@dataclass(slots=True)
class RefusalTally:
    interval: float = 60.0
    """Seconds one row counts a key's refusals for."""
    name_limit: int = 64
    """Characters of an unknown product's name kept."""
    unknown_names: int = 32
    """Distinct unknown product names with rows of their own per interval."""
    max_keys: int = 10_000
    """Keys counted at once; past them the refusals count under ``OTHER_CLIENTS``."""
    _counts: dict[_Key, _Count] = field(default_factory=dict)
    _unknown: set[str] = field(default_factory=set)
    _next_due: float = float("inf")

    def __len__(self) -> int:
        return len(self._counts)

    def add(
        self, at: float, user: str, host: str, product: str, code: str, known: bool
    ) -> Row | None:
        """Count one refusal; ``known``: the product is one the key names. Returns the row to
        write now for the first refusal of a key in its interval, else None."""
        if not known and product:
            product = product[: self.name_limit]
            if product not in self._unknown:
                if len(self._unknown) >= self.unknown_names:
                    product = OTHER_UNKNOWN
                else:
                    self._unknown.add(product)
        key = (user, host, product, code)
        entry = self._counts.get(key)
        if entry is None:
            if len(self._counts) >= self.max_keys:
                key = (OTHER_CLIENTS, OTHER_CLIENTS, product if known else OTHER_UNKNOWN, code)
                entry = self._counts.get(key)
            if entry is None:
                self._counts[key] = _Count(at)
                self._next_due = min(self._next_due, at + self.interval)
                return (at, "refusal", key[2], key[0], key[1], code, 1)
        if not entry.n:
            entry.first = at
        entry.n += 1
        return None

    def due(self, now: float) -> list[Row]:
        """The rows of the intervals over by ``now`` (their keys start afresh)."""
        if now < self._next_due:
            return []
        out: list[Row] = []
        cutoff = now - self.interval
        next_due = float("inf")
        for key, c in list(self._counts.items()):
            if c.start <= cutoff:
                if c.n:
                    out.append(_row(key, c))
                del self._counts[key]
            else:
                next_due = min(next_due, c.start + self.interval)
        self._next_due = next_due
        if not self._counts:
            self._unknown.clear()
        else:
            self._unknown.intersection_update(k[2] for k in self._counts)
        return out

    def drain(self) -> list[Row]:
        """Every row now, over or not (the server is stopping, or an admin reads the history)."""
        out = [_row(key, c) for key, c in self._counts.items() if c.n]
        self._counts.clear()
        self._unknown.clear()
        self._next_due = float("inf")
        return out


def _row(key: _Key, c: _Count) -> Row:
    user, host, product, code = key
    return (c.first, "refusal", product, user, host, code, c.n)
