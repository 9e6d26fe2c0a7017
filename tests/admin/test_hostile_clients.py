"""Hostile clients of the admin page (issue 12, points 6-9): raced logins, nested JSON, CSV
formulas, and connections that hold the admin port open."""

from __future__ import annotations

import asyncio
import csv
import io
import time

from conftest import PASSWORD, MakeSite

from lanlic.core.records import HistoryRow


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
