"""The pure parts of the cluster store: the fence and the seat mirror (no etcd, time passed in)."""

from __future__ import annotations

from lanlic.cluster.fence import Fence
from lanlic.cluster.mirror import SeatMirror, parse_seat_key, seat_key


def test_fence_closed_until_a_keepalive_proves_the_lease() -> None:
    f = Fence(margin=0.25)
    assert not f.may_answer(0.0, 1.0)
    f.keepalive_answered(sent_at=10.0, ttl=3)
    assert f.may_answer(10.5, 1.0)  # 10.5 + 1 + 0.25 < 13
    assert not f.may_answer(11.75, 1.0)  # the client's lease would reach the lease's expiry


def test_fence_counts_from_the_send_time_not_the_reply() -> None:
    f = Fence(margin=0.0)
    # A keepalive sent at 10 and answered much later proves the lease only until 10 + ttl.
    f.keepalive_answered(sent_at=10.0, ttl=3)
    assert f.alive_until == 13.0
    f.keepalive_answered(sent_at=9.0, ttl=3)  # a late reply to an older keepalive
    assert f.alive_until == 13.0


def test_fence_stays_shut_once_etcd_says_the_lease_is_gone() -> None:
    f = Fence()
    f.keepalive_answered(0.0, 5)
    f.keepalive_answered(1.0, 0)
    assert f.lost and not f.may_answer(1.0, 0.0)
    f.keepalive_answered(2.0, 5)
    assert not f.may_answer(2.0, 0.0)
    f.reset()
    f.keepalive_answered(3.0, 5)
    assert f.may_answer(3.0, 1.0)


def test_mirror_tracks_taken_seats_and_ignores_stale_events() -> None:
    m = SeatMirror("/site")
    m.load([(seat_key("/site", "cad", 0), 5, "l0"), (b"/site/other", 6, "")], revision=7)
    assert m.free("cad", 3) == [1, 2] and m.revision == 7
    m.put(seat_key("/site", "cad", 2), 9)
    assert m.free("cad", 3) == [1]
    m.delete(seat_key("/site", "cad", 2), 8)  # older than the put we saw: ignored
    assert m.free("cad", 3) == [1]
    m.delete(seat_key("/site", "cad", 2), 10)
    assert m.free("cad", 3) == [1, 2] and m.in_use("cad") == 1


def test_seat_keys_round_trip_and_reject_strangers() -> None:
    assert parse_seat_key("/s", seat_key("/s", "a/b", 12)) == ("a/b", 12)
    assert parse_seat_key("/s", b"/s/seats/cad/x") is None
    assert parse_seat_key("/s", b"/t/seats/cad/1") is None


def test_mirror_finds_the_seat_a_lease_names_and_forgets_it_when_the_seat_changes() -> None:
    m = SeatMirror("/site")
    m.load([(seat_key("/site", "cad", 0), 5, "l0")], revision=5)
    assert m.seat_of("l0") == ("cad", 0)
    m.put(seat_key("/site", "cad", 1), 6, "l1")
    assert m.seat_of("l1") == ("cad", 1)
    m.put(seat_key("/site", "cad", 1), 4, "stale")  # older than what we know: ignored
    assert m.seat_of("stale") is None and m.seat_of("l1") == ("cad", 1)
    m.put(seat_key("/site", "cad", 1), 7, "l2")  # the seat changed hands: l1 no longer names it
    assert m.seat_of("l1") is None and m.seat_of("l2") == ("cad", 1)
    m.delete(seat_key("/site", "cad", 0), 8)
    assert m.seat_of("l0") is None


def test_a_transaction_reply_does_not_move_where_the_watch_resumes() -> None:
    """Our own claim's reply (revision 10) arrives before the watch has shown another member's
    delete (revision 9): a watch resumed after a break must still show that delete, or the seat
    looks taken for good (found by the leader-kill process test: a seat no member would grant)."""
    m = SeatMirror("/site")
    m.load([(seat_key("/site", "cad", 0), 5, "l0")], revision=8)
    m.put(seat_key("/site", "cad", 1), 10, "mine")  # a transaction's reply
    assert m.revision == 8  # the watch resumes at 9
    m.delete(seat_key("/site", "cad", 0), 9, watched=True)  # ... and shows the delete
    m.put(seat_key("/site", "cad", 1), 10, "mine", watched=True)
    assert m.free("cad", 2) == [0] and m.revision == 10


def test_a_reply_read_before_a_delete_the_watch_showed_does_not_bring_the_seat_back() -> None:
    """Our claim on seat 1 lost to another member's key (put at 9); the watch shows that key
    deleted at 11 before our transaction's reply, which read the key at 9, is handled. The seat
    is free: the stale reply must not mark it taken (it stayed so until the key changed again,
    and with the pool otherwise full the member refused every checkout with a seat free in
    etcd: the leader-kill process test's "fewer than 6 seats")."""
    m = SeatMirror("/site")
    m.load([], revision=8)
    m.put(seat_key("/site", "cad", 1), 9, "theirs", watched=True)
    m.delete(seat_key("/site", "cad", 1), 11, watched=True)
    m.put(seat_key("/site", "cad", 1), 9, "theirs")  # the late reply of our losing claim
    assert m.free("cad", 2) == [0, 1] and m.seat_of("theirs") is None
    # Likewise a key read at a revision older than a full read that no longer had it.
    m.load([], revision=20)
    m.put(seat_key("/site", "cad", 0), 15, "old")
    assert m.free("cad", 2) == [0, 1]
    # A newer put (the seat taken again) counts.
    m.put(seat_key("/site", "cad", 1), 21, "new")
    assert m.free("cad", 2) == [0] and m.seat_of("new") == ("cad", 1)
