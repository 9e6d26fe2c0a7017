"""A cluster of lanlic members on etcd beside a single server: checkout and renew throughput, and
the time for a killed member's seats to be adopted by another.

    python tools/bench_cluster.py [--members 3] [--conns 32] [--seconds 5] [--seats 1000]

Starts, in a temporary folder, on free 127.0.0.1 ports: one ``lanlic serve`` on SQLite; a 3-member
etcd (Debian's etcd-server, tests/cluster/etcd_cluster.py) and ``--members`` ``lanlic serve --store
etcd://`` members sharing one server.key. Every process is stopped by its PID at the end.

Load: ``--conns`` raw protocol connections spread over the members, one request in flight each
(a client waits for its answer), bounded by ``--seconds`` per figure:

- checkout: checkout then release, counted as checkouts per second;
- renew: each connection holds one seat and renews it;
- failover: 20 clients (``lanlic.net.client.Client`` given every member) hold seats on the first
  member, which is SIGKILLed; the time until etcd shows every one of their seats under another
  member's lease.

The load generator shares the machine's cores with the servers and etcd: compare the cluster with
the single server within one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))
from etcd_cluster import EtcdCluster

from lanlic.proto.framing import FrameDecoder, encode_frame

CLI = [sys.executable, "-m", "lanlic.cli"]


class Peer:
    """One raw protocol connection, one request in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.inbox: list[dict[str, Any]] = []
        self.rid = 0

    @classmethod
    async def open(cls, port: int, name: str) -> Peer:
        peer = cls(*await asyncio.open_connection("127.0.0.1", port))
        welcome = await peer.request(
            "hello", versions=[1], client_id=secrets.token_bytes(16), user=name, host="bench",
            app="bench", nonce=secrets.token_bytes(32),
        )  # fmt: skip
        assert welcome["t"] == "welcome", welcome
        return peer

    async def request(self, t: str, **fields: Any) -> dict[str, Any]:
        self.rid += 1
        self.writer.write(encode_frame({"t": t, "id": self.rid, **fields}))
        while True:
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                self.inbox.extend(x for x in self.decoder.feed(data) if isinstance(x, dict))
            reply = self.inbox.pop(0)
            if reply.get("id") == self.rid:
                return reply

    def close(self) -> None:
        self.writer.close()


def start_server(args: list[str]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"server did not start: {args}")
    return proc, json.loads(line)


async def checkouts(ports: list[int], conns: int, seconds: float) -> tuple[float, int]:
    peers = [await Peer.open(ports[i % len(ports)], f"u{i}") for i in range(conns)]
    done = refused = 0
    deadline = time.monotonic() + seconds

    async def work(peer: Peer) -> None:
        nonlocal done, refused
        while time.monotonic() < deadline:
            got = await peer.request("checkout", product="cad", version="")
            if got["t"] != "granted":
                refused += 1
                continue
            await peer.request("release", leases=[got["lease"]])
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(work(p) for p in peers))
    for p in peers:
        p.close()
    return done / (time.monotonic() - start), refused


async def renewals(ports: list[int], conns: int, seconds: float) -> float:
    peers = [await Peer.open(ports[i % len(ports)], f"r{i}") for i in range(conns)]
    leases = []
    for p in peers:
        got = await p.request("checkout", product="cad", version="")
        assert got["t"] == "granted", got
        leases.append(got["lease"])
    done = 0
    deadline = time.monotonic() + seconds

    async def work(peer: Peer, lease: bytes) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            got = await peer.request("renew", leases=[lease])
            assert got["t"] == "renewed" and got["leases"] == [lease], got
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(work(p, x) for p, x in zip(peers, leases, strict=True)))
    rate = done / (time.monotonic() - start)
    for p, x in zip(peers, leases, strict=True):
        await p.request("release", leases=[x])
        p.close()
    return rate


async def failover(
    members: list[tuple[subprocess.Popen[bytes], dict[str, Any]]], endpoint: str, prefix: str
) -> float:
    import aetcd

    from lanlic.cluster.etcd import read_holders
    from lanlic.laptop.trust import TrustStore
    from lanlic.net.client import Client

    addresses = [("127.0.0.1", int(info["port"])) for _, info in members]
    folder = Path(tempfile.mkdtemp(prefix="lanlic-bench-trust-"))
    clients = [
        Client(addresses, regain=False, trust=TrustStore(folder / f"t{i}")) for i in range(20)
    ]
    host, _, port = endpoint.rpartition(":")
    etcd = aetcd.Client(host=host, port=int(port), timeout=2)
    try:
        seats = []
        for cl in clients:
            await cl.connect()
            seats.append((await cl.acquire("cad")).lease_id.hex())
        others = {int(info["etcd_lease"]) for _, info in members[1:]}
        members[0][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < 30:
            held = {h.lease: lease for h, lease in (await read_holders(etcd, prefix)).values() if h}
            if all(held.get(x) in others for x in seats):
                return time.monotonic() - killed
            await asyncio.sleep(0.005)
        return float("nan")
    finally:
        for cl in clients:
            await cl.close()
        await etcd.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--seats", type=int, default=1000)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lanlic-bench-cluster-"))
    procs: list[subprocess.Popen[bytes]] = []
    cluster = EtcdCluster(root / "etcd")
    try:
        vendor = root / "vendor"
        subprocess.run([*CLI, "vendor", "keygen", "--out", str(vendor)], check=True,
                       capture_output=True)  # fmt: skip
        key = root / "site.lic"
        subprocess.run(
            [*CLI, "vendor", "issue", "--vendor-key", str(vendor / "vendor.key"), "--customer",
             "Bench", "--expires", time.strftime("%Y-12-31"), "--borrow-kind", "act",
             "--out", str(key), "--product", f"cad:{a.seats}"],
            check=True, capture_output=True,
        )  # fmt: skip
        base = ["serve", "--license", str(key), "--vendor-pub", str(vendor / "vendor.pub"),
                "--host", "127.0.0.1", "--port", "0", "--no-mdns", "--json"]  # fmt: skip
        single, info = start_server([*base, "--data", str(root / "single"), "--no-admin"])
        procs.append(single)
        results: dict[str, Any] = {}
        results["single"] = {
            "checkout_per_s": asyncio.run(checkouts([info["port"]], a.conns, a.seconds))[0],
            "renew_per_s": asyncio.run(renewals([info["port"]], a.conns, a.seconds)),
        }
        single.send_signal(signal.SIGTERM)
        single.wait(10)
        cluster.start()
        store = "etcd://" + ",".join(cluster.endpoints)
        members = []
        for i in range(a.members):
            data = root / f"m{i}"
            data.mkdir()
            if i:
                shutil.copyfile(root / "m0" / "server.key", data / "server.key")
                os.chmod(data / "server.key", 0o600)
            ends = cluster.endpoints[i:] + cluster.endpoints[:i]
            m = start_server([*base, "--data", str(data), "--store", "etcd://" + ",".join(ends)])
            procs.append(m[0])
            members.append(m)
        ports = [int(info["port"]) for _, info in members]
        rate, refused = asyncio.run(checkouts(ports, a.conns, a.seconds))
        results[f"cluster_{a.members}"] = {
            "checkout_per_s": rate,
            "checkout_refused": refused,
            "renew_per_s": asyncio.run(renewals(ports, a.conns, a.seconds)),
        }
        import datetime as dt

        from lanlic.cli.serve import cluster_prefix
        from lanlic.core.netkey import verify_network_key
        from lanlic.vendorkeys import load_vendor_public

        nk = verify_network_key(
            key.read_bytes(), load_vendor_public(vendor / "vendor.pub"), dt.date.today()
        )
        results[f"cluster_{a.members}"]["failover_s"] = asyncio.run(
            failover(members, cluster.endpoints[-1], cluster_prefix(nk))
        )
        print(json.dumps({"store": store.split(",")[0] + ",...", **results}, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
