"""Measure the cluster's history in etcd (lanlic.cluster.history): reads, pruning, and how long
they hold the member's event loop.

    python tools/bench_cluster_history.py [--keys 10000] [--rows 10] [--days 30]

Starts its own 3-member etcd (Debian's etcd-server, tests/cluster/etcd_cluster.py) on free
127.0.0.1 ports in a temporary folder and stops it by PID at the end. Puts ``--keys`` batches of
``--rows`` rows spread over ``--days`` days, then times, each 3 times: the admin page's newest
page, a page deep in the history, a filter that matches nothing (a scan of all), the day's and
the whole span's usage-chart events; the longest wait of a 1 ms ticker on the same loop while the
long reads run (and idle, for comparison); pruning half the span. Compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))
from etcd_cluster import EtcdCluster, etcd_client

from lanlic.cluster.etcd import EtcdSeats
from lanlic.cluster.history import ClusterHistory, encode_batches
from lanlic.store import history as hist

DAY = 86400.0


async def fill(cluster: EtcdCluster, prefix: str, keys: int, rows: int, days: float) -> None:
    start = time.time() - days * DAY
    seqs = itertools.count()
    items = []
    for k in range(keys):
        t = start + k * days * DAY / keys
        batch = [(t + j * 0.01, "checkout" if j % 2 else "release", "cad", f"user{k % 300}",
                  f"pc{k % 300}", "", 1) for j in range(rows)]  # fmt: skip
        items += encode_batches(prefix, "member", "tag", seqs, batch)
    sem = asyncio.Semaphore(16)
    async with etcd_client(cluster) as etcd:

        async def put(key: bytes, value: bytes) -> None:
            async with sem:
                await etcd.put(key, value)

        began = time.perf_counter()
        await asyncio.gather(*(put(k, v) for k, v, _n in items))
    size = sum(len(v) for _k, v, _n in items) / 1e6
    print(f"put {len(items)} keys, {keys * rows} rows, {size:.2f} MB of values, "
          f"in {time.perf_counter() - began:.1f} s")  # fmt: skip


async def timed(label: str, read: Callable[[], Awaitable[Any]]) -> None:
    took = []
    for _ in range(3):
        began = time.perf_counter()
        got = await read()
        took.append(time.perf_counter() - began)
    n = len(got.items) if hasattr(got, "items") else len(got)
    print(f"{label}: {min(took) * 1e3:.0f}-{max(took) * 1e3:.0f} ms ({n} rows)")


async def longest_wait(work: Awaitable[Any] | None, idle: float = 2.0) -> float:
    """The longest a 1 ms ticker on this loop waited beyond its sleep while ``work`` ran."""
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - began - 0.001)

    tick = asyncio.create_task(ticker())
    if work is None:
        await asyncio.sleep(idle)
    else:
        await work
    tick.cancel()
    return worst


async def main(args: argparse.Namespace, cluster: EtcdCluster) -> None:
    prefix = "/bench-history"
    await fill(cluster, prefix, args.keys, args.rows, args.days)
    store = EtcdSeats(cluster.endpoints, prefix=prefix, products={}, member="reader")
    await store.start()
    history = ClusterHistory(store)
    now = time.time()
    kinds = ["checkout", "release"]
    try:
        await timed("newest page of 100", lambda: history.page(hist.Filters(), limit=100))
        await timed("page of 100 at offset 5000", lambda: history.page(hist.Filters(), offset=5000))
        nothing = hist.Filters(event="admin_remove")
        await timed("a filter matching nothing (a scan of all)", lambda: history.page(nothing))
        await timed("the day's chart events", lambda: history.events_since(now - DAY, kinds))
        span = now - args.days * DAY
        await timed("the whole span's chart events", lambda: history.events_since(span, kinds))
        idle = await longest_wait(None)

        async def long_reads() -> None:
            await history.events_since(span, kinds)
            await history.page(nothing)

        busy = await longest_wait(long_reads())
        print(f"longest loop wait: {idle * 1e3:.1f} ms idle, {busy * 1e3:.1f} ms during the "
              "whole span's chart and a scan of all")  # fmt: skip
        began = time.perf_counter()
        gone = await history.prune(now, int(args.days / 2))
        print(f"pruning half the span: {gone} keys in {(time.perf_counter() - began) * 1e3:.0f} ms")
    finally:
        await store.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=10, help="rows per key")
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lanlic-bench-history-") as tmp:
        cluster = EtcdCluster(Path(tmp) / "etcd")
        try:
            cluster.start()
            asyncio.run(main(args, cluster))
        finally:
            cluster.close()


if __name__ == "__main__":
    cli()
