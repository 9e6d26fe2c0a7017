"""Measure the two etcd clients lanlic could use, side by side on one 3-member loopback cluster.

    python tools/bench_etcd.py [--claims 2000] [--seconds 10]

Starts its own etcd cluster (Debian's etcd-server, tests/cluster/etcd_cluster.py) on free 127.0.0.1
ports in a temporary folder and stops it by PID at the end. For each client, the operations the
cluster store needs:

- claim: a transaction creating one seat key under a lease if absent (compare create_revision == 0),
  each claim on a fresh key, at 1 and at 16 in flight;
- batch: 8 such claims per transaction (nested txns), 16 in flight;
- keepalive: one lease keepalive round trip, sequential;
- watch: from a put's reply to the watch event for it, sequential.

Then the seat store (lanlic.cluster.etcd, on aetcd): checkout throughput with two members at 16 in
flight, adopting a seat, and the first checkout after the etcd leader is killed under it.

Each figure is bounded by --claims (or --rounds) and --seconds. Clients: aetcd (gRPC, the
``lanlic[cluster]`` extra) and etcd's JSON gRPC gateway over aiohttp (no new dependency). Compare
ratios within one run; absolute figures drift from run to run on shared machines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))
from etcd_cluster import EtcdCluster

BATCH = 8  # seat claims per transaction (nested txns: each claim wins or loses on its own)


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


async def rate(
    op: Callable[[int], Awaitable[bool]], count: int, in_flight: int, seconds: float
) -> tuple[float, int, int]:
    """Run op(i) for i in range(count) with in_flight workers; returns (ops/s, done, succeeded)."""
    next_i = 0
    done = 0
    ok = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal next_i, done, ok
        while next_i < count and time.monotonic() < deadline:
            i = next_i
            next_i += 1
            if await op(i):
                ok += 1
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.perf_counter() - t0), done, ok


async def latencies(
    op: Callable[[int], Awaitable[None]], rounds: int, seconds: float
) -> list[float]:
    out: list[float] = []
    deadline = time.monotonic() + seconds
    for i in range(rounds):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


# -- aetcd ---------------------------------------------------------------------------------------


async def bench_aetcd(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    results: dict[str, Any] = {}
    async with aetcd.Client(host=host, port=int(port)) as client:
        lease = await client.lease(30)
        for in_flight in (1, 16):
            prefix = f"/bench/aetcd/{in_flight}/".encode()

            async def claim(i: int, prefix: bytes = prefix) -> bool:
                key = prefix + str(i).encode()
                succeeded, _ = await client.transaction(
                    compare=[client.transactions.create(key) == 0],
                    success=[client.transactions.put(key, b"holder", lease=lease.id)],
                    failure=[],
                )
                return bool(succeeded)

            results[f"claim x{in_flight}"] = await rate(claim, args.claims, in_flight, args.seconds)

        async def claim_batch(i: int) -> bool:
            keys = [b"/bench/aetcd/batch/%d" % (i * BATCH + j) for j in range(BATCH)]
            tx = client.transactions
            succeeded, _ = await client.transaction(
                compare=[],
                success=[
                    tx.txn(
                        compare=[tx.create(k) == 0],
                        success=[tx.put(k, b"holder", lease=lease.id)],
                        failure=[],
                    )
                    for k in keys
                ],
                failure=[],
            )
            return bool(succeeded)

        results["batch"] = await rate(claim_batch, args.claims // BATCH, 16, args.seconds)

        async def keepalive(_: int) -> None:
            await client.refresh_lease(lease.id)

        results["keepalive"] = await latencies(keepalive, args.rounds, args.seconds)

        watch = await client.watch_prefix(b"/bench/aetcd/watch/")
        events = watch.__aiter__()

        async def watched_put(i: int) -> None:
            await client.put(b"/bench/aetcd/watch/%d" % i, b"v")
            await events.__anext__()

        results["watch"] = await latencies(watched_put, args.rounds, args.seconds)
        await watch.cancel()
        await client.delete_prefix(b"/bench/aetcd/")
    return results


# -- JSON gateway over aiohttp -------------------------------------------------------------------


async def bench_gateway(endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    base = f"http://{endpoint}"
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(base + path, data=json.dumps(body)) as r:
                r.raise_for_status()
                out: dict[str, Any] = await r.json(content_type=None)
                return out

        lease = (await call("/v3/lease/grant", {"TTL": 30}))["ID"]
        for in_flight in (1, 16):
            prefix = f"/bench/gw/{in_flight}/".encode()

            async def claim(i: int, prefix: bytes = prefix) -> bool:
                key = b64(prefix + str(i).encode())
                out = await call(
                    "/v3/kv/txn",
                    {
                        "compare": [
                            {
                                "key": key,
                                "target": "CREATE",
                                "result": "EQUAL",
                                "create_revision": 0,
                            }
                        ],
                        "success": [
                            {"request_put": {"key": key, "value": b64(b"h"), "lease": lease}}
                        ],
                    },
                )
                return bool(out.get("succeeded"))

            results[f"claim x{in_flight}"] = await rate(claim, args.claims, in_flight, args.seconds)

        async def claim_batch(i: int) -> bool:
            keys = [b64(b"/bench/gw/batch/%d" % (i * BATCH + j)) for j in range(BATCH)]
            inner = [
                {
                    "request_txn": {
                        "compare": [
                            {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                        ],
                        "success": [
                            {"request_put": {"key": k, "value": b64(b"h"), "lease": lease}}
                        ],
                    }
                }
                for k in keys
            ]
            out = await call("/v3/kv/txn", {"success": inner})
            return bool(out.get("succeeded"))

        results["batch"] = await rate(claim_batch, args.claims // BATCH, 16, args.seconds)

        async def keepalive(_: int) -> None:
            out = await call("/v3/lease/keepalive", {"ID": lease})
            assert int(out["result"]["TTL"]) > 0

        results["keepalive"] = await latencies(keepalive, args.rounds, args.seconds)

        prefix = b"/bench/gw/watch/"
        async with session.post(
            base + "/v3/watch",
            data=json.dumps(
                {"create_request": {"key": b64(prefix), "range_end": b64(prefix[:-1] + b"0")}}
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as stream:
            first = json.loads(await stream.content.readline())
            assert first["result"].get("created"), first

            async def watched_put(i: int) -> None:
                await call("/v3/kv/put", {"key": b64(prefix + str(i).encode()), "value": b64(b"v")})
                while True:
                    msg = json.loads(await stream.content.readline())
                    if msg["result"].get("events"):
                        return

            results["watch"] = await latencies(watched_put, args.rounds, args.seconds)
        await call("/v3/kv/deleterange", {"key": b64(b"/bench/"), "range_end": b64(b"/bench0")})
    return results


# -- the seat store (lanlic.cluster.etcd) on top of aetcd ------------------------------------------


async def bench_store(cluster: EtcdCluster, args: argparse.Namespace) -> None:
    """Checkout throughput through the store, adoption cost, and the gap in checkouts while the
    etcd leader is killed (the member first talks to the leader, then moves on)."""
    from lanlic.cluster.etcd import EtcdSeats
    from lanlic.errors import LanlicError, NoSeat

    eps = cluster.endpoints
    seats = args.claims

    def store(name: str, first: int, prefix: str) -> EtcdSeats:
        order = eps[first:] + eps[:first]
        return EtcdSeats(order, prefix=prefix, products={"cad": seats}, member=name, client_lease=1)

    a, b = store("a", 0, "/bench/store"), store("b", 1, "/bench/store")
    await a.start()
    await b.start()
    try:
        holds = []

        async def checkout(i: int) -> bool:
            holds.append(await (a if i % 2 else b).checkout("cad", f"c{i}", f"l{i}"))
            return True

        per_s, done, _ = await rate(checkout, seats, 16, args.seconds)
        print(f"  store    checkout, 2 members, 16 in flight: {per_s:8.0f}/s  ({done} seats)")
        theirs = [h for h in holds if h.holder.member == "a"][: args.rounds]
        t0 = time.perf_counter()
        for h in theirs:
            await b.adopt("cad", h.index, h.holder.client, h.holder.lease)
        ms = (time.perf_counter() - t0) * 1000 / max(1, len(theirs))
        print(f"  store    adopt one seat, sequential: {ms:.2f} ms  (n={len(theirs)})")
    finally:
        await a.close(revoke=True)
        await b.close(revoke=True)

    for trial in range(args.failovers):
        leader = cluster.leader()
        first = cluster.members.index(leader)
        s = store("f", first, f"/bench/failover{trial}")
        await s.start()
        gaps: list[float] = []
        killed_at = 0.0
        try:
            last = time.perf_counter()
            n = 0
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline and n < seats:
                if n == 20 and not killed_at:
                    cluster.kill(leader)
                    killed_at = time.perf_counter()
                try:
                    await s.checkout("cad", f"c{n}", "l")
                    n += 1
                    now = time.perf_counter()
                    if killed_at and now >= killed_at:
                        gaps.append(now - max(last, killed_at))
                    last = now
                    if killed_at and len(gaps) > 20:
                        break
                except NoSeat:
                    break
                except LanlicError:
                    await asyncio.sleep(0.01)
        finally:
            await s.close(revoke=True)
        print(
            f"  store    etcd leader killed, trial {trial + 1}: first checkout after the kill in"
            f" {gaps[0] * 1000:.0f} ms"
            if gaps
            else f"  store    etcd leader killed, trial {trial + 1}: no checkout succeeded after"
        )
        cluster.restart(leader)
        cluster.wait_healthy()


def report(name: str, results: dict[str, Any]) -> None:
    for in_flight in (1, 16):
        per_s, done, ok = results[f"claim x{in_flight}"]
        print(f"  {name:8} claim, {in_flight:2} in flight: {per_s:8.0f}/s  ({ok}/{done} won)")
    per_s, done, ok = results["batch"]
    print(
        f"  {name:8} claim, {BATCH} per txn, 16 in flight: {per_s * BATCH:8.0f} seats/s"
        f"  ({ok}/{done} txns)"
    )
    for what in ("keepalive", "watch"):
        ms = sorted(results[what])
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"  {name:8} {what:9}: median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms"
            f"  (n={len(ms)})"
        )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lanlic-bench-etcd-") as tmp:
        cluster = EtcdCluster(Path(tmp))
        try:
            cluster.start()
            # Talk to a follower, as most members of a site would: a write goes through the leader.
            leader = cluster.leader()
            endpoint = next(m for m in cluster.members if m is not leader).endpoint
            print(f"etcd 3-member cluster on loopback; clients talk to a follower ({endpoint})")
            order = ["aetcd", "gateway"] if args.order == "ag" else ["gateway", "aetcd"]
            for name in order:
                fn = bench_aetcd if name == "aetcd" else bench_gateway
                report(name, await fn(endpoint, args))
            if args.failovers >= 0:
                await bench_store(cluster, args)
        finally:
            cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--claims", type=int, default=2000, help="claims per in-flight setting")
    ap.add_argument("--rounds", type=int, default=300, help="keepalive / watch round trips")
    ap.add_argument("--seconds", type=float, default=10.0, help="time cap per figure")
    ap.add_argument(
        "--failovers", type=int, default=3, help="etcd leader kills (-1 skips the store figures)"
    )
    ap.add_argument("--order", choices=["ag", "ga"], default="ag", help="which client runs first")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
