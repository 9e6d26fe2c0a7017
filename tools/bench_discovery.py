#!/usr/bin/env python3
"""Time from browse start to a verified, connected server: ``Client.discover`` end to end.

Each run makes a fresh client (fresh mDNS sockets, empty cache), browses, proves the server by a
handshake, connects (a second handshake, checked against the pin) and closes. The server runs as
a ``lanlic serve`` process announcing an already registered service, as in an office where the
server has been up for hours.

    python tools/bench_discovery.py --runs 20                 # loopback, same host
    python tools/bench_discovery.py --runs 20 --netns         # two network namespaces (root)
    python tools/bench_discovery.py --runs 20 --qm-only       # without legacy unicast questions

mDNS never leaves the machine: on loopback everything uses interfaces=["127.0.0.1"] and the
server listens on 127.0.0.1; with --netns the server and the client run in two namespaces made
here and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from lanlic.bench.run import write_bench_key
from lanlic.core import signing
from lanlic.laptop.trust import TrustStore
from lanlic.net.client import Client
from lanlic.vendorkeys import load_vendor_public

CLI = [sys.executable, "-m", "lanlic.cli"]


def make_site(folder: Path) -> tuple[Path, Path]:
    return write_bench_key(folder, 100, product="cad", customer="Bench Office")


def read_event(proc: subprocess.Popen[bytes], kind: str, timeout: float = 30.0) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise SystemExit(f"bench: the server printed no {kind!r} within {timeout} s")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise SystemExit(f"bench: the server exited ({proc.wait(5)})")
        buf += chunk
        if buf.endswith(b"\n"):
            event = json.loads(buf)
            buf = b""
            if event.get("event") == kind:
                return dict(event)


async def measure(
    vendor_fp: str, runs: int, gap: float, interfaces: list[str] | None
) -> list[float]:
    times: list[float] = []
    trust = TrustStore(None)  # pins in memory: the bench never touches the user's pins
    for _ in range(runs):
        started = time.perf_counter()
        client = await Client.discover(
            vendor_fp, "cad", timeout=10, interfaces=interfaces, trust=trust
        )
        times.append(time.perf_counter() - started)
        await client.close()
        await asyncio.sleep(gap)
    return times


def summary(label: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return (
        f"{label:<34} n={len(ms):<3} p50 {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   "
        f"min {ms[0]:6.1f} ms   max {ms[-1]:7.1f} ms"
    )


def worker(args: argparse.Namespace) -> None:
    """Inside the client's namespace: measure and print the times as JSON."""
    if args.qm_only:
        import lanlic.discovery

        lanlic.discovery.LEGACY_UNICAST = False
    interfaces = args.interface or None
    times = asyncio.run(measure(args.vendor_fp, args.runs, args.gap, interfaces))
    print(json.dumps(times))


def ip(*a: str) -> None:
    subprocess.run(["ip", *a], check=True, capture_output=True, timeout=10)


def run_bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lanlic-bench-") as tmp:
        folder = Path(tmp)
        lic, pub = make_site(folder)
        vendor_fp = signing.fingerprint(load_vendor_public(pub))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
        env["XDG_CONFIG_HOME"] = str(folder / "config")
        env["PYTHONUNBUFFERED"] = "1"
        serve = [*CLI, "serve", "--license", str(lic), "--vendor-pub", str(pub)]
        serve += ["--data", str(folder / "data"), "--port", "0", "--json"]
        worker_cmd = [sys.executable, __file__, "--worker", "--vendor-fp", vendor_fp]
        worker_cmd += ["--runs", str(args.runs), "--gap", str(args.gap)]
        worker_cmd += ["--qm-only"] if args.qm_only else []
        made: list[str] = []
        server: subprocess.Popen[bytes] | None = None
        try:
            if args.netns:
                if os.geteuid() != 0 or shutil.which("ip") is None:
                    raise SystemExit("bench: --netns needs root and the ip command")
                tag = uuid.uuid4().hex[:6]
                a, b = f"lanlic-bench-{tag}-a", f"lanlic-bench-{tag}-b"
                for ns in (a, b):
                    ip("netns", "add", ns)
                    made.append(ns)
                ip(
                    "link",
                    "add",
                    "va",
                    "netns",
                    a,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "vb",
                    "netns",
                    b,
                )
                ip("-n", a, "addr", "add", "10.99.0.1/24", "dev", "va")
                ip("-n", b, "addr", "add", "10.99.0.2/24", "dev", "vb")
                for ns, dev in ((a, "va"), (b, "vb")):
                    ip("-n", ns, "link", "set", "lo", "up")
                    ip("-n", ns, "link", "set", dev, "up")
                ip("-n", a, "route", "add", "default", "via", "10.99.0.2")
                ip("-n", b, "route", "add", "default", "via", "10.99.0.1")
                server_cmd = ["ip", "netns", "exec", a, *serve, "--host", "10.99.0.1"]
                client_cmd = ["ip", "netns", "exec", b, *worker_cmd]
                label = "two namespaces over a veth pair"
            else:
                server_cmd = [*serve, "--host", "127.0.0.1"]  # announces on loopback only
                client_cmd = [*worker_cmd, "--interface", "127.0.0.1"]
                label = "loopback, same host"
            server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, env=env)
            read_event(server, "announced")
            time.sleep(1.5)  # past the announcements: the server has been up a while
            out = subprocess.run(
                client_cmd, capture_output=True, env=env, timeout=60 + 12 * args.runs, check=True
            )
            times = json.loads(out.stdout)
            how = "QM only" if args.qm_only else "QM + legacy unicast"
            print(summary(f"{label} ({how}, gap {args.gap:g} s)", times))
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(5)
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between runs")
    parser.add_argument("--netns", action="store_true", help="server and client in 2 namespaces")
    parser.add_argument("--qm-only", action="store_true", help="no legacy unicast questions")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vendor-fp", help=argparse.SUPPRESS)
    parser.add_argument("--interface", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()
