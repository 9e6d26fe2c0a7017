"""The cluster's history (issue 16, ``lanlic.cluster.history``): real ``lanlic serve --store
etcd://`` members over a real 3-member etcd, real clients, the admin JSON API over HTTP.

Each member writes its history to its own ``lanlic.db`` and puts each batch in etcd; any
member's admin page (history, CSV export, usage chart) reads every member's rows from etcd,
merged by time, each naming its member.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import aiohttp
import pytest
from cliproc import ok, run
from etcd_cluster import EtcdCluster
from tcp_proxy import TcpProxy
from test_cluster_admin import AdminMember, admin_session, get, start, user_client
from test_cluster_members import SEATS, Site, closed, open_site, prefix_of, until

from lanlic.cluster.etcd import EtcdSeats
from lanlic.cluster.history import (
    KEYS_PER_READ,
    MAX_VALUE,
    PUBLISH_INTERVAL,
    SPAN,
    ClusterHistory,
    HistoryPage,
    decode_batch,
    encode_batches,
    history_prefix,
)
from lanlic.net.client import Client
from lanlic.store import history as hist

DAY = 86400.0


@pytest.fixture(scope="module")
def etcd_cluster(module_etcd_cluster: EtcdCluster) -> EtcdCluster:
    """The module's tests kill no etcd member: they share one (conftest)."""
    return module_etcd_cluster


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with open_site(tmp_path, f"cad:{SEATS}") as s:
        yield s


async def history_of(http: aiohttp.ClientSession, query: str = "") -> dict[str, Any]:
    status, body = await get(http, f"/api/history?{query}")
    assert status == 200, body
    return body


async def batches(etcd: aetcd.Client, prefix: str) -> list[tuple[bytes, str, list[Any]]]:
    """The site's history keys in etcd: (key, member, rows)."""
    got = await etcd.get_prefix(history_prefix(prefix))
    out = []
    for kv in got:
        decoded = decode_batch(bytes(kv.value))
        assert decoded is not None, kv.key
        out.append((bytes(kv.key), decoded[0], decoded[1]))
    return out


async def test_checkouts_on_two_members_are_in_each_members_history_and_chart(
    site: Site, etcd_cluster: EtcdCluster
) -> None:
    """ann on A, bob on B, cat on A: A's and B's history APIs both list the three checkouts,
    newest first, each with the member that served it; B's CSV export has them oldest first with
    a member column; B's usage chart, after all three seats were released, has the moment the
    three were held (walked back through both members' rows); ``lanlic admin history --data``
    on A still lists A's rows only. Before this: B listed bob's checkout only, and the chart
    answered 409 ``history_not_kept``."""
    endpoints = etcd_cluster.endpoints
    a = await start(site, site.data("a"), endpoints)
    b = await start(site, site.data("b", identity_of="a"), endpoints[::-1])
    order: list[tuple[str, AdminMember]] = [("ann", a), ("bob", b), ("cat", a)]
    clients: list[Client] = []
    sessions: list[aiohttp.ClientSession] = []
    try:
        for user, member in order:
            cl = user_client(site, user, member)
            await cl.connect()
            clients.append(cl)
            await cl.acquire("cad")
            await asyncio.sleep(0.05)  # distinct times, in this order
        http_a, _ = await admin_session(a.url)
        http_b, _ = await admin_session(b.url)
        sessions += [http_a, http_b]
        _, ov_a = await get(http_a, "/api/overview")
        _, ov_b = await get(http_b, "/api/overview")
        names = {"a": ov_a["cluster"]["member"], "b": ov_b["cluster"]["member"]}
        assert names["a"] != names["b"]
        want = [("cat", "cat-pc", names["a"]), ("bob", "bob-pc", names["b"]),
                ("ann", "ann-pc", names["a"])]  # fmt: skip

        for http in (http_a, http_b):
            seen: list[Any] = []

            async def listed(http: aiohttp.ClientSession = http, seen: list[Any] = seen) -> bool:
                # The other member's rows reach etcd within its PUBLISH_INTERVAL and a sweep.
                seen[:] = (await history_of(http, "event=checkout"))["items"]
                return len(seen) >= 3

            assert await until(listed, 20), seen
            assert [(x["user"], x["host"], x["member"]) for x in seen] == want
            assert [x["at"] for x in seen] == sorted((x["at"] for x in seen), reverse=True)

        async with http_b.get("/api/history.csv?event=checkout") as r:
            assert r.status == 200
            table = list(csv.reader(io.StringIO(await r.text())))
        assert table[0][-1] == "member"
        assert [(row[4], row[-1]) for row in table[1:]] == [(u, m) for u, _, m in want[::-1]]

        for cl in clients:  # every seat back: the chart's present is 0 in use
            for seat in list(cl.seats.values()):
                await cl.release(seat)

        async def released() -> bool:
            got = await history_of(http_b, "event=release")
            return sum(x["count"] for x in got["items"]) >= 3

        assert await until(released, 20)
        status, chart = await get(http_b, "/api/usage?range=day")
        assert status == 200, chart
        cad = next(p for p in chart["products"] if p["name"] == "cad")
        assert cad["seats"] == SEATS
        assert max(u for _t, u, _b in cad["points"]) == 3  # both members' seats counted
        assert cad["points"][-1][1] in (0.0, 3.0)  # the last bucket: now 0, or the peak if in it
    finally:
        for s in sessions:
            await s.close()
        for cl in clients:
            await closed(cl)
    a.member.proc.stop()
    b.member.proc.stop()
    out = ok(run(["admin", "history", "--data", str(site.root / "a"), "--json"]))
    mine = sorted({e["user"] for e in out["events"] if e["event"] == "checkout"})
    assert mine == ["ann", "cat"]  # the member's own database: what it served


async def test_a_member_killed_with_sigkill_loses_at_most_its_last_unsent_batch(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    """A grants checkouts for PUBLISH_INTERVAL + 4 s and is SIGKILLed right after the last: B's
    history has every checkout A granted but those of its last PUBLISH_INTERVAL + 2 s at most
    (the rows its server had not written, a housekeeping interval of 1 s; those waiting for the
    next put; the put in flight). A publishes as it goes, not at its end. Restarted with its
    data folder, A puts what its database holds and etcd lacks: B's history then has every
    checkout A wrote down, each once. Before this: B's history had nothing of A's."""
    endpoints = etcd_cluster.endpoints
    a = await start(site, site.data("a"), endpoints)
    b = await start(site, site.data("b", identity_of="a"), endpoints[::-1])
    clients: list[Client] = []
    granted: dict[str, float] = {}
    try:
        started = time.time()
        for i in itertools.count():
            cl = user_client(site, f"u{i}", a)
            await cl.connect()
            clients.append(cl)
            await cl.acquire("cad")
            granted[f"u{i}"] = time.time()
            for seat in list(cl.seats.values()):
                await cl.release(seat)
            if time.time() - started > PUBLISH_INTERVAL + 4:
                break
            await asyncio.sleep(0.1)
        killed_at = time.time()
        a.member.proc.popen.send_signal(signal.SIGKILL)
        a.member.proc.popen.wait(timeout=10)
    finally:
        for cl in clients:
            await closed(cl)
    out = ok(run(["admin", "history", "--data", str(site.root / "a"), "--json"]))
    local = {e["user"] for e in out["events"] if e["event"] == "checkout"}
    http, _ = await admin_session(b.url)
    try:
        got = await history_of(http, "event=checkout&limit=1000")
    finally:
        await http.close()
    cluster = {x["user"] for x in got["items"]}
    assert cluster <= local <= set(granted)
    lost = sorted(set(granted) - cluster, key=granted.__getitem__)
    unsent = sorted(local - cluster, key=granted.__getitem__)
    last = [round(killed_at - granted[u], 2) for u in lost]
    assert all(killed_at - granted[u] < PUBLISH_INTERVAL + 2 for u in lost), (lost, last, unsent)
    assert cluster, (len(cluster), len(granted))

    # A restarted with its data folder puts first what its database holds and etcd does not:
    # B's history then has every checkout A wrote down, each once.
    a = await start(site, site.root / "a", endpoints)
    http, _ = await admin_session(b.url)
    try:
        rows: list[Any] = []

        async def caught_up() -> bool:
            rows[:] = (await history_of(http, "event=checkout&limit=1000"))["items"]
            return {x["user"] for x in rows} >= local

        assert await until(caught_up, 20), (len(rows), len(local))
    finally:
        await http.close()
    assert sorted(x["user"] for x in rows) == sorted(local)  # none twice
    assert len({x["member"] for x in rows}) == 1  # the run that served them, not the new one
    for m in (a, b):
        assert m.member.proc.stop() == 0


async def test_pruning_removes_batches_older_than_the_retention(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    """Batches 500 and 40 days old and one 10 days old are in etcd; A and B keep 30 days
    (``lanlic admin retention --days 30`` on each): soon after they start, both pruning at once,
    only the 10-day batch is left, and the history API lists its row. Before this: none went."""
    prefix = prefix_of(site)
    now = time.time()
    seqs = itertools.count()
    for age in (500, 40, 10):
        rows = [(now - age * DAY, "checkout", "cad", f"old{age}", "pc", "", 1)]
        for key, value, _n in encode_batches(prefix, "gone-member", "0000beef", seqs, rows):
            await etcd.put(key, value)
    for name in ("a", "b"):
        ok(run(["admin", "retention", "--data", str(site.data(name) if name == "a" else
                                                      site.data(name, identity_of="a")),
                "--days", "30", "--json"]))  # fmt: skip
    endpoints = etcd_cluster.endpoints
    a = await start(site, site.root / "a", endpoints)
    b = await start(site, site.root / "b", endpoints[::-1])

    async def pruned() -> bool:
        got = await batches(etcd, prefix)
        return sum(1 for _k, member, _r in got if member == "gone-member") == 1

    assert await until(pruned, 30)  # the first pruning is a few seconds after start
    left = [rows for _k, member, rows in await batches(etcd, prefix) if member == "gone-member"]
    assert [[r.user for r in rows] for rows in left] == [["old10"]]
    http, _ = await admin_session(b.url)
    try:
        got = await history_of(http, "event=checkout")
    finally:
        await http.close()
    assert [(x["user"], x["member"]) for x in got["items"]] == [("old10", "gone-member")]
    for m in (a, b):
        assert m.member.proc.stop() == 0


def first_difference(got: list[Any], want: list[Any]) -> tuple[int, Any, Any] | None:
    """Where two long lists differ first (pytest's own diff of them takes minutes)."""
    for i, (x, y) in enumerate(itertools.zip_longest(got, want)):
        if x != y:
            return i, x, y
    return None


async def test_many_batches_read_by_pages_in_time_order(
    etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    """More batches than one read returns (two members' interleaved, rows out of order within
    a batch, batches overlapping in time, one spanning more than SPAN so it is cut): the
    newest-first pages (every one), the oldest-first rows and a time window all agree with the
    rows sorted by time."""
    prefix = "/test-history-pages"
    store = EtcdSeats(etcd_cluster.endpoints, prefix=prefix, products={}, member="reader")
    t0 = time.time() - 3600
    everything = []
    seqs = itertools.count()
    for i in range(KEYS_PER_READ * 3 + 16):
        member = "m1" if i % 2 else "m2"
        rows = [(t0 + i * 1.5 + j * 0.1, "checkout", "cad", f"u{i}-{j}", "pc", "", 1)
                for j in (2, 0, 1)]  # fmt: skip
        # A row 50 s on (a refusal is stamped with the first of its minute): batches overlap.
        rows.append((t0 + i * 1.5 + 50.05, "expiry", "cad", f"e{i}", "pc", "", 1))
        if i == 7:
            rows.append((t0 + i * 1.5 + SPAN + 5, "refusal", "cad", "late", "pc", "no_seat", 4))
        for key, value, _n in encode_batches(prefix, member, member, seqs, rows):
            await etcd.put(key, value)
        everything += [(r[0], r[3], member) for r in rows]
    everything.sort()
    history = ClusterHistory(store)
    try:
        await store.start()
        newest = [(r.at, r.user, r.member) for r in
                  (await history.page(hist.Filters(), offset=0, limit=50)).items]  # fmt: skip
        assert first_difference(newest, everything[::-1][:50]) is None
        newest_first = everything[::-1]
        for offset in range(0, len(everything), 97):  # every page, wherever reads stop
            page = await history.page(hist.Filters(), offset=offset, limit=100)
            got = [(r.at, r.user, r.member) for r in page.items]
            assert first_difference(got, newest_first[offset : offset + 100]) is None, offset
            if page.more:  # it read until it held the page, and counted what it read
                assert offset + 100 < page.total < len(everything)
            else:  # it read to the start: exact
                assert page.total == len(everything)
        assert page.total == len(everything) and not page.more  # the last page
        first = await history.page(hist.Filters(), offset=0, limit=10)
        assert first.more and first.total > 10
        ascending = [(r.at, r.user, r.member) async for rows in history.rows(hist.Filters())
                     for r in rows]  # fmt: skip
        assert first_difference(ascending, everything) is None
        lo, hi = t0 + 100, t0 + 300
        window = hist.Filters(since=lo, until=hi, product="cad")
        got = [(r.at, r.user, r.member) async for rows in history.rows(window) for r in rows]
        assert first_difference(got, [x for x in everything if lo <= x[0] < hi]) is None
        assert len(await history.events_since(t0 + 200, ["refusal"])) == 0
        assert [e[3] for e in await history.events_since(t0, ["refusal"])] == [4]
        assert await history.prune(time.time(), 30) == 0  # all within the retention
        assert await history.prune(time.time() + 31 * DAY, 30) > 0
        assert await history.page(hist.Filters()) == HistoryPage(0, [], False)
    finally:
        await store.close()


async def test_a_read_of_full_keys_stays_under_grpcs_message_limit(
    etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    """Keys as full as a member writes them (``MAX_VALUE``), more than one read's worth: the
    page, the rows and the chart read them all. One read's reply must stay under gRPC's 4 MiB
    message limit, which aetcd leaves at its default: past it the read fails, and the member
    takes the failure for an unreachable etcd endpoint and moves to another."""
    prefix = "/test-history-full"
    store = EtcdSeats(etcd_cluster.endpoints, prefix=prefix, products={}, member="reader")
    t0 = time.time() - 600
    detail = "x" * 1000
    rows = [(t0 + i * 0.001, "checkout", "cad", f"u{i}", "pc", detail, 1)
            for i in range(KEYS_PER_READ * 2 * (MAX_VALUE // 1000))]  # fmt: skip
    items = encode_batches(prefix, "m1", "m1", itertools.count(), rows)
    assert len(items) > KEYS_PER_READ and min(len(v) for _k, v, _n in items[:-1]) > MAX_VALUE / 2
    for key, value, _n in items:
        await etcd.put(key, value)
    history = ClusterHistory(store)
    try:
        await store.start()
        got = [r.user async for chunk in history.rows(hist.Filters()) for r in chunk]
        assert got == [r[3] for r in rows]
        page = await history.page(hist.Filters(), offset=len(rows) - 10, limit=100)
        assert [r.user for r in page.items] == [r[3] for r in rows[:10]][::-1]
        assert len(await history.events_since(t0, ["checkout"])) == len(rows)
    finally:
        await store.close()


async def test_a_put_etcd_does_not_take_is_tried_again_and_counted(
    etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    """The member's only etcd endpoint blackholes its requests (a loopback proxy): the batch
    handed meanwhile is not lost nor blocking; each failed put is counted; once etcd answers
    again the batch is put, once, under one key."""
    prefix = "/test-history-retry"
    proxy = TcpProxy("127.0.0.1", etcd_cluster.members[0].client_port)
    await proxy.start()
    store = EtcdSeats([proxy.endpoint], prefix=prefix, products={}, member="m", call_timeout=0.5)
    history = ClusterHistory(store)
    try:
        await store.start()
        history.start()
        proxy.mode = "blackhole"
        t0 = time.time()
        rows = [(i + 1, t0 + i, "checkout", "cad", f"u{i}", "pc", "", 1) for i in range(5)]
        await asyncio.to_thread(history.handed, rows)  # as the database's writer thread does
        assert not await history.flush(within=0.1)  # the caller waits no longer than it said

        async def failed_twice() -> bool:
            return history.put_failures >= 2

        assert await until(failed_twice, 10)
        assert history.waiting == 5
        proxy.mode = "pass"
        assert await history.flush(within=15)
        got = await batches(etcd, prefix)
        assert [(m, [r.user for r in rs]) for _k, m, rs in got] == [("m", [r[4] for r in rows])]
        assert history.published_rows == 5 and history.waiting == 0
    finally:
        proxy.mode = "pass"
        await history.close(within=1)
        await store.close()
        await proxy.close()
