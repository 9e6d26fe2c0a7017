"""The cluster target of ``lanlic bench`` (issue 16): three ``lanlic serve --store etcd://``
members sharing one pool over a 3-member etcd, all on loopback, beside a single server.

* ``--targets lanlic,cluster``: the usual scenarios, with each generator spreading its connections
  over the three members in turn (``lanlic.bench.gen.Run``); a connection renews and releases
  at the member that granted its lease, as a client does.
* ``--scenario failover`` (cluster only): real clients (``lanlic.net.client.Client``, given the
  members' list, each starting at another member) hold one seat each and renew every heartbeat;
  one member is killed (SIGKILL) under that load, and the figure is the time from the kill until
  every client that was on it has had its seat confirmed by another member (its reclaim answered),
  with the seats lost meanwhile (none expected).

etcd is Debian's etcd-server 3.4 (``/usr/bin/etcd``), started once per run by the harness the
tests use (``tests/cluster/etcd_cluster.py``, so the target needs a source checkout) on free
127.0.0.1 ports in a temporary folder, and stopped by PID at the end; each member set gets a new
network key and so its own prefix in etcd. The members need the ``cluster`` extra (aetcd).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lanlic.bench.run import BenchError, Target, _server_process, write_bench_key

__all__ = ["MEMBERS", "EtcdForBench", "failover", "start_cluster"]

#: lanlic members (and etcd members) of the cluster target.
MEMBERS = 3
#: Bound on the failover measurement: every client must be confirmed elsewhere within it.
FAILOVER_BOUND = 15.0


class EtcdForBench:
    """One 3-member etcd for the whole run, started on first use; ``close`` stops it by PID."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cluster: Any = None

    def endpoints(self) -> list[str]:
        if self._cluster is None:
            harness = Path(__file__).resolve().parents[2] / "tests" / "cluster"
            if not (harness / "etcd_cluster.py").is_file():
                raise BenchError(
                    "the cluster target needs a source checkout of lanlic "
                    f"(tests/cluster/etcd_cluster.py; looked in {harness})"
                )
            if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
                raise BenchError("the cluster target needs etcd 3.4: apt-get install etcd-server")
            sys.path.insert(0, str(harness))
            harness_module = importlib.import_module("etcd_cluster")  # the tests' own harness

            self._tmp = tempfile.TemporaryDirectory(prefix="lanlic-bench-etcd-")
            cluster = harness_module.EtcdCluster(Path(self._tmp.name), size=MEMBERS)
            try:
                cluster.start()
            except BaseException:
                cluster.close()
                raise
            self._cluster = cluster
        return list(self._cluster.endpoints)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@contextlib.contextmanager
def start_cluster(
    etcd: EtcdForBench, seats: int, lease: float, heartbeat: float
) -> Iterator[Target]:
    """Three members over ``etcd``, one network key and one ``server.key`` (copied, 0600): a
    ``Target`` at the first member, with every member in ``info["members"]`` and their process
    ids in ``pids``."""
    from lanlic.server.datadir import DataDir

    endpoints = etcd.endpoints()
    with tempfile.TemporaryDirectory(prefix="lanlic-bench-cluster-") as tmp:
        root = Path(tmp)
        lic, pub = write_bench_key(root, seats)
        identity = DataDir(root / "m0")
        identity.prepare()
        identity.server_key()  # made here, copied to the others: one server to its clients
        commands = []
        for i in range(MEMBERS):
            data = root / f"m{i}"
            if i:
                DataDir(data).prepare()
                shutil.copyfile(root / "m0" / "server.key", data / "server.key")
                os.chmod(data / "server.key", 0o600)
            # Each member talks to etcd through another etcd member first.
            mine = endpoints[i % len(endpoints) :] + endpoints[: i % len(endpoints)]
            commands.append([
                sys.executable, "-m", "lanlic.cli", "serve", "--license", str(lic),
                "--vendor-pub", str(pub), "--data", str(data), "--host", "127.0.0.1",
                "--port", "0", "--store", "etcd://" + ",".join(mine),
                "--lease", str(lease), "--heartbeat", str(min(heartbeat, lease / 3)),
                "--allow-short-lease", "--no-mdns", "--no-admin", "--json",
            ])  # fmt: skip
        with contextlib.ExitStack() as stack:
            # The members start side by side (each takes a second or so to import and take its
            # etcd lease): one at a time, three of them cost every scenario a few seconds.
            starting = [_server_process(f"cluster member {i}", c) for i, c in enumerate(commands)]
            with concurrent.futures.ThreadPoolExecutor(MEMBERS) as pool:
                entered = [pool.submit(cm.__enter__) for cm in starting]
            for cm, future in zip(starting, entered, strict=True):
                if future.exception() is None:
                    stack.push(cm)  # its __exit__ stops the member
            members: list[Target] = [future.result() for future in entered]
            first = members[0]
            yield Target(
                "cluster",
                first.host,
                first.port,
                None,  # no one process's CPU and memory stand for the cluster's
                {"members": [[m.host, m.port] for m in members], "pids": [m.pid for m in members]},
            )


def failover(bench: Any) -> dict[str, Any]:
    """The failover scenario on the cluster target (see the module doc)."""
    prm = bench.prm
    n = prm.failover_clients
    with bench.server("cluster", n, prm.lease) as tgt:
        return asyncio.run(_failover(tgt, n))


async def _failover(tgt: Target, n: int) -> dict[str, Any]:
    from lanlic.laptop.trust import TrustStore
    from lanlic.net.client import Client, Seat

    members = [(str(h), int(p)) for h, p in tgt.info["members"]]
    lost: list[Seat] = []
    clients: list[Client] = []
    seats: list[Seat] = []
    gate = asyncio.Semaphore(32)

    async def start(i: int) -> None:
        k = i % len(members)
        client = Client(
            members[k:] + members[:k],  # spread: each member is first for a third of them
            app="lanlic-bench failover",
            regain=False,
            trust=TrustStore(None),  # pins in memory only: nothing of a bench is kept
            on_seat_lost=lambda seat, _reason: lost.append(seat),
        )
        clients.append(client)
        async with gate:
            await client.connect()
            seats.append(await client.acquire("bench"))

    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(start(i) for i in range(n)))
        heartbeat = clients[0].heartbeat_s
        await asyncio.sleep(2 * heartbeat)  # steady renewals on every member
        victim = members[0]
        on_victim = [s for s in seats if s.member == victim]
        # kill -9 (on Windows os.kill always ends a process at once: TerminateProcess).
        if sys.platform == "win32":
            sig = signal.SIGTERM
        else:
            sig = signal.SIGKILL
        os.kill(int(tgt.info["pids"][0]), sig)
        killed = loop.time()
        moved: dict[int, float] = {}
        while len(moved) < len(on_victim) and loop.time() - killed < FAILOVER_BOUND:
            for j, seat in enumerate(on_victim):
                if j not in moved and seat.member != victim and seat.renewed_at >= killed:
                    moved[j] = loop.time() - killed
            await asyncio.sleep(0.002)
        # Every client goes on renewing: nothing is lost over a lease more.
        await asyncio.sleep(clients[0].lease_s)
        held = sum(1 for s in seats if not s.lost)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    times = sorted(moved.values())
    return {
        "clients": n,
        "members": len(members),
        "on_killed_member": len(on_victim),
        "moved": len(times),
        "all_moved_s": round(times[-1], 3) if len(times) == len(on_victim) and times else None,
        "moved_p50_s": round(statistics.median(times), 3) if times else None,
        "lost": len(lost),
        "held_after": held,
        "lease_s": clients[0].lease_s if clients else None,
        "heartbeat_s": clients[0].heartbeat_s if clients else None,
    }
