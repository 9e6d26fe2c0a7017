"""Network cuts between two test hosts (network namespaces joined by a veth pair): a client cut
off loses its seat when the lease runs out, and gives it up itself first; a server cut off for
less than a lease keeps every client's seat, and they carry on when it is back."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cliproc import read_json_line
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from netns import CLI, Netns, ip, netns_unavailable

from lanlic.core import netkey, signing
from lanlic.core.netkey import ProductEntitlement

LEASE = 3.0
TODAY = dt.datetime.now(dt.UTC).date()

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))


class Office:
    """The server in namespace A, clients in namespace B."""

    def __init__(self, tmp: Path, vendor: Ed25519PrivateKey) -> None:
        self.net = Netns()
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        lic, pub = tmp / "net.lic", tmp / "vendor.pub"
        lic.write_bytes(
            netkey.issue_network_key(
                vendor, customer="Cut Office", expires=TODAY + dt.timedelta(days=30),
                borrow_kind="act", products=(ProductEntitlement("cad", seats=2),), issued=TODAY,
            )
        )  # fmt: skip
        pub.write_bytes(signing.public_to_pem(vendor.public_key()))
        self.serve_args = [
            "serve", "--license", str(lic), "--vendor-pub", str(pub), "--data", str(tmp / "data"),
            "--host", "10.99.0.1", "--port", "0", "--no-mdns", "--json", "--lease", str(LEASE),
            "--heartbeat", "0.5", "--allow-short-lease",
        ]  # fmt: skip
        self.env = {**os.environ, "LANLIC_CONFIG": str(tmp / "config")}
        self.port = 0

    def __enter__(self) -> Office:
        self.net.make()
        server = self.spawn(self.net.a, *self.serve_args)
        self.port = read_json_line(server, 30)["port"]
        self.server = server
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for pipe in (p.stdout, p.stderr):
                if pipe is not None:
                    pipe.close()
        self.net.remove()

    def spawn(self, ns: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self.net.cmd(ns, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env
        )
        self.procs.append(proc)
        return proc

    def checkout(self) -> subprocess.Popen[bytes]:
        proc = self.spawn(
            self.net.b, "checkout", "cad", "--server", f"10.99.0.1:{self.port}", "--hold", "60",
            "--json",
        )  # fmt: skip
        assert read_json_line(proc, 20)["event"] == "checked_out"
        return proc

    def in_use(self) -> int:
        out = subprocess.run(
            ["ip", "netns", "exec", self.net.a, *CLI, "status", "--server",
             f"10.99.0.1:{self.port}", "--json"],
            capture_output=True, timeout=20, env=self.env, check=True,
        )  # fmt: skip
        cad = json.loads(out.stdout)["products"][0]
        n: int = cad["in_use"]
        return n

    def link(self, up: bool) -> None:
        ip("-n", self.net.b, "link", "set", "vb", "up" if up else "down")


def wait_until(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_client_cut_off_loses_its_seat_after_the_lease_and_knows_it_first(
    tmp_path: Path, vendor_key: Ed25519PrivateKey
) -> None:
    with Office(tmp_path, vendor_key) as office:
        client = office.checkout()
        assert office.in_use() == 1
        office.link(up=False)  # the laptop's cable is pulled: no goodbye, no RST
        cut = time.monotonic()
        assert office.in_use() == 1, "the seat stays while its lease runs"
        # The client gives up on its own clock before the server frees the seat...
        lost = read_json_line(client, LEASE + 5)
        client_gave_up = time.monotonic() - cut
        assert (lost["event"], lost["error"]) == ("lost", "seat_lost")
        assert client.wait(10) == 1
        # ...and the server frees it when the lease runs out.
        wait_until(lambda: office.in_use() == 0, LEASE + 5)
        server_freed = time.monotonic() - cut
        assert client_gave_up < LEASE <= server_freed + 0.5


def test_a_server_cut_off_for_less_than_a_lease_loses_no_seat(
    tmp_path: Path, vendor_key: Ed25519PrivateKey
) -> None:
    with Office(tmp_path, vendor_key) as office:
        a, b = office.checkout(), office.checkout()
        assert office.in_use() == 2
        office.link(up=False)
        time.sleep(LEASE * 0.5)
        office.link(up=True)
        time.sleep(LEASE * 1.5)  # past the lease: only renewals after the cut keep the seats
        assert a.poll() is None and b.poll() is None, "the clients kept their seats"
        assert office.in_use() == 2
        # The server stopped (SIGSTOP) for less than a lease: the same.
        office.server.send_signal(signal.SIGSTOP)
        time.sleep(LEASE * 0.5)
        office.server.send_signal(signal.SIGCONT)
        time.sleep(LEASE * 1.5)
        assert a.poll() is None and b.poll() is None
        assert office.in_use() == 2
        a.send_signal(signal.SIGTERM)
        assert a.wait(10) == 0
        assert office.in_use() == 1
