"""The seat queue in a cluster (issue 16, SPEC 16 ``wait``): one line per product shared by the
members, on real ``lanlic serve --store etcd://`` processes over a real 3-member etcd, with real
clients. A waiter is a key in etcd under its member's lease, ordered by its create revision; a
seat freed anywhere goes to the head of the line wherever it waits, and a plain checkout never
jumps the line.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest
from cliproc import ok, run
from etcd_cluster import EtcdCluster
from test_cluster_members import (
    Auditor,
    Member,
    Site,
    closed,
    open_site,
    prefix_of,
    start_member,
)

from lanlic.cluster.queue import WaitLine, waiter_key
from lanlic.errors import NoSeat
from lanlic.laptop.trust import TrustStore
from lanlic.net.client import Client, Seat

SEATS = 2


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with open_site(tmp_path, f"cad:{SEATS}") as s:
        yield s


async def queue_keys(etcd: aetcd.Client, prefix: str) -> list[bytes]:
    """The waiters' keys in etcd, first in line (lowest create revision) first."""
    got = await etcd.get_prefix(f"{prefix}/queue/".encode())
    return [bytes(kv.key) for kv in sorted(got, key=lambda kv: int(kv.create_revision))]


async def until(check: object, what: str, seconds: float = 10.0) -> None:
    """Wait (bounded) until ``check()`` is true."""
    assert callable(check)
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


async def test_a_freed_seat_goes_to_the_head_of_the_shared_line_on_any_member(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    endpoints = etcd_cluster.endpoints
    a = await start_member(site, site.data("a"), endpoints)
    b = await start_member(site, site.data("b", identity_of="a"), endpoints[1:] + endpoints[:1])
    prefix = prefix_of(site)
    auditor = Auditor(etcd, prefix)
    clients: list[Client] = []

    def client(user: str, member: Member) -> Client:
        c = Client(
            [member.address], regain=False, trust=TrustStore(site.root / f"t-{user}"),
            user=user, host=f"{user}-pc",
        )  # fmt: skip
        clients.append(c)
        return c

    try:
        # The product is full, both seats through B.
        ann, bob = client("ann", b), client("bob", b)
        for c in (ann, bob):
            await c.connect()
        ann_seat = await ann.acquire("cad")
        bob_seat = await bob.acquire("cad")

        # A waiter on A, then a later one on B: one line, in that order, in etcd.
        cat, dan = client("cat", a), client("dan", b)
        await cat.connect()
        await dan.connect()
        cat_pos: list[int] = []
        dan_pos: list[int] = []
        cat_wait = asyncio.create_task(cat.acquire("cad", wait=True, on_position=cat_pos.append))
        await until(lambda: cat_pos == [1], "cat in line first")
        dan_wait = asyncio.create_task(dan.acquire("cad", wait=True, on_position=dan_pos.append))
        await until(lambda: dan_pos == [2], "dan in line second")
        line = await queue_keys(etcd, prefix)
        assert len(line) == 2 and b"/queue/cad/" in line[0], line
        for member in (client("eve-b", b), client("eve-a", a)):
            await member.connect()
            cad = next(p for p in (await member.status())["products"] if p["name"] == "cad")
            queue = [(w["position"], w["user"], w["host"]) for w in cad["queue"]]
            assert queue == [(1, "cat", "cat-pc"), (2, "dan", "dan-pc")], queue

        # Nobody jumps the line: a plain checkout on either member is refused.
        eve, fay = client("eve", a), client("fay", b)
        for c in (eve, fay):
            await c.connect()
            with pytest.raises(NoSeat):
                await c.acquire("cad")

        # ann's seat, released through B while A is stopped: the seat is free but the head of
        # the line waits on A, so neither B's waiter nor a plain checkout on B may take it.
        a.proc.popen.send_signal(signal.SIGSTOP)
        try:
            await ann.release(ann_seat)
            await until(lambda: len(auditor.last) == 1, "ann's seat key deleted")
            await asyncio.sleep(0.3)  # B's watch shows the delete
            with pytest.raises(NoSeat):
                await fay.acquire("cad")
            assert not dan_wait.done() and len(auditor.last) == 1
        finally:
            a.proc.popen.send_signal(signal.SIGCONT)
        # A, running again, gives the seat to cat; dan moves up.
        cat_seat: Seat = await asyncio.wait_for(cat_wait, 10)
        assert cat_seat.member == a.address
        await until(lambda: dan_pos[-1:] == [1], "dan first in line")
        assert not dan_wait.done()
        assert len(await queue_keys(etcd, prefix)) == 1
        for c in (eve, fay):
            with pytest.raises(NoSeat):
                await c.acquire("cad")

        # bob's seat goes to dan, on B.
        await bob.release(bob_seat)
        dan_seat: Seat = await asyncio.wait_for(dan_wait, 10)
        assert dan_seat.member == b.address
        assert await queue_keys(etcd, prefix) == []

        # The line is empty: a freed seat is anyone's again.
        await cat.release(cat_seat)
        for _ in range(40):  # B's mirror follows etcd's watch
            try:
                await fay.acquire("cad")
                break
            except NoSeat:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the freed seat was never granted to a plain checkout")
        await auditor.close()
        assert auditor.reads > 10 and auditor.most <= SEATS, (auditor.reads, auditor.most)
    finally:
        if not auditor.task.done():
            await auditor.close()
        for c in clients:
            await closed(c)
    a.proc.stop()
    history = ok(run(["admin", "history", "--data", str(site.root / "a"), "--json"]))["events"]
    cats = sorted({(e["event"], e["user"]) for e in history if e["user"] == "cat"})
    # cat's wait on A: in line, then its seat; never a refusal (it waited instead).
    assert cats == [("checkout", "cat"), ("queue_join", "cat"), ("release", "cat")], cats


async def test_a_waiter_that_gives_up_or_goes_away_leaves_the_line(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    endpoints = etcd_cluster.endpoints
    a = await start_member(site, site.data("a"), endpoints)
    prefix = prefix_of(site)
    clients: list[Client] = []
    try:
        for user in ("ann", "bob", "cat", "dan"):
            c = Client(
                [a.address], regain=False, trust=TrustStore(site.root / f"t-{user}"), user=user
            )
            clients.append(c)
            await c.connect()
        ann, bob, cat, dan = clients
        await ann.acquire("cad")
        await bob.acquire("cad")
        with pytest.raises(NoSeat):  # unwait at its timeout
            await cat.acquire("cad", wait=True, timeout=1.0)
        assert await queue_keys(etcd, prefix) == []
        pos: list[int] = []
        waiting = asyncio.create_task(dan.acquire("cad", wait=True, on_position=pos.append))
        await until(lambda: pos == [1], "dan in line")
        assert len(await queue_keys(etcd, prefix)) == 1
        waiting.cancel()
        await closed(dan)  # its connection closes: out of the line
        for _ in range(100):
            if not await queue_keys(etcd, prefix):
                break
            await asyncio.sleep(0.05)
        assert await queue_keys(etcd, prefix) == []
    finally:
        for c in clients:
            await closed(c)


def test_the_line_is_ordered_by_create_revision_and_a_deleted_waiter_stays_gone() -> None:
    line = WaitLine("p")
    k1 = waiter_key("p", "cad", "m2", b"\x01" * 16)
    k2 = waiter_key("p", "cad", "m1", b"\x02" * 16)
    k3 = waiter_key("p", "cad/pro", "m1", b"\x03" * 16)
    line.load(
        [(k2, 9, b""), (k1, 7, b'{"user": "ann", "host": "a-pc"}'), (b"p/seats/cad/0", 3, b"")]
    )
    line.put(k3, 8)
    assert line.order("cad") == [k1, k2] and line.order("cad/pro") == [k3]
    assert line.waiting("cad") == 2 and b"p/seats/cad/0" not in line
    assert line.who[k1] == ("ann", "a-pc", 0.0) and k2 not in line.who
    line.delete(k1)
    line.put(k1, 7)  # a join's late reply after the watch showed its delete
    assert line.order("cad") == [k2] and k1 not in line


async def test_a_killed_members_waiter_waits_again_on_another_and_its_old_place_goes(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    endpoints = etcd_cluster.endpoints
    a = await start_member(site, site.data("a"), endpoints)
    b = await start_member(site, site.data("b", identity_of="a"), endpoints[1:] + endpoints[:1])
    prefix = prefix_of(site)
    clients: list[Client] = []

    def client(user: str, *members: Member) -> Client:
        c = Client(
            [m.address for m in members], regain=False, trust=TrustStore(site.root / f"t-{user}"),
            user=user, host=f"{user}-pc",
        )  # fmt: skip
        clients.append(c)
        return c

    try:
        ann, bob = client("ann", b), client("bob", b)
        for c in (ann, bob):
            await c.connect()
        ann_seat = await ann.acquire("cad")
        bob_seat = await bob.acquire("cad")
        cat, dan = client("cat", a, b), client("dan", b)  # cat knows both members, A first
        await cat.connect()
        await dan.connect()
        cat_pos: list[int] = []
        dan_pos: list[int] = []
        cat_wait = asyncio.create_task(cat.acquire("cad", wait=True, on_position=cat_pos.append))
        await until(lambda: cat_pos == [1], "cat in line on A")
        dan_wait = asyncio.create_task(dan.acquire("cad", wait=True, on_position=dan_pos.append))
        await until(lambda: dan_pos == [2], "dan in line on B")

        a.proc.popen.send_signal(signal.SIGKILL)
        # cat moves to B and waits again, behind dan; its old place goes with A's etcd lease.
        await until(lambda: len(cat_pos) >= 2, "cat in line again on B")
        await until(lambda: dan_pos[-1:] == [1] and cat_pos[-1:] == [2], "A's lease gone", 15)
        assert len(await queue_keys(etcd, prefix)) == 2

        await ann.release(ann_seat)
        dan_seat: Seat = await asyncio.wait_for(dan_wait, 10)
        await bob.release(bob_seat)
        cat_seat: Seat = await asyncio.wait_for(cat_wait, 10)
        assert dan_seat.member == cat_seat.member == b.address
        await cat.renew_now()  # a seat waited for across a move is held where it was granted
        assert not cat_seat.lost
        assert await queue_keys(etcd, prefix) == []
    finally:
        for c in clients:
            await closed(c)
