"""End-to-end tests of the borrowing commands (enroll, borrow, return, info, enable, admin enroll)
and of ``checkout`` from a borrowed licence, run as real ``lanlic`` processes on 127.0.0.1.

Each "laptop" is a set of environment variables on its client processes: its own container home
(``LANLIC_CLIENT_DATA``), machine id (``LANLIC_MACHINE_ID_FILE``) and pinned server keys
(``LANLIC_CONFIG``). Servers listen on 127.0.0.1 port 0 with no mDNS, and every client command is
given ``--server``, never discovery. Every wait is bounded; the ``procs`` fixture ends every
process a test starts (SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

import datetime as dt
import getpass
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from cliproc import Laptop, Procs, fails, issue_network_key, ok, run

DAY = 86400.0
ACT_PRODUCTS = (
    "cad:3:borrowable=2:max-days=14:versions=10-16",
    "cad-render:2:addon",
    "cad-cam:1:addon",
    "viewer:2:borrowable=1:max-days=7",
)
ACT_BORROWED = "Borrowed (license file)"
KEY_BORROWED = "Borrowed (portable key)"


@pytest.fixture(scope="module")
def act_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("act") / "net.lic"
    return issue_network_key(vendor, out, "ACME Engineering", "act", ACT_PRODUCTS)


@pytest.fixture(scope="module")
def key_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("key") / "net.lic"
    return issue_network_key(
        vendor, out, "ACME Field Office", "key", ("cad:3:borrowable=2:max-days=14",)
    )


def borrow(laptop: Laptop, port: int, *args: str) -> dict[str, Any]:
    """Enroll ``laptop`` online and borrow; the ``borrow --json`` output."""
    ok(laptop.run(port, "enroll"))
    lic: dict[str, Any] = ok(laptop.run(port, "borrow", *args))
    return lic


# ----------------------------------------------------------------------------------- 1. borrow


def test_act_enroll_borrow_until_the_borrowable_seats_are_gone(
    procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port, server_id = procs.serve(act_key, vendor, tmp_path / "data")
    a, b, c = (Laptop(tmp_path, n) for n in "abc")

    message = fails(a.run(port, "borrow", "cad", "--days", "3", "--version", "16"), "not_enrolled")
    assert "lanlic enroll" in message and "--request FILE" in message

    enrolled = ok(a.run(port, "enroll"))
    assert enrolled == {
        "enrolled": True,
        "server_id": server_id,
        "customer": "ACME Engineering",
        "kind": "act",
        "container": str(a.home),
    }
    before = time.time()
    lic = ok(a.run(port, "borrow", "cad", "--days", "3", "--version", "16"))
    assert lic["product"] == "cad" and lic["kind"] == "act"
    assert before - 5 < lic["start"] <= time.time()
    assert lic["end"] - lic["start"] == pytest.approx(3 * DAY)
    assert (a.home / "borrows" / "cad.lic").is_file()
    # A second borrow of the same product here would overwrite the first one's file.
    message = fails(a.run(port, "borrow", "cad", "--days", "1"), "borrow_refused")
    assert "borrowed here already" in message and "lanlic return cad" in message

    products, borrows = a.status(port)
    assert borrows == [
        {
            "borrow_id": lic["borrow_id"],
            "product": "cad",
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            "start": lic["start"],
            "end": lic["end"],
            "start_utc": lic["start_utc"],
            "end_utc": lic["end_utc"],
        }
    ]
    # For scripts, the times also as ISO 8601 in UTC.
    assert lic["end_utc"] == dt.datetime.fromtimestamp(lic["end"], dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    cad = products["cad"]
    assert (cad["seats"], cad["borrowed"], cad["in_use"], cad["free"]) == (3, 1, 0, 2)

    ok(b.run(port, "enroll"))
    message = fails(b.run(port, "borrow", "cad", "--days", "15"), "borrow_too_long")
    assert "at most 14 days" in message
    until = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=5)
    lic_b = ok(b.run(port, "borrow", "cad", "--until", until.isoformat(), "--version", "16"))
    midnight = dt.datetime.combine(until, dt.time(), dt.UTC).timestamp()
    assert lic_b["end"] == pytest.approx(midnight, abs=5)

    ok(c.run(port, "enroll"))
    message = fails(c.run(port, "borrow", "cad", "--days", "1"), "no_borrowable_seat")
    assert "all 2 borrowable seats of cad" in message
    products, borrows = c.status(port)
    assert products["cad"]["borrowed"] == 2 and products["cad"]["free"] == 1
    assert {x["borrow_id"] for x in borrows} == {lic["borrow_id"], lic_b["borrow_id"]}
    held, released = ok(c.run(port, "checkout", "cad", "--version", "16", "--hold", "0.3"))
    assert held["event"] == "checked_out" and held["source"] == "network"
    assert released == {"event": "released", "product": "cad"}
    assert server.stop() == 0


# ------------------------------------------------------------------------------------- 2. info


def test_info_shows_each_state_online_and_the_borrowed_file_offline(
    procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port, _ = procs.serve(act_key, vendor, tmp_path / "data")
    a, other = Laptop(tmp_path, "a"), Laptop(tmp_path, "other")
    lic = borrow(a, port, "cad", "--days", "2")
    # The only seat of cad-cam is held elsewhere.
    cam = procs.start(
        ["checkout", "cad-cam", "--server", f"127.0.0.1:{port}", "--hold", "30", "--json"],
        other.env(),
    )
    assert cam.read_json()["event"] == "checked_out"

    info = ok(a.run(port, "info"))
    assert info["server"] is True
    rows = {r["product"]: r for r in info["products"]}
    assert sorted(rows) == ["cad", "cad-cam", "cad-render", "viewer"]
    expires = dt.datetime.fromtimestamp(lic["end"], dt.UTC).isoformat(timespec="seconds")
    assert rows["cad"]["state"] == ACT_BORROWED
    assert rows["cad"]["expires"] == expires and rows["cad"]["actions"] == ["return"]
    assert rows["cad"]["borrow_id"] == lic["borrow_id"]
    assert rows["cad-render"]["state"] == "Disabled" and rows["cad-render"]["addon"] is True
    assert rows["cad-render"]["actions"] == ["enable"] and rows["cad-render"]["free"] == 2
    assert rows["cad-cam"]["state"] == "Not available" and rows["cad-cam"]["actions"] == []
    assert rows["cad-cam"]["free"] == 0
    assert rows["viewer"]["state"] == "Network" and rows["viewer"]["actions"] == ["borrow"]

    assert cam.stop() == 0
    assert server.stop() == 0
    info = ok(a.run(port, "info"))
    assert info["server"] is False
    [cad] = info["products"]
    assert cad["product"] == "cad" and cad["state"] == ACT_BORROWED
    assert cad["expires"] == expires and cad["actions"] == ["return"]


# -------------------------------------------------------------- 3 and 4. offline, then return


def test_borrowed_file_works_offline_on_its_machine_only_and_return_deactivates_it(
    procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server, port, _ = procs.serve(act_key, vendor, data)
    a = Laptop(tmp_path, "a")
    lic = borrow(a, port, "cad", "--days", "3", "--version", "16")
    saved = (a.home / "borrows" / "cad.lic").read_bytes()
    assert server.stop(signal.SIGTERM) == 0

    # 3. No server: the borrowed file serves, on this machine only.
    result = a.run(port, "checkout", "cad", "--version", "16", "--hold", "0.3")
    held, released = ok(result)
    assert result.stderr == ""
    source = "borrowed (license file)"
    assert held == {
        "event": "checked_out",
        "product": "cad",
        "source": source,
        "borrow_id": lic["borrow_id"],
        "end": lic["end"],
    }
    assert released == {"event": "released", "product": "cad", "source": source}

    elsewhere = a.copied_to(tmp_path, "copy")
    result = elsewhere.run(port, "checkout", "cad", "--hold", "0.3")
    message = fails(result, "server_unavailable", notes=1)
    assert f"127.0.0.1:{port}" in message
    assert result.stderr.startswith("lanlic: borrowed licence not usable: file_wrong_machine: ")

    # 4. The borrow outlives a restart; returning it frees the seat at once.
    server, port, _ = procs.serve(act_key, vendor, data)
    products, borrows = a.status(port)
    assert [x["borrow_id"] for x in borrows] == [lic["borrow_id"]]
    assert products["cad"]["borrowed"] == 1
    text = run(["status", "--server", f"127.0.0.1:{port}"], a.env())
    assert text.returncode == 0 and lic["borrow_id"] in text.stdout

    assert ok(a.run(port, "return", "cad")) == {
        "product": "cad",
        "returned": True,
        "already": False,
    }
    assert not (a.home / "borrows" / "cad.lic").exists()
    products, borrows = a.status(port)
    assert products["cad"]["borrowed"] == 0 and borrows == []

    message = fails(a.run(port, "return", "cad"), "borrow_unknown")
    assert message.startswith("there is no borrowed licence for cad here")
    assert "returned already" in message

    # A saved copy put back is refused here; checkout goes to the network instead.
    (a.home / "borrows" / "cad.lic").write_bytes(saved)
    result = a.run(port, "checkout", "cad", "--version", "16", "--hold", "0.3")
    held, released = ok(result)
    assert held["event"] == "checked_out" and held["source"] == "network"
    assert released == {"event": "released", "product": "cad"}
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("lanlic: borrowed licence not usable: file_returned: ")
    assert lic["borrow_id"] in result.stderr
    assert a.status(port)[0]["cad"]["borrowed"] == 0
    assert server.stop() == 0


# --------------------------------------------------------------------- 5. offline enrollment


def _flip_one_payload_byte(request: bytes) -> bytes:
    """The request with one digit of its ``created`` time changed: still well-formed JSON."""
    marker = b'\\"created\\": '
    at = request.index(marker) + len(marker)
    digit = request[at : at + 1]
    assert digit.isdigit()
    edited = request[:at] + str((int(digit) + 1) % 10).encode() + request[at + 1 :]
    assert sum(x != y for x, y in zip(request, edited, strict=True)) == 1
    return edited


def test_offline_enrollment_through_the_admin_then_borrow(
    procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server, port, server_id = procs.serve(act_key, vendor, data)
    laptop, admin = Laptop(tmp_path, "away"), Laptop(tmp_path, "admin")
    request, response = tmp_path / "req.json", tmp_path / "resp.json"

    assert ok(laptop.run(None, "enroll", "--request", str(request))) == {"request": str(request)}
    assert request.is_file()
    # A request alone is not an enrollment.
    fails(laptop.run(port, "borrow", "cad", "--days", "1"), "not_enrolled")

    edited = tmp_path / "edited.json"
    edited.write_bytes(_flip_one_payload_byte(request.read_bytes()))
    refused = tmp_path / "refused.json"
    args = ["admin", "enroll", "--accept", str(edited), "--out", str(refused), "--data", str(data)]
    message = fails(admin.run(None, *args), "file_tampered")
    assert "signature" in message
    assert not refused.exists()

    args = ["admin", "enroll", "--accept", str(request), "--out", str(response)]
    accepted = ok(admin.run(None, *args, "--data", str(data)))
    assert accepted == {
        "accepted": True,
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "kind": "act",
        "out": str(response),
    }
    enrolled = ok(laptop.run(None, "enroll", "--response", str(response)))
    assert enrolled["enrolled"] is True and enrolled["server_id"] == server_id

    lic = ok(laptop.run(port, "borrow", "cad", "--days", "1"))
    assert lic["product"] == "cad" and lic["kind"] == "act"
    assert [x["borrow_id"] for x in admin.status(port)[1]] == [lic["borrow_id"]]
    assert server.stop() == 0


# ------------------------------------------------------------------------------- 6. add-ons


def test_enable_holds_an_addon_seat_and_refuses_a_plain_product(
    procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port, _ = procs.serve(act_key, vendor, tmp_path / "data")
    laptop = Laptop(tmp_path, "a")
    enabled = procs.start(
        ["enable", "cad-render", "--server", f"127.0.0.1:{port}", "--hold", "30", "--json"],
        laptop.env(),
    )
    held = enabled.read_json()
    assert held["event"] == "checked_out" and held["product"] == "cad-render"
    assert held["source"] == "network"
    assert laptop.status(port)[0]["cad-render"]["in_use"] == 1
    assert enabled.stop() == 0
    assert enabled.read_json() == {"event": "released", "product": "cad-render"}
    assert laptop.status(port)[0]["cad-render"]["in_use"] == 0

    message = fails(laptop.run(port, "enable", "cad", "--hold", "0.3"), "usage")
    assert "cad is not an add-on" in message and "lanlic checkout cad" in message
    assert laptop.status(port)[0]["cad"]["in_use"] == 0
    assert server.stop() == 0


# ---------------------------------------------------------------------------- 7. portable key


def test_key_kind_borrows_into_a_portable_key_that_works_on_any_machine(
    procs: Procs, key_key: Path, vendor: Path, tmp_path: Path
) -> None:
    server, port, _ = procs.serve(key_key, vendor, tmp_path / "data")
    act, laptop, other = (Laptop(tmp_path, n) for n in ("act", "a", "b"))
    usb = tmp_path / "usb"

    message = fails(act.run(port, "enroll"), "wrong_borrow_kind")
    assert "'key'" in message and "'act'" in message

    enrolled = ok(laptop.run(port, "enroll", "--portable-key", str(usb)))
    assert enrolled["kind"] == "key" and enrolled["container"] == str(usb)
    lic = ok(laptop.run(port, "borrow", "cad", "--days", "2", "--portable-key", str(usb)))
    assert lic["kind"] == "key" and lic["end"] - lic["start"] == pytest.approx(2 * DAY)
    assert (usb / "borrows" / "cad.lic").is_file()
    assert not laptop.home.exists()
    assert laptop.status(port)[0]["cad"]["borrowed"] == 1
    assert server.stop() == 0

    # Plugged into another machine, with no server.
    result = other.run(port, "checkout", "cad", "--portable-key", str(usb), "--hold", "0.3")
    held, released = ok(result)
    assert held["source"] == "borrowed (portable key)" and held["borrow_id"] == lic["borrow_id"]
    assert released["event"] == "released"
    info = ok(other.run(port, "info", "--portable-key", str(usb)))
    assert info["server"] is False
    assert [(r["product"], r["state"]) for r in info["products"]] == [("cad", KEY_BORROWED)]

    message = fails(other.run(port, "checkout", "cad", "--hold", "0.3"), "server_unavailable")
    assert f"127.0.0.1:{port}" in message
