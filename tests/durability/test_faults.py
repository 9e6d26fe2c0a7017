"""Rule 5 of issue 5: faults that get a clear, one-line error and lose nothing.

Each test runs real ``lanlic serve`` processes, makes the fault, reads the message, and then
shows that nothing was lost: the files are byte-for-byte as before the refusal, and a server
started once the fault is gone still has the borrow it had. The read-only folder and the full
disk are file systems the test mounts itself (as root; without root they are skipped, saying
why), always unmounted at the end.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from durable_cli import (
    Laptop,
    Procs,
    fails,
    files_of,
    fill,
    ok,
    remount,
    run,
    serve_args,
    tmpfs,
)

from lanlic.store import SCHEMA_VERSION


def _server_with_a_borrow(
    procs: Procs, network_key: Path, vendor: Path, data: Path, laptop: Laptop
) -> dict[str, object]:
    """Serve ``data``, borrow cad on ``laptop``, stop cleanly; the borrow."""
    server, port, _ = procs.serve(network_key, vendor, data)
    lic = laptop.borrow(port, "cad", "--days", "3")
    assert server.stop() == 0
    return lic


def _still_has(procs: Procs, network_key: Path, vendor: Path, data: Path, laptop: Laptop,
               lic: dict[str, object]) -> None:  # fmt: skip
    """A server on ``data`` starts and still has the borrow ``lic``."""
    server, port, _ = procs.serve(network_key, vendor, data)
    products, borrows = laptop.status(port)
    assert [(b["borrow_id"], b["end"]) for b in borrows] == [(lic["borrow_id"], lic["end"])]
    assert products["cad"]["borrowed"] == 1
    assert server.stop() == 0


# ------------------------------------------------------------------- the folder not writable


def test_a_read_only_data_folder_is_refused_and_left_as_it_was(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    laptop = Laptop(tmp_path, "a")
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        data = mnt / "data"
        lic = _server_with_a_borrow(procs, network_key, vendor, data, laptop)
        before = files_of(data)
        assert "lanlic.db" in before and "server.key" in before
        remount(mnt, read_only=True)
        try:
            message = fails(run(serve_args(network_key, vendor, data)), "data_dir")
            assert message == f"the data folder {data} is not writable"
            message = fails(run(serve_args(network_key, vendor, mnt / "new")), "data_dir")
            assert message.startswith(f"cannot create the data folder {mnt / 'new'}: ")
            assert "Read-only file system" in message
        finally:
            remount(mnt, read_only=False)
        assert files_of(data) == before
        assert not (mnt / "new").exists()
        _still_has(procs, network_key, vendor, data, laptop, lic)


# ----------------------------------------------------------------------------- disk full


def test_a_full_disk_refuses_the_borrow_keeps_the_pool_and_floating_seats_work(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    a, b = Laptop(tmp_path, "a"), Laptop(tmp_path, "b")
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        data = mnt / "data"
        server, port, _ = procs.serve(network_key, vendor, data, "--lease", "2",
                                      "--heartbeat", "0.5", "--allow-short-lease")  # fmt: skip
        ok(a.run(port, "enroll"))
        held = procs.checkout(b, port, "cad")  # a floating seat held across the whole fault
        # Two seats in use once: the server's durable reservation (an upper bound on the
        # floating seats in use, written before a grant passes it) now covers two.
        ok(a.run(port, "checkout", "cad", "--hold", "0.2"))

        filler = fill(mnt)
        message = fails(a.run(port, "borrow", "cad", "--days", "2"), "store_failed")
        assert message.startswith("the borrow could not be recorded: ")
        assert "database or disk is full" in message
        assert not (a.home / "borrows" / "cad.lic").exists()
        products, borrows = a.status(port)
        cad = products["cad"]
        assert borrows == []
        assert (cad["borrowed"], cad["in_use"], cad["free"]) == (0, 1, 2)
        # Floating seats need no write within the reservation: checkouts and releases go on,
        # and the held seat keeps renewing its 2 s lease.
        for _ in range(3):
            checked_out, released = ok(a.run(port, "checkout", "cad", "--hold", "0.2"))
            assert checked_out["event"] == "checked_out" and released["event"] == "released"
        time.sleep(2.5)
        assert a.status(port)[0]["cad"]["in_use"] == 1
        assert held.popen.poll() is None

        filler.unlink()
        lic = ok(a.run(port, "borrow", "cad", "--days", "2"))
        products, borrows = a.status(port)
        assert [x["borrow_id"] for x in borrows] == [lic["borrow_id"]]
        assert (products["cad"]["borrowed"], products["cad"]["in_use"]) == (1, 1)
        assert held.stop() == 0
        assert server.stop() == 0
        _still_has(procs, network_key, vendor, data, a, lic)


# ----------------------------------------------------------------- corrupt or newer database


def _garbage(db: Path) -> None:
    db.write_bytes(bytes(range(256)) * 32)


def _truncated(db: Path) -> None:
    content = db.read_bytes()
    assert len(content) >= 4 * 4096
    db.write_bytes(content[: len(content) // 2])


def _newer(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1:d}")
    con.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_garbage, "is corrupt (file is not a database); nothing was changed"),
        (_truncated, "is corrupt (database disk image is malformed); nothing was changed"),
        (
            _newer,
            f"has schema version {SCHEMA_VERSION + 1}, newer than this lanlic reads "
            f"({SCHEMA_VERSION}); upgrade lanlic (nothing was changed)",
        ),
    ],
    ids=["garbage", "truncated", "newer"],
)
def test_a_corrupt_or_newer_database_is_refused_and_not_touched(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path, damage: object, says: str
) -> None:
    data, laptop = tmp_path / "data", Laptop(tmp_path, "a")
    lic = _server_with_a_borrow(procs, network_key, vendor, data, laptop)
    db = data / "lanlic.db"
    good = db.read_bytes()
    assert callable(damage)
    damage(db)
    (data / "lanlic.lock").unlink()  # holds the pid of the last server that took the folder
    before = files_of(data)
    assert before["lanlic.db"] != good

    message = fails(run(serve_args(network_key, vendor, data)), "store")
    assert message.startswith(f"the database {db} ")
    assert says in message
    (data / "lanlic.lock").unlink()
    assert files_of(data) == before
    # The admin commands refuse it the same way.
    message = fails(run(["admin", "history", "--data", str(data), "--json"]), "store")
    assert says in message
    assert files_of(data) == before

    db.write_bytes(good)
    _still_has(procs, network_key, vendor, data, laptop, lic)


# ----------------------------------------------------------------- two servers, one folder


def test_a_second_server_on_the_same_folder_refuses_and_the_first_keeps_everything(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data, laptop = tmp_path / "data", Laptop(tmp_path, "a")
    first, port, _ = procs.serve(network_key, vendor, data)
    lic = laptop.borrow(port, "cad", "--days", "3")
    address = (data / "server.json").read_bytes()
    lock = (data / "lanlic.lock").read_bytes()

    message = fails(run(serve_args(network_key, vendor, data)), "data_dir")
    assert message == f"another lanlic server is already using the data folder {data}"
    assert (data / "server.json").read_bytes() == address
    assert (data / "lanlic.lock").read_bytes() == lock
    products, borrows = laptop.status(port)
    assert [x["borrow_id"] for x in borrows] == [lic["borrow_id"]]
    assert products["cad"]["borrowed"] == 1
    assert first.stop() == 0
    _still_has(procs, network_key, vendor, data, laptop, lic)
