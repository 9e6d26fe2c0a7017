"""``lanlic admin history``: the usage history read back from the data folder, as a table, as CSV
and as JSON, filtered by ``--since`` and ``--product``; while the server runs (WAL lets a second
process read) and after it stopped (SIGTERM flushes the last batch).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from pathlib import Path
from typing import Any

from durable_cli import (
    Laptop,
    Procs,
    fails,
    ok,
    run,
)


def history(data: Path, *args: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = ok(
        run(["admin", "history", "--data", str(data), "--json", *args])
    )["events"]
    return events


def triples(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["event"], e["product"], e["user"]) for e in events]


def test_history_of_checkouts_releases_and_a_borrow_in_three_forms(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    alice, bob = Laptop(tmp_path, "alice", "alice"), Laptop(tmp_path, "bob", "bob")
    server, port, _ = procs.serve(network_key, vendor, data)
    ok(alice.run(port, "checkout", "cad", "--hold", "0.2"))
    ok(bob.run(port, "checkout", "viewer", "--hold", "0.2"))
    time.sleep(0.2)
    middle = time.time()
    time.sleep(0.2)
    lic = alice.borrow(port, "cad", "--days", "2")
    ok(alice.run(port, "return", "cad"))
    fails(bob.run(port, "checkout", "lathe", "--hold", "0.2"), "unknown_product")

    # While the server runs: the rows arrive within about a second (one batch).
    deadline = time.monotonic() + 10
    while ("return", "cad", "alice") not in triples(history(data)):
        assert time.monotonic() < deadline, history(data)
        time.sleep(0.3)
    assert server.stop() == 0

    events = history(data)
    assert [t for t in triples(events) if t[0] != "refusal"] == [
        ("checkout", "cad", "alice"),
        ("release", "cad", "alice"),
        ("checkout", "viewer", "bob"),
        ("release", "viewer", "bob"),
        ("enroll", "", "alice"),
        ("borrow", "cad", "alice"),
        ("return", "cad", "alice"),
    ]
    assert ("refusal", "lathe", "bob") in triples(events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    borrowed = next(e for e in events if e["event"] == "borrow")
    assert borrowed["detail"].startswith(lic["borrow_id"])
    for e in events:
        assert e["time"] == dt.datetime.fromtimestamp(e["at"], dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )

    # --product and --since filter.
    assert triples(history(data, "--product", "viewer")) == [
        ("checkout", "viewer", "bob"),
        ("release", "viewer", "bob"),
    ]
    since = dt.datetime.fromtimestamp(middle, dt.UTC).isoformat()
    assert [t for t in triples(history(data, "--since", since)) if t[0] != "refusal"] == [
        ("enroll", "", "alice"),
        ("borrow", "cad", "alice"),
        ("return", "cad", "alice"),
    ]
    assert triples(history(data, "--since", since, "--product", "cad")) == [
        ("borrow", "cad", "alice"),
        ("return", "cad", "alice"),
    ]
    today = dt.datetime.now(dt.UTC).date()
    assert history(data, "--since", (today - dt.timedelta(days=1)).isoformat()) == events
    assert history(data, "--since", (today + dt.timedelta(days=1)).isoformat()) == []

    # CSV: a header row, then the same rows.
    result = run(["admin", "history", "--data", str(data), "--csv"])
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "time_utc,at,event,product,user,host,detail"
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["time_utc"], float(r["at"]), r["event"], r["product"], r["user"], r["host"],
             r["detail"]) for r in rows] == [
        (e["time"], e["at"], e["event"], e["product"], e["user"], e["host"], e["detail"])
        for e in events
    ]  # fmt: skip

    # The table: a header line, then one line per row.
    result = run(["admin", "history", "--data", str(data), "--product", "viewer"])
    assert result.returncode == 0 and result.stderr == ""
    head, *table = result.stdout.splitlines()
    assert head.split() == ["TIME", "EVENT", "PRODUCT", "USER", "HOST", "DETAIL"]
    assert len(table) == 2  # the time is local, with its zone: date, time, zone
    assert table[0].split()[3:6] == ["checkout", "viewer", "bob"]
    assert table[1].split()[3:6] == ["release", "viewer", "bob"]
    result = run(["admin", "history", "--data", str(data), "--product", "lathe-2"])
    assert result.stdout == "no history rows match\n"


def test_history_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    message = fails(run(["admin", "history", "--data", str(tmp_path), "--json"]), "usage")
    assert message == f"no lanlic database in {tmp_path}; pass --data with the server's folder"
    result = run(["admin", "history", "--data", str(tmp_path), "--since", "last week", "--json"])
    assert "--since must be a date (YYYY-MM-DD)" in fails(result, "usage")
    result = run(["admin", "history", "--data", str(tmp_path), "--csv", "--json"])
    assert fails(result, "usage") == "choose one of --csv and --json"
