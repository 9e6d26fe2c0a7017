"""The durable records, as plain dataclasses shared by the core (which makes them) and the
store (which keeps them); neither side needs the other's machinery to use them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["HISTORY_EVENTS", "BorrowRecord", "EnrollmentRecord", "HistoryRow", "LeaseRecord"]

#: Every event the history records, and what it means: the admin page's filter and
#: ``lanlic admin history --event`` offer these (tests/admin/test_history_events.py holds the
#: page, the command and the code that writes rows to this list).
HISTORY_EVENTS: Final[Mapping[str, str]] = {
    "checkout": "a seat granted (a waiter's too)",
    "release": "a seat given back (release, goodbye, or removed by the admin)",
    "expiry": "a seat not renewed in time went back to the pool",
    "reclaim": "a seat taken back by its client after a restart",
    "adopt": "a cluster member took over a seat another member granted",
    "seat_lost": "a cluster member's seat ended with its etcd lease",
    "refusal": "a request refused (counted per minute)",
    "borrow": "a seat borrowed",
    "return": "a borrowed seat returned",
    "expiry_borrow": "a borrow ended at its end date",
    "borrow_adopted": "a borrow the database did not know, counted again",
    "enroll": "a machine enrolled for borrowing",
    "queue_join": "a client joined the queue for a seat",
    "queue_leave": "a client left the queue without a seat (gave up, vanished, removed, refused)",
    "policy": "a seat policy file loaded (lanlic admin policy --load, the Settings page)",
    "policy_applied": "the server applied a seat policy",
    "policy_refused": "the server refused a seat policy file (the one in force stays)",
    "admin_login": "an administrator logged in",
    "admin_login_failed": "a wrong admin password",
    "admin_remove": "the admin ended a lease",
    "admin_unqueue": "the admin removed a client from the queue",
    "admin_policy": "the admin lowered a product's borrowing terms",
    "admin_key": "the admin installed a network key",
    "admin_key_refused": "the admin's network key was refused",
    "admin_enroll": "the admin accepted an offline enrollment",
    "stall": "the server did not run for a while; leases were extended",
    "clock_jump": "the wall clock jumped, or agrees again",
}


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
    """A borrow as the single server's database keeps it, from its start for good: ``state``
    and ``ended_at`` say how it ended. The durable form of ``lanlic.core.lending.ActiveBorrow``
    (in memory only while the borrow is in force); a cluster keeps an active borrow as
    ``lanlic.cluster.borrows.BorrowEntry`` in etcd and its end as a separate ``Ended`` key."""

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
