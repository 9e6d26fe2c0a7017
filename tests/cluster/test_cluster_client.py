"""The client side of a cluster (issue 16): an application given the members' list keeps its seat
when its member is killed, on real ``lanlic serve --store etcd://`` members over a real 3-member
etcd. The members, the site and the auditor are those of ``test_cluster_members``."""

from __future__ import annotations

import asyncio
import signal
import time

import aetcd
import test_cluster_members as cluster
from etcd_cluster import EtcdCluster

from lanlic.laptop.trust import TrustStore
from lanlic.net.client import Client

site = cluster.site


async def test_an_application_keeps_its_seat_when_its_member_is_killed(
    site: cluster.Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    endpoints = etcd_cluster.endpoints
    a = await cluster.start_member(site, site.data("a"), endpoints)
    b = await cluster.start_member(site, site.data("b", identity_of="a"), endpoints[::-1])
    auditor = cluster.Auditor(etcd, cluster.prefix_of(site))
    members = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
    # The application: `lanlic checkout` holding a seat of version 16 for a while; it quits
    # with "lost" (and a non-zero exit) if the seat is ever lost.
    hold = 4 * cluster.LEASE
    app = site.procs.start(
        ["checkout", "cad", "--version", "16", "--server", members, "--hold", str(hold), "--json"]
    )
    try:
        event = await asyncio.to_thread(app.read_json, 20)
        assert event["event"] == "checked_out", event
        lease = event["lease"]
        while auditor.leases().get(lease) != a.etcd_lease:  # a is the first member: it granted
            await asyncio.sleep(0.01)
        a.proc.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while auditor.leases().get(lease) != b.etcd_lease and time.monotonic() - killed < 10:
            await asyncio.sleep(0.01)
        moved = time.monotonic() - killed
        assert auditor.leases().get(lease) == b.etcd_lease, "the seat was not taken over by b"
        assert moved < 2.0, f"taken over after {moved:.2f} s"
        # It was presented as a reclaim, which names the seat's version: b lists it as held by
        # that application at version 16 (an adoption through a bare renew knows no version).
        async with Client(("127.0.0.1", b.port), trust=TrustStore(site.root / "t")) as look:
            status = await look.status()
        cad = next(p for p in status["products"] if p["name"] == "cad")
        assert [h["version"] for h in cad["holders"]] == ["16"], cad
        # The application noticed nothing: it held on to the end and released cleanly.
        end = await asyncio.to_thread(app.read_json, hold + 10)
        assert end == {"event": "released", "product": "cad"}, end
        assert await asyncio.to_thread(app.popen.wait, 10) == 0
        while lease in auditor.leases() and time.monotonic() - killed < hold + 10:
            await asyncio.sleep(0.01)
        assert lease not in auditor.leases()  # released through b
        print(f"the seat moved to another member {moved * 1000:.0f} ms after kill -9")
    finally:
        app.close()
        await auditor.close()
    assert auditor.most == 1


async def test_a_seat_its_member_lost_with_its_etcd_lease_is_regained(
    site: cluster.Site, etcd_cluster: EtcdCluster, etcd: aetcd.Client
) -> None:
    # One member only: the client cannot move. The member is stopped past its etcd lease, so
    # etcd deletes the seat; continued, the member says so (notice lease_lost) and the client,
    # told "lost", checks out again and is told "regained": a seat lost through nobody's act,
    # unlike one an administrator removed, which is gone for good.
    from lanlic.net.client import SeatState

    a = await cluster.start_member(site, site.data("a"), etcd_cluster.endpoints)
    auditor = cluster.Auditor(etcd, cluster.prefix_of(site))
    told: list[str] = []
    client = Client(
        ("127.0.0.1", a.port), trust=TrustStore(site.root / "t"),
        on_seat_lost=lambda s, e: told.append(f"lost: {e.code}"),
        on_seat_regained=lambda s: told.append("regained"),
    )  # fmt: skip
    try:
        await client.connect()
        seat = await client.acquire("cad")
        first = seat.lease_id
        while auditor.leases().get(first.hex()) != a.etcd_lease:  # the auditor has seen it
            await asyncio.sleep(0.01)
        a.proc.popen.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while auditor.last and time.monotonic() - stopped < 3 * cluster.ETCD_TTL:
            await asyncio.sleep(0.05)
        assert not auditor.last, "the stopped member's seat outlived its etcd lease"
        a.proc.popen.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 3 * cluster.ETCD_TTL
        while seat.state not in (SeatState.REGAINED, SeatState.GONE):
            assert time.monotonic() < deadline, (seat, told)
            await asyncio.sleep(0.05)
        assert seat.state is SeatState.REGAINED, (seat, told)
        assert told == ["lost: seat_lost", "regained"] and seat.lease_id != first
        await asyncio.sleep(0.3)
        assert auditor.leases().get(seat.lease_id.hex()) not in (None, a.etcd_lease)
    finally:
        await client.close()
        await auditor.close()
