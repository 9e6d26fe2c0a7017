"""Discovery with real processes: ``lanlic serve`` announcing on loopback, the CLI finding it
with no address, the goodbye on SIGTERM, a server killed and restarted on another port, and a
server and a client in two network namespaces joined by a veth pair, over real multicast."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliproc import read_json_line
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from discovery_helpers import CLI, LOOPBACK, Serve, ServerProcess, cli_env
from netns import Netns, netns_unavailable
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from lanlic.core import signing
from lanlic.discovery import SERVICE_TYPE, service_type
from lanlic.errors import ServerUnavailable
from lanlic.net.client import Client

#: Bound on one CLI command expected to finish by itself.
RUN_TIMEOUT = 30.0


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def serve_args(lic: Path, pub: Path, data: Path, *extra: str) -> list[str]:
    # Listening on 127.0.0.1, the server announces on loopback only (no --interface needed).
    return [
        "--license",
        str(lic),
        "--vendor-pub",
        str(pub),
        "--data",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *extra,
    ]


async def test_cli_finds_pins_and_refuses_on_loopback(
    vendor_files: tuple[Path, Path],
    vendor_key: Ed25519PrivateKey,
    tmp_path: Path,
    server_processes: list[ServerProcess],
) -> None:
    lic, pub = vendor_files
    env = cli_env(tmp_path / "config")
    vendor_fp = signing.fingerprint(vendor_key.public_key())
    server = await ServerProcess.start(*serve_args(lic, pub, tmp_path / "data"), env=env)
    server_processes.append(server)
    listening = await server.event("listening")
    announced = await server.event("announced")
    assert announced["interfaces"] == "127.0.0.1"

    find = ["--interface", "127.0.0.1", "--vendor", vendor_fp]
    code, out, err = await run_cli("servers", "--json", "--timeout", "1.5", *find, env=env)
    assert code == 0, err
    (row,) = json.loads(out)["servers"]
    assert (row["port"], row["server_fp"], row["verified"], row["pinned"]) == (
        listening["port"],
        listening["server_id"],
        True,
        "no",
    )
    assert row["products"] == ["cad", "render"] and row["site"] == "ACME Engineering"

    # No --server, no LANLIC_SERVER: checkout and status find it, and pin it.
    code, out, err = await run_cli("checkout", "cad", *find, "--hold", "0.1", "--json", env=env)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["server_id"] == listening["server_id"]
    code, out, err = await run_cli("status", "--json", "--interface", "127.0.0.1", env=env)
    assert code == 0, err
    assert json.loads(out)["server_id"] == listening["server_id"]
    code, out, err = await run_cli("trust", "--list", "--json", env=env)
    (pin,) = json.loads(out)["pins"]
    assert pin["server_fp"] == listening["server_id"] and pin["site"] == "ACME Engineering"

    # SIGTERM: the server says goodbye over mDNS before it exits.
    added, removed = asyncio.Event(), asyncio.Event()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if not name.startswith(announced["name"]):
            return
        if state_change is ServiceStateChange.Removed:
            removed.set()
        else:
            added.set()

    async with AsyncZeroconf(interfaces=LOOPBACK) as aiozc:
        browser = AsyncServiceBrowser(aiozc.zeroconf, service_type(), handlers=[on_change])
        try:
            # Seen first (a responder that answered the commands above within the last second
            # waits that long to multicast again): only a service seen can be seen to go.
            await asyncio.wait_for(added.wait(), 5)
            assert await server.stop() == 0
            await asyncio.wait_for(removed.wait(), 5)
        finally:
            await browser.async_cancel()

    # A new server for the same site, with another key (another data folder): refused.
    rogue = await ServerProcess.start(*serve_args(lic, pub, tmp_path / "data2"), env=env)
    server_processes.append(rogue)
    rogue_id = (await rogue.event("listening"))["server_id"]
    await rogue.event("announced")
    code, out, err = await run_cli("checkout", "cad", *find, "--hold", "0.1", env=env)
    assert code == 1
    assert err.startswith("lanlic: server_key_changed: ") and err.count("\n") == 1
    assert listening["server_id"] in err and rogue_id in err and "lanlic trust --server" in err
    # Re-pinning needs a confirmation; a wrong expected fingerprint pins nothing.
    code, out, err = await run_cli("servers", "--json", "--timeout", "1", *find, env=env)
    (row,) = json.loads(out)["servers"]
    assert row["pinned"] == "KEY CHANGED" and row["server_fp"] == rogue_id
    address = f"127.0.0.1:{row['port']}"
    code, _, err = await run_cli("trust", "--server", address, env=env)
    assert code == 1 and "--yes" in err
    code, _, err = await run_cli("trust", "--server", address, "--expect", vendor_fp, env=env)
    assert code == 1 and "not pinned" in err
    code, out, err = await run_cli("trust", "--server", address, "--expect", rogue_id, env=env)
    assert code == 0, err
    assert f"REPLACES the pinned key {listening['server_id']}" in out
    code, out, err = await run_cli("checkout", "cad", *find, "--hold", "0.1", env=env)
    assert code == 0, err
    code, out, err = await run_cli("trust", "--forget", "ACME Engineering", env=env)
    assert code == 0 and "forgot 'ACME Engineering'" in out
    code, out, _ = await run_cli("trust", "--list", "--json", env=env)
    assert json.loads(out)["pins"] == []


async def test_cli_with_nothing_there_says_so_within_its_timeout(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "config")
    started = time.monotonic()
    code, out, err = await run_cli(
        "status", "--interface", "127.0.0.1", "--discover-timeout", "1", env=env
    )
    assert code == 1 and time.monotonic() - started < RUN_TIMEOUT
    assert err.startswith("lanlic: server_unavailable: no lanlic server answered on 127.0.0.1")
    code, out, err = await run_cli(
        "servers", "--interface", "127.0.0.1", "--timeout", "0.5", env=env
    )
    assert code == 0 and "no lanlic server answered on 127.0.0.1" in out


@pytest.fixture
def usual_service_type_alone() -> Iterator[None]:
    """Hold, across processes, the right to announce under the usual service type. CI runs the
    suite on two Pythons at once: two copies of the test below at the same moment announced one
    instance name (each browse then saw only one of the two) and each one's browse connected to
    the other's server. Waits for the other copy (a few seconds), bounded."""
    path = Path(tempfile.gettempdir()) / "lanlic-tests-usual-mdns-service.lock"
    with path.open("a") as held:
        deadline = time.monotonic() + 120.0
        while True:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed locked for 120 s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


async def test_a_server_the_test_did_not_start_is_never_found_or_touched(
    usual_service_type_alone: None,
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As with ``lanlic serve --demo`` running on this host: a server announced on loopback
    under the usual service type. The test's own browsing (its service type, conftest.py) never
    hears it, so never connects to it: not the CLI, not the client library."""
    own = os.environ["LANLIC_MDNS_SERVICE"]
    monkeypatch.delenv("LANLIC_MDNS_SERVICE")
    foreign = await serve(customer="Someone Else's Demo")
    assert foreign.announcer.service == SERVICE_TYPE
    monkeypatch.setenv("LANLIC_MDNS_SERVICE", own)
    env = cli_env(tmp_path / "config")

    code, out, err = await run_cli(
        "status", "--interface", "127.0.0.1", "--discover-timeout", "1", env=env
    )
    assert code == 1 and err.startswith("lanlic: server_unavailable: no lanlic server answered")
    code, out, err = await run_cli(
        "servers", "--json", "--interface", "127.0.0.1", "--timeout", "1", env=env
    )
    assert code == 0 and json.loads(out)["servers"] == [], out
    with pytest.raises(ServerUnavailable, match=f"looked only for service {own}"):
        await Client.discover(None, interfaces=LOOPBACK, timeout=1.0)
    assert foreign.hellos == 0, "a test connected to a server it did not start"

    # The same browse with the usual service type finds it: it was there to be found.
    usual = {k: v for k, v in env.items() if k != "LANLIC_MDNS_SERVICE"}
    code, out, err = await run_cli(
        "servers", "--json", "--interface", "127.0.0.1", "--timeout", "1.5", env=usual
    )
    assert code == 0, err
    assert foreign.address[1] in [row["port"] for row in json.loads(out)["servers"]], out


async def test_serve_refuses_to_announce_where_it_does_not_listen(
    vendor_files: tuple[Path, Path], tmp_path: Path
) -> None:
    lic, pub = vendor_files
    env = cli_env(tmp_path / "config")
    code, _, err = await run_cli(
        "serve", *serve_args(lic, pub, tmp_path / "data", "--interface", "::1"), env=env
    )  # ::1 is this host's (loopback, so nothing could leave it) but not where serve listens
    assert code == 1 and "listens on 127.0.0.1 only" in err, err
    # An address that is not this host's is refused while the command line is read.
    code, _, err = await run_cli(
        "serve", *serve_args(lic, pub, tmp_path / "data", "--interface", "10.11.12.13"), env=env
    )
    assert code == 1 and "10.11.12.13 is not an address of this host" in err, err


async def test_killed_server_restarted_on_another_port_is_found_again(
    vendor_files: tuple[Path, Path],
    vendor_key: Ed25519PrivateKey,
    tmp_path: Path,
    server_processes: list[ServerProcess],
) -> None:
    lic, pub = vendor_files
    env = cli_env(tmp_path / "config")
    data = tmp_path / "data"
    first = await ServerProcess.start(*serve_args(lic, pub, data, "--lease", "20"), env=env)
    server_processes.append(first)
    before = await first.event("listening")
    await first.event("announced")
    client = await Client.discover(vendor_key.public_key(), "cad", interfaces=LOOPBACK, timeout=5)
    try:
        assert client.address == ("127.0.0.1", before["port"])
        seat = await client.acquire("cad")
        await first.stop(signal.SIGKILL)  # no goodbye, no notice: the process is just gone
        second = await ServerProcess.start(*serve_args(lic, pub, data, "--lease", "20"), env=env)
        server_processes.append(second)
        after = await second.event("listening")
        assert after["port"] != before["port"] and after["server_id"] == before["server_id"]
        deadline = time.monotonic() + 15
        while not (client.connected and client.address[1] == after["port"]):
            assert time.monotonic() < deadline, "the client did not find the restarted server"
            await asyncio.sleep(0.05)
        assert client.server_id == before["server_id"]
        # The held seat survives the killed process: the client reclaims it from the new epoch
        # under the same lease id, and the application never hears of it.
        while seat.epoch != client.epoch:
            assert time.monotonic() < deadline, "the seat was not reclaimed"
            await asyncio.sleep(0.05)
        assert not seat.lost and seat.lease_id in client.seats
        await client.acquire("cad")
        cad = next(p for p in (await client.status())["products"] if p["name"] == "cad")
        assert cad["in_use"] == 2
    finally:
        await client.close()


# ------------------------------------------------------------------- two network namespaces


def test_discovery_between_two_network_namespaces(
    vendor_files: tuple[Path, Path], vendor_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    lic, pub = vendor_files
    env = cli_env(tmp_path / "config")
    vendor_fp = signing.fingerprint(vendor_key.public_key())
    net = Netns()
    server: subprocess.Popen[bytes] | None = None
    try:
        net.make()
        # In its own namespace the server may listen on every address and announce everywhere:
        # "everywhere" is lo and the veth end.
        server = subprocess.Popen(
            net.cmd(
                net.a, "serve", "--license", str(lic), "--vendor-pub", str(pub),
                "--data", str(tmp_path / "data"), "--host", "0.0.0.0", "--port", "0", "--json",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        listening = read_json_line(server, 20)
        announced = read_json_line(server, 20)
        assert announced["event"] == "announced" and announced["interfaces"] == "every interface"
        # The client, in the other namespace, is given no address and no interface.
        result = subprocess.run(
            net.cmd(net.b, "checkout", "cad", "--vendor", vendor_fp, "--hold", "0.2", "--json"),
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        checked_out = json.loads(result.stdout.decode().splitlines()[0])
        assert checked_out["event"] == "checked_out"
        assert checked_out["server_id"] == listening["server_id"]
        listed = subprocess.run(
            net.cmd(net.b, "servers", "--json", "--timeout", "1.5"),
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
        (row,) = json.loads(listed.stdout)["servers"]
        assert (row["address"], row["port"], row["pinned"]) == (
            "10.99.0.1",
            listening["port"],
            "yes",
        )
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            for f in (server.stdout, server.stderr):
                if f is not None:
                    f.close()
        net.remove()
    assert server is not None and server.returncode == 0
