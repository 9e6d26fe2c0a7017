"""The seat store on a real 3-member etcd: members race, the etcd leader dies, a member is cut off,
a member is SIGKILLed; seats are never over-granted, lost or doubled, and a cut-off member fences
itself before its lease could expire."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aetcd
import pytest
from etcd_cluster import EtcdCluster
from tcp_proxy import TcpProxy

from lanlic.cluster.etcd import EtcdSeats, SeatHold, read_holders
from lanlic.errors import LeaseUnknown, NoSeat, ServerBusy, ServerUnavailable

PREFIX = "/lanlic/test-site"
HERE = Path(__file__).resolve().parent


@pytest.fixture
async def auditor(etcd_cluster: EtcdCluster) -> AsyncIterator[Callable[[], Any]]:
    """Opens aetcd clients on any running etcd member, for reads the stores under test do not
    make themselves."""
    clients: list[Any] = []

    def open_client() -> Any:
        m = next(m for m in etcd_cluster.members if m.running())
        c = aetcd.Client(host="127.0.0.1", port=m.client_port, timeout=2)
        clients.append(c)
        return c

    yield open_client
    for c in clients:
        await c.close()


def member(endpoints: list[str], name: str, seats: int, **kw: Any) -> EtcdSeats:
    return EtcdSeats(endpoints, prefix=PREFIX, products={"cad": seats}, member=name, **kw)


def rotated(endpoints: list[str], i: int) -> list[str]:
    return endpoints[i:] + endpoints[:i]


async def test_two_members_racing_never_exceed_the_seat_count(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    seats = 5
    eps = etcd_cluster.endpoints
    a, b = member(rotated(eps, 0), "a", seats), member(rotated(eps, 1), "b", seats)
    await a.start()
    await b.start()
    watcher = auditor()
    most = 0
    stop = asyncio.Event()

    async def audit() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(await read_holders(watcher, PREFIX)))
            await asyncio.sleep(0.005)

    audit_task = asyncio.create_task(audit())
    try:
        for _round in range(3):
            tries = [
                (a if i % 2 else b).checkout("cad", f"c{i}", f"l{i}") for i in range(4 * seats)
            ]
            results = await asyncio.gather(*tries, return_exceptions=True)
            holds = [r for r in results if isinstance(r, SeatHold)]
            refused = [r for r in results if isinstance(r, NoSeat | ServerBusy)]
            assert len(holds) + len(refused) == len(results), results
            assert len(holds) == seats, results
            assert len({h.key for h in holds}) == seats
            stored = await read_holders(watcher, PREFIX)
            assert {k: v[0] for k, v in stored.items()} == {h.key: h.holder for h in holds}
            # Both members took part, and a full pool is refused from the mirror.
            assert {h.holder.member for h in holds} <= {"a", "b"}
            await asyncio.gather(*((a if h.holder.member == "a" else b).release(h) for h in holds))
            assert await read_holders(watcher, PREFIX) == {}
            for _ in range(100):  # the mirrors see the releases through their watches
                if a.mirror.in_use("cad") == 0 and b.mirror.in_use("cad") == 0:
                    break
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await audit_task
        await a.close()
        await b.close()
    assert most <= seats


async def test_killing_the_etcd_leader_during_checkouts_loses_and_doubles_nothing(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    seats = 24
    eps = etcd_cluster.endpoints
    leader = etcd_cluster.leader()
    # Put member a on the leader's endpoint first, so that its calls see the kill.
    i_leader = etcd_cluster.members.index(leader)
    a = member(rotated(eps, i_leader), "a", seats, etcd_ttl=5, client_lease=1.0)
    b = member(rotated(eps, (i_leader + 1) % 3), "b", seats, etcd_ttl=5, client_lease=1.0)
    await a.start()
    await b.start()
    holds: list[SeatHold] = []
    unavailable = 0
    deadline = time.monotonic() + 30

    async def worker(store: EtcdSeats, w: int) -> None:
        nonlocal unavailable
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                holds.append(await store.checkout("cad", f"{store.member}{w}-{n}", f"l{n}"))
            except NoSeat:
                return
            except (ServerUnavailable, ServerBusy):
                unavailable += 1
                await asyncio.sleep(0.05)

    async def kill_leader_midway() -> None:
        while len(holds) < 6:
            await asyncio.sleep(0.005)
        etcd_cluster.kill(leader)

    try:
        await asyncio.gather(
            kill_leader_midway(), *(worker(s, w) for s in (a, b) for w in range(4))
        )
        assert not leader.running()
        stored = await read_holders(auditor(), PREFIX)
        assert len(holds) == seats, f"{len(holds)} holds, {unavailable} unavailable answers"
        assert len({h.key for h in holds}) == seats  # nothing doubled
        # Nothing lost: every seat a member believes it holds is in etcd, holder for holder.
        assert {k: v[0] for k, v in stored.items()} == {h.key: h.holder for h in holds}

        # Both members' watches came back after the kill: their mirrors see every release, and
        # the pool fills again.
        await asyncio.gather(*((a if h.holder.member == "a" else b).release(h) for h in holds))
        deadline = time.monotonic() + 10
        while a.mirror.in_use("cad") or b.mirror.in_use("cad"):
            assert time.monotonic() < deadline, (a.mirror.in_use("cad"), b.mirror.in_use("cad"))
            await asyncio.sleep(0.05)
        refill = [await (a, b)[i % 2].checkout("cad", f"r{i}", "l") for i in range(seats)]
        assert len({h.key for h in refill}) == seats
    finally:
        await a.close()
        await b.close()


async def test_a_member_cut_off_from_etcd_fences_itself_before_its_lease_can_expire(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    target = etcd_cluster.members[0]
    proxy = TcpProxy("127.0.0.1", target.client_port)
    await proxy.start()
    client_lease = 1.0
    a = member([proxy.endpoint], "a", 3, etcd_ttl=3, client_lease=client_lease, call_timeout=0.5)
    watcher = auditor()
    try:
        await a.start()
        hold = await a.checkout("cad", "c1", "l1")
        await asyncio.sleep(0.3)  # keepalives flow
        a.check_fence()

        proxy.mode = "blackhole"
        cut_at = time.monotonic()
        while True:
            try:
                a.check_fence()
            except ServerUnavailable:
                break
            assert time.monotonic() - cut_at < 3 + 2, "the member never fenced itself"
            await asyncio.sleep(0.02)
        # At the moment it stops answering, its lease (and so the client's seat) still exists in
        # etcd for longer than a client lease granted just before.
        info = await watcher.get_lease_info(a.lease_id)
        assert int(info.TTL) >= client_lease
        assert hold.key in await read_holders(watcher, PREFIX)
        with pytest.raises(ServerUnavailable):
            await a.checkout("cad", "c2", "l2")

        # The lease then runs out in etcd, and the seat with it.
        while hold.key in await read_holders(watcher, PREFIX):
            assert time.monotonic() - cut_at < 3 + 3, "the cut-off member's seat never expired"
            await asyncio.sleep(0.1)
    finally:
        proxy.mode = "pass"
        await a.close()
        await proxy.close()


async def test_a_claim_whose_reply_was_lost_is_read_back_not_retried(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    first, second = etcd_cluster.members[0], etcd_cluster.members[1]
    proxy = TcpProxy("127.0.0.1", first.client_port)
    await proxy.start()
    a = member([proxy.endpoint, second.endpoint], "a", 3, etcd_ttl=5, call_timeout=0.5)
    watcher = auditor()
    try:
        await a.start()
        proxy.mode = "drop_replies"  # the claim reaches etcd and commits; its reply never comes
        hold = await a.checkout("cad", "c1", "l1")
        stored = await read_holders(watcher, PREFIX)
        # One seat, ours, not two: the member read its own claim back on the other endpoint.
        assert {k: v[0] for k, v in stored.items()} == {hold.key: hold.holder}
        assert a.endpoints[a._endpoint] == second.endpoint
    finally:
        proxy.mode = "pass"
        await a.close()
        await proxy.close()


async def test_releases_that_never_reached_etcd_are_sent_again_not_deadlocked(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    """Releases in two batches at once whose requests are lost (the endpoint blackholes): each
    is read back on the next endpoint, found still there, and sent again. The batch waiting to
    send it again must not hold its slot meanwhile (both slots held by batches waiting for a slot
    deadlocked every later release: found by the leader-then-follower process test)."""
    first, second = etcd_cluster.members[0], etcd_cluster.members[1]
    proxy = TcpProxy("127.0.0.1", first.client_port)
    await proxy.start()
    a = member([proxy.endpoint, second.endpoint], "a", 4, etcd_ttl=5, call_timeout=0.5)
    watcher = auditor()
    try:
        await a.start()
        holds = [await a.checkout("cad", f"c{i}", f"l{i}") for i in range(4)]
        proxy.mode = "blackhole"
        await asyncio.wait_for(asyncio.gather(*(a.release(h) for h in holds)), 10)
        assert await read_holders(watcher, PREFIX) == {}
    finally:
        proxy.mode = "pass"
        await a.close()
        await proxy.close()


async def start_member_process(
    endpoints: list[str], seats: int, count: int, ttl: int
) -> asyncio.subprocess.Process:
    root = str(HERE.parent.parent)
    return await asyncio.create_subprocess_exec(
        *[sys.executable, str(HERE / "member_proc.py"), ",".join(endpoints), PREFIX, "cad"],
        *[str(seats), str(count), str(ttl)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])},
    )


async def read_json_line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, "the member process ended"
    msg: dict[str, Any] = json.loads(line)
    return msg


async def test_seats_of_a_sigkilled_member_are_adopted_by_another(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    eps = etcd_cluster.endpoints
    count, ttl = 4, 3
    proc = await start_member_process(eps, 6, count, ttl)
    b = member(rotated(eps, 1), "b", 6, etcd_ttl=5, client_lease=1.0)
    watcher = auditor()
    try:
        lines = []
        while not (msg := await read_json_line(proc, 20)).get("ready"):
            lines.append(msg)
        doomed_lease = lines[0]["lease"]
        seats = lines[1:]
        assert len(seats) == count
        await b.start()

        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()

        # A stranger cannot take a seat over by naming it.
        with pytest.raises(LeaseUnknown):
            await b.adopt("cad", seats[0]["index"], seats[0]["client"], "not-its-lease")
        adopted = [await b.adopt("cad", s["index"], s["client"], s["lease"]) for s in seats]
        stored = await read_holders(watcher, PREFIX)
        assert {k: v for k, v in stored.items()} == {h.key: (h.holder, b.lease_id) for h in adopted}
        # The dead member's lease then expires in etcd; the adopted seats stay.
        deadline = time.monotonic() + ttl + 5
        while int((await watcher.get_lease_info(doomed_lease)).TTL) > 0:
            assert time.monotonic() < deadline, "the dead member's lease never expired"
            await asyncio.sleep(0.2)
        stored = await read_holders(watcher, PREFIX)
        assert {k: v[0] for k, v in stored.items()} == {h.key: h.holder for h in adopted}
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        await b.close()


async def test_a_member_stopped_past_its_lease_finds_its_seats_gone_refuses_then_recovers(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    count, ttl = 2, 2
    proc = await start_member_process(etcd_cluster.endpoints, 4, count, ttl)
    watcher = auditor()
    try:
        while not (await read_json_line(proc, 20)).get("ready"):
            pass
        assert len(await read_holders(watcher, PREFIX)) == count
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + ttl + 5
        while await read_holders(watcher, PREFIX):  # etcd expires the stopped member's lease
            assert time.monotonic() < deadline, "the stopped member's seats never expired"
            await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGCONT)
        said = await read_json_line(proc, 10)
        assert said == {"lost": True, "checkout": "server_unavailable"}
        # Then it takes a new etcd lease and serves again, under that lease.
        again = await read_json_line(proc, 10)
        assert again["recovered"] is True
        stored = await read_holders(watcher, PREFIX)
        assert [h.client for h, _ in stored.values()] == ["after"]
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_the_mirror_keeps_up_after_the_member_leaves_a_silent_endpoint(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    """The endpoint the member watches through stops answering (its replies are dropped; the
    connection stays open): the member moves to the next endpoint, and its watch must move too,
    or the mirror goes stale (and a full-looking pool refuses for ever)."""
    proxy = TcpProxy("127.0.0.1", etcd_cluster.members[0].client_port)
    await proxy.start()
    direct = etcd_cluster.members[1].endpoint
    a = member([proxy.endpoint, direct], "a", 2, etcd_ttl=5, call_timeout=0.5)
    b = member([direct], "b", 2)
    try:
        await a.start()
        await b.start()
        proxy.mode = "drop_replies"
        deadline = time.monotonic() + 10
        while a.endpoints[a._endpoint] != direct:
            assert time.monotonic() < deadline, "the member never left the silent endpoint"
            await asyncio.sleep(0.05)
        # Another member takes both seats: a's mirror must learn it through its watch.
        held = [await b.checkout("cad", f"c{i}", "l") for i in range(2)]
        deadline = time.monotonic() + 5
        while a.mirror.in_use("cad") != 2:
            assert time.monotonic() < deadline, "a's mirror never saw b's checkouts"
            await asyncio.sleep(0.05)
        with pytest.raises(NoSeat):
            await a.checkout("cad", "c9", "l")
        for h in held:
            await b.release(h)
        deadline = time.monotonic() + 5
        while a.mirror.in_use("cad"):
            assert time.monotonic() < deadline, "a's mirror never saw b's releases"
            await asyncio.sleep(0.05)
        await a.checkout("cad", "c10", "l")
    finally:
        proxy.mode = "pass"
        await a.close()
        await b.close()
        await proxy.close()


async def test_concurrent_checkouts_and_releases_go_together_each_on_its_own_seat(
    etcd_cluster: EtcdCluster, auditor: Callable[[], Any]
) -> None:
    """Checkouts of one product arriving while a claim transaction is in flight go together in
    the next one (one etcd revision for several seats), each still answered on its own: a seat,
    or a refusal once the pool is full. Two members batching at once never exceed the pool."""
    seats = 24
    eps = etcd_cluster.endpoints
    a, b = member(rotated(eps, 0), "a", seats), member(rotated(eps, 1), "b", seats)
    await a.start()
    await b.start()
    watcher = auditor()
    try:
        # First one member alone: checkouts arriving while its claims are in flight go together.
        # (Racing the other member, it may win only its first, unbatched claims, so the batching
        # is shown where the race cannot hide it.)
        first = await asyncio.gather(*(a.checkout("cad", f"c{i}", f"l{i}") for i in range(12)))
        assert all(isinstance(r, SeatHold) for r in first), first
        assert len({h.mod_revision for h in first}) < len(first), [h.mod_revision for h in first]
        # Then both members batching at once, past the pool: never more seats than it has.
        tries = [(a, b)[i % 2].checkout("cad", f"c{i}", f"l{i}") for i in range(12, seats + 16)]
        results = [*first, *await asyncio.gather(*tries, return_exceptions=True)]
        holds = [r for r in results if isinstance(r, SeatHold)]
        refused = [r for r in results if isinstance(r, NoSeat | ServerBusy)]
        assert len(holds) + len(refused) == len(results), results
        assert len(holds) == seats and len({h.key for h in holds}) == seats
        # Each checkout got the seat its key names, for its own client and lease.
        stored = await read_holders(watcher, PREFIX)
        assert {k: v[0] for k, v in stored.items()} == {h.key: h.holder for h in holds}
        assert all(h.holder.lease == "l" + h.holder.client[1:] for h in holds)
        # Releases go together too: every key deleted, in fewer revisions than seats.
        before = int((await watcher.get_prefix(PREFIX.encode())).header.revision)
        await asyncio.gather(*((a if h.holder.member == "a" else b).release(h) for h in holds))
        after = int((await watcher.get_prefix(PREFIX.encode())).header.revision)
        assert await read_holders(watcher, PREFIX) == {}
        assert after - before < seats, (before, after)
    finally:
        await a.close()
        await b.close()
