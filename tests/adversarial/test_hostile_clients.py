"""Hostile clients against the licence server (issue 12, points 4, 5, 8, 10): a flood of
refusals, a history too long to load, replies nobody reads, and a data folder others can read."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from adversarial_helpers import PeerFactory, ServeProcess, connect, log_file
from helpers import RawPeer

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.records import HistoryRow
from lanlic.net import server as server_module
from lanlic.net.server import ServerLimits
from lanlic.proto.framing import encode_frame
from lanlic.store import Store

ONE_SEAT = (ProductEntitlement("cad", seats=1),)


async def pipeline(peer: RawPeer, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every frame at once, then read every reply."""
    peer.writer.write(b"".join(encode_frame(f) for f in frames))
    await peer.writer.drain()
    return [await peer.recv(10) for _ in frames]


# ------------------------------------------------------------------------ 4: history flood


async def test_a_client_flooding_refusals_cannot_flood_the_history(
    start_server: Any, raw_peer: PeerFactory, tmp_path: Path
) -> None:
    store = Store(tmp_path / "lanlic.db")
    server = await start_server(products=ONE_SEAT, store=store)
    try:
        holder = await raw_peer(server.address)
        assert (await holder.request("checkout", product="cad"))["t"] == "granted"
        flood = await raw_peer(server.address)
        frames: list[dict[str, Any]] = []
        for i in range(6000):  # half for the seat nobody can have, half for made-up products
            product = "cad" if i % 2 else f"{i:05d}-" + "x" * 200
            frames.append({"t": "checkout", "id": 1000 + i, "product": product})
        replies = await pipeline(flood, frames)
        assert {r["code"] for r in replies} == {"no_seat", "unknown_product"}
        await server.stop()  # writes what it counted
        rows = [r for r in store.history(limit=-1) if r.event == "refusal"]
    finally:
        store.close()
    # Who was refused what, and how often, is all there, in a few dozen rows, not 6,000.
    assert len(rows) <= 40, len(rows)
    assert sum(r.count for r in rows) == 6000
    cad = [r for r in rows if r.product == "cad"]  # the first at once, the rest counted
    assert [(r.detail, r.count, r.user) for r in cad] == [
        ("no_seat", 1, "tester"),
        ("no_seat", 2999, "tester"),
    ]
    assert all(len(r.product) <= 64 for r in rows)


async def test_history_past_its_retention_is_pruned_in_the_background(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "PRUNE_INTERVAL", 0.2, raising=False)
    store = Store(tmp_path / "lanlic.db")
    now = time.time()
    old = [HistoryRow(now - 500 * 86400 + i, "checkout", "cad", "ann", "ws") for i in range(50)]
    new = [HistoryRow(now - 3600 + i, "checkout", "cad", "bob", "ws") for i in range(3000)]
    store.append_history(old + new)
    store.set_meta("history_max_rows", "2500")  # and the default 400 days
    server = await start_server(store=store)
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            left = store.summary()["history"]
            if left <= 2500:
                break
        rows = store.history(limit=-1)
    finally:
        await server.stop()
        store.close()
    assert len(rows) == 2500
    assert {r.user for r in rows} == {"bob"}  # the oldest went first
    assert rows[-1].at == new[-1].at


async def test_an_export_never_holds_up_a_checkout_that_must_reach_the_disk(
    start_server: Any, raw_peer: PeerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a history read is stuck (a long export), a checkout that must raise the durable
    reservation first is still answered: reads never run on the store's writer."""
    store = Store(tmp_path / "lanlic.db")
    store.append_history([HistoryRow(time.time(), "checkout", "cad", "ann", "ws")])
    server = await start_server(store=store)
    stuck, release = threading.Event(), threading.Event()

    def blocking(fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            stuck.set()
            release.wait(20)
            return fn(*a, **kw)

        return wrapper

    # Whichever way the reads go, make them hang.
    monkeypatch.setattr(Store, "history_page", blocking(Store.history_page))
    try:
        from lanlic.store import history
    except ImportError:  # before issue 12: every read went through Store.history_page
        pass
    else:
        monkeypatch.setattr(history, "page_after", blocking(history.page_after))
        monkeypatch.setattr(history, "page", blocking(history.page))
    try:
        from lanlic.admin import export
    except ImportError:  # before the export was formatted by SQLite
        pass
    else:
        monkeypatch.setattr(export, "csv_page", blocking(export.csv_page))
    try:
        from lanlic.admin.app import AdminOptions, AdminServer

        admin = AdminServer(server, AdminOptions(port=0))
        await admin.start()
        import aiohttp

        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(admin.url, cookie_jar=jar) as http:
            async with http.post("/api/login", json={"password": "x"}) as r:
                assert r.status == 200
            export = asyncio.ensure_future(http.get("/api/history.csv"))
            await asyncio.get_running_loop().run_in_executor(None, stuck.wait, 10)
            assert stuck.is_set()
            peer = await raw_peer(server.address)
            reply = await asyncio.wait_for(peer.request("checkout", product="cad"), 5)
            assert reply["t"] == "granted"
            release.set()
            (await export).close()
        await admin.stop()
    finally:
        release.set()
        await server.stop()
        store.close()


# ------------------------------------------------------------- 10: data files others can read


async def test_data_files_are_private_even_in_a_folder_others_can_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as a package makes it
    data.chmod(0o755)
    old = os.umask(0o022)
    try:
        server = await ServeProcess.start(data)
    finally:
        os.umask(old)
    try:
        peer = await connect(server.address)
        assert (await peer.request("checkout", product="cad"))["t"] == "granted"  # a write
        peer.close()
        names = {p.name for p in data.iterdir()}
        assert {"lanlic.db", "lanlic.db-wal", "lanlic.db-shm", "server.key"} <= names
        loose = {p.name: oct(p.stat().st_mode & 0o777) for p in data.iterdir()
                 if p.is_file() and p.stat().st_mode & 0o077}  # fmt: skip
        assert loose == {}
    finally:
        assert await server.stop() == 0
    # The folder is made private at start (osdeps.make_private_dir); were that refused, the
    # start would say so in one line.
    warnings = [x for x in server.stderr().splitlines() if "open to other users" in x]
    if data.stat().st_mode & 0o077:
        assert len(warnings) == 1 and "chmod 700" in warnings[0], server.stderr()
    else:
        assert warnings == []


def test_a_data_folder_open_to_others_is_named_in_a_warning(tmp_path: Path) -> None:
    from lanlic.server.datadir import DataDir

    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o755)
    message = DataDir(folder).exposure()
    assert message is not None and "(mode 0755)" in message and f"chmod 700 {folder}" in message
    folder.chmod(0o700)
    assert DataDir(folder).exposure() is None


# ------------------------------------------------------------ 8: a folder gone read-only


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")),
    reason="needs root, unshare and nsenter to make a private mount read-only",
)
def test_sigterm_while_the_data_folder_is_read_only_stops_cleanly_in_one_line(
    tmp_path: Path,
) -> None:
    """The server runs in a mount namespace of its own, its data folder on a tmpfs there; the
    folder is then made read-only under it (a read-only bind over it), and the server told to
    stop. The host's mounts are never touched."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    serve = (
        f"mount -t tmpfs tmpfs {mnt} && exec {sys.executable} -m lanlic.cli serve --demo "
        f"--data {mnt}/data --host 127.0.0.1 --port 0 --no-mdns --no-admin --json"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", serve],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["event"] == "listening", line
        ro = f"mount --bind {mnt} {mnt} && mount -o remount,bind,ro {mnt}"
        subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "sh", "-c", ro], check=True)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert proc.returncode == 0, err
    assert len(lines) == 1 and "Read-only file system" in lines[0], err


# ------------------------------------------------------------------ 5: replies nobody reads


async def test_peers_that_never_read_cannot_pin_more_reply_memory_than_the_budget(
    start_server: Any,
) -> None:
    from test_slow_peers import NonReader, statuses

    budget = 1024 * 1024
    limits = ServerLimits(housekeeping_interval=0.05, write_timeout=30, reply_budget=budget)
    server = await start_server(limits=limits)
    greedy = [await NonReader.connect(server.address) for _ in range(8)]
    try:
        outcomes = await asyncio.gather(*(g.flood(statuses(200), 0.3, 20) for g in greedy))
        held = sum(c._transport.get_write_buffer_size() for c in server.connections)  # type: ignore[union-attr]
        # Each alone stays under its own limits (about 300 KiB here), 8 together would not.
        assert held <= budget, (held, outcomes)
        assert "reset" in outcomes or len(server.connections) < 8
        assert any([await g.reset_within(1) for g in greedy])
        assert len(server.connections) >= 2  # only the largest went, not everyone
    finally:
        for g in greedy:
            g.close()


# ------------------------------------------------- 6: the admin port cannot starve the licences


async def test_idle_admin_connections_cannot_starve_the_licence_port(tmp_path: Path) -> None:
    """RLIMIT_NOFILE 256, and 300 connections opened to the admin port and left idle: the admin
    port takes its share of the descriptors and refuses the rest; new licence clients are
    served all the while, and the refusal is logged."""
    nofile = 256
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n"
        "from lanlic.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    data = tmp_path / "data"
    argv = ["serve", "--demo", "--data", str(data), "--host", "127.0.0.1", "--port", "0",
            "--admin-port", "0", "--no-mdns", "--json"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
    log = tmp_path / "server.log"
    with log_file(log) as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env,
        )  # fmt: skip
    idle: list[asyncio.StreamWriter] = []
    try:
        assert proc.stdout is not None
        event = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        address = (event["host"], event["port"])
        for _ in range(300):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", event["admin_port"])
            except OSError:
                break
            idle.append(w)
        await asyncio.sleep(0.5)
        for _ in range(20):  # new licence clients, while the admin port is full
            peer = await asyncio.wait_for(connect(address), 5)
            reply = await peer.request("checkout", product="cad")
            assert reply["t"] in ("granted", "error") and reply.get("code") != "server_busy", reply
            if reply["t"] == "granted":
                await peer.request("release", leases=[reply["lease"]])
            peer.close()
    finally:
        for w in idle:
            w.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    text = log.read_text(errors="replace")
    assert "admin page: refused connections past the cap of 64" in text, text
    assert "Traceback" not in text


async def test_a_licence_connection_refused_at_the_cap_is_logged(
    start_server: Any, raw_peer: PeerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(limits=ServerLimits(max_connections=1))
    await raw_peer(server.address)
    for _ in range(3):
        refused = await raw_peer(server.address, hello=False)
        assert (await refused.recv())["code"] == "server_busy"
    lines = [r for r in caplog.records if "connection cap of 1 reached" in r.getMessage()]
    assert len(lines) == 1  # one line, not one per refusal
