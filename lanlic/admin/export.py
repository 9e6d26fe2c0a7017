"""The history as CSV for the admin page's export, formatted by SQLite itself.

An export runs on the history's reader thread, inside the licence server's process, while the
event loop serves the seats. Formatting rows in Python there (a datetime, a float and eight
escaped cells per row) held the GIL against the event loop: a checkout arriving meanwhile
waited for the interpreter's switch interval, several times over (13 ms seen idle, 50 ms under
load). Here each CSV line is one SQL expression: the work happens in ``sqlite3_step``, which
CPython runs with the GIL released, and Python only joins a page of finished lines. So the
event loop never waits for the export for more than a few microseconds at a time.

The lines are what ``csv.writer`` (RFC 4180, CRLF, quoting only where needed) would write of the
cells ``views.csv_cell`` neutralises: every column that starts with ``=``, ``+``, ``-``, ``@``,
a tab or a CR gets a leading ``'`` (OWASP's CSV injection advice). Times: ``time_utc`` is the
second the row happened in, ``unix_time`` the UTC seconds to the millisecond.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Final

from lanlic.admin.views import FORMULA_START
from lanlic.store import history as hist

__all__ = ["CSV_HEADER", "CSV_PAGE", "csv_page"]

#: Rows per page: one statement, one trip to the reader thread, a few dozen KiB of CSV.
CSV_PAGE: Final = 1000

CSV_HEADER: Final = "time_utc,unix_time,event,product,user,host,detail,count\r\n"


def _sql_text(s: str) -> str:
    """``s`` as SQL: a call of ``char()`` (no quoting rules to get wrong)."""
    return "char(" + ", ".join(str(ord(c)) for c in s) + ")"


#: The characters that make ``csv.writer`` quote a cell: a separator, a quote, a line break.
_SPECIAL: Final = tuple(_sql_text(c) for c in ',"\r\n')
#: True for a text that starts as a formula would.
_FORMULA: Final = "IN (" + ", ".join(_sql_text(c) for c in FORMULA_START) + ")"
_QUOTE: Final = _sql_text('"')
_TWO_QUOTES: Final = _sql_text('""')
_APOSTROPHE: Final = _sql_text("'")


def _cell(x: str) -> str:
    """SQL for the CSV cell of the text ``x``: a ``'`` in front of a formula
    (``views.csv_cell``), then quoted if it must be, its double quotes doubled. Each branch
    names ``x`` again: a column of the inner select, so no function runs twice."""
    neutral = f"(CASE WHEN substr({x}, 1, 1) {_FORMULA} THEN {_APOSTROPHE} ELSE '' END)"
    quoted = f"{_QUOTE} || {neutral} || replace({x}, {_QUOTE}, {_TWO_QUOTES}) || {_QUOTE}"
    # instr, not GLOB: GLOB stops at a NUL, and a client's "a\0,=1+1" would become two cells.
    special = " OR ".join(f"instr({x}, {c})" for c in _SPECIAL)
    return f"(CASE WHEN {special} THEN {quoted} ELSE {neutral} || {x} END)"


#: The cells' texts, each computed once per row in an inner select (the line names them often).
_TEXTS: Final = (
    "strftime('%Y-%m-%d %H:%M:%S', CAST(at AS INTEGER), 'unixepoch')",
    "printf('%.3f', at)",
    "CAST(event AS TEXT)",
    "CAST(product AS TEXT)",
    "CAST(user AS TEXT)",
    "CAST(host AS TEXT)",
    "CAST(detail AS TEXT)",
    "CAST({count} AS TEXT)",
)


@functools.cache  # a few dozen variants at most: which filters are set, and the count column
def _select(count: str, where: str) -> str:
    """The page's statement: per row, its CSV line (CRLF-terminated), ``at`` and ``seq``."""
    texts = ", ".join(f"{t.format(count=count)} AS c{i}" for i, t in enumerate(_TEXTS))
    line = " || ',' || ".join(_cell(f"c{i}") for i in range(len(_TEXTS))) + " || char(13, 10)"
    return (
        f"SELECT {line}, at, seq FROM (SELECT {texts}, at, seq FROM history{where}"  # noqa: S608
        " ORDER BY at, seq LIMIT ?)"
    )


def csv_page(
    db: sqlite3.Connection,
    filters: hist.Filters,
    after: tuple[float, int] | None,
    limit: int = CSV_PAGE,
) -> tuple[bytes, tuple[float, int] | None]:
    """The CSV lines of the next ``limit`` matching rows after ``after`` (as
    ``history.page_after``), and the key to pass next (None: no more rows)."""
    where, params = hist.seek(filters, after)
    sql = _select("count" if hist.counted(db) else "1", where)
    raw = db.execute(sql, [*params, limit]).fetchall()
    data = "".join([r[0] for r in raw]).encode()
    last = (float(raw[-1][1]), int(raw[-1][2])) if len(raw) == limit else None
    return data, last
