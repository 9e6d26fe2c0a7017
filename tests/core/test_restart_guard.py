"""Seat reservations under concurrent checkouts: a grant that skips the reservation write must
not take the room that grants waiting for a write have a claim on."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Granted
from lanlic.core.restart import RestartGuard, RestartState
from lanlic.core.service import LicenseService, Session
from lanlic.proto import messages as m
from lanlic.proto.framing import decode_body
from lanlic.store import Store


def test_grants_waiting_for_a_reservation_keep_their_room(
    tmp_path: Path, vendor_key: Ed25519PrivateKey
) -> None:
    store = Store(tmp_path / "lanlic.db")
    service = LicenseService(
        make_key(vendor_key, (ProductEntitlement("cad", seats=16),)), Ed25519PrivateKey.generate()
    )
    service.clock = lambda: (0.0, 0.0)
    service.guard.start(RestartState(1, bytes(32), {}, []), 0.0)
    sessions = [Session() for _ in range(3)]
    for i, s in enumerate(sessions):
        service.handle(s, m.Hello(1, [1], bytes([i + 1]) * 16, "u", "h"), 0.0, 0.0)

    a = service.handle(sessions[0], m.Checkout(2, "cad"), 0.0, 0.0).durable
    b = service.handle(sessions[1], m.Checkout(3, "cad"), 0.0, 0.0).durable
    assert a is not None and b is not None  # both wait for a reservation write
    assert isinstance(a.commit(a.write(store)), m.Granted)
    # A third checkout arrives on the fast path while b's write is still under way.
    fast = service.checkout_frame(sessions[2], {"t": "checkout", "id": 4, "product": "cad"}, 0, 0)
    if fast is None:  # it has to write a reservation of its own first
        c = service.handle(sessions[2], m.Checkout(4, "cad"), 0.0, 0.0).durable
        assert c is not None
        b_reply = b.commit(b.write(store))
        c_reply = c.commit(c.write(store))
        assert isinstance(c_reply, m.Granted), c_reply
    else:
        assert decode_body(fast[4:])["t"] == "granted"
        b_reply = b.commit(b.write(store))
    assert isinstance(b_reply, m.Granted), b_reply
    assert service.pool.in_use("cad") == 3
    assert store.reservations()["cad"] >= 3
    store.close()


def test_a_wavering_load_is_not_lowered_and_raised_every_batch() -> None:
    """SPEC 13 rule 1: the batch lowers the bound to one chunk above the peak, so a load that
    goes back up by less than a chunk needs no raise (an fsync with every checkout waiting)."""
    from lanlic.core.pool import Holder, SeatPool

    pool = SeatPool([ProductEntitlement("cad", seats=16)])  # chunks of 2
    guard = RestartGuard(pool)
    guard.start(RestartState(1, bytes(32), {"cad": 16}, []), 0.0)
    guard.close_window(100.0)  # the 16 seats held after the "crash" go back to the pool
    leases = []
    for i in range(4):
        granted = pool.checkout("cad", "", bytes([i]) * 16, Holder("u", "h"), 100.0)
        assert isinstance(granted, Granted)
        leases.append(granted.lease.id)
    assert guard.snapshot().reservations == {"cad": 6}  # peak 4, and a chunk of room
    assert guard.reserved == {"cad": 6}
    pool.release([leases[0]], None, 100.0)
    for i in (8, 9, 10):
        assert guard.needed("cad") is None  # 3, 4, 5 in use: within the bound
        assert isinstance(pool.checkout("cad", "", bytes([i]) * 16, Holder("u", "h"), 100.0),
                          Granted)  # fmt: skip
    assert guard.needed("cad") == 8  # the seventh would pass it: a whole chunk more
    assert guard.snapshot().reservations == {}  # peak 6: not lowered, not wavering


def test_the_batch_looks_at_the_leases_only_when_they_changed_since_the_last_written() -> None:
    """A batch a second used to walk every lease (4 ms for 10,000, on the loop) even when only
    renews had come. It still must send again what a failed write did not take."""
    from lanlic.core.pool import Holder, Lease, SeatPool

    pool = SeatPool([ProductEntitlement("cad", seats=16)])
    guard = RestartGuard(pool)
    guard.start(RestartState(1, bytes(32), {}, []), 0.0)
    ids = []
    for i in range(3):
        granted = pool.checkout("cad", "", bytes([i]) * 16, Holder("u", "h"), 1.0)
        assert isinstance(granted, Granted)
        ids.append(granted.lease.id)
    failed = guard.snapshot()  # the store refused it: batch_written is not called
    assert sorted(r.lease_id for r in failed.added) == sorted(ids)
    again = guard.snapshot()
    assert sorted(r.lease_id for r in again.added) == sorted(ids)
    guard.batch_written(again)
    pool.renew(ids, bytes([0]) * 16, 2.0)  # renews change nothing the batch records

    # A lease slipped into the pool's table behind its change count: a batch that looked at
    # the leases would record it. (Not by replacing ``pool.lease_ids``: the compiled build's
    # pool refuses method assignment, setup.py.)
    hidden = Lease(bytes([99]) * 16, "cad", bytes([0]) * 16, Holder("u", "h"), 2.0, 2.0, 9.0)
    pool._leases[hidden.id] = hidden
    quiet = guard.snapshot()
    assert (quiet.added, quiet.removed) == ([], [])
    guard.batch_written(quiet)
    del pool._leases[hidden.id]
    pool.release([ids[1]], None, 2.0)
    changed = guard.snapshot()
    assert (changed.added, changed.removed) == ([], [(ids[1], False)])
