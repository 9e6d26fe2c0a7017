"""Shared fixtures: a vendor key, network keys made on the spot, and servers on 127.0.0.1:0."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_skips import skip_fails_in_ci
from cliproc import Procs, ok, run
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import DEFAULT_PRODUCTS, make_key
from hypothesis import Phase, settings

from lanlic.core import netkey
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import LicenseService, ServiceConfig
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.store import Store

# Hypothesis profiles, chosen with LANLIC_HYPOTHESIS_PROFILE. "mutation" (tools/mutate.py): the same
# examples on every run, no example database, no shrinking, so a mutant's verdict is reproducible
# and a kill costs one failing example. Settings a test states itself still win over the profile.
settings.register_profile(
    "mutation",
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    deadline=None,
    print_blob=False,
)
if os.environ.get("LANLIC_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["LANLIC_HYPOTHESIS_PROFILE"])


@pytest.fixture(autouse=True)
def own_config_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test pins server keys in a folder of its own, never in ~/.config/lanlic; set through
    XDG_CONFIG_HOME too, so that CLI subprocesses started with LANLIC_* removed use it as well."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder))
    monkeypatch.setenv("LANLIC_CONFIG", str(folder / "lanlic"))
    monkeypatch.delenv("LANLIC_SERVER", raising=False)


@pytest.fixture(autouse=True)
def own_servers_only(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test never finds or touches a server it did not start (a ``lanlic serve --demo`` on this
    host, another developer's tests), and nobody finds the test's servers: each test announces
    and browses an mDNS service type of its own (``LANLIC_MDNS_SERVICE``, which CLI processes
    keep, see ``cliproc.base_env``), and its default data folder, where a command with no
    ``--data`` looks for the local server's address, is a fresh one."""
    monkeypatch.setenv("LANLIC_MDNS_SERVICE", f"_lanlic-{secrets.token_hex(4)}._tcp")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
    monkeypatch.delenv("LANLIC_DATA", raising=False)


@pytest.fixture(autouse=True)
def no_thread_outlives_a_test() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    for t in left:
        t.join(5)
    left = [t for t in left if t.is_alive()]
    assert not left, f"threads outlived the test: {left}"


@pytest.fixture
def procs() -> Iterator[Procs]:
    """The ``lanlic`` processes a test starts, every one ended at its end (SIGTERM, then
    SIGKILL after 5 s)."""
    yield from Procs.running()


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vendor key pair made by ``lanlic vendor keygen``, once per test module: its folder."""
    out = tmp_path_factory.mktemp("vendor")
    ok(run(["vendor", "keygen", "--out", str(out), "--json"]))
    return out


@pytest.fixture(scope="session")
def vendor_key() -> Ed25519PrivateKey:
    return netkey.generate_vendor_key()


StartServer = Callable[..., Awaitable[LicenseServer]]


@pytest.fixture
async def start_server(vendor_key: Ed25519PrivateKey) -> AsyncIterator[StartServer]:
    """``await start_server(products=..., lease=..., heartbeat=..., limits=...)``; ``wall`` and
    ``uptime`` as ``LicenseServer`` takes them (pass one clock as both to make days pass)."""
    servers: list[LicenseServer] = []

    async def start(
        products: tuple[ProductEntitlement, ...] = DEFAULT_PRODUCTS,
        lease: float = 60.0,
        heartbeat: float = 20.0,
        limits: ServerLimits = ServerLimits(),
        service: LicenseService | None = None,
        port: int = 0,
        store: Store | None = None,
        server_key: Ed25519PrivateKey | None = None,
        wall: Callable[[], float] = time.time,
        uptime: Callable[[], float] | None = None,
        **kw: Any,
    ) -> LicenseServer:
        if service is None:
            service = LicenseService(
                make_key(vendor_key, products, **kw),
                server_key or Ed25519PrivateKey.generate(),
                ServiceConfig(lease_seconds=lease, heartbeat_seconds=heartbeat),
            )
        server = LicenseServer(
            service, "127.0.0.1", port, limits, store=store, wall=wall, uptime=uptime
        )
        await server.load_store()
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
        if server.store is not None:
            server.store.close()  # a store handed in is the test's: close it, as `serve` does


# ------------------------------------------------------------------ no skip that hides in CI
# (the rule and its allow-list are in tests/ci_skips.py)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    skip_fails_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A module that skips itself at import (``allow_module_level``) never reaches a test."""
    report = yield
    skip_fails_in_ci(report)
    return report
