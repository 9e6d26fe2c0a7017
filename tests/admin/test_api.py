"""The admin JSON API over real HTTP on 127.0.0.1: sessions, CSRF, the login throttle, the LAN
bind rule, paging, CSV, and each admin action with its history row."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, PRODUCTS, TODAY, MakeSite, key_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.admin import AdminError, keys
from lanlic.admin import app as admin_app
from lanlic.admin.app import AdminOptions, AdminServer
from lanlic.admin.security import LoginThrottle
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Granted, Holder
from lanlic.core.records import HistoryRow
from lanlic.errors import SeatLost
from lanlic.laptop.borrower import Borrower
from lanlic.net.client import Client

# ------------------------------------------------------------------------ the guard rails


def state_changing_routes(admin: AdminServer) -> list[tuple[str, str]]:
    """Every (method, path) of the app that changes something, with sample path values."""
    out = []
    for route in admin.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        if route.method in ("GET", "HEAD", "OPTIONS") or path == "/api/login":
            continue
        out.append((route.method, path.replace("{lease}", "00" * 16).replace("{product}", "cad")))
    return out


async def test_every_state_change_is_refused_without_a_session_or_csrf_token(
    make_site: MakeSite, vendor_key: Ed25519PrivateKey
) -> None:
    site = await make_site()
    routes = state_changing_routes(site.admin)
    assert {p for _, p in routes} >= {
        "/api/logout", f"/api/holders/{'00' * 16}", "/api/enrollments", "/api/policy/cad",
        "/api/key",
    }  # fmt: skip
    async with Client(site.server.address, user="zoe") as client:
        seat = await client.acquire("cad", "16")
        lease = seat.lease_id.hex()
        routes.append(("DELETE", f"/api/holders/{lease}"))  # a real one, that must survive
        anon = site.http()
        http, csrf = await site.login()
        bodies: dict[str, Any] = {"json": {"borrowable": 0, "max_borrow_days": 1}}
        for method, path in routes:
            async with anon.request(method, path, **bodies) as r:
                assert r.status == 401, (method, path, r.status)
                assert (await r.json())["error"] == "login_required"
            for headers in ({}, {"X-CSRF-Token": "not-the-token"}, {"X-CSRF-Token": ""}):
                async with http.request(method, path, headers=headers, **bodies) as r:
                    assert r.status == 403, (method, path, headers, r.status)
                    assert (await r.json())["error"] == "csrf"
            # The right token, but sent from another site's page: refused as well.
            bad_origin = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
            async with http.request(method, path, headers=bad_origin, **bodies) as r:
                assert r.status == 403 and (await r.json())["error"] == "bad_origin"
        # Nothing changed: the seat is held, the terms are the key's, no key was saved.
        assert not seat.lost and site.server.service.pool.lease(seat.lease_id) is not None
        assert site.server.service.desk.terms("cad").max_days == 14
        assert not (site.folder / keys.INSTALLED_KEY).exists()
        # Reads need the session too.
        for path in ("/api/overview", "/api/holders", "/api/history", "/api/history.csv",
                     "/api/usage", "/api/borrows", "/api/enrollments"):  # fmt: skip
            async with anon.get(path) as r:
                assert r.status == 401, path
        # With the token, the same request goes through.
        async with http.delete(f"/api/holders/{lease}", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200
        await asyncio.wait_for(seat.wait_lost(), 5)


async def test_session_cookie_is_httponly_and_samesite_strict(make_site: MakeSite) -> None:
    site = await make_site()
    async with site.http().post("/api/login", json={"password": PASSWORD}) as r:
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
        body = await r.json()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert body["authenticated"] and not body["open"] and len(body["csrf"]) >= 32


async def test_logout_ends_the_session(make_site: MakeSite) -> None:
    site = await make_site()
    http, csrf = await site.login()
    async with http.post("/api/logout", headers={"X-CSRF-Token": csrf}) as r:
        assert r.status == 200
    async with http.get("/api/overview") as r:
        assert r.status == 401


async def test_a_lan_bind_is_refused_without_a_password(make_site: MakeSite) -> None:
    site = await make_site(password=None)
    for host in ("0.0.0.0", "::", "192.0.2.10"):  # refused before any socket is opened
        admin = AdminServer(site.server, AdminOptions(host=host, port=0))
        with pytest.raises(AdminError) as info:
            await admin.start()
        assert "lanlic admin password" in info.value.message
    # With a password the rule lets it through to the bind itself (192.0.2.10 is TEST-NET-1,
    # on no interface here: the bind fails, and nothing listens beyond loopback).
    await site.server.store_call(lambda s: s.set_meta("admin_password", "scrypt$14$8$1$AA==$AA=="))
    admin = AdminServer(site.server, AdminOptions(host="192.0.2.10", port=0))
    with pytest.raises(AdminError) as info:
        await admin.start()
    assert "cannot serve the admin page on 192.0.2.10" in info.value.message


class SteppedThrottle(LoginThrottle):
    """The real throttle on a clock the test moves: the server's loop time plus ``skew``, so a
    wait passes when the test says so, and a loaded machine cannot make it pass early."""

    skew = 0.0

    def wait(self, address: str, now: float) -> float:
        return super().wait(address, now + self.skew)

    def failed(self, address: str, now: float) -> float:
        return super().failed(address, now + self.skew)


async def test_repeated_wrong_passwords_are_slowed_down(make_site: MakeSite) -> None:
    site = await make_site()
    throttle = site.admin.throttle = SteppedThrottle(free=2, base=30.0, cap=300.0)
    http = site.http()

    async def attempt(password: str) -> tuple[int, dict[str, Any], str | None]:
        async with http.post("/api/login", json={"name": "mallory", "password": password}) as r:
            return r.status, await r.json(), r.headers.get("Retry-After")

    def wait() -> float:
        return throttle.wait("127.0.0.1", site.server.loop.time())

    assert (await attempt("guess-1"))[0] == 401
    assert (await attempt("guess-2"))[0] == 401
    status, body, retry = await attempt("guess-3")  # the third wrong one imposes a wait
    assert status == 429 and body["error"] == "slow_down" and retry == "30"
    # During the wait even the right password is not looked at.
    status, body, _ = await attempt(PASSWORD)
    assert status == 429 and body["error"] == "slow_down"
    assert 0 < wait() <= 30
    throttle.skew += 30  # the wait has passed
    assert wait() == 0
    status, _, retry = await attempt("guess-4")  # the fourth wrong one doubles the wait
    assert status == 429 and retry == "60" and 30 < wait() <= 60
    throttle.skew += 60
    assert (await attempt(PASSWORD))[0] == 200  # after the wait, the right one works
    assert wait() == 0
    failed = await site.history(event="admin_login_failed")
    assert len(failed) == 4 and {r["user"] for r in failed} == {"mallory"}
    assert [r["user"] for r in await site.history(event="admin_login")] == ["mallory"]


def test_the_throttle_doubles_per_failure_and_forgets_on_success() -> None:
    t = LoginThrottle(free=2, base=1.0, cap=8.0)
    delays = [t.failed("10.0.0.9", 100.0) for _ in range(7)]
    assert delays == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert t.wait("10.0.0.9", 104.0) == 4.0 and t.wait("10.0.0.8", 104.0) == 0.0
    t.succeeded("10.0.0.9")
    assert t.wait("10.0.0.9", 100.0) == 0.0


async def test_open_mode_on_loopback_only_and_ends_when_a_password_is_set(
    make_site: MakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_app, "PASSWORD_REFRESH", 0.05)
    site = await make_site(password=None)
    http = site.http()
    async with http.get("/api/session") as r:
        assert (await r.json()) == {"authenticated": False, "user": None, "csrf": None,
                                    "open": True, "password_set": False}  # fmt: skip
    async with http.post("/api/login", json={"password": ""}) as r:
        assert r.status == 200 and (await r.json())["open"] is True
    async with http.get("/api/overview") as r:
        assert r.status == 200
    # A page elsewhere that points its own DNS name at 127.0.0.1 (DNS rebinding) is refused.
    async with http.get("/api/overview", headers={"Host": "attacker.example:80"}) as r:
        assert r.status == 403 and (await r.json())["error"] == "bad_host"
    # A password set on the server (lanlic admin password) ends the open sessions.
    from lanlic.admin.passwords import hash_password

    stored = hash_password(PASSWORD)
    await site.server.store_call(lambda s: s.set_meta("admin_password", stored))
    # The page reads the password again every 0.05 s here; a loaded machine may take longer
    # to get round to it, so wait for the session's end (bounded) rather than a fixed time.
    status = 200
    for _ in range(200):
        async with http.get("/api/overview") as r:
            status = r.status
        if status != 200:
            break
        await asyncio.sleep(0.05)
    assert status == 401
    async with http.post("/api/login", json={"password": ""}) as r:
        assert r.status == 401


# ------------------------------------------------------------------------------- reads


async def test_holders_are_paged_on_the_server_with_5000_of_them(make_site: MakeSite) -> None:
    site = await make_site(products=(ProductEntitlement("cad", seats=6000),))
    pool, loop = site.server.service.pool, site.server.loop
    for i in range(5000):
        holder = Holder(f"user{i:04d}", f"ws-{i:04d}", "MyCAD 16.2", "16")
        assert isinstance(
            pool.checkout("cad", "16", i.to_bytes(16, "big"), holder, loop.time()), Granted
        )
    http, _ = await site.login()
    for offset in (0, 2500, 4950):
        async with http.get(f"/api/holders?offset={offset}&limit=50") as r:
            body = await r.read()
        page = json.loads(body)
        assert page["total"] == 5000 and len(page["items"]) == 50
        assert page["items"][0]["user"] == f"user{offset:04d}"
        assert len(page["items"][0]["lease"]) == 32
        # Paged on the server: the reply carries one page (~15 KB), not all 5,000 holders
        # (~1.3 MB) for the browser to page. (How fast a page comes is the benchmark's.)
        assert len(body) < 32 * 1024, len(body)
    async with http.get("/api/holders?q=user4999") as r:
        page = await r.json()
    assert page["total"] == 1 and page["items"][0]["host"] == "ws-4999"
    async with http.get("/api/holders?limit=100000") as r:
        assert len((await r.json())["items"]) == 1000  # capped
    async with http.get("/api/overview") as r:
        ov = await r.json()
    assert ov["counts"]["holders"] == 5000 and ov["products"][0]["free"] == 1000
    async with http.get("/api/holders?offset=abc") as r:
        assert r.status == 400


async def test_history_filters_and_csv_export(make_site: MakeSite) -> None:
    site = await make_site()
    now = time.time()
    rows = [
        HistoryRow(now - 7200, "checkout", "cad", "ann", "ws-1", "16"),
        HistoryRow(now - 3600, "release", "cad", "ann", "ws-1", "release"),
        HistoryRow(now - 1800, "checkout", "render", '=HYPERLINK("x")', "ws-2", ""),
        HistoryRow(now - 60, "refusal", "cad", "bob", "ws-3", "no_seat"),
    ]
    await site.server.store_call(lambda s: s.append_history(rows))
    http, _ = await site.login()
    async with http.get("/api/history?product=cad") as r:
        page = await r.json()
    assert page["total"] == 3 and [x["event"] for x in page["items"]] == [
        "refusal",
        "release",
        "checkout",
    ]
    async with http.get(f"/api/history?event=checkout&since={now - 3000:.0f}") as r:
        page = await r.json()
    assert [x["product"] for x in page["items"]] == ["render"]
    async with http.get(f"/api/history?since={TODAY.isoformat()}&limit=2&offset=1") as r:
        page = await r.json()
    assert page["offset"] == 1 and len(page["items"]) <= 2
    async with http.get("/api/history?since=yesterday") as r:
        assert r.status == 400 and "since" in (await r.json())["message"]

    async with http.get("/api/history.csv?product=cad") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/csv")
        assert r.headers["Content-Disposition"].startswith('attachment; filename="lanlic-history-')
        text = await r.text()
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == [
        "time_utc",
        "unix_time",
        "event",
        "product",
        "user",
        "host",
        "detail",
        "count",
    ]
    assert [row[2] for row in table[1:]] == ["checkout", "release", "refusal"]  # oldest first
    async with http.get("/api/history.csv?product=render") as r:
        table = list(csv.reader(io.StringIO(await r.text())))
    assert table[1][4] == '\'=HYPERLINK("x")'  # never a formula in a spreadsheet


async def test_usage_chart_comes_from_the_history(make_site: MakeSite) -> None:
    site = await make_site()
    async with Client(site.server.address, user="ann") as c:
        a = await c.acquire("cad", "16")
        await c.acquire("cad", "16")
        await c.release(a)
        http, _ = await site.login()
        async with http.get("/api/usage?range=day") as r:
            usage = await r.json()
    cad = next(p for p in usage["products"] if p["name"] == "cad")
    assert cad["seats"] == 8 and len(cad["points"]) == 288
    assert cad["points"][-1][1:] == [2.0, 0.0]  # the fullest moment of the last 5 minutes
    assert all(p[1:] == [0.0, 0.0] for p in cad["points"][:-2])
    async with http.get("/api/usage?range=year") as r:
        assert r.status == 400


def test_usage_series_walks_back_from_now() -> None:
    from lanlic.admin.views import usage_series

    events = [
        (10.0, "cad", "checkout", 1), (12.0, "cad", "checkout", 1), (15.0, "cad", "borrow", 1),
        (25.0, "cad", "release", 1), (31.0, "cad", "release", 1), (32.0, "other", "checkout", 1),
    ]  # fmt: skip
    series = usage_series(events, {"cad": (0, 1)}, {"cad": 3}, 0.0, 40.0, 10.0)
    assert series == {
        "cad": [[0.0, 0.0, 0.0], [10.0, 2.0, 1.0], [20.0, 2.0, 1.0], [30.0, 1.0, 1.0]]
    }
    # Before a restart the walk would run below zero: it is held at zero.
    series = usage_series(
        [(5.0, "cad", "checkout", 1)], {"cad": (0, 0)}, {"cad": 3}, 0.0, 10.0, 10.0
    )
    assert series == {"cad": [[0.0, 0.0, 0.0]]}


async def test_openapi_documents_every_api_route(make_site: MakeSite) -> None:
    site = await make_site()
    async with site.http().get("/api/openapi.json") as r:
        doc = await r.json()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for route in site.admin.app.router.routes():
        path = route.resource.get_info().get("path") or route.resource.get_info()["formatter"]
        if path.startswith("/api/") and route.method != "HEAD":
            served.add((route.method, path))
    assert documented == served
    packaged = json.loads((Path(admin_app.__file__).parent / "openapi.json").read_text())
    assert packaged == doc


# ------------------------------------------------------------------------------ actions


async def test_remove_ends_the_lease_tells_the_client_and_is_in_the_history(
    make_site: MakeSite,
) -> None:
    site = await make_site()
    lost: list[Exception] = []
    async with Client(site.server.address, user="carl", host="ws-carl", app="MyCAD 16.2",
                      on_seat_lost=lambda seat, reason: lost.append(reason)) as c:  # fmt: skip
        seat = await c.acquire("cad", "16")
        http, csrf = await site.login(name="Dana (CAD manager)")
        async with http.get("/api/holders") as r:
            (holder,) = (await r.json())["items"]
        assert (holder["user"], holder["host"], holder["app"], holder["version"]) == (
            "carl", "ws-carl", "MyCAD 16.2", "16")  # fmt: skip
        assert holder["lease"] == seat.lease_id.hex()
        async with http.delete(
            f"/api/holders/{holder['lease']}", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200 and (await r.json())["user"] == "carl"
        reason = await asyncio.wait_for(seat.wait_lost(), 5)
        assert isinstance(reason, SeatLost) and "administrator" in reason.message
        assert lost and c.seats == {}
        async with http.delete(
            f"/api/holders/{holder['lease']}", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 404 and (await r.json())["error"] == "lease_unknown"
    (row,) = await site.history(event="admin_remove")
    assert row["user"] == "Dana (CAD manager)" and row["host"] == "127.0.0.1"
    assert row["product"] == "cad" and "carl@ws-carl" in row["detail"]


async def test_policy_lowers_terms_never_above_the_key(make_site: MakeSite) -> None:
    site = await make_site()
    http, csrf = await site.login()
    h = {"X-CSRF-Token": csrf}
    async with http.put(
        "/api/policy/cad", json={"borrowable": 1, "max_borrow_days": 3}, headers=h
    ) as r:
        assert r.status == 200
        assert (await r.json())["max_borrow_days"] == 3
    terms = site.server.service.desk.terms("cad")
    assert (terms.borrowable, terms.max_days) == (1, 3)
    assert site.server.store is not None
    assert await site.server.store_call(lambda s: s.policy()) == {"cad": (1, 3)}
    async with http.put("/api/policy/cad", json={"max_borrow_days": 15}, headers=h) as r:
        assert r.status == 400 and (await r.json())["error"] == "above_key"
    async with http.put("/api/policy/cad", json={"borrowable": "2"}, headers=h) as r:
        assert r.status == 400
    async with http.put("/api/policy/nope", json={}, headers=h) as r:
        assert r.status == 404
    async with http.put(
        "/api/policy/cad", json={"borrowable": None, "max_borrow_days": None}, headers=h
    ) as r:
        assert r.status == 200 and (await r.json())["max_borrow_days"] == 14  # back to the key's
    await asyncio.sleep(0.3)  # the server's own reload of the policy agrees
    assert site.server.service.desk.terms("cad").max_days == 14
    rows = await site.history(event="admin_policy")
    assert len(rows) == 2 and rows[-1]["detail"] == "borrowable 1, max days 3"


async def test_installing_a_key_verifies_first_and_applies_at_restart(
    make_site: MakeSite, vendor_key: Ed25519PrivateKey
) -> None:
    site = await make_site()
    http, csrf = await site.login()
    h = {"X-CSRF-Token": csrf}
    good = key_file(vendor_key, (*PRODUCTS, ProductEntitlement("cam", seats=1, addon=True)))
    tampered = good.replace(b'\\"seats\\": 8', b'\\"seats\\": 80')
    assert tampered != good
    other_vendor = key_file(Ed25519PrivateKey.generate())
    other_customer = key_file(vendor_key, customer="Someone Else")
    for data, code in (
        (b"hello", "key_malformed"),
        (tampered, "key_bad_signature"),
        (other_vendor, "key_wrong_vendor"),
        (other_customer, "key_refused"),
    ):
        async with http.post("/api/key", data=data, headers=h) as r:
            body = await r.json()
            assert (r.status, body["error"]) == (400, code), body
    assert not (site.folder / keys.INSTALLED_KEY).exists()
    assert len(await site.history(event="admin_key_refused")) == 4

    async with http.post("/api/key", data=good, headers=h) as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["applies"] == "restart" and "restart" in body["message"]
    assert (site.folder / keys.INSTALLED_KEY).read_bytes() == good
    assert site.server.service.key.product("cam") is None  # the running key is untouched
    async with http.get("/api/overview") as r:
        assert (await r.json())["pending_key"]["products"][-1]["name"] == "cam"
    assert len(await site.history(event="admin_key")) == 1
    # At restart, lanlic serve takes the installed key over the older --license one.
    old = key_file(vendor_key)
    choice = keys.choose_network_key(old, good, vendor_key.public_key(), TODAY)
    assert choice.installed and choice.key.product("cam") is not None


def test_the_key_choice_at_start(vendor_key: Ed25519PrivateKey) -> None:
    import datetime as dt

    pub = vendor_key.public_key()
    given = key_file(vendor_key, issued=TODAY - dt.timedelta(days=1))
    newer = key_file(vendor_key)
    assert not keys.choose_network_key(given, None, pub, TODAY).installed
    assert keys.choose_network_key(given, newer, pub, TODAY).installed
    back = keys.choose_network_key(newer, given, pub, TODAY)
    assert not back.installed and back.note and "newer" in back.note
    other = keys.choose_network_key(given, key_file(vendor_key, customer="X"), pub, TODAY)
    assert not other.installed and other.note and "'X'" in other.note
    broken = keys.choose_network_key(given, b"junk", pub, TODAY)
    assert not broken.installed and broken.note and "unusable" in broken.note
    rescued = keys.choose_network_key(b"junk", newer, pub, TODAY)
    assert rescued.installed


async def test_offline_enrollment_by_upload(make_site: MakeSite, tmp_path: Path) -> None:
    site = await make_site()
    laptop = Borrower(tmp_path / "home-eve", machine_fp="mfp:eve")
    request = laptop.enrollment_request("eve", "lt-eve")
    http, csrf = await site.login(name="dana")
    async with http.post(
        "/api/enrollments", data=b"not a request", headers={"X-CSRF-Token": csrf}
    ) as r:
        assert r.status == 400 and (await r.json())["error"] == "file_tampered"
    async with http.post("/api/enrollments", data=request, headers={"X-CSRF-Token": csrf}) as r:
        body = await r.json()
        assert r.status == 200, body
    assert (body["user"], body["host"], body["filename"]) == (
        "eve",
        "lt-eve",
        "lt-eve-enrollment-response.json",
    )
    response = laptop.complete_enrollment(body["response"].encode())
    assert response.server_id == site.server.service.server_id
    async with http.get("/api/enrollments") as r:
        (row,) = (await r.json())["items"]
    assert (row["user"], row["via"], row["kind"]) == ("eve", "offline", "act")
    assert site.server.store is not None
    stored = await site.server.store_call(lambda s: s.enrollments())
    assert [e.user for e in stored] == ["eve"]  # on disk, like lanlic admin enroll
    (row,) = await site.history(event="admin_enroll")
    assert row["user"] == "dana" and "eve@lt-eve" in row["detail"]
    # The laptop can borrow now.
    async with Client(site.server.address) as c:
        lic = await laptop.borrow(c, "cad", days=2, version="16")
    async with http.get("/api/borrows") as r:
        (b,) = (await r.json())["items"]
    assert (b["borrow_id"], b["user"], b["host"]) == (lic.borrow_id, "eve", "lt-eve")
    assert 2 * 86400 - 60 < b["time_left"] <= 2 * 86400
