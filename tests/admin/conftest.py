"""An admin site for tests: a licence server with a real store on 127.0.0.1:0, its admin page on
127.0.0.1:0, and an HTTP client that keeps the session cookie."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.admin.app import AdminOptions, AdminServer
from lanlic.admin.connections import AdminLimits
from lanlic.admin.passwords import META_KEY, hash_password
from lanlic.core import netkey
from lanlic.core.netkey import ProductEntitlement
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.store import Store

PASSWORD = "correct horse battery"
PRODUCTS = (
    ProductEntitlement("cad", seats=8, borrowable=3, max_borrow_days=14, versions=("10", "16")),
    ProductEntitlement("render", seats=2, addon=True),
)
TODAY = dt.datetime.now(dt.UTC).date()


def key_file(
    vendor: Ed25519PrivateKey,
    products: tuple[ProductEntitlement, ...] = PRODUCTS,
    customer: str = "ACME Engineering",
    issued: dt.date = TODAY,
) -> bytes:
    return netkey.issue_network_key(
        vendor,
        customer=customer,
        expires=TODAY + dt.timedelta(days=365),
        borrow_kind="act",
        products=products,
        issued=issued,
    )


class Site:
    """One licence server and its admin page."""

    def __init__(self, server: LicenseServer, admin: AdminServer, folder: Path) -> None:
        self.server = server
        self.admin = admin
        self.folder = folder
        self.url = admin.url.rstrip("/")
        self.sessions: list[aiohttp.ClientSession] = []

    def http(self) -> aiohttp.ClientSession:
        """A client with its own cookie jar (``unsafe``: cookies for an IP address)."""
        session = aiohttp.ClientSession(self.url, cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.sessions.append(session)
        return session

    async def login(
        self, name: str = "ann", password: str = PASSWORD
    ) -> tuple[aiohttp.ClientSession, str]:
        """A logged-in client and its CSRF token."""
        http = self.http()
        async with http.post("/api/login", json={"name": name, "password": password}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        return http, body["csrf"]

    async def history(self, **query: str) -> list[dict[str, Any]]:
        await self.server.flush_history()
        assert self.server.store is not None
        rows = await self.server.store_call(lambda s: s.history_page(limit=1000, **query)[1])
        return [
            {
                "event": r.event,
                "product": r.product,
                "user": r.user,
                "host": r.host,
                "detail": r.detail,
            }
            for r in rows
        ]


MakeSite = Callable[..., Awaitable[Site]]


@pytest.fixture
async def make_site(
    start_server: Any, vendor_key: Ed25519PrivateKey, tmp_path: Path
) -> AsyncIterator[MakeSite]:
    """``await make_site(password=PASSWORD, products=..., lease=...)``."""
    sites: list[Site] = []

    async def make(
        password: str | None = PASSWORD,
        products: tuple[ProductEntitlement, ...] = PRODUCTS,
        lease: float = 60.0,
        heartbeat: float = 20.0,
        host: str = "127.0.0.1",
        admin_limits: AdminLimits | None = None,
    ) -> Site:
        folder = tmp_path / f"data{len(sites)}"
        folder.mkdir()
        store = Store(folder / "lanlic.db")
        if password is not None:
            store.set_meta(META_KEY, hash_password(password))
        server = await start_server(
            products=products,
            lease=lease,
            heartbeat=heartbeat,
            store=store,
            limits=ServerLimits(housekeeping_interval=0.1),
        )
        admin = AdminServer(
            server,
            AdminOptions(
                host=host, port=0, vendor_public=vendor_key.public_key(), data_dir=folder,
                **({} if admin_limits is None else {"limits": admin_limits}),
            ),
        )  # fmt: skip
        await admin.start()
        site = Site(server, admin, folder)
        sites.append(site)
        return site

    yield make
    for site in sites:
        for http in site.sessions:
            await http.close()
        await site.admin.stop()
        await site.server.stop()
        assert site.server.store is not None
        site.server.store.close()
