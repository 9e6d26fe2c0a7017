"""Issue 12.12: a checkout that must raise the seat reservation on a full disk gets
``store_failed`` and says why (not ``internal_error``, and not a rollback error hiding the real
one); the seats already held keep working, and once space is freed the checkout works."""

from __future__ import annotations

from pathlib import Path

from durable_cli import Laptop, Procs, fails, fill, ok, tmpfs


def test_a_checkout_that_must_raise_the_reservation_on_a_full_disk_gets_store_failed(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    a, b = Laptop(tmp_path, "a"), Laptop(tmp_path, "b")
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        data = mnt / "data"
        server, port, _ = procs.serve(network_key, vendor, data, "--lease", "3",
                                      "--heartbeat", "0.5", "--allow-short-lease")  # fmt: skip
        held = procs.checkout(b, port, "cad")  # the reservation now covers one seat
        filler = fill(mnt)
        message = fails(a.run(port, "checkout", "cad", "--hold", "0.1"), "store_failed")
        assert message.startswith("the seat could not be reserved on disk"), message
        assert "database or disk is full" in message, message
        assert "rollback" not in message
        cad = a.status(port)[0]["cad"]
        assert (cad["in_use"], cad["free"]) == (1, 2)
        assert held.popen.poll() is None  # the seat held keeps renewing

        filler.unlink()
        checked_out, released = ok(a.run(port, "checkout", "cad", "--hold", "0.1"))
        assert (checked_out["event"], released["event"]) == ("checked_out", "released")
        assert held.stop() == 0
        assert server.stop() == 0
    assert "cannot rollback" not in server.stderr()
