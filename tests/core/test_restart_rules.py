"""The restart guard's rules one at a time, sans-IO (a real ``SeatPool``, no store, no loop):
lease ids and their tags, who may take a seat back, held seats, the reservation arithmetic of
SPEC section 13, the lease batch and the window. Fast, so that each rule is held by a test that
runs in milliseconds; test_restart_reclaim.py and the state machine hold the same rules through
the real server and its store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Denied, Granted, Holder, SeatPool
from lanlic.core.records import LeaseRecord
from lanlic.core.restart import RestartGuard, RestartState
from lanlic.core.service import LicenseService, Session
from lanlic.proto import messages as m

KEY = bytes(range(32))
"""The database's lease key (any 32 bytes)."""
ALICE, BOB = b"\x01" * 16, b"\x02" * 16
HOLDER = Holder("ann", "ws-1")
LEASE = 60.0
T = 100.0
PRODUCTS = (
    ProductEntitlement("cad", seats=16, versions=("10", "12")),
    ProductEntitlement("sim", seats=9),
    ProductEntitlement("cam", seats=2),
)


def new_pool(products: Iterable[ProductEntitlement] = PRODUCTS) -> SeatPool:
    return SeatPool(products, lease_seconds=LEASE)


def tag(key: bytes, epoch: int, head: bytes, owner: bytes, product: str) -> bytes:
    """SPEC 13.3's tag, computed here on its own: keyed BLAKE2s (8 bytes, personalised
    ``lanlicLs``) over the epoch (8 bytes, big-endian), the id's first 8 bytes, the client id
    and the product. The ids of one version must check in the next (an upgrade across a
    crash), so the derivation is pinned, not just "some keyed hash"."""
    h = hashlib.blake2s(key=key, digest_size=8, person=b"lanlicLs")
    h.update(epoch.to_bytes(8, "big") + head + owner + product.encode())
    return h.digest()


def lease_id(
    epoch: int, batch: int, owner: bytes, product: str, nonce: bytes = b"\x5a" * 4
) -> bytes:
    head = batch.to_bytes(4, "big") + nonce
    return head + tag(KEY, epoch, head, owner, product)


def record(lease: bytes, owner: bytes = ALICE, product: str = "cad", epoch: int = 1) -> LeaseRecord:
    return LeaseRecord(lease, product, owner, "ann", "ws-1", epoch)


def start(
    epoch: int = 2,
    reservations: dict[str, int] | None = None,
    leases: Iterable[LeaseRecord] = (),
    dead: Iterable[bytes] = (),
    open_epochs: dict[int, int] | None = None,
    pool: SeatPool | None = None,
) -> tuple[RestartGuard, dict[str, int]]:
    guard = RestartGuard(pool if pool is not None else new_pool())
    state = RestartState(
        epoch, KEY, reservations or {}, list(leases), frozenset(dead), open_epochs or {}
    )
    return guard, guard.start(state, T)


def take_back(guard: RestartGuard, lease: bytes, owner: bytes = ALICE, product: str = "cad",
              version: str = "11") -> Denied | None:  # fmt: skip
    return guard.reclaim(lease, product, version, owner, HOLDER, T + 1)


def lease_unknown(why: str) -> Denied:
    return Denied("lease_unknown", why)


# ------------------------------------------------------------------------------ lease ids


def test_a_lease_id_is_its_batch_number_a_random_part_and_a_tag_for_owner_product_and_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guard, _ = start(epoch=7)
    pool = guard.pool
    monkeypatch.setattr(pool, "random_bytes", lambda n: b"\xa5" * n)  # the CSPRNG, fixed
    for _ in range(2):
        guard.batch_written(guard.snapshot())  # two batches written: ids now carry batch 3
    granted = pool.checkout("cad", "11", ALICE, HOLDER, T)
    assert isinstance(granted, Granted)
    head = (3).to_bytes(4, "big") + b"\xa5" * 4
    assert granted.lease.id == head + tag(KEY, 7, head, ALICE, "cad")
    assert guard.mint(BOB, "cad")[8:] == tag(KEY, 7, head, BOB, "cad")
    assert guard.mint(ALICE, "sim")[8:] == tag(KEY, 7, head, ALICE, "sim")


def test_a_start_begins_its_epoch_at_batch_one_and_makes_the_pools_ids() -> None:
    pool = new_pool()
    guard = RestartGuard(pool)
    assert (guard.enabled, guard.epoch, guard.reclaim_until, pool.mint) == (False, 0, 0.0, None)
    guard.batch_no = 9  # left over from an earlier life of the same object
    guard.start(RestartState(4, KEY, {}, []), T)
    assert (guard.enabled, guard.epoch, guard.batch_no) == (True, 4, 1)
    assert pool.mint == guard.mint
    minted = guard.mint(ALICE, "cad")
    assert minted[:4] == b"\0\0\0\1" and minted[8:] == tag(KEY, 4, minted[:8], ALICE, "cad")


def test_without_a_data_folder_there_is_no_guard_no_reservation_and_no_epoch(
    vendor_key: Ed25519PrivateKey,
) -> None:
    """A server with no store never starts its guard: a checkout is granted at once (no
    reservation write), under epoch 0, and nothing can be taken back."""
    service = LicenseService(make_key(vendor_key, PRODUCTS), Ed25519PrivateKey.generate())
    session = Session()
    service.handle(session, m.Hello(1, [1], ALICE, "ann", "ws-1"), T, 0.0)
    reply = service.handle(session, m.Checkout(2, "cad", "11"), T, 0.0)
    assert reply.durable is None and isinstance(reply.message, m.Granted), reply
    assert reply.message.epoch == 0
    assert not service.guard.in_window(0.5) and not service.guard.reclaimable()
    lost = service.handle(session, m.Renew(3, [lease_id(1, 1, ALICE, "cad")]), T, 0.0)
    assert isinstance(lost.message, m.Renewed)
    assert [x.code for x in lost.message.lost] == ["lease_unknown"]
    assert service.guard.identify(lease_id(1, 1, ALICE, "cad"), ALICE) is None


# ------------------------------------------------------------------- who may take a seat back


def test_a_lease_granted_after_the_last_batch_comes_back_only_to_its_client_and_product() -> None:
    # Epoch 1 wrote 4 batches; ids of batch 5 were granted after the last one.
    after = lease_id(1, 5, ALICE, "cad")
    guard, held = start(reservations={"cad": 2}, open_epochs={1: 4})
    assert held == {"cad": 2}
    assert take_back(guard, after, owner=BOB) == lease_unknown(
        "this server granted no such lease to this client"
    )
    assert take_back(guard, after, product="sim") is not None
    forged = after[:8] + bytes(8)
    assert take_back(guard, forged) is not None
    assert guard.pool.held("cad") == 2  # refusals take nothing
    assert take_back(guard, after) is None
    lease = guard.pool.lease(after)
    assert lease is not None and (lease.owner, lease.product) == (ALICE, "cad")
    assert lease.holder == HOLDER and guard.pool.held("cad") == 1


def test_a_lease_of_a_batch_already_written_is_not_taken_back_on_its_tag() -> None:
    """Batch 4 was the last written: a lease of batch 4 or earlier that it did not record had
    ended; one of batch 5 was granted after it."""
    guard, _ = start(reservations={"cad": 2}, open_epochs={1: 4})
    assert take_back(guard, lease_id(1, 4, ALICE, "cad")) is not None
    assert take_back(guard, lease_id(1, 1, ALICE, "cad")) is not None
    assert take_back(guard, lease_id(1, 5, ALICE, "cad")) is None


def test_each_open_epoch_checks_its_own_leases() -> None:
    """Two crashes in a row: epoch 1 wrote 6 batches, epoch 2 none. A lease of epoch 2's
    first batch is its (epoch 1 had written batch 1, so not epoch 1's), and only epoch 2's key
    checks it."""
    of_epoch_2 = lease_id(2, 1, ALICE, "cad")
    of_epoch_1 = lease_id(1, 7, BOB, "cad")
    guard, _ = start(epoch=3, reservations={"cad": 3}, open_epochs={1: 6, 2: 0})
    assert take_back(guard, of_epoch_2) is None
    assert take_back(guard, of_epoch_1, owner=BOB) is None
    assert take_back(guard, lease_id(2, 1, BOB, "cad")) is not None  # Bob's, asked by Alice
    assert take_back(guard, lease_id(5, 1, ALICE, "cad")) is not None  # no such open epoch


def test_an_epoch_not_older_than_this_one_is_never_open() -> None:
    guard, _ = start(epoch=2, reservations={"cad": 2}, open_epochs={1: 0, 2: 0, 3: 0})
    assert take_back(guard, lease_id(1, 1, ALICE, "cad")) is None
    assert take_back(guard, lease_id(2, 1, ALICE, "cad")) is not None
    assert take_back(guard, lease_id(3, 1, ALICE, "cad")) is not None


def test_a_recorded_lease_comes_back_only_to_the_client_and_product_recorded() -> None:
    rec = record(b"R" * 16, ALICE, "cad", epoch=1)
    guard, _ = start(reservations={"cad": 1}, leases=[rec], open_epochs={1: 3})
    assert guard.reclaimable()
    assert take_back(guard, rec.lease_id, owner=BOB) == lease_unknown(
        "that lease was someone else's"
    )
    assert take_back(guard, rec.lease_id, product="sim") == lease_unknown(
        "that lease was someone else's"
    )
    assert guard.pool.held("cad") == 1
    assert take_back(guard, rec.lease_id) is None
    assert guard.pool.held("cad") == 0
    # A retry gets the same lease, no second seat; another client or product is refused.
    assert take_back(guard, rec.lease_id) is None
    assert guard.pool.in_use("cad") == 1
    assert take_back(guard, rec.lease_id, owner=BOB) == lease_unknown(
        "that lease is not this client's"
    )
    assert take_back(guard, rec.lease_id, product="sim") == lease_unknown(
        "that lease is not this client's"
    )
    # Taken back, then ended: never again, not even to its client.
    assert guard.pool.release([rec.lease_id], ALICE, T + 2).released
    assert take_back(guard, rec.lease_id) == lease_unknown(
        "that lease ended after it was taken back"
    )


def test_a_lease_taken_back_and_ended_in_an_earlier_life_is_dead() -> None:
    rec = record(b"D" * 16, epoch=1)
    after = lease_id(1, 9, ALICE, "cad")
    guard, _ = start(reservations={"cad": 2}, leases=[rec], dead={after}, open_epochs={1: 8})
    assert take_back(guard, after) == lease_unknown("that lease ended after it was taken back")
    assert take_back(guard, rec.lease_id) is None  # the live one of the same life comes back


def test_unknown_product_and_unlicensed_version_are_refused_first() -> None:
    after = lease_id(1, 1, ALICE, "cad")
    guard, _ = start(reservations={"cad": 1}, open_epochs={1: 0})
    assert take_back(guard, after, product="nope") == Denied(
        "unknown_product", "no product 'nope' in the network key"
    )
    assert take_back(guard, after, version="13") == Denied(
        "version_not_licensed", "cad version '13' not licensed"
    )
    assert guard.pool.held("cad") == 1 and guard.pool.lease(after) is None
    assert take_back(guard, after, version="12") is None


def test_a_lease_of_this_epoch_is_no_one_elses_to_take_back() -> None:
    guard, _ = start(reservations={"cad": 4})
    guard.close_window(T + LEASE)
    mine = guard.pool.checkout("cad", "11", ALICE, HOLDER, T)
    assert isinstance(mine, Granted)
    assert take_back(guard, mine.lease.id, owner=BOB) == lease_unknown(
        "that lease is not this client's"
    )
    assert take_back(guard, mine.lease.id) is None  # its own: nothing to do


# ------------------------------------------------------------------------ held seats


def test_a_start_holds_the_reservations_of_the_keys_products_only() -> None:
    pool = new_pool()
    assert pool.take_borrowed("cam", T)
    guard, held = start(reservations={"cad": 3, "sim": 0, "cam": 2, "gone": 5}, pool=pool)
    assert held == {"cad": 3, "cam": 1}  # cam: seats less borrowed; sim: nothing to hold
    assert guard.reserved == {"cad": 3, "sim": 0, "cam": 2}
    assert guard.reclaim_until == T + LEASE and guard.in_window(T + LEASE - 0.01)
    assert not guard.in_window(T + LEASE)


def test_a_reclaim_with_no_held_seat_left_needs_the_reservation_to_cover_it() -> None:
    """A free seat is taken only within the reservation on disk; past it the client is told
    to retry while the raise is written (the server writes it first: service._take_back)."""
    a, b = lease_id(1, 1, ALICE, "cad"), lease_id(1, 1, BOB, "cad")
    guard, _ = start(reservations={"cad": 1}, open_epochs={1: 0})
    assert take_back(guard, a) is None  # the held seat
    assert take_back(guard, b, owner=BOB) == Denied(
        "server_busy", "the seat's reservation is being raised; retry"
    )
    assert guard.pool.lease(b) is None
    guard.raised("cad", 2)
    assert take_back(guard, b, owner=BOB) is None
    assert guard.pool.in_use("cad") == 2 and guard.pool.held("cad") == 0


def test_a_reclaim_that_finds_no_seat_at_all_is_refused_and_can_come_back_later() -> None:
    pool = new_pool()
    for _ in range(2):
        assert pool.take_borrowed("cam", T)
    rec = record(b"C" * 16, product="cam")
    guard, held = start(reservations={"cam": 2}, leases=[rec], pool=pool)
    assert held == {}
    assert guard.reclaim(rec.lease_id, "cam", "", ALICE, HOLDER, T) == Denied(
        "no_seat", "all 2 seats of cam are in use (2 borrowed)"
    )
    assert pool.lease(rec.lease_id) is None and pool.in_use("cam") == 0
    pool.return_borrowed("cam")
    assert guard.reclaim(rec.lease_id, "cam", "", ALICE, HOLDER, T) is None
    assert pool.lease(rec.lease_id) is not None


def test_beyond_held_counts_only_the_reclaims_that_will_succeed() -> None:
    rec = record(b"R" * 16)
    after = [lease_id(1, 3, ALICE, "cad", bytes([i]) * 4) for i in range(3)]
    guard, _ = start(reservations={"cad": 1}, leases=[rec], open_epochs={1: 2})
    assert guard.beyond_held([(rec.lease_id, "cad", ""), (after[0], "cad", "")], ALICE) == {
        "cad": 1
    }
    assert guard.beyond_held([(rec.lease_id, "cad", "")], ALICE) == {}  # the held one covers it
    assert guard.beyond_held([(x, "cad", "") for x in after], ALICE) == {"cad": 2}
    refused = [
        (rec.lease_id, "cad", ""),  # another client's
        (after[0], "cad", ""),  # not granted to Bob
        (after[1], "sim", ""),  # another product
        (lease_id(1, 2, BOB, "cad"), "cad", ""),  # of a batch written: it had ended
        (b"x" * 16, "cad", ""),
        (after[2], "nope", ""),
    ]
    assert guard.beyond_held(refused * 3, BOB) == {}
    guard.raised("cad", 4)
    assert take_back(guard, after[0]) is None and take_back(guard, after[1]) is None
    guard.pool.release([after[1]], ALICE, T + 2)
    # Taken back already (a retry: no new seat), or taken back and ended: none counts.
    items = [(after[0], "cad", ""), (after[1], "cad", ""), (after[2], "cad", "")]
    assert guard.beyond_held(items, ALICE) == {"cad": 1}


def test_beyond_held_counts_dead_leases_as_nothing() -> None:
    after = lease_id(1, 3, ALICE, "cad")
    guard, _ = start(reservations={"sim": 1}, dead={after}, open_epochs={1: 2})
    assert guard.beyond_held([(after, "cad", "")], ALICE) == {}
    assert guard.beyond_held([(lease_id(1, 3, ALICE, "cad", b"new!"), "cad", "")], ALICE) == {
        "cad": 1
    }


def test_identify_names_the_product_of_a_lease_its_client_may_take_back() -> None:
    rec = record(b"R" * 16, product="sim")
    after = lease_id(1, 4, ALICE, "cam")
    guard, _ = start(
        reservations={"cad": 1, "cam": 1}, leases=[rec], dead={b"D" * 16}, open_epochs={1: 3}
    )
    assert guard.identify(rec.lease_id, ALICE) == "sim"
    assert guard.identify(rec.lease_id, BOB) is None
    assert guard.identify(after, ALICE) == "cam"
    assert guard.identify(after, BOB) is None
    assert guard.identify(lease_id(1, 3, ALICE, "cam"), ALICE) is None
    assert guard.identify(b"D" * 16, ALICE) is None
    assert guard.reclaim(after, "cam", "", ALICE, HOLDER, T) is None
    guard.pool.release([after], ALICE, T)
    assert guard.identify(after, ALICE) is None  # taken back and ended


# -------------------------------------------------------------------- reservations (13.1)


def test_a_reservation_rises_in_chunks_of_an_eighth_of_the_seats() -> None:
    guard, _ = start()
    pool = guard.pool
    # 16 seats: chunks of 2; 9 seats: of 2 (an eighth, rounded up); 2 seats: of 1.
    assert (guard.needed("cad"), guard.needed("sim"), guard.needed("cam")) == (2, 2, 1)
    assert guard.needed("cad", 5) == 6  # more at once than a chunk: whole chunks of them
    guard.raised("cad", 2)
    assert pool.checkout("cad", "11", ALICE, HOLDER, T)
    assert guard.needed("cad") is None  # 1 in use + 1 more fits in 2
    assert pool.checkout("cad", "11", ALICE, HOLDER, T)
    assert guard.needed("cad") == 4
    guard.raised("cad", 15)
    for _ in range(13):
        assert isinstance(pool.checkout("cad", "11", ALICE, HOLDER, T), Granted)
    assert guard.needed("cad") == 16  # never past the key's seats
    guard.raised("sim", 8)
    assert guard.needed("sim") is None
    for _ in range(8):
        pool.checkout("sim", "", ALICE, HOLDER, T)
    assert guard.needed("sim") == 9


def test_held_seats_and_raises_in_flight_count_against_the_reservation() -> None:
    guard, held = start(reservations={"cad": 3})
    assert held == {"cad": 3}
    assert guard.needed("cad") == 5  # 3 held + 1 more, and a chunk above 3
    guard.raised("cad", 5)
    assert guard.needed("cad") is None and guard.needed("cad", 2) is None
    guard.pending["cad"] += 1  # a grant waiting for its write has a claim on the room
    assert guard.needed("cad") is None and guard.needed("cad", 2) == 7


def test_a_raise_never_lowers_the_reservation() -> None:
    guard, _ = start(reservations={"cad": 5})
    guard.raised("cad", 1)
    guard.raised("sim", 0)
    assert guard.reserved == {"cad": 5}
    guard.raised("cad", 6)
    guard.raised("sim", 1)
    assert (guard.reserved["cad"], guard.reserved["sim"]) == (6, 1)


def test_covers_one_more_counts_the_held_seats() -> None:
    guard, _ = start(reservations={"cad": 3})
    assert not guard.covers_one_more("cad")  # 3 held fill the 3 reserved
    assert not guard.covers_one_more("sim")  # nothing reserved
    guard.raised("cad", 4)
    assert guard.covers_one_more("cad")
    assert guard.pool.checkout("cad", "11", ALICE, HOLDER, T)
    assert not guard.covers_one_more("cad")  # 1 in use + 3 held = 4


def test_the_batch_lowers_an_idle_reservation_to_a_chunk_above_the_peak() -> None:
    guard, _ = start()
    pool = guard.pool
    guard.raised("cad", 10)
    guard.raised("sim", 6)
    leases = [pool.checkout("cad", "11", ALICE, HOLDER, T) for _ in range(4)]
    for x in leases[1:]:
        assert isinstance(x, Granted) and pool.release([x.lease.id], ALICE, T).released
    for _ in range(4):
        pool.checkout("sim", "", ALICE, HOLDER, T)
    # cad: 10 reserved, at most 4 in use since the last batch: down to a chunk above, 4 + 2.
    # sim: 6 reserved, 4 in use: 6 is 4 + 2 already, it stays.
    batch = guard.snapshot()
    assert batch.reservations == {"cad": 6}
    assert guard.reserved["cad"] == 6 and guard.reserved["sim"] == 6
    # The next batch sees the new peak (1 in use): down to 1 + 2.
    assert guard.snapshot().reservations == {"cad": 3}
    assert guard.snapshot().reservations == {}


def test_no_lowering_under_a_raise_in_flight_nor_below_the_held_seats() -> None:
    guard, _ = start(reservations={"cad": 12, "sim": 9})
    guard.pool.release_holds()
    guard.pool.hold("cad", 3)  # 3 still held for reclaims
    guard.pending["sim"] += 1
    assert guard.to_lower() == {"cad": 5}  # the 3 held and a chunk of 2
    assert guard.reserved == {"cad": 5, "sim": 9}


# ------------------------------------------------------------------- the lease batch (13.2)


def test_a_batch_records_grants_and_ends_and_its_write_moves_the_baseline() -> None:
    rec = record(b"R" * 16, epoch=1)
    gone = record(b"G" * 16, owner=BOB, epoch=1)
    guard, _ = start(epoch=2, reservations={"cad": 3}, leases=[rec, gone], open_epochs={1: 5})
    pool = guard.pool
    after = lease_id(1, 6, ALICE, "cad")
    assert take_back(guard, after) is None
    new = pool.checkout("sim", "", BOB, Holder("bob", "ws-2"), T)
    assert isinstance(new, Granted)
    first = guard.snapshot()
    assert (first.epoch, first.number, first.clean, first.close_below) == (2, 1, False, 0)
    # The taken-back lease keeps its epoch; the recorded ones not yet taken back stay as they
    # are (neither added again nor removed).
    assert sorted(first.added, key=lambda r: r.product) == [
        LeaseRecord(after, "cad", ALICE, "ann", "ws-1", 1),
        LeaseRecord(new.lease.id, "sim", BOB, "bob", "ws-2", 2),
    ]
    assert first.removed == []
    # Not written yet: the next batch still carries them.
    assert len(guard.snapshot().added) == 2
    guard.batch_written(first)
    assert guard.snapshot().added == []
    # Ended: the one taken back from the open epoch 1 is kept (marked ended), the new one is
    # deleted; the window's end drops the recorded ones nobody took back, kept as well.
    pool.release([after], ALICE, T)
    pool.release([new.lease.id], BOB, T)
    ended = guard.snapshot()
    assert sorted(ended.removed) == sorted([(after, True), (new.lease.id, False)])
    guard.batch_written(ended)
    guard.close_window(T + LEASE)
    closing = guard.snapshot()
    assert sorted(closing.removed) == [(gone.lease_id, False), (rec.lease_id, False)]
    assert closing.close_below == 2
    guard.batch_written(closing)
    last = guard.snapshot()
    assert (last.epoch, last.number, last.added, last.removed, last.close_below) == (
        2, 6, [], [], 0
    )  # fmt: skip
    assert not last.clean


def test_a_clean_stops_batch_holds_the_exact_reservations() -> None:
    guard, _ = start(reservations={"cad": 9, "sim": 1})
    pool = guard.pool
    for _ in range(2):
        pool.checkout("cad", "11", ALICE, HOLDER, T)
    guard.pending["cam"] += 1
    batch = guard.snapshot(clean=True)
    assert batch.clean and len(batch.added) == 2
    # In use + held + raises in flight, for every product (cad: 2 + 9 held).
    assert batch.reservations == {"cad": 11, "sim": 1, "cam": 1}
    assert guard.reserved == batch.reservations


def test_with_nothing_held_or_recorded_there_is_no_window_and_old_epochs_close_at_once() -> None:
    guard, held = start(epoch=5, open_epochs={3: 2, 4: 0})
    assert held == {} and guard.reclaim_until == 0.0 and not guard.in_window(T)
    assert not guard.reclaimable()
    assert take_back(guard, lease_id(4, 1, ALICE, "cad")) is not None
    batch = guard.snapshot()
    assert batch.close_below == 5
    guard.batch_written(batch)
    assert guard.snapshot().close_below == 0
    # With no older epoch at all there is nothing to close.
    quiet, _ = start(epoch=1)
    assert quiet.snapshot().close_below == 0


def test_a_failed_batch_write_closes_the_epochs_in_the_next_one() -> None:
    guard, _ = start(epoch=5, open_epochs={4: 0})
    assert guard.snapshot().close_below == 5  # not written (the disk said no) ...
    assert guard.snapshot().close_below == 5  # ... so the next one closes them


# ------------------------------------------------------------------- the window's end (13.7)


def test_the_window_ends_after_one_lease_period_and_gives_the_held_seats_back() -> None:
    rec = record(b"R" * 16)
    guard, _ = start(reservations={"cad": 3, "cam": 1}, leases=[rec], open_epochs={1: 2})
    assert guard.close_window(T + LEASE - 0.5) == {}
    assert guard.pool.held("cad") == 3 and guard.reclaimable()
    assert guard.close_window(T + LEASE) == {"cad": 3, "cam": 1}
    assert guard.reclaim_until == 0.0 and not guard.reclaimable()
    assert guard.pool.held("cad") == 0 and guard.pool.free("cad") == 16
    assert guard.close_window(T + 2 * LEASE) == {}  # once
    assert take_back(guard, rec.lease_id) is not None
    assert take_back(guard, lease_id(1, 3, ALICE, "cad")) is not None
    assert guard.identify(rec.lease_id, ALICE) is None


def test_no_window_no_closing() -> None:
    guard, _ = start()
    assert guard.reclaim_until == 0.0
    guard.pool.hold("cad", 2)  # not the guard's: no window to end
    assert guard.close_window(T + 10 * LEASE) == {}
    assert guard.pool.held("cad") == 2


def test_a_small_products_reservation_keeps_one_seat_of_slack() -> None:
    """2 seats: a chunk is one seat. 2 reserved and none in use since the last batch: down to
    one seat of slack, and no further."""
    guard, _ = start()
    guard.raised("cam", 2)
    assert guard.to_lower() == {"cam": 1}
    assert guard.to_lower() == {}
