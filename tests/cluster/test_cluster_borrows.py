"""Borrowing and enrollment in a cluster (issue 16): real ``lanlic serve --store etcd://`` members
over a real 3-member etcd, real clients and the laptop's own code (``Borrower``).

The auditor here reads the site's whole prefix in one range read (one etcd revision) and checks
the product's rule on it: seats in use (seat keys naming a client) + borrows (borrow records)
never exceed the key, and borrows never exceed the borrowable count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aetcd
import aetcd.exceptions
import pytest
from cliproc import ok, run, serve_args
from etcd_cluster import EtcdCluster
from tcp_proxy import TcpProxy
from test_cluster_members import (
    ETCD_TTL,
    HEARTBEAT,
    LEASE,
    Member,
    Site,
    closed,
    open_site,
    prefix_of,
    until,
)

from lanlic.cluster.etcd import Holder
from lanlic.cluster.service import REAP_INTERVAL
from lanlic.errors import LanlicError, NoSeat, ServerBusy, ServerUnavailable
from lanlic.laptop.borrower import Borrower
from lanlic.laptop.trust import TrustStore
from lanlic.net.client import Client
from lanlic.proto import messages as m

SEATS = 6
BORROWABLE = 3


@pytest.fixture
def site(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[Site]:
    """The site; it asks for ``etcd_cluster`` (every test here has one) so that its members stop
    before their etcd does: stopping after it, each waited on etcd for its bounded time."""
    with open_site(tmp_path, f"cad:{SEATS}:borrowable={BORROWABLE}:max-days=30") as s:
        yield s


async def start_member(site: Site, data: Path, endpoints: list[str]) -> Member:
    """A member logging at INFO (``--verbose``): its reaper says which borrows it ended."""
    args = serve_args(site.key, site.vendor, data, "--store", "etcd://" + ",".join(endpoints))
    args += ["--lease", str(LEASE), "--heartbeat", str(HEARTBEAT), "--allow-short-lease"]
    proc = site.procs.start(["--verbose", *args])
    event = await asyncio.to_thread(proc.read_json, 30)
    assert event["event"] == "listening" and event["store"] == "etcd", event
    return Member(proc, event["port"], event["server_id"], event["etcd_lease"])


async def two_members(site: Site, cluster: EtcdCluster) -> tuple[Member, Member]:
    endpoints = cluster.endpoints
    a = await start_member(site, site.data("a"), endpoints)
    b = await start_member(site, site.data("b", identity_of="a"), endpoints[1:] + endpoints[:1])
    return a, b


def laptop(site: Site, name: str) -> Borrower:
    return Borrower(site.root / f"laptop-{name}", machine_fp=f"mfp:{name}")


def client(site: Site, name: str, *members: Member) -> Client:
    return Client(
        [x.address for x in members], regain=False, trust=TrustStore(site.root / f"t-{name}")
    )


async def enrolled(site: Site, name: str, member: Member) -> Borrower:
    lap = laptop(site, name)
    async with client(site, f"enroll-{name}", member) as cl:
        await lap.enroll(cl, f"user-{name}", f"host-{name}")
    return lap


async def read_site(etcd: aetcd.Client, prefix: str) -> dict[str, dict[str, tuple[bytes, int]]]:
    """The site's keys at one revision, by kind (seats, borrows, lent, requests, ended,
    enrolled): {kind: {rest of key: (value, version)}}."""
    got = await etcd.get_prefix(f"{prefix}/".encode())
    out: dict[str, dict[str, tuple[bytes, int]]] = {}
    for kv in got:
        kind, _, rest = bytes(kv.key)[len(prefix) + 1 :].decode().partition("/")
        out.setdefault(kind, {})[rest] = (bytes(kv.value), int(kv.version))
    return out


def counts(keys: dict[str, dict[str, tuple[bytes, int]]]) -> tuple[int, int, int]:
    """(seats in use by clients, borrows, seat keys held by borrows) in one reading."""
    seats = keys.get("seats", {})
    in_use = sum(1 for v, _ in seats.values() if Holder.decode(v) is not None)
    lent_seats = sum(1 for v, _ in seats.values() if b'"borrow"' in v)
    return in_use, len(keys.get("borrows", {})), lent_seats


class Auditor:
    """Reads the site's prefix in a loop (bounded) and keeps the worst it saw."""

    def __init__(self, endpoints: list[str], prefix: str) -> None:
        self.endpoints, self.prefix = endpoints, prefix
        self.clients: list[aetcd.Client] = []
        self.reads = 0
        self.worst_total = 0
        self.worst_borrowed = 0
        self.mismatch: list[str] = []
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def _client(self) -> aetcd.Client:
        host, _, port = self.endpoints[len(self.clients) % len(self.endpoints)].rpartition(":")
        c = aetcd.Client(host=host, port=int(port), timeout=1)
        self.clients.append(c)
        return c

    async def _run(self) -> None:
        etcd = self._client()
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                keys = await asyncio.wait_for(read_site(etcd, self.prefix), 1.0)
            except (aetcd.exceptions.ClientError, TimeoutError):
                etcd = self._client()
                continue
            self.reads += 1
            in_use, borrows, lent_seats = counts(keys)
            self.worst_total = max(self.worst_total, in_use + borrows)
            self.worst_borrowed = max(self.worst_borrowed, borrows)
            if borrows != lent_seats or borrows != len(keys.get("lent", {})):
                self.mismatch.append(f"{borrows} borrows, {lent_seats} seat keys, lent {keys}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._stop.set()
        await self.task
        for c in self.clients:
            await c.close()


class SlowProxy(TcpProxy):
    """Mode ``slow``: forwards etcd's replies ``delay`` seconds late, in order, so a member's
    transaction commits in etcd while the member still waits for the answer; mode ``drop``
    then drops every reply not yet forwarded (the answer never comes, however slow the test)."""

    delay = 0.6

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str
    ) -> None:
        if direction == "up":
            return await super()._pump(src, dst, direction)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def write_late() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                if self.mode == "drop":
                    continue
                dst.write(data)
                await dst.drain()

        writer = asyncio.create_task(write_late())
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + (self.delay if self.mode == "slow" else 0), data))
            queue.put_nowait((loop.time(), b""))
            await writer
        except (OSError, asyncio.CancelledError):
            writer.cancel()
        with contextlib.suppress(Exception):
            dst.close()


def reaper_lines(text: str) -> list[str]:
    return re.findall(r"borrow (b-[0-9a-f]+) of cad .* expired: ended by this member", text)


async def test_borrow_through_one_member_return_through_another(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    a, b = await two_members(site, etcd_cluster)
    prefix = prefix_of(site)
    lap = await enrolled(site, "l1", a)  # enrolled through A: B finds the enrollment in etcd
    lap2 = await enrolled(site, "l2", b)
    lap3 = await enrolled(site, "l3", a)
    stranger = laptop(site, "stranger")
    held: list[Client] = []
    try:
        async with client(site, "l1-a", a) as cl:
            lic = await lap.borrow(cl, "cad", days=2)
        keys = await read_site(etcd, prefix)
        assert list(keys["borrows"]) == [lic.borrow_id]
        assert counts(keys) == (0, 1, 1)
        # The file is the server's, signed with the shared server.key: the laptop uses it offline.
        assert lap.offline("cad").borrow_id == lic.borrow_id
        # Every member counts the borrowed seat: B's status says so once its watch has shown
        # the key (milliseconds; B's grants never wait for it, etcd's compares hold them), and
        # B grants 5 seats, not 6.
        async with client(site, "status-b", b) as cl:

            async def b_counts_it() -> bool:
                cad = next(p for p in (await cl.status())["products"] if p["name"] == "cad")
                return (cad["in_use"], cad["free"]) == (0, SEATS - 1)

            assert await until(b_counts_it, 5.0), "B's status never counted the borrow"
        for i in range(SEATS - 1):
            cl = client(site, f"c{i}", b)
            await cl.connect()
            held.append(cl)
            await cl.acquire("cad")
        async with client(site, "extra", a) as extra:
            with pytest.raises(NoSeat):
                await extra.acquire("cad")
        # A borrow with no seat free is refused, through either member.
        async with client(site, "l2-b", b) as cl:
            with pytest.raises(LanlicError) as refused:
                await lap2.borrow(cl, "cad", days=1)
            assert refused.value.code == "no_seat"
        for cl in held[:2]:
            await cl.release(next(iter(cl.seats.values())))
        # Borrowable: 3 of the 6. Two more borrows take the free seats; a 4th would pass the count.
        async with client(site, "l2-b2", b) as cl:
            for _ in range(50):  # until B's watch has shown the released keys deleted
                try:
                    await lap2.borrow(cl, "cad", days=1)
                    break
                except LanlicError as exc:
                    assert exc.code == "no_seat", exc
                    await asyncio.sleep(0.1)
        async with client(site, "l3-a", a) as cl:
            for _ in range(50):
                try:
                    await lap3.borrow(cl, "cad", days=1)
                    break
                except LanlicError as exc:
                    assert exc.code == "no_seat", exc
                    await asyncio.sleep(0.1)
        keys = await read_site(etcd, prefix)
        assert counts(keys) == (SEATS - 3, 3, 3) and len(keys["lent"]) == BORROWABLE
        # B answers for the borrow A made (present), and only the borrower's container may
        # return it: another enrolled container's return is "no such borrow".
        async with client(site, "l1-b", b) as cl:
            assert await lap.check_online(cl, "cad") == {"cad": "active"}
            await stranger.enroll(cl, "mallory", "evil")
            home = stranger.home()
            assert home is not None
            proof = home.proof("return", cl.server_id, [lic.borrow_id])
            with pytest.raises(LanlicError) as refused:
                await cl.call(lambda rid: m.Return(rid, lic.borrow_id, home.public_key, proof))
            assert refused.value.code == "borrow_unknown"
            # It returns through B.
            assert await lap.return_(cl, "cad") is True
        keys = await read_site(etcd, prefix)
        assert lic.borrow_id not in keys.get("borrows", {})
        ended = json.loads(keys["ended"][lic.borrow_id][0])
        assert ended["state"] == "returned" and keys["ended"][lic.borrow_id][1] == 1
        assert counts(keys) == (SEATS - 3, 2, 2) and len(keys["lent"]) == 2
        assert len(keys["requests"]) == 2  # the returned borrow's request record went with it
        # Returning it again, through A: "already".
        mine = lap.home()
        assert mine is not None
        async with client(site, "l1-a2", a) as cl:
            proof = mine.proof("return", cl.server_id, [lic.borrow_id])
            again = await cl.call(lambda rid: m.Return(rid, lic.borrow_id, mine.public_key, proof))
            assert isinstance(again, m.Returned) and again.already
        # The seat is back in the pool for A's checkouts.
        async with client(site, "after", a) as cl:
            for _ in range(50):
                try:
                    await cl.acquire("cad")
                    break
                except NoSeat:
                    await asyncio.sleep(0.1)
            assert len(cl.seats) == 1
        print(f"borrowed on A {lic.borrow_id}, returned on B; etcd: {sorted(keys)}")
    finally:
        for cl in held:
            await closed(cl)


BRIEF = REAP_INTERVAL + 4.0
"""Seconds a borrow lasts in the reaper test: longer than a reaper's longest sleep, so that both
members' reapers know its end before it comes, and both wake at it."""


async def test_a_borrow_expiring_is_ended_once_with_both_members_reapers_racing(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    a, b = await two_members(site, etcd_cluster)
    prefix = prefix_of(site)
    laps = [await enrolled(site, f"l{i}", (a, b)[i % 2]) for i in range(BORROWABLE)]
    ids = []
    for i, lap in enumerate(laps):
        async with client(site, f"b{i}", (a, b)[i % 2]) as cl:
            ids.append((await lap.borrow(cl, "cad", days=BRIEF / 86400)).borrow_id)
    assert len(set(ids)) == BORROWABLE
    deadline = time.monotonic() + BRIEF + 10
    keys = await read_site(etcd, prefix)
    while keys.get("borrows") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        keys = await read_site(etcd, prefix)
    assert not keys.get("borrows"), f"borrows not ended: {list(keys['borrows'])}"
    # Each ended once: its ``ended`` key written once (version 1), its seat and slot gone.
    for borrow_id in ids:
        value, version = keys["ended"][borrow_id]
        assert json.loads(value)["state"] == "expired" and version == 1
    assert counts(keys) == (0, 0, 0) and not keys.get("lent") and not keys.get("requests")
    # The laptop hears it is over (through either member).
    async with client(site, "check", b) as cl:
        assert await laps[0].check_online(cl, "cad") == {"cad": "expired"}
    a.proc.stop()
    b.proc.stop()
    err = {"a": a.proc.stderr(), "b": b.proc.stderr()}
    logs = {x: reaper_lines(text) for x, text in err.items()}
    ended_by = logs["a"] + logs["b"]
    assert sorted(ended_by) == sorted(ids), logs  # each borrow ended by exactly one reaper
    lost = sum(text.count("another member ended it first") for text in err.values())
    print(f"reapers: A ended {len(logs['a'])}, B ended {len(logs['b'])}, races lost {lost}")


async def test_a_borrow_retried_after_its_member_was_killed_mid_request_is_not_doubled(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    target = etcd_cluster.members[0]
    proxy = SlowProxy("127.0.0.1", target.client_port)
    await proxy.start()
    prefix = prefix_of(site)
    try:
        a = await start_member(site, site.data("a"), [proxy.endpoint])
        b = await start_member(site, site.data("b", identity_of="a"), etcd_cluster.endpoints[1:])
        lap = await enrolled(site, "l1", b)
        request_id = b"r" * 16
        cl = client(site, "l1", a, b)
        await cl.connect()
        assert cl.address == a.address
        # A hears etcd late: its borrow commits in etcd, and A dies before it hears so.
        proxy.mode = "slow"
        first = asyncio.create_task(lap.borrow(cl, "cad", days=1, request_id=request_id))
        for _ in range(100):
            keys = await read_site(etcd, prefix)
            if keys.get("requests"):
                break
            await asyncio.sleep(0.02)
        proxy.mode = "drop"
        assert keys.get("requests"), "A's borrow did not reach etcd"
        a.proc.popen.send_signal(signal.SIGKILL)
        with pytest.raises(ServerUnavailable):
            await first
        # The laptop asks again with the same request id, and reaches B.
        lic = await lap.borrow(cl, "cad", days=1, request_id=request_id)
        assert cl.address == b.address
        keys = await read_site(etcd, prefix)
        assert list(keys["borrows"]) == [lic.borrow_id], keys["borrows"]
        assert counts(keys) == (0, 1, 1) and len(keys["lent"]) == 1
        await closed(cl)
    finally:
        await proxy.close()


async def test_killing_the_etcd_leader_then_a_follower_during_checkouts_and_borrows(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    a, b = await two_members(site, etcd_cluster)
    prefix = prefix_of(site)
    auditor = Auditor(etcd_cluster.endpoints, prefix)
    laps = [await enrolled(site, f"l{i}", (a, b)[i % 2]) for i in range(BORROWABLE)]
    checkers = [client(site, f"c{i}", *((a, b) if i % 2 else (b, a))) for i in range(3)]
    borrowers = [client(site, f"l{i}", *((a, b) if i % 2 else (b, a))) for i in range(BORROWABLE)]
    stop = asyncio.Event()
    cycles = {"checkout": 0, "borrow": 0}
    refusals: dict[str, int] = {}
    got_ids: set[str] = set()

    async def churn(cl: Client) -> None:
        deadline = time.monotonic() + 40
        while not stop.is_set() and time.monotonic() < deadline and cycles["checkout"] < 3000:
            try:
                seat = await cl.acquire("cad")
                await asyncio.sleep(0.01)
                await cl.release(seat)
                cycles["checkout"] += 1
            except (NoSeat, ServerUnavailable, ServerBusy) as exc:
                refusals[exc.code] = refusals.get(exc.code, 0) + 1
                await asyncio.sleep(0.05)

    async def borrow_and_return(lap: Borrower, cl: Client) -> None:
        deadline = time.monotonic() + 40
        while not stop.is_set() and time.monotonic() < deadline and cycles["borrow"] < 500:
            request_id = secrets.token_bytes(16)
            for _ in range(40):  # the same request until it is answered
                try:
                    lic = await lap.borrow(cl, "cad", days=1, request_id=request_id)
                    got_ids.add(lic.borrow_id)
                    break
                except (ServerUnavailable, ServerBusy, NoSeat) as exc:
                    refusals[exc.code] = refusals.get(exc.code, 0) + 1
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("a borrow was not answered in 40 tries")
            await asyncio.sleep(0.02)
            for _ in range(40):
                try:
                    await lap.return_(cl, "cad")
                    break
                except (ServerUnavailable, ServerBusy) as exc:
                    refusals[exc.code] = refusals.get(exc.code, 0) + 1
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("a return was not answered in 40 tries")
            cycles["borrow"] += 1

    try:
        for cl in checkers + borrowers:
            await cl.connect()
        tasks = [asyncio.create_task(churn(cl)) for cl in checkers]
        tasks += [
            asyncio.create_task(borrow_and_return(x, y))
            for x, y in zip(laps, borrowers, strict=True)
        ]
        await asyncio.sleep(1.0)
        for role in ("leader", "follower"):
            leader = await etcd_cluster.leader_async()
            victim = leader if role == "leader" else next(
                x for x in etcd_cluster.members if x is not leader
            )  # fmt: skip
            before = dict(cycles)
            await asyncio.to_thread(etcd_cluster.kill, victim)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(etcd_cluster.restart, victim)
            await asyncio.sleep(1.5)
            assert cycles["checkout"] > before["checkout"], f"no checkout after the {role} died"
            assert cycles["borrow"] > before["borrow"], f"no borrow after the {role} died"
        stop.set()
        await asyncio.gather(*tasks)
        for cl in checkers:
            for seat in list(cl.seats.values()):
                await cl.release(seat)
        # Nothing lost, nothing doubled: every borrow a laptop got ended as returned, exactly
        # once; etcd holds no borrow nobody has, and none is left.
        deadline = time.monotonic() + LEASE + ETCD_TTL + 5
        keys = await read_site(etcd, prefix)
        while keys.get("seats") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            keys = await read_site(etcd, prefix)
        assert not keys.get("borrows") and not keys.get("lent") and not keys.get("requests")
        assert not keys.get("seats"), f"seat keys left: {keys.get('seats')}"
        ended = keys.get("ended", {})
        assert set(ended) == got_ids, (set(ended) ^ got_ids, refusals)
        assert all(json.loads(v)["state"] == "returned" and n == 1 for v, n in ended.values())
        print(f"{cycles} through two etcd kills; refusals {refusals}")
    finally:
        stop.set()
        for cl in checkers + borrowers:
            await closed(cl)
        await auditor.close()
    assert not auditor.mismatch, auditor.mismatch[:3]
    assert 0 < auditor.worst_total <= SEATS and auditor.worst_borrowed <= BORROWABLE
    assert auditor.reads > 100


async def test_offline_enrollment_and_a_file_etcd_lost_in_a_cluster(
    site: Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    a, b = await two_members(site, etcd_cluster)
    prefix = prefix_of(site)
    lap = laptop(site, "offline")
    # Offline enrollment: the request file, accepted by the admin through B, completed here.
    request, response = site.root / "enroll.req", site.root / "enroll.resp"
    request.write_bytes(lap.enrollment_request("olga", "field-laptop"))
    out = run(["admin", "enroll", "--accept", str(request), "--out", str(response),
               "--server", f"127.0.0.1:{b.port}", "--json"])  # fmt: skip
    ok(out)
    lap.complete_enrollment(response.read_bytes())
    keys = await read_site(etcd, prefix)
    (record,) = [json.loads(v) for v, _ in keys["enrolled"].values()]
    assert (record["user"], record["via"]) == ("olga", "offline")
    # Borrowed through A, which never saw the enrollment.
    async with client(site, "offline-a", a) as cl:
        lic = await lap.borrow(cl, "cad", days=1)
    # etcd loses the borrow (restored from a backup older than it): the laptop shows its file
    # through B, which takes it back into the count, as a single server adopts one.
    keys = await read_site(etcd, prefix)
    for kind, rest in [(k, r) for k, v in keys.items() if k != "enrolled" for r in v]:
        await etcd.delete(f"{prefix}/{kind}/{rest}".encode())
    assert counts(await read_site(etcd, prefix)) == (0, 0, 0)
    async with client(site, "offline-b", b) as cl:
        assert await lap.check_online(cl, "cad") == {"cad": "adopted"}
    keys = await read_site(etcd, prefix)
    assert list(keys["borrows"]) == [lic.borrow_id] and counts(keys) == (0, 1, 1)
    async with client(site, "offline-a2", a) as cl:
        assert await lap.check_online(cl, "cad") == {"cad": "active"}
        assert await lap.return_(cl, "cad") is True
    keys = await read_site(etcd, prefix)
    assert counts(keys) == (0, 0, 0) and not keys.get("lent")
