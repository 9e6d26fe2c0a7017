"""Issue 12.3 with real ``lanlic serve`` processes: a clean restart holds only the seats of
leases still out, and ``status`` (table and ``--json``) shows the held seats and until when."""

from __future__ import annotations

import signal
from pathlib import Path

from durable_cli import Laptop, Procs, issue, ok, run


def test_a_clean_restart_after_every_seat_was_released_holds_nothing(
    procs: Procs, vendor: Path, tmp_path: Path
) -> None:
    key = issue(vendor, tmp_path / "one.lic", ("cad:1",))
    data = tmp_path / "data"
    a, b = Laptop(tmp_path, "a"), Laptop(tmp_path, "b")
    server, port, _ = procs.serve(key, vendor, data)
    checked_out, released = ok(a.run(port, "checkout", "cad", "--hold", "0.1"))
    assert (checked_out["event"], released["event"]) == ("checked_out", "released")
    assert server.stop() == 0  # Ctrl-C

    server, port, _ = procs.serve(key, vendor, data)
    cad = b.status(port)[0]["cad"]
    assert (cad["in_use"], cad["held"], cad["free"]) == (0, 0, 1)
    assert cad["held_until"] is None
    checked_out, _ = ok(b.run(port, "checkout", "cad", "--hold", "0.1"))
    assert checked_out["event"] == "checked_out"
    assert server.stop() == 0


def test_a_clean_restart_holds_the_seat_still_out_and_status_says_so(
    procs: Procs, vendor: Path, tmp_path: Path
) -> None:
    key = issue(vendor, tmp_path / "two.lic", ("cad:2",))
    data = tmp_path / "data"
    a, b = Laptop(tmp_path, "a"), Laptop(tmp_path, "b")
    server, port, _ = procs.serve(key, vendor, data, "--lease", "30")
    ok(a.run(port, "checkout", "cad", "--hold", "0.1"))
    # A client that stays away holds a seat across the stop: its lease is out.
    ok(b.run(port, "checkout", "cad", "--hold", "0.1"))
    holder = procs.checkout(a, port, "cad", hold=60)
    holder.stop(signal.SIGKILL)  # gone without a goodbye: its lease stays until it runs out
    assert server.stop() == 0

    server, port, _ = procs.serve(key, vendor, data, "--lease", "30")
    cad = b.status(port)[0]["cad"]
    assert (cad["in_use"], cad["held"], cad["free"]) == (0, 1, 1)
    assert cad["held_until"] is not None
    table = run(["status", "--server", f"127.0.0.1:{port}"], b.env())
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["PRODUCT", "SEATS", "IN", "USE", "BORROWED", "HELD", "FREE"]
    assert lines[2].split() == ["cad", "2", "0", "0", "1", "1"]
    assert "cad: 1 held for clients reconnecting after a restart, until " in table.stdout
    assert server.stop() == 0
