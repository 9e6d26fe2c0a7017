"""The admin page's CSV export of a long history, while the seats are in use (issue 12, point 4:
"an export never delays a checkout by more than a few milliseconds").

The delay itself is measured by ``tools/export_delay.py`` (speed is for benchmarks, not tests).
What a test can hold is its cause and the promises around it: the export does no Python work
per row on its thread (Python per row is what held the GIL against the event loop), no
checkout is refused or lost while it streams, and the export is complete and correct.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import math
import random
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from conftest import MakeSite
from helpers import RawPeer

from lanlic.admin.export import csv_page
from lanlic.admin.views import csv_cell
from lanlic.core.records import HistoryRow
from lanlic.store import Store
from lanlic.store import history as hist

ROWS = 20_000

#: Cells a client could have put in the history: quotes, separators, line breaks, formulas,
#: text beyond ASCII.
NASTY = (
    "=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "a,b", 'say "hi"', "two\nlines", "cr\r\nlf",
    '""', ",", " lead", "trail ", "it's", "Zoë", "设计", "a\u2028b", "nul\0,=1+1", "",
)  # fmt: skip


def _history(n: int, start: float) -> list[HistoryRow]:
    rnd = random.Random(12)
    return [
        HistoryRow(
            start + i * 0.37 + rnd.random() * 0.3,
            rnd.choice(("checkout", "release", "refusal", "borrow")),
            rnd.choice(("cad", "render", *NASTY)),
            rnd.choice(("ann", "bob", *NASTY)),
            rnd.choice(("ws-1", *NASTY)),
            rnd.choice(("16", "no_seat", *NASTY)),
            rnd.choice((1, 1, 7, 2999)),
        )
        for i in range(n)
    ]


def _expected(r: HistoryRow) -> list[str]:
    """What the export promises for a row, in Python (parsed cells, not bytes)."""
    when = dt.datetime.fromtimestamp(math.floor(r.at), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    cells = [when, "", r.event, r.product, r.user, r.host, r.detail, str(r.count)]
    return [csv_cell(c) for c in cells]


def _check_line(line: list[str], r: HistoryRow) -> None:
    assert line[:1] + line[2:] == [x for i, x in enumerate(_expected(r)) if i != 1], (line, r)
    assert line[1] == f"{float(line[1]):.3f}" and abs(float(line[1]) - r.at) <= 0.0005 + 1e-6


async def test_an_export_neither_refuses_nor_loses_a_checkout_and_does_no_python_per_row(
    make_site: MakeSite,
) -> None:
    site = await make_site(password=None)  # loopback, no password: the page is open
    server = site.server
    rows = _history(ROWS, time.time() - 86400)
    await server.store_call(lambda s: s.append_history(rows))

    # Count the calls of lanlic's Python functions on the history's reader thread while it
    # exports (not the executor's own, a few per page whatever the export does).
    calls = 0
    ours = str(Path(csv_page.__code__.co_filename).parent.parent)

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call" and frame.f_code.co_filename.startswith(ours)

    await server.history_call(lambda db: sys.setprofile(count))  # on that thread only

    http = site.http()
    async with http.post("/api/login", json={"password": ""}) as r:
        assert r.status == 200
    peer = RawPeer(*await asyncio.open_connection(*server.address))
    await peer.hello()
    granted = 0

    async def export() -> str:
        async with http.get("/api/history.csv") as r:
            assert r.status == 200
            return await r.text()

    streaming = asyncio.ensure_future(export())
    try:
        for _ in range(100_000):  # bounded; a checkout and a release until the export is done
            reply = await peer.request("checkout", product="cad")
            assert reply["t"] == "granted", reply  # never refused
            granted += 1
            assert (await peer.request("release", leases=[reply["lease"]]))["t"] == "released"
            if streaming.done():
                break
        text = await asyncio.wait_for(streaming, 60)
    finally:
        await server.history_call(lambda db: sys.setprofile(None))
        peer.close()

    # Complete and correct: the header, then every row written before the export began, in
    # order, each cell as promised (formulas neutralised); then at most rows written since.
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0] == ["time_utc", "unix_time", "event", "product", "user", "host", "detail",
                        "count"]  # fmt: skip
    assert len(table) - 1 >= ROWS
    for line, r in zip(table[1:], rows, strict=False):
        _check_line(line, r)
    assert server.store is not None
    await server.flush_history()
    db = hist.open_reader(server.store.path)
    try:
        stored = list(hist.iter_rows(db))
    finally:
        db.close()
    assert len(table) - 1 <= len(stored)
    for line, r in zip(table[1 + ROWS :], stored[ROWS:], strict=False):
        _check_line(line, r)

    # No checkout lost: every one granted is counted in the history and none is still held.
    assert granted > 0
    assert sum(r.count for r in stored if r.event == "checkout" and r.user == "tester") == granted
    assert server.service.pool.in_use("cad") == 0

    # The cause of the delay, gone: a few dozen Python calls per page of a thousand rows, not
    # several per row (formatting in Python made ten per row, and held the GIL for them all).
    assert calls < (len(table) - 1) / 10, calls


def test_the_sql_lines_are_what_the_csv_module_writes(tmp_path: Path) -> None:
    """Byte for byte, SQLite's lines are ``csv.writer``'s (RFC 4180, CRLF) of the neutralised
    cells, for every cell a client could send; only the millisecond may round differently."""
    store = Store(tmp_path / "lanlic.db")
    rows = [
        HistoryRow(1.8e9 + i + 0.25, e, p, u, "ws", d, i + 1)
        for i, (e, p, u, d) in enumerate(
            (a, b, c, d) for a in NASTY[:4] for b in NASTY for c in NASTY[::3] for d in NASTY[::5]
        )
    ]
    store.append_history(rows)
    store.close()
    db = hist.open_reader(tmp_path / "lanlic.db")
    try:
        out, after, pages = b"", None, 0
        while True:
            data, after = csv_page(db, hist.Filters(), after, limit=97)
            out += data
            pages += 1
            if after is None:
                break
    finally:
        db.close()
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    for r in rows:
        cells = _expected(r)
        cells[1] = f"{r.at:.3f}"  # x.250: no rounding to differ on
        writer.writerow(cells)
    assert out.decode() == buf.getvalue()
    assert pages == len(rows) // 97 + 1
