"""The admin page and ``lanlic status`` of a cluster member (issue 16): real ``lanlic serve
--store etcd://`` members over a real 3-member etcd, real clients, a laptop's borrow, and the
admin JSON API over HTTP.

One member's page shows the whole cluster: the seats held through the other member (with who
holds them, from the seat keys' values) and the borrow made through it. Removing a seat is done
by the member that granted it (its client is told at once); another member refuses, naming it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import aiohttp
import pytest
from cliproc import CLI, base_env, ok, run, serve_args
from etcd_cluster import EtcdCluster
from test_cluster_borrows import counts, enrolled, read_site, site  # noqa: F401 - fixture
from test_cluster_members import HEARTBEAT, LEASE, Member, Site, closed, prefix_of

from lanlic.errors import NoSeat
from lanlic.laptop.borrower import Borrower
from lanlic.laptop.trust import TrustStore
from lanlic.net.client import Client

SEATS = 6


@dataclass
class AdminMember:
    member: Member
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


async def start(at: Site, data: Path, endpoints: list[str]) -> AdminMember:
    """A member with its admin page served by default (a free port, as ``--port 0`` gives)."""
    args = serve_args(at.key, at.vendor, data, "--store", "etcd://" + ",".join(endpoints))
    args += ["--lease", str(LEASE), "--heartbeat", str(HEARTBEAT), "--allow-short-lease"]
    proc = at.procs.start(args)
    event = await asyncio.to_thread(proc.read_json, 30)
    assert event["event"] == "listening" and event["store"] == "etcd", event
    assert event["admin_port"], event  # a member serves its admin page by default
    member = Member(proc, event["port"], event["server_id"], event["etcd_lease"])
    return AdminMember(member, int(event["admin_port"]))


def user_client(at: Site, user: str, member: AdminMember) -> Client:
    return Client(
        [member.member.address],
        regain=False,
        trust=TrustStore(at.root / f"t-{user}"),
        user=user,
        host=f"{user}-pc",
    )


async def admin_session(url: str) -> tuple[aiohttp.ClientSession, str]:
    """An admin session on a loopback page with no password (open mode) and its CSRF token."""
    http = aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post("/api/login", json={"name": "ann"}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    return http, body["csrf"]


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as r:
        return r.status, await r.json()


async def test_one_members_admin_page_shows_the_whole_cluster(
    site: Site,  # noqa: F811 - the fixture imported above
    etcd_cluster: EtcdCluster,
    etcd: aetcd.Client,
) -> None:
    endpoints = etcd_cluster.endpoints
    a = await start(site, site.data("a"), endpoints)
    b = await start(site, site.data("b", identity_of="a"), endpoints[1:] + endpoints[:1])
    prefix = prefix_of(site)
    lap = await enrolled(site, "l1", a.member)
    clients: list[Client] = []
    sessions: list[aiohttp.ClientSession] = []
    try:
        ann = user_client(site, "ann", a)  # through A
        bob, cat = user_client(site, "bob", b), user_client(site, "cat", b)  # through B
        for cl in (ann, bob, cat):
            await cl.connect()
            clients.append(cl)
            await cl.acquire("cad")
        async with Client(
            [b.member.address], regain=False, trust=TrustStore(site.root / "tl")
        ) as cl:
            lic = await lap.borrow(cl, "cad", days=2)  # through B
        assert counts(await read_site(etcd, prefix)) == (3, 1, 1)

        http, csrf = await admin_session(a.url)
        sessions.append(http)
        status, ov = await get(http, "/api/overview")
        assert status == 200, ov
        cad = next(p for p in ov["products"] if p["name"] == "cad")
        for _ in range(50):  # A's mirror follows etcd's watch
            if (cad["in_use"], cad["borrowed"]) == (3, 1):
                break
            await asyncio.sleep(0.1)
            cad = next(p for p in (await get(http, "/api/overview"))[1]["products"])
        assert (cad["seats"], cad["in_use"], cad["borrowed"], cad["free"]) == (SEATS, 3, 1, 2)
        assert ov["cluster"]["member"]

        # Who holds the seats, whichever member granted them (the seat keys' values).
        status, page = await get(http, "/api/holders")
        assert status == 200, page
        assert page["total"] == 3
        by_user = {h["user"]: h for h in page["items"]}
        assert set(by_user) == {"ann", "bob", "cat"}
        assert by_user["bob"]["host"] == "bob-pc" and by_user["cat"]["host"] == "cat-pc"
        assert by_user["ann"]["here"] and not by_user["bob"]["here"] and not by_user["cat"]["here"]
        assert by_user["bob"]["member"] == by_user["cat"]["member"] != by_user["ann"]["member"]
        assert by_user["ann"]["last_heartbeat"] is not None  # A keeps its own renewals
        assert by_user["bob"]["since"] is not None

        # The borrow made through B (the reaper's read of the borrow records, every 5 s).
        for _ in range(100):
            status, borrows = await get(http, "/api/borrows")
            if borrows["items"]:
                break
            await asyncio.sleep(0.1)
        assert [x["borrow_id"] for x in borrows["items"]] == [lic.borrow_id]

        # Enrollments are the cluster's: one made through A over the wire, one uploaded to A's
        # page (offline), which B lists and the laptop completes.
        eve = Borrower(site.root / "laptop-eve", machine_fp="mfp:eve")
        req = eve.enrollment_request("eve", "lt-eve")
        async with http.post("/api/enrollments", data=req, headers={"X-CSRF-Token": csrf}) as r:
            body = await r.json()
            assert r.status == 200, body
        assert eve.complete_enrollment(body["response"].encode()).server_id == a.member.server_id
        http_b, csrf_b = await admin_session(b.url)
        sessions.append(http_b)
        status, machines = await get(http_b, "/api/enrollments")
        assert status == 200, machines
        assert sorted((x["user"], x["via"]) for x in machines["items"]) == [
            ("eve", "offline"),
            ("user-l1", "online"),
        ]
        assert (await get(http_b, "/api/overview"))[1]["counts"]["enrollments"] == 2

        # A's page shows the cluster's history (every member's, from etcd; B's rows reach it
        # within B's next sweep) and its usage chart (tests/cluster/test_cluster_history.py).
        for _ in range(100):
            status, hist = await get(http, "/api/history?event=checkout")
            assert status == 200, hist
            if len(hist["items"]) >= 3:
                break
            await asyncio.sleep(0.1)
        got = sorted((x["user"], x["host"], x["member"]) for x in hist["items"])
        assert got == [("ann", "ann-pc", by_user["ann"]["member"]),
                       ("bob", "bob-pc", by_user["bob"]["member"]),
                       ("cat", "cat-pc", by_user["cat"]["member"])]  # fmt: skip
        assert ov["cluster"]["history"] is True
        status, chart = await get(http, "/api/usage")
        assert status == 200, chart

        # Removing bob's seat (granted by B) from A's page is refused, naming B.
        headers = {"X-CSRF-Token": csrf}
        async with http.delete(f"/api/holders/{by_user['bob']['lease']}", headers=headers) as r:
            assert r.status == 409
            body = await r.json()
        assert body["error"] == "held_by_other_member"
        assert by_user["bob"]["member"] in body["message"]
        assert counts(await read_site(etcd, prefix)) == (3, 1, 1)
        assert bob.seats

        # Removed where it was granted: on A for ann, on B for bob. Each client is told at once
        # and its seat's key is deleted; nothing else moves.
        async with http.delete(f"/api/holders/{by_user['ann']['lease']}", headers=headers) as r:
            assert r.status == 200, await r.text()
        async with http_b.delete(
            f"/api/holders/{by_user['bob']['lease']}", headers={"X-CSRF-Token": csrf_b}
        ) as r:
            assert r.status == 200, await r.text()
        for _ in range(50):
            if not ann.seats and not bob.seats and counts(await read_site(etcd, prefix))[0] == 1:
                break
            await asyncio.sleep(0.1)
        assert not ann.seats and not bob.seats and cat.seats
        assert counts(await read_site(etcd, prefix)) == (1, 1, 1)

        # The invariant: the freed seats are granted again, and never one more than the key.
        more = [user_client(site, f"new{i}", a if i % 2 else b) for i in range(SEATS - 2)]
        for cl in more:
            await cl.connect()
            clients.append(cl)
            for _ in range(50):  # until this member's mirror has seen the deletes
                try:
                    await cl.acquire("cad")
                    break
                except NoSeat:
                    await asyncio.sleep(0.1)
        assert all(cl.seats for cl in more)
        extra = user_client(site, "extra", a)
        clients.append(extra)
        await extra.connect()
        with pytest.raises(NoSeat):
            await extra.acquire("cad")
        assert counts(await read_site(etcd, prefix)) == (SEATS - 1, 1, 1)

        # `lanlic status` on B shows the same cluster: every holder, each member's.
        result = await asyncio.to_thread(
            run, ["status", "--server", f"127.0.0.1:{b.member.port}", "--json"]
        )
        ok(result)
        st = json.loads(result.stdout)
        cad = next(p for p in st["products"] if p["name"] == "cad")
        assert (cad["in_use"], cad["borrowed"], cad["free"]) == (SEATS - 1, 1, 0)
        users = sorted(h["user"] for h in cad["holders"])
        assert users == sorted(["cat", *(f"new{i}" for i in range(SEATS - 2))])
        assert cad["holders_total"] == SEATS - 1
        assert len({h["member"] for h in cad["holders"]}) == 2
        assert [x["borrow_id"] for x in st["borrows"]] == [lic.borrow_id]

        # Both removals are in the cluster's history, each with the member it was done on; an
        # admin password set in A's data folder (as on a single server) closes A's page to
        # anyone without it, within the page's re-read.
        for _ in range(100):  # each member puts its own admin actions in etcd at once
            status, hist = await get(http, "/api/history?event=admin_remove")
            if len(hist["items"]) >= 2:
                break
            await asyncio.sleep(0.1)
        removals = sorted((x["detail"].split()[4], x["user"], x["member"]) for x in hist["items"])
        assert removals == [("ann@ann-pc", "ann", by_user["ann"]["member"]),
                            ("bob@bob-pc", "ann", by_user["bob"]["member"])], hist  # fmt: skip
        folder = str(site.root / "a")
        done = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "admin", "password", "--data", folder, "--password-stdin", "--json"],
            input="correct horse battery\n", capture_output=True, text=True, env=base_env(),
            timeout=60, check=False,
        )  # fmt: skip
        ok(done)
        for _ in range(60):
            async with http.get("/api/overview") as r:
                if r.status == 401:
                    break
            await asyncio.sleep(0.1)
        assert r.status == 401  # the password logged every open session out
        async with http.post("/api/login", json={"name": "ann", "password": "wrong one"}) as r:
            assert r.status == 401
        async with http.post(
            "/api/login", json={"name": "ann", "password": "correct horse battery"}
        ) as r:
            assert r.status == 200, await r.text()
    finally:
        for s in sessions:
            await s.close()
        for cl in clients:
            await closed(cl)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip
ANSWERED = "Failed to load resource: the server responded with a status of 4"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="apt-get install chromium (.ci/run does)")
async def test_a_members_page_in_chromium_shows_the_other_members_holders(
    site: Site,  # noqa: F811 - the fixture imported above
    etcd_cluster: EtcdCluster,
) -> None:
    """A's page: bob's seat via B, its removal refused; the cluster's history, bob's checkout
    through B with B named; a usage chart.

    As tests/admin/test_browser.py does: Debian's Chromium through Playwright, any script or
    console error (a CSP violation shows as one) fails the test; refusals the test provokes are
    answers, not errors."""
    from playwright.async_api import async_playwright, expect

    endpoints = etcd_cluster.endpoints
    a = await start(site, site.data("a"), endpoints)
    b = await start(site, site.data("b", identity_of="a"), endpoints[1:] + endpoints[:1])
    ann, bob = user_client(site, "ann", a), user_client(site, "bob", b)
    problems: list[str] = []
    try:
        for cl in (ann, bob):
            await cl.connect()
            await cl.acquire("cad")
        bob_lease = next(iter(bob.seats)).hex()
        http_b, _ = await admin_session(b.url)
        async with http_b:
            bob_member = (await get(http_b, "/api/overview"))[1]["cluster"]["member"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                page.on(
                    "console",
                    lambda msg: (
                        problems.append(f"console: {msg.text}")
                        if msg.type == "error" and not msg.text.startswith(ANSWERED)
                        else None
                    ),
                )
                await page.goto(a.url + "/")
                await expect(page.locator("#app")).to_be_visible()
                await page.click("#tabs a[data-tab=holders]")
                row = page.locator(f"#holders-table tr[data-lease='{bob_lease}']")
                await expect(row).to_contain_text("bob-pc")
                await expect(row).to_contain_text("via ")  # B keeps bob's heartbeats
                await expect(page.locator("#holders-table tbody")).to_contain_text("ann-pc")
                await row.locator("button.remove").click()
                await page.click("#confirm-ok")
                await expect(page.locator("#flash")).to_contain_text("Not removed")
                await expect(page.locator("#flash")).to_contain_text("held through member")
                await page.click("#tabs a[data-tab=history]")  # the cluster's: B's rows too
                await expect(page.locator("#history-member")).to_be_visible()
                await expect(page.locator("#history-table tbody")).to_contain_text("ann-pc")
                bob_row = page.locator("#history-table tbody tr", has_text="bob-pc")
                for _ in range(50):  # B's batch reaches etcd within its next sweep
                    if await bob_row.count():
                        break
                    await page.click("#history-form button[type=submit]")
                    await asyncio.sleep(0.2)
                await expect(bob_row.first).to_contain_text(bob_member)
                await page.click("#tabs a[data-tab=dashboard]")
                await expect(page.locator("#chart")).not_to_contain_text("no usage chart")
                await expect(page.locator("#chart path.inuse")).to_be_attached()
                await page.click("#tabs a[data-tab=server]")
                await expect(page.locator("#server-facts")).to_contain_text("Cluster member")
            finally:
                await browser.close()
        assert bob.seats  # refused: bob still holds his seat
    finally:
        for cl in (ann, bob):
            await closed(cl)
    assert not problems, problems
