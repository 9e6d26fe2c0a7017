"""The borrow records' encodings and the mirror's count of borrowed seats (no etcd needed)."""

from __future__ import annotations

import json

from lanlic.cluster.borrows import BorrowEntry, Ended
from lanlic.cluster.etcd import Holder
from lanlic.cluster.mirror import SeatMirror, seat_key


def entry(slot: int = 1) -> BorrowEntry:
    return BorrowEntry(
        "b-1", "ab" * 16, "cad", "sha256:00", "ann", "lap", 1.5, 2.5, b"\x00file\xff", 3, slot
    )


def test_a_borrow_record_reads_back_as_written_and_garbage_reads_as_none() -> None:
    for slot in (1, -1):
        assert BorrowEntry.decode(entry(slot).encode()) == entry(slot)
    for raw in (b"", b"[]", b'{"borrow_id": 1}', b"\xff"):
        assert BorrowEntry.decode(raw) is None
    ended = {"state": "expired", "container_fp": "x", "end": 2.5, "at": 3.0, "by": "m1"}
    assert Ended.decode(json.dumps(ended).encode()) == Ended("expired", "x", 2.5, 3.0, "m1")
    assert Ended.decode(b"{}") is None


def test_a_borrowed_seat_key_names_no_client_and_counts_as_borrowed() -> None:
    # The value a borrow puts in the seat's key is no holder: no member adopts it, locates a
    # client lease in it, or settles it as its own claim.
    assert Holder.decode(json.dumps({"borrow": "b-1"}).encode()) is None
    mirror = SeatMirror("/p")
    mirror.load([(seat_key("/p", "cad", 0), 5, "lease-a"), (seat_key("/p", "cad", 2), 6, "")], 6)
    assert (mirror.in_use("cad"), mirror.borrowed("cad")) == (2, 1)
    assert mirror.free("cad", 3) == [1]
    mirror.delete(seat_key("/p", "cad", 2), 7, watched=True)
    assert (mirror.in_use("cad"), mirror.borrowed("cad")) == (1, 0)
