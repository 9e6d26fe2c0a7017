"""The history table: appending, reading it page by page, and keeping it within its bounds.

A hostile client must not be able to grow the table without bound, nor an export of it hold up
the seats. So:

* **Reads are paged by key** (``after``: the last ``(at, seq)`` seen), each page its own short
  statement: a reader holds no snapshot between pages, its memory is one page, and a time filter
  is a range on the ``history_at`` index (``(product, at)`` and ``(event, at)`` for the
  filtered views) rather than a scan. The server runs them on a connection and thread of their
  own (``open_reader``), so an export never waits for, nor holds up, the writer: in WAL mode a
  reader and the writer do not block each other.
* **Retention** (``prune``): rows older than ``keep_days`` go, and beyond ``max_rows`` the oldest
  go, a small batch per transaction, so the writer is never held for long. Both are admin
  settings in the meta table (``lanlic admin retention``), defaults below.

Functions take a ``sqlite3.Connection``: the ``Store`` (the writer) and the readers share them.
"""

from __future__ import annotations

import dataclasses
import operator
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lanlic.core.records import HistoryRow

__all__ = [
    "DEFAULT_KEEP_DAYS",
    "DEFAULT_MAX_ROWS",
    "PAGE_ROWS",
    "PRUNE_BATCH",
    "Filters",
    "Retention",
    "append",
    "count",
    "counted",
    "events_since",
    "iter_rows",
    "open_reader",
    "page",
    "page_after",
    "prune",
    "retention",
    "seek",
    "set_retention",
]

#: Days of history kept by default (a little over a year: last year's same month stays).
DEFAULT_KEEP_DAYS: Final = 400
#: Rows kept at most by default (about 150 bytes each with the indexes: some 300 MB).
DEFAULT_MAX_ROWS: Final = 2_000_000
#: Rows read per statement by the iterators (one page is all a reader holds).
PAGE_ROWS: Final = 2000
#: Rows deleted per transaction by ``prune`` (a few milliseconds of the writer's time).
PRUNE_BATCH: Final = 1000

KEEP_DAYS_KEY: Final = "history_keep_days"
MAX_ROWS_KEY: Final = "history_max_rows"

_COLUMNS: Final = "at, event, product, user, host, detail, count"
#: ``Filters.matches``: the SQL operators of ``Filters.where`` in Python.
_SQL_OPS: Final[dict[str, Any]] = {">=": operator.ge, "<": operator.lt, "=": operator.eq}


@dataclass(frozen=True, slots=True)
class Filters:
    """Which rows to read; None matches any."""

    since: float | None = None
    """From this UTC time on (inclusive)."""
    until: float | None = None
    """Before this UTC time."""
    product: str | None = None
    event: str | None = None

    def _clauses(self) -> tuple[tuple[str, str, object], ...]:
        """(column, SQL operator, value) per filter: the one statement of what a filter means,
        which ``where`` writes as SQL and ``matches`` applies in Python."""
        return (
            ("at", ">=", self.since),
            ("at", "<", self.until),
            ("product", "=", self.product),
            ("event", "=", self.event),
        )

    def where(self) -> tuple[str, list[object]]:
        """The WHERE clause (fixed text, every value bound) and its parameters."""
        sql = " WHERE 1"
        params: list[object] = []
        for column, op, value in self._clauses():
            if value is not None:
                sql += f" AND {column} {op} ?"
                params.append(value)
        return sql, params

    def matches(self, row: object) -> bool:
        """Whether ``row`` (anything with ``at``, ``product`` and ``event``: a ``HistoryRow``,
        a cluster member's row) passes, as ``where`` would select it in SQLite."""
        return all(
            value is None or _SQL_OPS[op](getattr(row, column), value)
            for column, op, value in self._clauses()
        )


@dataclass(frozen=True, slots=True)
class Retention:
    keep_days: int = DEFAULT_KEEP_DAYS
    """Rows older than this many days are deleted (0: kept whatever their age)."""
    max_rows: int = DEFAULT_MAX_ROWS
    """At most this many rows are kept, the newest (0: no limit)."""


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection of its own, for reads that must not wait for (or hold up) the
    writer. No integrity check here: the writer checked the file when it opened it."""
    db = sqlite3.connect(
        f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
        check_same_thread=False,
    )  # fmt: skip
    db.execute("PRAGMA busy_timeout=5000")
    return db


def counted(db: sqlite3.Connection) -> bool:
    """Whether the table has its ``count`` column: a database not yet migrated to counted rows
    (an older server still running beside an admin command) reads each row as one."""
    return "count" in {str(r[1]) for r in db.execute("PRAGMA table_info(history)")}


def _columns(db: sqlite3.Connection) -> str:
    """The select list (see ``counted``)."""
    return _COLUMNS if counted(db) else _COLUMNS.replace("count", "1")


def _row(r: Sequence[Any]) -> HistoryRow:
    return HistoryRow(*r)


def append(db: sqlite3.Connection, rows: Sequence[Sequence[object]]) -> None:
    """Append ``(at, event, product, user, host, detail[, count])`` rows in one transaction."""
    six = [r for r in rows if len(r) == 6]
    seven = [r for r in rows if len(r) == 7]
    db.execute("BEGIN")
    try:
        if six:
            db.executemany(
                "INSERT INTO history(at, event, product, user, host, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                six,
            )
        if seven:
            db.executemany(
                "INSERT INTO history(at, event, product, user, host, detail, count)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                seven,
            )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite already rolled back on a full disk
            db.execute("ROLLBACK")
        raise


def seek(filters: Filters, after: tuple[float, int] | None) -> tuple[str, list[object]]:
    """The WHERE clause (and its parameters) of the rows that match ``filters`` and come after
    ``after`` in ``(at, seq)`` order: what a page read by key selects."""
    if after is not None:
        # A seek on the time index to the last row's time (one lower bound, so SQLite starts
        # the range there rather than at ``since``), then past the rows of that same time.
        since = after[0] if filters.since is None else max(filters.since, after[0])
        filters = dataclasses.replace(filters, since=since)
    where, params = filters.where()
    if after is not None:
        where += " AND (at > ? OR seq > ?)"
        params += [after[0], after[1]]
    return where, params


def page_after(
    db: sqlite3.Connection,
    filters: Filters,
    after: tuple[float, int] | None,
    limit: int = PAGE_ROWS,
) -> tuple[list[HistoryRow], tuple[float, int] | None]:
    """The next ``limit`` rows oldest first after ``after`` (an ``(at, seq)`` from the previous
    call, None to start), and the key to pass next (None: no more rows)."""
    where, params = seek(filters, after)
    sql = f"SELECT {_columns(db)}, seq FROM history{where} ORDER BY at, seq LIMIT ?"  # noqa: S608
    raw = db.execute(sql, [*params, limit]).fetchall()
    rows = [_row(r[:7]) for r in raw]
    last = (float(raw[-1][0]), int(raw[-1][7])) if len(raw) == limit else None
    return rows, last


def iter_rows(
    db: sqlite3.Connection, filters: Filters = Filters(), page_rows: int = PAGE_ROWS
) -> Iterator[HistoryRow]:
    """Every matching row, oldest first, a page at a time (constant memory, no long read)."""
    after: tuple[float, int] | None = None
    while True:
        rows, after = page_after(db, filters, after, page_rows)
        yield from rows
        if after is None:
            return


def count(db: sqlite3.Connection, filters: Filters) -> int:
    where, params = filters.where()
    return int(db.execute("SELECT count(*) FROM history" + where, params).fetchone()[0])  # noqa: S608


def page(
    db: sqlite3.Connection,
    filters: Filters,
    *,
    offset: int = 0,
    limit: int = 100,
    newest_first: bool = True,
) -> tuple[int, list[HistoryRow]]:
    """One page for the admin page's table, and how many rows match in all."""
    where, params = filters.where()
    order = "DESC" if newest_first else "ASC"
    rows = db.execute(
        f"SELECT {_columns(db)} FROM history{where}"  # noqa: S608
        f" ORDER BY at {order}, seq {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return count(db, filters), [_row(r) for r in rows]


def events_since(
    db: sqlite3.Connection, since: float, events: Sequence[str]
) -> list[tuple[float, str, str, int]]:
    """``(at, product, event, count)`` of the given kinds from ``since`` on, oldest first."""
    marks = ", ".join("?" * len(events))
    count = "count" if "count" in _columns(db) else "1"
    rows = db.execute(
        f"SELECT at, product, event, {count} FROM history WHERE at >= ?"  # noqa: S608
        f" AND event IN ({marks}) ORDER BY at, seq",
        [since, *events],
    )
    return [(float(a), str(p), str(e), int(n)) for a, p, e, n in rows]


# ------------------------------------------------------------------------------- retention


def retention(db: sqlite3.Connection) -> Retention:
    """The admin's settings, or the defaults."""
    values = dict(
        db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (KEEP_DAYS_KEY, MAX_ROWS_KEY))
    )
    out = Retention()
    try:
        days = int(values.get(KEEP_DAYS_KEY, out.keep_days))
        rows = int(values.get(MAX_ROWS_KEY, out.max_rows))
    except ValueError:
        return out
    return Retention(max(0, days), max(0, rows))


def set_retention(db: sqlite3.Connection, r: Retention) -> None:
    db.execute("BEGIN")
    try:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (KEEP_DAYS_KEY, str(r.keep_days)))
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MAX_ROWS_KEY, str(r.max_rows)))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def prune(db: sqlite3.Connection, now: float, batch: int = PRUNE_BATCH) -> int:
    """Delete at most ``batch`` rows beyond the retention settings (the oldest first), in one
    transaction; return how many went. Call again until it returns less than ``batch``."""
    r = retention(db)
    last = db.execute("SELECT max(seq) FROM history").fetchone()[0]
    if last is None:
        return 0
    # seq only grows, and rows go oldest first: the newest max_rows are those above this.
    below_seq = int(last) - r.max_rows + 1 if r.max_rows else 0
    before = now - r.keep_days * 86400.0 if r.keep_days else float("-inf")
    cur = db.execute(
        "DELETE FROM history WHERE seq IN (SELECT seq FROM history WHERE seq < ? ORDER BY seq"
        " LIMIT ?)",
        (below_seq, batch),
    )
    gone = max(0, cur.rowcount)
    if gone < batch and before != float("-inf"):
        cur = db.execute(
            "DELETE FROM history WHERE seq IN (SELECT seq FROM history WHERE at < ? LIMIT ?)",
            (before, batch - gone),
        )
        gone += max(0, cur.rowcount)
    return gone
