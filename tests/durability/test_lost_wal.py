"""Issue 12.11: a lost or damaged WAL after a SIGKILL must not silently lose the borrows the
laptops were told about. The server refuses to start with one line that says why and what to
do; ``--accept-lost-borrows`` starts it and writes what was lost to the history."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from durable_cli import Laptop, Procs, fails, files_of, ok, run, serve_args


def _delete(wal: Path) -> None:
    wal.unlink()


def _truncate(wal: Path) -> None:
    wal.write_bytes(wal.read_bytes()[: 32 + 24 + 2048])  # the header and part of a frame


def _flip(wal: Path) -> None:
    data = bytearray(wal.read_bytes())
    data[32 + 24 + 100] ^= 0xFF  # in the first frame's page: its checksum fails, and all after
    wal.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_delete, _truncate, _flip], ids=["deleted", "truncated",
                                                                     "flipped"])  # fmt: skip
def test_a_lost_wal_that_held_acknowledged_borrows_stops_the_server_from_starting(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path,
    damage: Callable[[Path], None],
) -> None:  # fmt: skip
    data = tmp_path / "data"
    laptop = Laptop(tmp_path, "a")
    server, port, _ = procs.serve(network_key, vendor, data)
    assert server.stop() == 0  # the database file now holds its schema; the WAL is empty
    server, port, _ = procs.serve(network_key, vendor, data)
    lic = laptop.borrow(port, "cad", "--days", "3")  # acknowledged: fsynced before the yes
    server.stop(signal.SIGKILL)
    wal = data / "lanlic.db-wal"
    assert wal.stat().st_size > 0
    damage(wal)
    before = {k: v for k, v in files_of(data).items() if k in ("lanlic.db", "lanlic.db-ledger")}

    message = fails(run(serve_args(network_key, vendor, data)), "store")
    assert "lacks 2 change(s) that clients were told about (1 borrow, 1 enroll;" in message
    assert "write-ahead log was lost or damaged" in message
    assert "lanlic serve --restore FILE --force" in message and "--accept-lost-borrows" in message
    after = files_of(data)
    assert {k: after[k] for k in before} == before  # refused: the database and ledger untouched

    server, port, _ = procs.serve(network_key, vendor, data, "--accept-lost-borrows")
    assert server.stop() == 0
    assert "accepted the loss of 2 acknowledged change(s)" in server.stderr()
    history = ok(run(["admin", "history", "--json", "--data", str(data)]))
    rows = history["events"]
    lost = [r for r in rows if r["event"] == "lost"]
    assert len(lost) == 2, rows
    assert any(lic["borrow_id"] in r["detail"] and r["product"] == "cad" for r in lost), lost
    # Accepted once: the next start goes on without a word.
    server, port, _ = procs.serve(network_key, vendor, data)
    assert server.stop() == 0


def test_a_clean_stop_and_restart_with_borrows_passes_the_ledger_check(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    laptop = Laptop(tmp_path, "a")
    server, port, _ = procs.serve(network_key, vendor, data)
    laptop.borrow(port, "cad", "--days", "3")
    ok(laptop.run(port, "return", "cad"))
    server.stop(signal.SIGKILL)  # the WAL is intact: nothing is missing
    server, port, _ = procs.serve(network_key, vendor, data)
    assert laptop.status(port)[1] == []
    assert server.stop() == 0
    assert (data / "lanlic.db-ledger").stat().st_mode & 0o777 == 0o600
