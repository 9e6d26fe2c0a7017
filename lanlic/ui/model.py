"""What the License Information window shows, worked out with no Tk and no I/O.

The states come from ``Borrower.info`` (the same words ``lanlic info`` prints, so one piece of
documentation covers both); this module only adds what a window needs on top: the product's
facts from the server's status, times in the user's local zone, the days left, the bounds of the
borrow period and the return date it gives. Time is passed in.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from lanlic.laptop.borrower import NETWORK, NOT_AVAILABLE

__all__ = [
    "DAY",
    "Row",
    "build_rows",
    "days_left",
    "local_time",
    "period_bounds",
    "return_date",
]

DAY: Final = 86400.0


@dataclass(frozen=True, slots=True)
class Row:
    """One product in the list."""

    product: str
    state: str
    """As ``lanlic info`` words it: Network, Borrowed (license file), Borrowed (portable key),
    Disabled, Not available."""
    actions: tuple[str, ...] = ()
    """What can be done now: ``borrow``, ``return``, ``enable``."""
    addon: bool = False
    end: float | None = None
    """A borrow's end, UTC seconds."""
    borrow_id: str = ""
    versions: tuple[str, str] | None = None
    """The licensed version range, when the key or the borrowed file limits it."""
    seats: int | None = None
    free: int | None = None
    borrowable: int = 0
    """Borrowable seats (the key's, or fewer if the admin lowered it)."""
    max_days: int = 0
    """The longest borrow in days (the key's, or shorter if the admin lowered it)."""
    problem: str = ""
    """Why a borrowed file kept here cannot be used (``code: message``)."""
    facts: dict[str, Any] = field(default_factory=dict, compare=False)


def _versions(value: Any) -> tuple[str, str] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        return str(value[0]), str(value[1])
    return None


def build_rows(
    info: list[dict[str, Any]],
    status: dict[str, Any] | None,
    *,
    enabled: Iterable[str] = (),
    known: Iterable[str] = (),
    borrowed: dict[str, Any] | None = None,
) -> list[Row]:
    """The list, from ``Borrower.info(status)``.

    ``enabled``: add-ons whose seat this application holds now (shown as Network, with nothing
    to do). ``known``: products learnt from an earlier status, listed as Not available while the
    server is out of reach (``Borrower.info`` alone only knows the borrowed ones then).
    ``borrowed``: product -> the ``BorrowedLicense`` kept here, for its version range."""
    products = {p["name"]: p for p in (status or {}).get("products", [])}
    on = set(enabled)
    rows: list[Row] = []
    seen = set()
    for r in info:
        name = r["product"]
        seen.add(name)
        p = products.get(name, {})
        state, actions = r["state"], tuple(r.get("actions", ()))
        if name in on and r.get("addon"):
            state, actions = NETWORK, ()
        end = None
        if r.get("expires"):
            end = dt.datetime.fromisoformat(r["expires"]).timestamp()
        lic = (borrowed or {}).get(name)
        versions = _versions(p.get("versions"))
        if versions is None and lic is not None:
            versions = _versions(getattr(lic, "versions", None))
        rows.append(
            Row(
                product=name,
                state=state,
                actions=actions,
                addon=bool(r.get("addon")),
                end=end,
                borrow_id=r.get("borrow_id", ""),
                versions=versions,
                seats=p.get("seats"),
                free=p.get("free"),
                borrowable=int(p.get("borrowable") or 0),
                max_days=int(p.get("max_borrow_days") or 0),
                problem=r.get("problem", ""),
                facts=p,
            )
        )
    if status is None:
        rows.extend(Row(product=n, state=NOT_AVAILABLE) for n in sorted(set(known) - seen))
        rows.sort(key=lambda row: row.product)
    return rows


def local_time(ts: float) -> str:
    """UTC seconds as a date and time in the user's local zone, with the zone's name."""
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def days_left(end: float, now: float) -> str:
    """``3 days left``, ``1 day left``, ``5 hours left``, ``ended``."""
    left = end - now
    if left <= 0:
        return "ended"
    if left >= DAY:
        days = math.floor(left / DAY + 1e-9)
        if left - days * DAY > DAY / 2:
            days += 1  # 2 days 20 hours reads better as "3 days" than as "2 days"
        return f"{days} day{'s' if days != 1 else ''} left"
    hours = max(1, round(left / 3600))
    return f"{hours} hour{'s' if hours != 1 else ''} left"


def period_bounds(row: Row) -> tuple[int, int] | None:
    """The whole days the period picker offers for ``row``, (1, longest), or None when the
    product cannot be borrowed (no borrowable seat, or a zero-day limit)."""
    if "borrow" not in row.actions or row.borrowable <= 0 or row.max_days < 1:
        return None
    return 1, row.max_days


def return_date(now: float, days: int) -> float:
    """When a borrow of ``days`` days made ``now`` ends (UTC seconds)."""
    return now + days * DAY
