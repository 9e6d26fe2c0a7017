"""The history's batches under load: lease events are counted, not written one row each.

At 100k checkouts a second, one row per checkout and per release kept SQLite busy on the store
thread (a third of the server's time, holding the GIL the event loop needs). A batch now writes
one row per (event, product, user, host, detail) with its count, stamped with the first: the
rows follow the clients, not their requests, and who used what and when is all still there.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.restart import RestartGuard
from lanlic.store import Store

PRODUCTS = (ProductEntitlement("cad", seats=8), ProductEntitlement("render", seats=4))


async def test_a_clients_checkouts_and_releases_are_counted_rows(
    start_server, raw_peer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "lanlic.db")
    server = await start_server(products=PRODUCTS, store=store)
    ann = await raw_peer(server.address)  # "tester" on "testhost"
    for _ in range(60):
        lease = (await ann.request("checkout", product="cad", version="16"))["lease"]
        assert (await ann.request("release", leases=[lease]))["t"] == "released"
    kept = (await ann.request("checkout", product="render"))["lease"]
    await server.flush_history()

    rows = [r for r in store.history() if r.event in ("checkout", "release")]
    got = sorted((r.event, r.product, r.user, r.host, r.detail, r.count) for r in rows)
    assert got == [
        ("checkout", "cad", "tester", "testhost", "16", 60),
        ("checkout", "render", "tester", "testhost", "", 1),
        ("release", "cad", "tester", "testhost", "release", 60),
    ]
    assert [r.at for r in rows] == sorted(r.at for r in rows)
    # The next batch starts its own counts.
    assert (await ann.request("release", leases=[kept]))["t"] == "released"
    await server.flush_history()
    last = [r for r in store.history() if r.event == "release"][-1]
    assert (last.product, last.count) == ("render", 1)
    assert last.at >= max(r.at for r in rows)


async def test_the_usage_chart_counts_a_counted_row_in_full(
    start_server, raw_peer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from lanlic.admin.views import usage_series
    from lanlic.store import history as hist

    store = Store(tmp_path / "lanlic.db")
    server = await start_server(products=PRODUCTS, store=store)
    peer = await raw_peer(server.address)
    for _ in range(3):
        assert (await peer.request("checkout", product="cad"))["t"] == "granted"
    await server.flush_history()
    wall = server.wall()
    events = hist.events_since(store._db, wall - 600, ["checkout", "release"])
    assert [(p, e, n) for _, p, e, n in events] == [("cad", "checkout", 3)]
    # Walking back from 3 in use now, the three checkouts of one row bring it to 0 before.
    series = usage_series(events, {"cad": (3, 0)}, {"cad": 8}, wall - 600, wall, 300.0)
    assert series["cad"][0][1:] == [0.0, 0.0]
    assert series["cad"][1][1:] == [3.0, 0.0]


async def test_checkouts_queued_behind_a_reservation_raise_share_its_write(
    start_server, raw_peer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """SPEC 13 rule 1 at a burst: 40 checkouts in one read, 80 seats (chunks of 10), cost one
    raise on disk (the highest they ask for), not one each, nor one per chunk; every grant
    still comes after the write that covers it."""
    from lanlic.proto.framing import encode_frame

    store = Store(tmp_path / "lanlic.db")
    raises: list[str] = []
    store._db.set_trace_callback(
        lambda sql: raises.append(sql) if sql.startswith("INSERT INTO reservations") else None
    )
    server = await start_server(products=(ProductEntitlement("cad", seats=80),), store=store)
    peer = await raw_peer(server.address)
    await peer.send_raw(
        b"".join(encode_frame({"t": "checkout", "id": i, "product": "cad"}) for i in range(1, 41))
    )
    replies = [await peer.recv() for _ in range(40)]
    assert sorted(r["id"] for r in replies) == list(range(1, 41))
    assert [r["t"] for r in replies] == ["granted"] * 40, replies
    assert store.reservations() == {"cad": 40}
    assert len(raises) == 1, raises


class _SlowFirstRaise:
    """A store whose first reservation raise stays on disk until ``done`` is set; ``calls``
    lists every raise asked of it."""

    def __init__(self, store: Store) -> None:
        self.calls: list[dict[str, int]] = []
        self.done = threading.Event()
        real = store.raise_reservations

        def raise_reservations(seats: dict[str, int]) -> None:
            self.calls.append(dict(seats))
            if len(self.calls) == 1:
                self.done.wait(10)
            real(seats)

        store.raise_reservations = raise_reservations  # type: ignore[method-assign]

    async def pending(self, guard: RestartGuard, n: int) -> None:
        """Until ``n`` grants wait for a raise (and one was asked for); bounded: 5 s."""
        for _ in range(500):
            if guard.pending["cad"] == n and self.calls:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"pending {guard.pending['cad']}, not {n}; calls {self.calls}")


async def test_checkouts_arriving_during_a_raise_share_the_next_write(
    start_server, raw_peer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The saturate bench's ~1 s stall: at its start every checkout needs a raise, and each one
    was a trip of its own to the store thread, one write (fsync) per chunk after another, every
    checkout behind them waiting. Checkouts that arrive while a raise is on disk now wait for
    one more write, whatever their number: two trips to the store thread for 40 checkouts in
    five reads, however slow the disk."""
    from lanlic.proto.framing import encode_frame

    store = Store(tmp_path / "lanlic.db")
    slow = _SlowFirstRaise(store)  # the first write takes until every read below has arrived
    calls = slow.calls
    server = await start_server(products=(ProductEntitlement("cad", seats=80),), store=store)
    guard = server.service.guard
    peers = [await raw_peer(server.address) for _ in range(5)]

    ids = iter(range(1, 41))
    for k, peer in enumerate(peers):
        await peer.send_raw(
            b"".join(
                encode_frame({"t": "checkout", "id": next(ids), "product": "cad"}) for _ in range(8)
            )
        )
        await slow.pending(guard, 8 * (k + 1))  # every checkout so far waits for a raise
    slow.done.set()
    replies = [await peer.recv() for peer in peers for _ in range(8)]
    assert sorted(r["id"] for r in replies) == list(range(1, 41))
    assert [r["t"] for r in replies] == ["granted"] * 40, replies
    assert calls == [{"cad": 10}, {"cad": 40}]
    assert store.reservations() == {"cad": 40}
    assert guard.pending["cad"] == 0 and guard.reserved["cad"] == 40


async def test_checkouts_arriving_during_a_raise_that_covers_them_need_no_second_trip(
    start_server, raw_peer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A raise writes a whole chunk: checkouts that arrive while it is on disk and fit in it are
    granted when it lands, not after a second trip to the store's thread that writes nothing
    (in the burst bench that trip waited up to 120 ms for the GIL and a CPU). Never before it
    lands, and never past it: the next checkout beyond the chunk still waits for its own raise."""
    from lanlic.proto.framing import encode_frame

    store = Store(tmp_path / "lanlic.db")
    slow = _SlowFirstRaise(store)  # the first write lasts until the second peer's checkouts wait
    calls = slow.calls
    server = await start_server(products=(ProductEntitlement("cad", seats=80),), store=store)
    guard = server.service.guard
    first, second = await raw_peer(server.address), await raw_peer(server.address)

    await first.send_raw(
        b"".join(encode_frame({"t": "checkout", "id": i, "product": "cad"}) for i in range(1, 9))
    )
    await slow.pending(guard, 8)  # the raise to 10 (one chunk) is on disk for these 8
    await second.send_raw(
        b"".join(encode_frame({"t": "checkout", "id": i, "product": "cad"}) for i in (9, 10))
    )
    await slow.pending(guard, 10)  # two more that fit in the chunk under way
    assert server.service.pool.in_use("cad") == 0  # nothing granted before the write lands
    slow.done.set()
    replies = [await first.recv() for _ in range(8)] + [await second.recv() for _ in range(2)]
    assert [r["t"] for r in replies] == ["granted"] * 10, replies
    assert calls == [{"cad": 10}]
    assert guard.pending["cad"] == 0 and guard.reserved["cad"] == 10
    # The eleventh is past the chunk: it waits for a raise of its own.
    assert (await second.request("checkout", product="cad"))["t"] == "granted"
    assert calls == [{"cad": 10}, {"cad": 20}]
    assert store.reservations() == {"cad": 20}


async def test_a_failed_group_raise_refuses_every_checkout_in_it_and_grants_none(
    start_server, raw_peer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The disk refusing a grouped raise answers each checkout waiting on it ``store_failed``:
    none is granted past the reservation on disk, and the next raise starts afresh."""
    from lanlic.proto.framing import encode_frame

    store = Store(tmp_path / "lanlic.db")
    failing = [True]
    real = store.raise_reservations

    def raise_reservations(seats: dict[str, int]) -> None:
        if failing[0]:
            raise OSError(28, "No space left on device")
        real(seats)

    store.raise_reservations = raise_reservations  # type: ignore[method-assign]
    server = await start_server(products=(ProductEntitlement("cad", seats=80),), store=store)
    peers = [await raw_peer(server.address) for _ in range(3)]
    for k, peer in enumerate(peers):
        await peer.send_raw(
            b"".join(
                encode_frame({"t": "checkout", "id": 10 * k + i, "product": "cad"})
                for i in range(1, 9)
            )
        )
    replies = [await peer.recv() for peer in peers for _ in range(8)]
    assert {(r["t"], r.get("code")) for r in replies} == {("error", "store_failed")}
    guard = server.service.guard
    assert server.service.pool.in_use("cad") == 0
    assert guard.pending["cad"] == 0 and guard.reserved.get("cad", 0) == 0
    assert store.reservations().get("cad", 0) == 0
    failing[0] = False
    granted = await peers[0].request("checkout", product="cad")
    assert granted["t"] == "granted"
    assert store.reservations() == {"cad": 10}
