"""End-to-end tests of the ``lanlic`` command, run as real processes on 127.0.0.1.

Every server listens on 127.0.0.1 port 0 and announces itself with one JSON line; every wait is
bounded, and every process a test starts is ended by the ``procs`` fixture (SIGTERM, then SIGKILL
after 5 s). Leases are 2 s where their running out is what a test watches.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliproc import Proc, ProcGroup, assert_one_line_error, run

from lanlic.core import netkey
from lanlic.vendorkeys import load_vendor_private, load_vendor_public

#: A server's lease and heartbeat when a test watches leases run out.
SHORT_LEASE = ["--lease", "2", "--heartbeat", "0.5", "--allow-short-lease"]
CAD_SPEC = "cad:3:borrowable=2:max-days=14:versions=10-16"


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class Procs(ProcGroup):
    def serve(self, *args: str) -> tuple[Proc, int]:
        """Start ``lanlic serve ARGS --json`` and wait for its ``listening`` line."""
        proc = self.start(["serve", *args, "--json"])
        event = proc.read_json()
        assert event["event"] == "listening", event
        assert event["host"] == "127.0.0.1", event
        assert isinstance(event["port"], int) and event["port"] > 0, event
        return proc, event["port"]

    def checkout(self, port: int, product: str, *args: str) -> Proc:
        """Start ``lanlic checkout`` and wait until it holds its seat."""
        proc = self.start(["checkout", product, "--server", f"127.0.0.1:{port}", "--json", *args])
        event = proc.read_json()
        assert event["event"] == "checked_out" and event["product"] == product, event
        return proc


@pytest.fixture
def procs() -> Iterator[Procs]:
    """This module's ``Procs`` (its servers take their arguments whole)."""
    yield from Procs.running()


def issue(vendor_dir: Path, out: Path, *products: str, expires: str | None = None) -> Path:
    expires = expires or (_today() + dt.timedelta(days=365)).isoformat()
    args = ["vendor", "issue", "--vendor-key", str(vendor_dir / "vendor.key")]
    args += ["--customer", "ACME Engineering", "--expires", expires, "--borrow-kind", "act"]
    for product in products or (CAD_SPEC, "render:1:addon"):
        args += ["--product", product]
    result = run([*args, "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def network_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue(vendor, tmp_path_factory.mktemp("key") / "net.lic")


def serve_args(network_key: Path, vendor: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--license",
        str(network_key),
        "--vendor-pub",
        str(vendor / "vendor.pub"),
        "--data",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *extra,
    ]


def status(port: int) -> dict[str, dict[str, Any]]:
    """``lanlic status --json``, as a map from product name to its entry."""
    result = run(["status", "--server", f"127.0.0.1:{port}", "--json"])
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    return {p["name"]: p for p in body["products"]}


def wait_for_in_use(port: int, product: str, in_use: int, timeout: float) -> float:
    """Poll status until ``product`` has ``in_use`` seats taken; return how long it took."""
    start = time.monotonic()
    while True:
        now_in_use = status(port)[product]["in_use"]
        if now_in_use == in_use:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{product}: in_use still {now_in_use} after {timeout} s")
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ vendor


def test_keygen_writes_a_private_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "vendor"
    result = run(["vendor", "keygen", "--out", str(out), "--json"])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert Path(info["private"]) == out / "vendor.key"
    assert Path(info["public"]) == out / "vendor.pub"
    assert info["fingerprint"].startswith("sha256:")
    assert stat.S_IMODE((out / "vendor.key").stat().st_mode) == 0o600
    load_vendor_private(out / "vendor.key")
    load_vendor_public(out / "vendor.pub")
    before = (out / "vendor.key").read_bytes()

    again = run(["vendor", "keygen", "--out", str(out)])
    err = assert_one_line_error(again, "usage")
    assert "vendor.key" in err
    assert (out / "vendor.key").read_bytes() == before


def test_issue_writes_a_network_key_the_vendor_pub_verifies(vendor: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.lic"
    args = ["vendor", "issue", "--vendor-key", str(vendor / "vendor.key")]
    args += ["--customer", "ACME Engineering", "--borrow-kind", "act"]
    args += ["--expires", (_today() + dt.timedelta(days=30)).isoformat()]
    args += ["--product", CAD_SPEC, "--product", "render:1:addon"]
    result = run([*args, "--out", str(out), "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "out": str(out),
        "customer": "ACME Engineering",
        "products": 2,
    }
    key = netkey.verify_network_key(
        out.read_bytes(), load_vendor_public(vendor / "vendor.pub"), _today()
    )
    assert key.customer == "ACME Engineering"
    assert key.borrow_kind == "act"
    cad, render = key.products
    assert (cad.name, cad.seats, cad.borrowable, cad.max_borrow_days) == ("cad", 3, 2, 14)
    assert cad.versions == ("10", "16") and not cad.addon
    assert (render.name, render.seats, render.addon) == ("render", 1, True)


@pytest.mark.parametrize(
    ("product", "expires", "names"),
    [
        ("cad:x", None, "product spec 'cad:x'"),
        ("cad:0", None, "product spec 'cad:0'"),
        ("cad:3:frobnicate=1", None, "unknown option"),
        ("cad:3:versions=16-10", None, "version range"),
        ("cad:3:borrowable=4", None, "borrowable"),
        ("cad", None, "product spec 'cad'"),
        (CAD_SPEC, "2030-13-01", "--expires"),
        (CAD_SPEC, "next year", "--expires"),
        (CAD_SPEC, "", "--expires"),
    ],
)
def test_issue_refuses_a_bad_product_spec_or_date(
    vendor: Path, tmp_path: Path, product: str, expires: str | None, names: str
) -> None:
    out = tmp_path / "net.lic"
    if expires is None:
        expires = (_today() + dt.timedelta(days=30)).isoformat()
    args = ["vendor", "issue", "--vendor-key", str(vendor / "vendor.key")]
    args += ["--customer", "ACME", "--borrow-kind", "act", "--expires", expires]
    result = run([*args, "--product", product, "--out", str(out)])
    assert names in assert_one_line_error(result, "usage")
    assert not out.exists()


# ------------------------------------------------------------------------- serve and checkout


def test_checkout_holds_a_seat_that_status_shows(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port = procs.serve(*serve_args(network_key, vendor, tmp_path / "data", *SHORT_LEASE))
    procs.checkout(port, "cad", "--version", "16", "--hold", "30")

    cad = status(port)["cad"]
    assert (cad["seats"], cad["in_use"], cad["free"]) == (3, 1, 2)
    [holder] = cad["holders"]
    assert holder["user"] == getpass.getuser()
    assert holder["host"] == socket.gethostname()
    assert holder["version"] == "16"
    assert holder["app"] == "lanlic-cli"
    assert status(port)["render"]["in_use"] == 0
    assert server.stop() == 0


def test_a_fourth_checkout_of_three_seats_gets_no_seat(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port = procs.serve(*serve_args(network_key, vendor, tmp_path / "data", *SHORT_LEASE))
    for _ in range(3):
        procs.checkout(port, "cad", "--version", "16", "--hold", "30")
    assert status(port)["cad"]["in_use"] == 3

    result = run(["checkout", "cad", "--server", f"127.0.0.1:{port}", "--version", "16"])
    assert result.returncode == 1
    assert_one_line_error(result, "no_seat")
    assert status(port)["cad"]["in_use"] == 3
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("product", "version", "code"),
    [("cad", "17", "version_not_licensed"), ("lathe", "16", "unknown_product")],
)
def test_checkout_refusals(
    procs: Procs,
    network_key: Path,
    vendor: Path,
    tmp_path: Path,
    product: str,
    version: str,
    code: str,
) -> None:
    server, port = procs.serve(*serve_args(network_key, vendor, tmp_path / "data"))
    result = run(["checkout", product, "--server", f"127.0.0.1:{port}", "--version", version])
    assert result.returncode == 1
    err = assert_one_line_error(result, code)
    assert repr(product) in err or product in err
    assert status(port)["cad"]["in_use"] == 0
    assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_checkout_releases_its_seat_at_once(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path, sig: int
) -> None:
    # A long lease, so a seat that is free right after the exit was released, not expired.
    lease = ["--lease", "60", "--heartbeat", "20"]
    server, port = procs.serve(*serve_args(network_key, vendor, tmp_path / "data", *lease))
    held = procs.checkout(port, "cad", "--version", "16", "--hold", "30")
    assert status(port)["cad"]["in_use"] == 1
    assert held.stop(sig) == 0
    assert held.read_json() == {"event": "released", "product": "cad"}
    assert status(port)["cad"]["in_use"] == 0

    # A signal sent the moment the "checked_out" line is read must release too (this raced).
    for _ in range(4):
        checkout = procs.checkout(port, "cad", "--version", "16", "--hold", "30")
        assert checkout.stop(sig) == 0
        assert checkout.read_json() == {"event": "released", "product": "cad"}
    assert status(port)["cad"]["in_use"] == 0
    assert server.stop() == 0


def test_a_killed_checkout_keeps_its_seat_until_the_lease_runs_out(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port = procs.serve(*serve_args(network_key, vendor, tmp_path / "data", *SHORT_LEASE))
    checkout = procs.checkout(port, "cad", "--version", "16", "--hold", "30")

    assert checkout.stop(signal.SIGKILL) == -signal.SIGKILL
    assert status(port)["cad"]["in_use"] == 1
    wait_for_in_use(port, "cad", 0, timeout=8.0)
    assert status(port)["cad"]["holders"] == []
    assert server.stop() == 0


# ---------------------------------------------------------------------- serve refuses to start


def _edit_seat_count(content: bytes) -> bytes:
    old = b'\\"seats\\": 3'
    assert content.count(old) == 1
    edited = content.replace(old, b'\\"seats\\": 9')
    assert len(edited) == len(content)
    assert sum(a != b for a, b in zip(content, edited, strict=True)) == 1
    return edited


def _other_vendor(vendor: Path, tmp_path: Path) -> bytes:
    other = tmp_path / "other-vendor"
    assert run(["vendor", "keygen", "--out", str(other)]).returncode == 0
    return issue(other, tmp_path / "other.lic").read_bytes()


def _expired(vendor: Path, tmp_path: Path) -> bytes:
    today = _today()
    return netkey.issue_network_key(
        load_vendor_private(vendor / "vendor.key"),
        customer="ACME Engineering",
        expires=today - dt.timedelta(days=1),
        borrow_kind="act",
        products=[netkey.parse_product_spec(CAD_SPEC)],
        issued=today - dt.timedelta(days=31),
    )


def _unsigned(content: bytes) -> bytes:
    document = json.loads(content)
    del document["signature"]
    return (json.dumps(document, indent=2) + "\n").encode()


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("edited", "key_bad_signature", ("signature", "edited")),
        ("other_vendor", "key_wrong_vendor", ("vendor",)),
        ("expired", "key_expired", ("expired",)),
        ("unsigned", "key_unsigned", ("not signed",)),
    ],
)
def test_serve_refuses_a_bad_network_key(
    network_key: Path,
    vendor: Path,
    tmp_path: Path,
    case: str,
    code: str,
    words: tuple[str, ...],
) -> None:
    content = network_key.read_bytes()
    bad = {
        "edited": lambda: _edit_seat_count(content),
        "other_vendor": lambda: _other_vendor(vendor, tmp_path),
        "expired": lambda: _expired(vendor, tmp_path),
        "unsigned": lambda: _unsigned(content),
    }[case]()
    lic = tmp_path / "bad.lic"
    lic.write_bytes(bad)

    result = run(["serve", *serve_args(lic, vendor, tmp_path / "data"), "--json"])
    err = assert_one_line_error(result, code)
    assert str(lic) in err
    for word in words:
        assert word in err
    assert json.loads(result.stdout)["error"] == code


def test_a_second_server_on_the_same_data_folder_refuses(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server, port = procs.serve(*serve_args(network_key, vendor, data))

    result = run(["serve", *serve_args(network_key, vendor, data)])
    err = assert_one_line_error(result, "data_dir")
    assert str(data) in err
    assert status(port)["cad"]["seats"] == 3
    assert server.stop() == 0


# -------------------------------------------------------------------------------------- demo


def test_demo_serves_the_cad_office_and_checkout_works(procs: Procs, tmp_path: Path) -> None:
    server, port = procs.serve("--demo", "--data", str(tmp_path / "demo"), "--port", "0")
    products = status(port)
    assert list(products) == ["cad", "cad-render", "cad-cam"]
    assert products["cad"]["seats"] == 10 and not products["cad"]["addon"]
    assert products["cad-render"]["addon"] and products["cad-cam"]["addon"]

    result = run(["checkout", "cad", "--server", f"127.0.0.1:{port}", "--hold", "0.5"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"checked out cad from 127.0.0.1:{port}, holding for 0.5 s",
        "released cad",
    ]
    assert status(port)["cad"]["in_use"] == 0
    assert server.stop() == 0


# ------------------------------------------------------------------------------------ status


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_status_without_a_server_is_server_unavailable() -> None:
    port = _closed_port()
    result = run(["status", "--server", f"127.0.0.1:{port}"])
    assert result.returncode == 1
    err = assert_one_line_error(result, "server_unavailable")
    assert f"127.0.0.1:{port}" in err
    assert result.stdout == ""
