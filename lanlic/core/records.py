"""The durable records, as plain dataclasses shared by the core (which makes them) and the
store (which keeps them); neither side needs the other's machinery to use them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BorrowRecord", "EnrollmentRecord", "HistoryRow", "LeaseRecord"]


@dataclass(frozen=True, slots=True)
class EnrollmentRecord:
    container_fp: str
    container_key: bytes
    kind: str
    """``act`` (a machine-bound container) or ``key`` (a portable key)."""
    machine_fp: str
    user: str
    host: str
    enrolled_at: float
    via: str
    """``online`` or ``offline``."""


@dataclass(frozen=True, slots=True)
class BorrowRecord:
    borrow_id: str
    request_id: str
    product: str
    container_fp: str
    user: str
    host: str
    start: float
    end: float
    state: str
    """``active``, ``returned`` or ``expired``."""
    ended_at: float | None
    file: bytes


@dataclass(frozen=True, slots=True)
class HistoryRow:
    at: float
    event: str
    product: str = ""
    user: str = ""
    host: str = ""
    detail: str = ""
    count: int = 1
    """How many events the row stands for: refusals are kept one row per client, product and
    code per interval (``lanlic.core.refusals``), every other event one row each."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A floating lease as last written to disk (in batches, about once a second)."""

    lease_id: bytes
    product: str
    owner: bytes
    user: str
    host: str
    epoch: int
