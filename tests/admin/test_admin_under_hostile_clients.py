"""Hostile clients of the admin page (issue 12, points 6-9): raced logins, nested JSON, CSV
formulas, and connections that hold the admin port open."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, MakeSite
from test_cli_admin import CLI, _env

from lanlic.admin.connections import AdminLimits
from lanlic.core.records import HistoryRow
from lanlic.store import Store


async def test_login_throttling_cannot_be_raced_by_wrong_passwords_sent_at_once(
    make_site: MakeSite,
) -> None:
    site = await make_site()
    http = site.http()

    async def attempt(i: int) -> int:
        async with http.post("/api/login", json={"name": "eve", "password": f"guess-{i}"}) as r:
            return r.status

    statuses = await asyncio.gather(*(attempt(i) for i in range(40)))
    tried = await site.history(event="admin_login_failed")
    # As one by one: two free failures, the third imposes the wait, the rest are not looked at.
    assert len(tried) == 3, statuses
    assert statuses.count(401) + statuses.count(429) == 40 and statuses.count(429) >= 37
    # The right password waits its turn too, then works.
    async with http.post("/api/login", json={"name": "eve", "password": PASSWORD}) as r:
        assert r.status == 429


async def test_deeply_nested_json_to_login_and_policy_answers_400_not_a_traceback(
    make_site: MakeSite, caplog: object
) -> None:
    site = await make_site()
    deep = b"[" * 100_000
    anon = site.http()
    async with anon.post(
        "/api/login", data=deep, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400 and (await r.json())["error"] == "bad_request"
    http, csrf = await site.login()
    async with http.put(
        "/api/policy/cad",
        data=deep,
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
    ) as r:
        assert r.status == 400 and (await r.json())["error"] == "bad_request"
    assert "RecursionError" not in caplog.text  # type: ignore[attr-defined]


FORMULAS = ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx")


async def test_csv_export_neutralises_formulas_in_every_column(make_site: MakeSite) -> None:
    site = await make_site()
    now = time.time()
    rows = [HistoryRow(now - 60 + i, f, f, f, f, f) for i, f in enumerate(FORMULAS)]
    await site.server.store_call(lambda s: s.append_history(rows))
    http, _ = await site.login()
    async with http.get("/api/history.csv") as r:
        table = list(csv.reader(io.StringIO(await r.text(), newline="")))
    ours = [line for line in table[1:] if line[2] != "admin_login"]
    assert len(ours) == len(FORMULAS)
    for line in ours:
        for cell in line:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), line
    assert {line[2] for line in ours} == {"'" + f for f in FORMULAS}


# ------------------------------------------------------------ `lanlic admin history`, real runs


def _history_db(folder: Path, rows: list[tuple[float, str, str, str, str, str]]) -> None:
    folder.mkdir()
    store = Store(folder / "lanlic.db")
    with store._db:  # one transaction: one fsync, not one per row
        store._db.execute("BEGIN")
        store._db.executemany(
            "INSERT INTO history(at, event, product, user, host, detail) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    store.close()


def _peak_rss_kib(args: list[str], out: Path) -> tuple[int, int]:
    """Run the CLI with stdout to ``out``; its exit code and peak resident memory (KiB)."""
    with open(out, "wb") as f:
        proc = subprocess.Popen([*CLI, *args], stdout=f, stderr=subprocess.DEVNULL, env=_env())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


def test_admin_history_csv_neutralises_formulas_in_every_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _history_db(data, [(1.8e9 + i, f, f, f, f, f) for i, f in enumerate(FORMULAS)])
    done = subprocess.run(
        [*CLI, "admin", "history", "--csv", "--data", str(data)],
        capture_output=True,
        timeout=20,
        env=_env(),
        check=False,
    )  # fmt: skip  (bytes: a CR in a cell must reach the reader as it is)
    assert done.returncode == 0, done.stderr
    table = list(csv.reader(io.StringIO(done.stdout.decode(), newline="")))
    assert len(table) == 1 + len(FORMULAS)
    for line in table[1:]:
        for cell in line:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), line
    assert {line[2] for line in table[1:]} == {"'" + f for f in FORMULAS}


def test_admin_history_json_over_a_long_history_streams_in_constant_memory(
    tmp_path: Path,
) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    _history_db(small, [(1.8e9, "checkout", "cad", "ann", "ws-1", "16")])
    n = 200_000
    _history_db(
        big,
        [(1.8e9 + i, "checkout", "cad", f"user{i % 997}", f"ws-{i % 89}", "16") for i in range(n)],
    )
    code, base = _peak_rss_kib(["admin", "history", "--json", "--data", str(small)], tmp_path / "s")
    assert code == 0
    out = tmp_path / "big.json"
    code, peak = _peak_rss_kib(["admin", "history", "--json", "--data", str(big)], out)
    assert code == 0
    doc = json.loads(out.read_text())
    assert len(doc["events"]) == n and doc["events"][-1]["user"] == f"user{(n - 1) % 997}"
    # Loading every row costs well over 100 MiB here; a page at a time costs next to nothing.
    assert peak - base < 30 * 1024, (base, peak)


# ------------------------------------------------------- 6: the admin port's connections

QUICK = {"sweep_interval": 0.05}


async def _open(site: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(site.admin.host, site.admin.port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection ``seconds``."""
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(
                reader.read(65536), max(0.01, deadline - time.monotonic())
            )
        except TimeoutError:
            return None
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += data
    return None


async def test_a_trickled_or_silent_request_head_is_closed_by_the_header_timeout(
    make_site: MakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site = await make_site(admin_limits=AdminLimits(header_timeout=0.5, **QUICK))
    silent_r, silent_w = await _open(site)
    r, w = await _open(site)
    w.write(b"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:
        for _ in range(40):
            w.write(b"X")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(trickle())
    try:
        assert await _closed_within(r, 3) is not None  # a trickle does not reset the timeout
        assert await _closed_within(silent_r, 3) is not None
    finally:
        dripping.cancel()
        w.close()
        silent_w.close()
    assert "request head not complete within the header timeout" in caplog.text
    # A plain request still works.
    async with site.http().get("/api/session") as resp:
        assert resp.status == 200


async def test_a_trickled_request_body_is_closed_by_the_body_timeout(
    make_site: MakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site = await make_site(admin_limits=AdminLimits(body_timeout=0.5, **QUICK))
    r, w = await _open(site)
    w.write(
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )

    async def trickle() -> None:
        for _ in range(40):
            w.write(b" ")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(trickle())
    try:
        assert await _closed_within(r, 3) is not None
    finally:
        dripping.cancel()
        w.close()
    assert "request body not complete within the body timeout" in caplog.text


async def test_an_idle_admin_connection_is_closed_by_the_idle_timeout(make_site: MakeSite) -> None:
    site = await make_site(admin_limits=AdminLimits(idle_timeout=0.5, **QUICK))
    r, w = await _open(site)
    w.write(b"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got = await _closed_within(r, 4)
    w.close()
    assert got is not None and got.startswith(b"HTTP/1.1 200")  # answered, then closed


async def test_admin_connections_past_the_cap_are_refused_and_logged(
    make_site: MakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site = await make_site(admin_limits=AdminLimits(max_connections=3, **QUICK))
    held = [await _open(site) for _ in range(3)]
    await asyncio.sleep(0.1)
    r, w = await _open(site)
    got = await _closed_within(r, 3)
    w.close()
    assert got is not None and got.startswith(b"HTTP/1.1 503")
    assert "refused connections past the cap of 3" in caplog.text
    for _, hw in held:
        hw.close()
    await asyncio.sleep(0.2)
    async with site.http().get("/api/session") as resp:
        assert resp.status == 200
