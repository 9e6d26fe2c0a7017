"""The JSON the admin API returns, built from the running server's pool and borrowing desk.

Everything here is plain data in, plain data out: the handlers in ``app`` pass the service (or
rows the store returned) and the times, monotonic ``now`` for leases and UTC ``wall`` for
display, and send what comes back. Lease ids appear here, hex-encoded, because the admin's
"remove" names the lease to end; the wire protocol's status reply does not carry them.

**The usage chart** is drawn from the history table by walking it backwards from the counts
in use and borrowed right now: each checkout, release, expiry, borrow, return and borrow expiry
is undone in turn, and each time bucket keeps the fullest moment it saw (in use + borrowed at
their highest, with that moment's split). Walking back from the present makes the recent past
exact, whatever happened before the oldest row. Seats held across a server restart were never
released in the history, so far back beyond a restart the walk can run below zero: it is held
at zero and at the key's seats, which shows such a stretch as quieter than it was.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from lanlic.core.lending import BorrowDesk
from lanlic.core.pool import Lease
from lanlic.core.service import LicenseService

__all__ = [
    "CHART_EVENTS",
    "FORMULA_START",
    "RANGES",
    "borrow_rows",
    "csv_cell",
    "enrollment_rows",
    "holder_page",
    "parse_time",
    "product_rows",
    "usage_series",
]

#: History events that move the chart, as (in use, borrowed) steps.
CHART_EVENTS: Final[Mapping[str, tuple[int, int]]] = {
    "checkout": (1, 0),
    "release": (-1, 0),
    "expiry": (-1, 0),
    "borrow": (0, 1),
    "borrow_adopted": (0, 1),  # a borrow a restored database had lost, counted again
    "return": (0, -1),
    "expiry_borrow": (0, -1),
}

#: Chart ranges: (span, bucket), in seconds.
RANGES: Final[Mapping[str, tuple[float, float]]] = {
    "day": (86400.0, 300.0),
    "week": (7 * 86400.0, 1800.0),
    "month": (30 * 86400.0, 7200.0),
}


def _live(service: LicenseService, now: float) -> list[Lease]:
    return [x for x in service.pool.leases() if x.expires > now]


def product_rows(
    service: LicenseService, now: float, wall: float | None = None
) -> list[dict[str, Any]]:
    """Per product: seats, in use, borrowed, held after a restart (and until when: UTC, from
    ``wall``), free, and the borrowing terms (key and in force)."""
    in_use: dict[str, int] = {}
    for lease in _live(service, now):
        in_use[lease.product] = in_use.get(lease.product, 0) + 1
    pool, desk = service.pool, service.desk
    out = []
    for name, ent in pool.products.items():
        used, borrowed, held = in_use.get(name, 0), pool.borrowed(name), pool.held(name)
        terms = desk.terms(name)
        until = service.guard.reclaim_until
        held_until = wall + max(0.0, until - now) if held and wall is not None else None
        out.append(
            {
                "name": name,
                "seats": ent.seats,
                "in_use": used,
                "borrowed": borrowed,
                "held": held,
                "held_until": held_until,
                "free": max(0, ent.seats - used - borrowed - held),
                "borrowable": terms.borrowable,
                "max_borrow_days": terms.max_days,
                "key_borrowable": ent.borrowable,
                "key_max_borrow_days": ent.max_borrow_days,
                "addon": ent.addon,
                "versions": list(ent.versions) if ent.versions else None,
            }
        )
    return out


def holder_page(
    service: LicenseService,
    now: float,
    wall: float,
    *,
    product: str | None = None,
    query: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of the current holders, oldest checkout first, with how many match in all."""
    leases = _live(service, now)
    if product:
        leases = [x for x in leases if x.product == product]
    if query:
        q = query.casefold()
        leases = [
            x
            for x in leases
            if q in x.holder.user.casefold()
            or q in x.holder.host.casefold()
            or q in x.holder.app.casefold()
        ]
    leases.sort(key=lambda x: (x.since, x.id))
    page = leases[offset : offset + limit]
    return {
        "total": len(leases),
        "offset": offset,
        "limit": limit,
        "items": [
            {
                "lease": x.id.hex(),
                "product": x.product,
                "user": x.holder.user,
                "host": x.holder.host,
                "app": x.holder.app,
                "version": x.holder.version,
                "since": wall - (now - x.since),
                "last_heartbeat": wall - (now - x.renewed),
                "expires_in": x.expires - now,
            }
            for x in page
        ],
    }


def borrow_rows(desk: BorrowDesk, wall: float) -> list[dict[str, Any]]:
    """The active borrows, soonest end first, with the time left."""
    return [{**b, "time_left": max(0.0, b["end"] - wall)} for b in desk.listing()]


def enrollment_rows(desk: BorrowDesk) -> list[dict[str, Any]]:
    """The machines and portable keys enrolled for borrowing, newest first."""
    rows = sorted(desk.enrollments.values(), key=lambda e: e.enrolled_at, reverse=True)
    return [
        {
            "container_fp": e.container_fp,
            "kind": e.kind,
            "machine_fp": e.machine_fp,
            "user": e.user,
            "host": e.host,
            "enrolled_at": e.enrolled_at,
            "via": e.via,
        }
        for e in rows
    ]


def usage_series(
    events: Sequence[tuple[float, str, str, int]],
    current: Mapping[str, tuple[int, int]],
    seats: Mapping[str, int],
    start: float,
    end: float,
    step: float,
) -> dict[str, list[list[float]]]:
    """Per product, one ``[bucket start, in use, borrowed]`` per bucket from ``start`` to
    ``end``: the fullest moment of the bucket (see the module docstring).

    ``events`` are ``(at, product, event, count)`` oldest first, none before ``start``;
    ``current`` is (in use, borrowed) now, at ``end``. A row that counts several events (the
    lease events of one batch, a second, by one client: ``lanlic.store.history``) moves the
    count by all of them at its time, so a client's checkouts and releases within that second
    may show a fuller moment than there was, never more than the seats."""
    n = max(1, math.ceil((end - start) / step))
    best: dict[str, list[tuple[int, int]]] = {p: [(-1, 0)] * n for p in current}
    state = {p: (max(0, u), max(0, b)) for p, (u, b) in current.items()}

    def keep(product: str, i: int) -> None:
        u, b = state[product]
        bu, bb = best[product][i]
        if u + b > bu + bb:
            best[product][i] = (u, b)

    i = n - 1
    for p in state:
        keep(p, i)
    for at, product, event, count in reversed(events):
        if product not in state:
            continue  # a product the current key does not serve
        b_i = min(n - 1, max(0, int((at - start) // step)))
        while i > b_i:
            i -= 1
            for p in state:
                keep(p, i)
        du, db = CHART_EVENTS.get(event, (0, 0))
        du, db = du * count, db * count
        u, b = state[product]
        cap = seats.get(product, 0)
        u = min(cap, max(0, u - du))
        b = min(cap - u, max(0, b - db))
        state[product] = (u, b)
        keep(product, i)
    while i > 0:
        i -= 1
        for p in state:
            keep(p, i)
    return {
        p: [[start + k * step, float(u), float(b)] for k, (u, b) in enumerate(rows)]
        for p, rows in best.items()
    }


# ----------------------------------------------------------------------------------- CSV

#: What a spreadsheet may read as the start of a formula.
FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A CSV cell a spreadsheet never reads as a formula (OWASP's CSV injection advice): one
    that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
    ``'``. Product, user, host and detail all come from clients; every column goes through
    here, so no column is left out when one is added."""
    return "'" + text if text.startswith(FORMULA_START) else text


def parse_time(text: str | None) -> float | None:
    """A query's time: UTC seconds (``1767225600``), or an ISO date or date and time (UTC
    unless it says otherwise). ValueError when it is neither."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"not a time: {text!r}")
        return value
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time (UTC seconds or YYYY-MM-DD[THH:MM]): {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
