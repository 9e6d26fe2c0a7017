"""The admin page in a real browser: Debian's headless Chromium driven by Playwright, against a
licence server on 127.0.0.1 that library clients use at the same time.

Skipped only when /usr/bin/chromium is missing (.ci/run installs it). Playwright never downloads
a browser here: it is pointed at the system one. Any JavaScript error or console error on the
page (a Content-Security-Policy violation shows as one) fails the test.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import PASSWORD, PRODUCTS, MakeSite, Site, key_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Granted, Holder
from lanlic.core.records import HistoryRow
from lanlic.errors import NoSeat
from lanlic.laptop.borrower import Borrower
from lanlic.net.client import Client

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The screenshot is a test artifact (build/ is not tracked); with LANLIC_UPDATE_DOCS=1 the test
# also refreshes the copy the README shows.
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "build" / "test-artifacts" / "admin-dashboard.png"
DOCS_SCREENSHOT = ROOT / "docs" / "admin-dashboard.png"
WAIT_MS = 8000
DASH = "\u2013"  # the page writes ranges as 1-50 with an en dash
ANSWERED = "Failed to load resource: the server responded with a status of 4"

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", allow_module_level=True
    )

from playwright.async_api import Page, async_playwright, expect  # noqa: E402


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 900}, accept_downloads=True
            )
            tab = await context.new_page()
            tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            # Refusals the tests provoke (400, 401) are logged by the browser as failed loads:
            # those are answers, not problems. Script errors and CSP violations are.
            tab.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}")
                    if msg.type == "error" and not msg.text.startswith(ANSWERED)
                    else None
                ),
            )
            yield tab
            await context.close()
        finally:
            await browser.close()
    assert not problems, problems


async def log_in(page: Page, site: Site, name: str = "Dana") -> None:
    await page.goto(site.admin.url)
    await expect(page.locator("#login-view")).to_be_visible()
    await page.fill("#login-name", name)
    await page.fill("#login-password", "not it")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text("wrong password")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(page.locator("#user")).to_have_text(f"logged in as {name}")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#login-view")).to_be_hidden()


def card(page: Page, product: str, what: str) -> object:
    return page.locator(f"#product-{product} .{what}")


async def seed_a_day_of_history(site: Site) -> None:
    """Checkouts and releases over the last day, in pairs, so the chart has a day to draw."""
    rng = random.Random(6)
    now = time.time()
    rows = []
    for hour in range(24):
        busy = 3 if 8 <= (hour + 10) % 24 <= 17 else 0
        for _ in range(rng.randint(0, busy)):
            start = now - 86400 + hour * 3600 + rng.uniform(0, 3000)
            end = min(now - 120, start + rng.uniform(600, 3 * 3600))
            if end <= start:
                continue
            user = rng.choice(["ann", "bob", "carl", "dana", "eve", "femi", "gus"])
            rows.append(HistoryRow(start, "checkout", "cad", user, f"ws-{user}", "16"))
            rows.append(HistoryRow(end, "release", "cad", user, f"ws-{user}", "release"))
    rows.sort(key=lambda r: r.at)
    await site.server.store_call(lambda s: s.append_history(rows))


async def test_log_in_and_watch_live_counts_as_clients_check_out_borrow_and_release(
    make_site: MakeSite, page: Page, tmp_path: Path
) -> None:
    site = await make_site()
    await seed_a_day_of_history(site)
    await log_in(page, site)
    await expect(card(page, "cad", "in-use")).to_have_text("0")
    await expect(card(page, "cad", "free")).to_have_text("8")

    clients = [
        Client(site.server.address, user=u, host=f"ws-{u}", app="MyCAD 16.2")
        for u in ("ann", "carl", "femi", "gus")
    ]
    for c in clients:
        await c.connect()
    try:
        ann_seat = await clients[0].acquire("cad", "16")
        await expect(card(page, "cad", "in-use")).to_have_text("1", timeout=WAIT_MS)
        await expect(card(page, "cad", "free")).to_have_text("7")

        bob = Borrower(tmp_path / "home-bob", machine_fp="mfp:bob")
        await bob.enroll(clients[0], "bob", "lt-bob")
        await bob.borrow(clients[0], "cad", days=3, version="16")
        await expect(card(page, "cad", "borrowed")).to_have_text("1", timeout=WAIT_MS)
        await expect(card(page, "cad", "free")).to_have_text("6")

        await clients[1].acquire("cad", "16")
        await clients[2].acquire("cad", "15")
        await clients[3].acquire("render")
        await expect(card(page, "cad", "in-use")).to_have_text("3", timeout=WAIT_MS)
        await expect(card(page, "render", "in-use")).to_have_text("1")
        await page.click("#chart-range button[data-range=day]")
        await expect(page.locator("#chart path.inuse")).to_have_count(1)
        await expect(page.locator("#chart")).to_have_attribute(
            "aria-label", re.compile(r"^cad: peak [4-8] of 8 seats over the last day$")
        )
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        if os.environ.get("LANLIC_UPDATE_DOCS") == "1":
            DOCS_SCREENSHOT.write_bytes(SCREENSHOT.read_bytes())

        await page.click("#tabs a[data-tab=borrows]")
        row = page.locator("#borrows-table tbody tr").first
        await expect(row).to_contain_text("lt-bob")
        await expect(row.locator("td.left")).to_have_text("2 d 23 h")

        await clients[0].release(ann_seat)
        await page.click("#tabs a[data-tab=dashboard]")
        await expect(card(page, "cad", "in-use")).to_have_text("2", timeout=WAIT_MS)
        assert await bob.return_(clients[0], "cad")
        await expect(card(page, "cad", "borrowed")).to_have_text("0", timeout=WAIT_MS)
        await expect(card(page, "cad", "free")).to_have_text("6")
    finally:
        for c in clients:
            await c.close()
    await expect(card(page, "cad", "in-use")).to_have_text("0", timeout=WAIT_MS)


async def test_remove_a_holder_and_the_client_is_told(make_site: MakeSite, page: Page) -> None:
    site = await make_site()
    async with Client(site.server.address, user="carl", host="ws-carl", app="MyCAD 16.2") as c:
        seat = await c.acquire("cad", "16")
        await log_in(page, site)
        await page.click("#tabs a[data-tab=holders]")
        row = page.locator(f"#holders-table tr[data-lease='{seat.lease_id.hex()}']")
        await expect(row).to_contain_text("ws-carl")
        await expect(row).to_contain_text("MyCAD 16.2")

        await row.locator("button.remove").click()  # asked first; cancelled: nothing happens
        await expect(page.locator("#confirm")).to_be_visible()
        await expect(page.locator("#confirm-text")).to_contain_text("carl on ws-carl")
        await page.click("#confirm-cancel")
        await asyncio.sleep(0.3)
        assert not seat.lost

        await row.locator("button.remove").click()
        await page.click("#confirm-ok")
        reason = await asyncio.wait_for(seat.wait_lost(), 5)
        assert reason.code == "seat_lost" and "administrator" in reason.message
        await expect(page.locator("#flash")).to_contain_text("Removed the cad seat of carl@ws-carl")
        await expect(page.locator("#holders-table tbody")).to_contain_text("No seat is in use.")
    (row_h,) = await site.history(event="admin_remove")
    assert row_h["user"] == "Dana"


async def test_settings_history_and_csv(
    make_site: MakeSite, page: Page, vendor_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    site = await make_site()
    await log_in(page, site)
    await page.click("#tabs a[data-tab=settings]")

    # Lower the longest borrow of cad from the key's 14 days to 3.
    cad = page.locator("#policy-table tr[data-product=cad]")
    await cad.locator("input[name=max_borrow_days]").fill("3")
    await cad.locator("button.save").click()
    await expect(page.locator("#flash")).to_contain_text("for up to 3 days")
    assert site.server.service.desk.terms("cad").max_days == 3
    await cad.locator("input[name=max_borrow_days]").fill("30")  # above the key: refused
    await cad.locator("button.save").click()
    await expect(page.locator("#flash")).to_contain_text("Not saved")
    assert site.server.service.desk.terms("cad").max_days == 3

    # A bad key is refused with the reason; a good one is saved for the next restart.
    tampered = key_file(vendor_key).replace(b'\\"seats\\": 8', b'\\"seats\\": 9')
    await page.set_input_files(
        "#key-file", {"name": "acme.lic", "mimeType": "application/json", "buffer": tampered}
    )
    await page.click("#key-form button[type=submit]")
    await expect(page.locator("#key-result")).to_contain_text("Refused (key_bad_signature)")
    await expect(page.locator("#key-result")).to_have_class("result bad")
    renewed = key_file(
        vendor_key, (*PRODUCTS[:1], ProductEntitlement("render", seats=4, addon=True))
    )
    await page.set_input_files(
        "#key-file", {"name": "acme-2027.lic", "mimeType": "application/json", "buffer": renewed}
    )
    await page.click("#key-form button[type=submit]")
    await expect(page.locator("#key-result")).to_contain_text("restarted")
    await expect(page.locator("#pending-banner")).to_be_visible(timeout=WAIT_MS)

    # An offline enrollment request in, its response file out.
    eve = Borrower(tmp_path / "home-eve", machine_fp="mfp:eve")
    request = eve.enrollment_request("eve", "lt-eve")
    await page.set_input_files(
        "#enroll-file", {"name": "eve.req", "mimeType": "application/json", "buffer": request}
    )
    async with page.expect_download() as info:
        await page.click("#enroll-form button[type=submit]")
    download = await info.value
    assert download.suggested_filename == "lt-eve-enrollment-response.json"
    response = await asyncio.to_thread(Path(await download.path()).read_bytes)
    assert eve.complete_enrollment(response).server_id == site.server.service.server_id
    await page.click("#tabs a[data-tab=machines]")
    await expect(page.locator("#machines-table tbody")).to_contain_text("lt-eve")

    # The history shows all of it, filterable; the CSV export carries the same rows.
    await page.click("#tabs a[data-tab=history]")
    await page.select_option("#history-event", "admin_policy")
    await page.click("#history-form button[type=submit]")
    await expect(page.locator("#history-table tbody tr")).to_have_count(1)
    await expect(page.locator("#history-table tbody")).to_contain_text("max days 3")
    async with page.expect_download() as info:
        await page.click("#history-csv")
    download = await info.value
    assert download.suggested_filename.startswith("lanlic-history-")
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    lines = text.strip().splitlines()
    assert lines[0].startswith("time_utc,") and len(lines) == 2
    assert ",admin_policy,cad,Dana,127.0.0.1," in lines[1]


async def test_the_page_stays_responsive_with_5000_holders(make_site: MakeSite, page: Page) -> None:
    site = await make_site(products=(ProductEntitlement("cad", seats=6000),))
    pool, loop = site.server.service.pool, site.server.loop
    for i in range(5000):
        holder = Holder(f"user{i:04d}", f"ws-{i:04d}", "MyCAD 16.2", "16")
        assert isinstance(
            pool.checkout("cad", "16", i.to_bytes(16, "big"), holder, loop.time()), Granted
        )
    await log_in(page, site)
    await expect(card(page, "cad", "in-use")).to_have_text("5000")
    await page.click("#tabs a[data-tab=holders]")
    await expect(page.locator("#holders-range")).to_have_text(f"1{DASH}50 of 5000")
    assert await page.locator("#holders-table tbody tr").count() == 50
    # The next page is one small request for 50 rows, not the 5,000 paged in the browser
    # (how fast it comes is the benchmark's business; a loaded machine may take its time).
    async with page.expect_response(lambda r: "/api/holders" in r.url) as response:
        await page.click("#holders-next")
    reply = await response.value
    assert "offset=50" in reply.url and len(await reply.body()) < 32 * 1024
    await expect(page.locator("#holders-range")).to_have_text(f"51{DASH}100 of 5000")
    assert await page.locator("#holders-table tbody tr").count() == 50
    await page.fill("#holders-q", "user4999")
    await expect(page.locator("#holders-range")).to_have_text(f"1{DASH}1 of 1")
    await expect(page.locator("#holders-table tbody")).to_contain_text("ws-4999")


async def test_settings_edit_the_seat_policy_and_remove_a_waiter(
    make_site: MakeSite, page: Page
) -> None:
    site = await make_site(products=(ProductEntitlement("cad", seats=1),))
    async with (
        Client(site.server.address, user="ann", host="ws-ann") as a,
        Client(site.server.address, user="ben", host="ws-ben") as b,
    ):
        await a.acquire("cad")
        waiting = asyncio.ensure_future(b.acquire("cad", wait=True))
        await log_in(page, site)
        await page.click("#tabs a[data-tab=settings]")
        row = page.locator("#queue-table tbody tr").first
        await expect(row).to_contain_text("ws-ben")
        await row.locator("button.remove").click()
        await page.click("#confirm-ok")
        with pytest.raises(NoSeat, match="administrator"):
            await asyncio.wait_for(waiting, 5)
        await expect(page.locator("#queue-table tbody")).to_contain_text("Nobody is waiting.")

        box = page.locator("#seat-policy-text")
        await box.fill("[products.cad]\n\nmax = [{ seats = 1 }]\n")
        await page.click("#seat-policy-save")
        await expect(page.locator("#seat-policy-result")).to_contain_text("line 3:")
        assert site.server.service.gate.policy.products == {}
        await box.fill('[products.cad]\nexclude = [{ user = "ben" }]\n')
        await page.click("#seat-policy-save")
        await expect(page.locator("#seat-policy-result")).to_contain_text("+ cad: exclude user ben")
        assert "cad" in site.server.service.gate.rules

        # Both are in the history, each found with the event filter.
        await site.server.flush_history()
        await page.click("#tabs a[data-tab=history]")
        for event, text in (("admin_unqueue", "ws-ben"), ("policy", "exclude user ben"),
                            ("queue_join", "position 1")):  # fmt: skip
            await page.select_option("#history-event", event)
            await page.click("#history-form button[type=submit]")
            await expect(page.locator("#history-table tbody tr")).to_have_count(1)
            await expect(page.locator("#history-table tbody")).to_contain_text(text)
