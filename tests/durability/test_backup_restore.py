"""Rule 6 of issue 5: ``lanlic admin backup`` while the server runs, and ``serve --restore``.

A backup is a consistent snapshot taken from another process with SQLite's online backup API; a
move to a new machine takes the backup and the old data folder's ``server.key`` (clients pin the
server's key, and borrowed files are signed by it). Restoring never deletes a database: one
already in the folder is refused, or with ``--force`` renamed aside.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from durable_cli import (
    Laptop,
    Procs,
    fails,
    files_of,
    ok,
    run,
    serve_args,
)

#: A borrow short enough to watch it end after the restore (about 17 s).
SHORT_DAYS = "0.0002"


def backup(data: Path, dest: Path, *extra: str) -> dict[str, object]:
    info: dict[str, object] = ok(run(["admin", "backup", str(dest), "--data", str(data),
                                      "--json", *extra]))  # fmt: skip
    return info


def test_backup_while_serving_then_move_to_a_new_folder_with_the_borrows(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    a, b, c = (Laptop(tmp_path, n) for n in "abc")
    server, port, server_id = procs.serve(network_key, vendor, old)
    long = a.borrow(port, "cad", "--days", "3")
    short = a.borrow(port, "viewer", "--days", SHORT_DAYS)
    held = procs.checkout(b, port, "cad")

    dest = tmp_path / "backups" / "lanlic-backup.db"
    dest.parent.mkdir()
    info = backup(old, dest)
    assert info["backup"] == str(dest) and info["source"] == str(old / "lanlic.db")
    assert (info["enrollments"], info["active_borrows"], info["borrows"]) == (1, 2, 2)
    assert info["bytes"] == dest.stat().st_size
    assert sorted(p.name for p in dest.parent.iterdir()) == ["lanlic-backup.db"]  # no WAL
    # The server went on serving; what happens after the backup is not in it.
    after = c.borrow(port, "cad", "--days", "1")
    message = fails(run(["admin", "backup", str(dest), "--data", str(old), "--json"]), "usage")
    assert message == f"{dest} exists already; choose another name, or --force to replace it"
    dated = backup(old, dest.parent)
    assert re.fullmatch(r"lanlic-\d{8}-\d{6}\.db", Path(str(dated["backup"])).name)
    assert dated["active_borrows"] == 3
    assert held.stop() == 0
    assert server.stop() == 0

    # The new machine gets the backup and the old server.key.
    new.mkdir(mode=0o700)
    shutil.copy2(old / "server.key", new / "server.key")
    proc = procs.start(serve_args(network_key, vendor, new, "--restore", str(dest)))
    restored = proc.read_json()
    assert restored["event"] == "restored" and restored["from"] == str(dest)
    assert restored["database"] == str(new / "lanlic.db") and restored["set_aside"] is None
    assert restored["active_borrows"] == 2
    listening = proc.read_json()
    assert listening["event"] == "listening" and listening["server_id"] == server_id
    port = listening["port"]

    products, borrows = a.status(port)
    assert {x["borrow_id"]: x["end"] for x in borrows} == {
        long["borrow_id"]: long["end"],
        short["borrow_id"]: short["end"],
    }
    assert after["borrow_id"] not in {x["borrow_id"] for x in borrows}
    assert (products["cad"]["borrowed"], products["viewer"]["borrowed"]) == (1, 1)
    # The borrowers' laptops accept the moved server: same key, same signed files.
    assert ok(a.run(port, "return", "cad"))["returned"] is True

    # The short borrow still runs out at its end, on the new server.
    deadline = float(short["end"]) + 10
    while a.status(port)[0]["viewer"]["borrowed"]:
        assert time.time() < deadline, "the restored borrow did not expire"
        time.sleep(0.5)
    assert a.status(port)[1] == []
    assert proc.stop() == 0
    assert "warning" not in proc.stderr()
    events = ok(run(["admin", "history", "--data", str(new), "--json"]))["events"]
    ends = [(e["event"], e["detail"]) for e in events if e["event"] in ("return", "expiry_borrow")]
    assert ends[-2:] == [("return", long["borrow_id"]), ("expiry_borrow", short["borrow_id"])]


def test_restore_keeps_an_existing_database_and_refuses_a_bad_backup(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data, a = tmp_path / "data", Laptop(tmp_path, "a")
    server, port, _ = procs.serve(network_key, vendor, data)
    lic = a.borrow(port, "cad", "--days", "3")
    dest = tmp_path / "backup.db"
    backup(data, dest)
    ok(a.run(port, "return", "cad"))
    assert server.stop() == 0
    current = files_of(data)
    current.pop("lanlic.lock")

    def unchanged() -> None:
        now = files_of(data)
        now.pop("lanlic.lock")
        assert now == current

    message = fails(run(serve_args(network_key, vendor, data, "--restore", str(dest))), "usage")
    assert message.startswith(f"{data / 'lanlic.db'} exists already; to put the backup in its")
    assert "--force" in message and "lanlic.db.before-restore-<time>" in message
    unchanged()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 300)
    result = run(serve_args(network_key, vendor, data, "--restore", str(garbage), "--force"))
    message = fails(result, "store")
    assert message.startswith(f"--restore: the database {garbage} is corrupt (file is not a ")
    assert message.endswith("(nothing was changed)")
    unchanged()
    message = fails(run(serve_args(network_key, vendor, data, "--restore", "nope.db")), "usage")
    assert message == "--restore: there is no file nope.db"

    # With --force the old database is renamed aside, never deleted.
    proc = procs.start(serve_args(network_key, vendor, data, "--restore", str(dest), "--force"))
    restored = proc.read_json()
    aside = Path(restored["set_aside"])
    assert aside.parent == data
    assert re.fullmatch(r"lanlic\.db\.before-restore-\d{8}-\d{6}", aside.name)
    assert aside.read_bytes() == current["lanlic.db"]
    port = proc.read_json()["port"]
    _, borrows = a.status(port)
    assert [x["borrow_id"] for x in borrows] == [lic["borrow_id"]]  # as it was at the backup
    assert proc.stop() == 0


def test_restore_without_the_server_key_warns_that_clients_will_refuse_it(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data, new, a = tmp_path / "data", tmp_path / "new", Laptop(tmp_path, "a")
    server, port, old_id = procs.serve(network_key, vendor, data)
    a.borrow(port, "cad", "--days", "3")
    dest = tmp_path / "backup.db"
    backup(data, dest)
    assert server.stop() == 0

    proc = procs.start(serve_args(network_key, vendor, new, "--restore", str(dest)))
    assert proc.read_json()["event"] == "restored"
    assert proc.read_json()["server_id"] != old_id
    assert proc.stop() == 0
    err = proc.stderr()
    assert err.startswith(f"lanlic: warning: {new} has no server.key: this server gets a new ")
    assert "server_key_changed" in err and "copy server.key" in err
