"""The benchmark runner: starts servers and generators, runs the scenarios, reports.

Every (scenario, target) pair gets a fresh server process, so memory and CPU figures belong to
that scenario alone and one target's leftovers never slow the next. The generator processes live
for the whole run and are told what to do over pipes (see ``lanlic.bench.gen``). Each phase waits
a bounded time; every process started here is ended in a ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import multiprocessing
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import lanlic
from lanlic.bench import (
    CLUSTER_SCENARIOS,
    CLUSTER_TARGETS,
    SCENARIOS,
    TARGETS,
    add_arguments,
    report,
)
from lanlic.errors import LanlicError

__all__ = ["BenchError", "add_arguments", "main", "run_from_args"]


#: Bound on one server process starting up, and on a generator answering one step.
START_TIMEOUT = 20.0
STEP_GRACE = 30.0
#: The product the churn's laptops borrow: an add-on of the bench key, apart from the churn's.
LAPTOP_PRODUCT = "bench-laptops"


class BenchError(LanlicError):
    code = "bench"


@dataclass
class Params:
    """Sizes and durations of one run; ``--quick`` and the full run differ only here."""

    burst_n: int = 10_000
    steady_n: int = 10_000
    steady_s: float = 20.0
    sat_conns: int = 100
    sat_depth: int = 8
    sat_s: float = 5.0
    churn_clients: int = 500
    churn_s: float = 15.0
    churn_hold: float = 1.0
    churn_vanish: float = 0.05
    churn_lease: float = 2.0
    churn_borrowers: int = 4
    """Laptops borrowing and returning a seat over and over, per generator (lanlic only): as
    many times ``procs`` in all, in a process of their own, borrowing ``LAPTOP_PRODUCT``."""
    lease: float = 5.0
    heartbeat: float = 1.0
    max_connecting: int = 256
    procs: int = 2
    rounds: int = 3
    """Saturate runs per target, alternating targets; the median is reported."""
    failover_clients: int = 150
    """Failover (cluster target): clients holding a seat when a member is killed."""

    @classmethod
    def quick(cls) -> Params:
        return cls(
            burst_n=1000,
            steady_n=1000,
            steady_s=3.0,
            sat_conns=50,
            sat_s=1.5,
            churn_clients=100,
            churn_s=2.0,
            churn_lease=1.0,
            churn_borrowers=2,
            lease=3.0,
            rounds=1,
            failover_clients=30,
        )


@dataclass
class Target:
    """A server under test: its address and, when known, its process id."""

    name: str
    host: str
    port: int
    pid: int | None
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ /proc figures

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss(pid: int | None) -> int | None:
    """Resident set size in bytes (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_stall_us() -> int | None:
    """Microseconds some task has waited for a CPU since boot (Linux PSI), or None."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(line.rsplit("total=", 1)[1]) if "total=" in line else None


def pid_listening_on(port: int) -> int | None:
    """The process with a TCP socket listening on ``port`` (Linux /proc; root sees all)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid_dir.name)
    return None


# -------------------------------------------------------------------------------- the servers


def _check_loopback(host: str) -> None:
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise BenchError(f"the benchmark only loads loopback addresses, not {host!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def _server_process(name: str, cmd: list[str]) -> Iterator[Target]:
    """Start a server process that prints one JSON line with its port; stop it on exit."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules, fixed argv
            cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
        )
        try:
            assert proc.stdout is not None
            info: dict[str, Any] = {}
            deadline = time.monotonic() + START_TIMEOUT
            while "port" not in info:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
                line = proc.stdout.readline() if ready else b""
                if not line:
                    err.seek(0)
                    tail = err.read()[-2000:].decode(errors="replace")
                    raise BenchError(f"the {name} server did not start: {tail.strip()}")
                with contextlib.suppress(ValueError):
                    info = json.loads(line)
            yield Target(name, "127.0.0.1", int(info["port"]), proc.pid, info)
        finally:
            _stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()  # its pipe, else left for the garbage collector to find


@contextlib.contextmanager
def start_ceiling(kind: str, loop: str) -> Iterator[Target]:
    cmd = [sys.executable, "-m", "lanlic.bench.serve", kind, "--host", "127.0.0.1"]
    with _server_process(kind, [*cmd, "--port", "0", "--loop", loop]) as target:
        yield target


def realistic_policy(seats: int) -> str:
    """A seat policy shaped like a CAD office's options file for the product ``bench``: user and
    host groups, reservations, limits, an allow list and a deny list. The bench's clients (user
    ``bench`` on ``bench-host``, from 127.0.0.1) belong to everything that lets them in, so
    every rule is evaluated on every checkout and none refuses them: the run shows what the
    policy costs, with the same seats granted as without it."""
    reserve = [
        f"{{ seats = {n}, {who} }}"
        for n, who in (
            (seats // 10, 'group = "engineers"'),
            (seats // 20, 'subnet = "127.0.0.0/8"'),
        )
        if n > 0
    ]
    return f"""\
[groups.users]
engineers = ["bench", "alice", "bob", "carol"]
designers = ["dave", "erin"]
contractors = ["mallory", "trent"]

[groups.hosts]
lab = ["bench-host", "ws-01", "ws-02"]
kiosks = ["kiosk-1"]

[products.bench]
reserve = [{", ".join(reserve)}]
max = [{{ seats = 1, user = "carol" }}, {{ seats = 2, group = "contractors" }}, \
{{ seats = {max(seats, 1)}, group = "engineers" }}]
include = [{{ group = "engineers" }}, {{ group = "designers" }}, {{ host_group = "lab" }}]
exclude = [{{ group = "contractors" }}, {{ host_group = "kiosks" }}]
max_borrowed_per_user = {max(seats, 1)}
"""


def write_bench_key(
    root: Path,
    seats: int,
    laptops: int = 0,
    *,
    product: str = "bench",
    customer: str = "lanlic bench",
) -> tuple[Path, Path]:
    """A vendor key pair and a network key for ``product`` signed on the spot, in ``root``:
    (the network key, the vendor's public key).

    ``product`` has ``seats`` floating seats and lends none. With ``laptops``, the key also
    sells ``LAPTOP_PRODUCT``, a borrowable add-on of that many seats, for the churn's laptops
    to borrow: so they load the server's borrowing path while the churn's pool stays exactly
    ``seats``, the size of the Redis semaphore it is compared with."""
    from lanlic.core import netkey
    from lanlic.vendorkeys import write_vendor_keypair

    vendor = netkey.generate_vendor_key()
    _, pub = write_vendor_keypair(root, vendor)
    today = dt.datetime.now(dt.UTC).date()
    products = [netkey.ProductEntitlement(product, seats=max(seats, 1))]
    if laptops > 0:
        products.append(
            netkey.ProductEntitlement(
                LAPTOP_PRODUCT, seats=laptops, borrowable=laptops, max_borrow_days=30, addon=True
            )
        )
    lic = root / "bench.lic"
    lic.write_bytes(
        netkey.issue_network_key(
            vendor,
            customer=customer,
            expires=today + dt.timedelta(days=30),
            borrow_kind="act",
            products=tuple(products),
            issued=today,
        )
    )
    return lic, pub


@contextlib.contextmanager
def start_lanlic(
    seats: int, lease: float, heartbeat: float, laptops: int = 0, policy: str | None = None
) -> Iterator[Target]:
    """``lanlic serve`` as a user runs it, with its own data folder (and so its database),
    over a network key signed on the spot; on 127.0.0.1, with no mDNS and no admin page.
    ``laptops``: seats of ``LAPTOP_PRODUCT`` to borrow (see ``write_bench_key``).
    ``policy``: a seat policy file's text (``realistic`` for ``realistic_policy``), in force
    from the server's first request; the target is then ``lanlic-policy``."""
    with tempfile.TemporaryDirectory(prefix="lanlic-bench-") as tmp:
        root = Path(tmp)
        lic, pub = write_bench_key(root, seats, laptops)
        name = "lanlic"
        if policy is not None:
            from lanlic.server import policyfile

            text = realistic_policy(max(seats, 1)) if policy == "realistic" else policy
            (root / "data").mkdir(mode=0o700)
            policyfile.install(root / "data", text)
            name = "lanlic-policy"
        cmd = [
            sys.executable,
            "-m",
            "lanlic.cli",
            "serve",
            "--license",
            str(lic),
            "--vendor-pub",
            str(pub),
            "--data",
            str(root / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--lease",
            str(lease),
            "--heartbeat",
            # What the server tells clients; the generators renew on the scenario's own
            # schedule. serve refuses a lease no longer than the heartbeat.
            str(min(heartbeat, lease / 3)),
            "--allow-short-lease",  # leases of seconds, to see them run out within a run
            "--no-mdns",
            "--no-admin",
            "--json",
        ]
        with _server_process(name, cmd) as target:
            if policy is not None:
                _check_policy_in_force(root / "data")
            yield target


def _check_policy_in_force(folder: Path) -> None:
    """The "policy on" figures are only honest with the policy in force: the server applies
    ``policy.toml`` before it listens, and says in its state file whether it refused it."""
    from lanlic.server import policyfile

    shown = policyfile.show_command(folder)
    if not shown.get("in_force"):
        raise BenchError(f"the lanlic server did not apply the bench's seat policy: {shown}")


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


class RespClient:
    """A tiny blocking RESP client for set-up and checks (never on the measured path)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def call(self, *args: bytes | str | int) -> Any:
        from lanlic.bench.wire import resp_command

        self.sock.sendall(resp_command(*args))
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise BenchError(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            value, self.buf = self.buf[:n], self.buf[n + 2 :]
            return value.decode()
        return rest.decode()


@contextlib.contextmanager
def start_redis(seats: int, lease: float) -> Iterator[Target]:
    path = redis_server_path()
    if path is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    from lanlic.bench.wire import ACQUIRE_LUA, RENEW_LUA

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        for _ in range(5):
            port = _free_port()
            # redis-server listens on 127.0.0.1 only, keeps nothing on disk, and gets the same
            # accept backlog and connection room as the Python servers.
            cmd = [
                path,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
                "--tcp-backlog",
                "4096",
                "--maxclients",
                "19000",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ]
            proc = subprocess.Popen(  # noqa: S603 - redis-server from PATH, fixed argv
                cmd, stdout=err, stderr=err, stdin=subprocess.DEVNULL
            )
            try:
                client = None
                deadline = time.monotonic() + START_TIMEOUT
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        client = RespClient("127.0.0.1", port)
                        client.call("PING")
                        break
                    except OSError:
                        client = None
                        time.sleep(0.05)
                if client is None:
                    if proc.poll() is not None:
                        continue  # the port was taken in between: try another
                    raise BenchError("redis-server did not start")
                try:
                    version = str(client.call("INFO", "server")).split("redis_version:")[1]
                    info = {
                        "acquire": client.call("SCRIPT", "LOAD", ACQUIRE_LUA),
                        "renew": client.call("SCRIPT", "LOAD", RENEW_LUA),
                        "ttl_ms": int(lease * 1000),
                        "seats": seats,
                        "version": version.split()[0],
                    }
                finally:
                    client.close()
                yield Target("redis", "127.0.0.1", port, proc.pid, {"redis": info})
                return
            finally:
                _stop(proc)
        raise BenchError("redis-server could not find a free port")


def redis_held(target: Target) -> int:
    """Seats a Redis target still counts as held, after purging expired ones."""
    client = RespClient(target.host, target.port)
    try:
        script = (
            "local t = redis.call('TIME') "
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
            "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
            "return redis.call('ZCARD', KEYS[1])"
        )
        held: int = client.call("EVAL", script, 1, "lanlic:bench:seats")
        return held
    finally:
        client.close()


def lanlic_status(host: str, port: int) -> dict[str, Any]:
    """The server's status through the public client (set-up and checks only)."""
    import asyncio

    from lanlic.laptop.trust import TrustStore
    from lanlic.net.client import Client

    async def get() -> dict[str, Any]:
        # Pins in memory only: a benchmark must not pin its throwaway servers for the user.
        async with Client((host, port), app="lanlic-bench", trust=TrustStore(None)) as client:
            return await client.status()

    return asyncio.run(get())


# -------------------------------------------------------------------------------- generators


class Generators:
    """The generator processes and their pipes."""

    def __init__(self, procs: int, loop: str) -> None:
        from lanlic.bench.gen import worker_main

        ctx = multiprocessing.get_context("spawn")
        # Connection on POSIX, PipeConnection (no common public base) on Windows.
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, loop), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self.progress = [0] * procs

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("quit",))
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():  # pragma: no cover
                p.kill()
                p.join()
        for c in self.conns:
            c.close()

    def send_all(self, *msg: Any) -> None:
        for c in self.conns:
            c.send(msg)

    def gather(self, kind: str, timeout: float, progress: report.Progress | None) -> list[Any]:
        """Wait until every generator sends ``kind``; show progress meanwhile."""
        out: list[Any] = [None] * len(self.conns)
        deadline = time.monotonic() + timeout
        waiting = set(range(len(self.conns)))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"generators did not report {kind!r} within {timeout:.0f} s")
            ready = wait([self.conns[i] for i in waiting], min(left, 0.25))
            for c in ready:
                i = self.conns.index(c)
                try:
                    msg = self.conns[i].recv()
                except EOFError:
                    raise BenchError("a generator process died") from None
                if msg[0] == "progress":
                    self.progress[i] = msg[1]
                elif msg[0] == "failed":
                    raise BenchError(f"a generator failed: {msg[1]}")
                elif msg[0] == kind:
                    out[i] = msg[1] if len(msg) > 1 else None
                    waiting.discard(i)
                else:
                    raise BenchError(f"a generator sent {msg[0]!r} while waiting for {kind!r}")
            if progress is not None:
                progress.update(sum(self.progress))
        return out


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# ----------------------------------------------------------------------------------- scenario


@dataclass
class Phase:
    """One (scenario, target) run's measurements, filled in as it goes."""

    rss0: int | None = None
    rss_ready: int | None = None
    rss_done: int | None = None
    cpu_ready: float | None = None
    cpu_done: float | None = None
    t_go: float = 0.0
    t_done: float = 0.0
    ready: list[Any] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    side: list[Any] = field(default_factory=list)
    """The results of ``run_phase``'s side generators (the churn's laptops)."""

    def server_cpu(self) -> float | None:
        """The server's CPU seconds from ready to done, if its process could be read."""
        if self.cpu_ready is None or self.cpu_done is None:
            return None
        return self.cpu_done - self.cpu_ready

    def gen_cpu(self) -> float:
        """The CPU seconds of the (main) generators' runs, together."""
        return float(sum(r["cpu"] for r in self.results))


def run_phase(
    gens: Generators,
    target: Target,
    spec: dict[str, Any],
    shares: list[int],
    label: str,
    run_timeout: float,
    quiet: bool,
    after: Any = None,
    side: tuple[Generators, dict[str, Any]] | None = None,
) -> tuple[Phase, Any]:
    """Prepare, go, collect; ``after(phase)`` runs while connections are still open.

    ``side``: other generator processes and their spec (each gets all of it), run in step
    with ``gens`` against the same target; their results go to ``Phase.side``, apart."""
    ph = Phase()
    ph.rss0 = proc_rss(target.pid)
    gens.progress = [0] * len(gens.conns)
    where = {"host": target.host, "port": target.port, "target": target.name}
    for i, c in enumerate(gens.conns):
        c.send(
            (
                "run",
                {
                    **spec,
                    **where,
                    "n": shares[i],
                    "worker": i,
                    "nworkers": len(gens.conns),
                    **target.info,
                },
            )
        )
    crews = [gens]
    if side is not None:
        others, other_spec = side
        crews.append(others)
        for i, c in enumerate(others.conns):
            c.send(("run", {**other_spec, **where, "worker": i, "nworkers": len(others.conns)}))
    extra = None
    try:
        prog = report.Progress(f"{label}: preparing", sum(shares), quiet)
        ph.ready = gens.gather("ready", spec.get("timeout", 60.0) + STEP_GRACE, prog)
        if side is not None:
            side[0].gather("ready", side[1].get("timeout", 60.0) + STEP_GRACE, None)
        prog.done()
        ph.rss_ready = proc_rss(target.pid)
        ph.cpu_ready = proc_cpu(target.pid)
        ph.t_go = time.monotonic() + 0.2
        for crew in crews:
            crew.send_all("go", ph.t_go)
        prog = report.Progress(f"{label}: running", None, quiet, start=ph.t_go)
        ph.results = gens.gather("result", run_timeout + STEP_GRACE, prog)
        ph.t_done = time.monotonic()
        prog.done()
        ph.cpu_done = proc_cpu(target.pid)
        ph.rss_done = proc_rss(target.pid)
        if side is not None:
            ph.side = side[0].gather("result", run_timeout + STEP_GRACE, None)
        if after is not None:
            extra = after(ph)
    except BaseException:
        # Already failing: tidy up what can be, and let the first error be the one reported.
        for crew in crews:
            with contextlib.suppress(Exception):
                crew.send_all("finish")
                crew.gather("closed", 10.0, None)
        raise
    for crew in crews:
        crew.send_all("finish")
    for crew in crews:
        crew.gather("closed", STEP_GRACE, None)
    return ph, extra


# -------------------------------------------------------------------------------------- main


def _params(args: argparse.Namespace) -> Params:
    prm = Params.quick() if args.quick else Params()
    if args.procs:
        prm.procs = args.procs
    if args.n:
        prm.burst_n = prm.steady_n = args.n
    if args.duration:
        prm.steady_s = prm.sat_s = prm.churn_s = args.duration
    if args.conns:
        prm.sat_conns = args.conns
    if args.depth:
        prm.sat_depth = args.depth
    if args.rounds:
        prm.rounds = args.rounds
    if args.clients:
        prm.churn_clients = args.clients
    if args.borrowers is not None:
        prm.churn_borrowers = args.borrowers
    if args.lease:
        prm.lease = args.lease
    if args.heartbeat:
        prm.heartbeat = args.heartbeat
    if getattr(args, "failover_clients", None):
        prm.failover_clients = args.failover_clients
    return prm


def _loop_kind(choice: str) -> str:
    if choice != "auto":
        if choice == "uvloop":
            try:
                import uvloop
            except ImportError:
                raise BenchError("uvloop is not installed: pip install '.[fast]'") from None
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise BenchError(f"unknown {what} {', '.join(bad) or '(none)'}; choose from {allowed}")
    return items


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prm = _params(args)
        self.loop = _loop_kind(args.loop)
        self.targets = _parse_list(args.targets, TARGETS + CLUSTER_TARGETS, "target")
        self.scenarios = _parse_list(args.scenario, SCENARIOS + CLUSTER_SCENARIOS, "scenario")
        self.policy: str | None = None
        """With ``--policy``: the seat policy of the "policy on" variant (``lanlic-policy``)."""
        if getattr(args, "policy", None):
            if args.server:
                raise BenchError("--policy starts servers of its own: not with --server")
            if "lanlic" not in self.targets:
                raise BenchError("--policy is a variant of the lanlic target: add lanlic")
            if args.policy == "realistic":
                self.policy = "realistic"
            else:
                try:
                    self.policy = Path(args.policy).read_text(encoding="utf-8")
                except OSError as exc:
                    raise BenchError(f"--policy: cannot read {args.policy}: {exc}") from None
            at = self.targets.index("lanlic") + 1
            self.targets[at:at] = ["lanlic-policy"]
        self._cluster_setup(args)
        self.quiet = args.no_progress
        self.external: tuple[str, int] | None = None
        self.ext_members: list[tuple[str, int]] = []
        """With ``--server A,B,...`` (the members of a running cluster): connections go to each."""
        self.ext_product = args.product or "bench"
        self.ext_seats = 0
        if args.server:
            from lanlic.net.client import parse_servers

            try:
                members = parse_servers(args.server)
            except ValueError as exc:
                raise BenchError(f"--server: {exc}") from None
            for host, _ in members:
                _check_loopback(host)
            self.external = members[0]
            self.ext_members = members if len(members) > 1 else []
        self.results: dict[str, dict[str, Any]] = {}
        self.redis_skip: str | None = None
        if "redis" in self.targets and redis_server_path() is None:
            self.redis_skip = (
                "redis-server is not installed (Debian: apt-get install redis-server); "
                "the Redis baseline is skipped"
            )
            self.say(f"note: {self.redis_skip}")

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # the cluster target (lanlic.bench.cluster)

    def _cluster_setup(self, args: argparse.Namespace) -> None:
        self.etcd: Any = None
        cluster = "cluster" in self.targets
        if cluster and args.scenario == ",".join(SCENARIOS):  # the default: failover as well
            self.scenarios.append("failover")
        if "failover" in self.scenarios and not cluster:
            raise BenchError("the failover scenario runs on the cluster target: --targets cluster")
        if cluster and args.server:
            raise BenchError("--server and the cluster target do not go together")

    @contextlib.contextmanager
    def _cluster(self, seats: int, lease: float) -> Iterator[Target]:
        from lanlic.bench import cluster

        if self.etcd is None:
            self.etcd = cluster.EtcdForBench()
        with cluster.start_cluster(self.etcd, seats, lease, self.prm.heartbeat) as t:
            yield t

    def _sc_failover(self, gens: Generators) -> None:
        from lanlic.bench import cluster

        self.results.setdefault("failover", {})
        self._record("failover", "cluster", cluster.failover(self))

    # servers

    @contextlib.contextmanager
    def server(self, name: str, seats: int, lease: float, laptops: int = 0) -> Iterator[Target]:
        prm = self.prm
        if name == "lanlic" and self.external is not None:
            host, port = self.external
            info = {"members": [[h, p] for h, p in self.ext_members]} if self.ext_members else {}
            yield Target("lanlic", host, port, pid_listening_on(port), info)
        elif name == "redis":
            with start_redis(seats, lease) as t:
                yield t
        elif name == "lanlic":
            with start_lanlic(seats, lease, prm.heartbeat, laptops) as t:
                yield t
        elif name == "lanlic-policy":
            with start_lanlic(seats, lease, prm.heartbeat, laptops, self.policy) as t:
                yield t
        elif name == "cluster":
            with self._cluster(seats, lease) as t:
                yield t
        else:
            with start_ceiling(name, self.loop) as t:
                yield t

    def _external_setup(self) -> None:
        assert self.external is not None
        status = lanlic_status(*self.external)
        products = status["products"]
        if not products:
            raise BenchError("the server offers no products")
        if self.args.product:
            chosen = [p for p in products if p["name"] == self.args.product]
            if not chosen:
                raise BenchError(f"the server has no product {self.args.product!r}")
            prod = chosen[0]
        else:
            prod = max(products, key=lambda p: p["free"])
        self.ext_product, self.ext_seats = prod["name"], int(prod["free"])
        self.say(
            f"external server {self.external[0]}:{self.external[1]}: product "
            f"{self.ext_product!r}, {self.ext_seats} seats free"
        )

    def _cap(self, name: str, n: int) -> int:
        if name == "lanlic" and self.external is not None and n > self.ext_seats:
            self.say(f"note: only {self.ext_seats} seats free on the server: using that many")
            return self.ext_seats
        return n

    # scenarios

    def run(self) -> dict[str, Any]:
        if self.external is not None:
            self._external_setup()
        started = time.time()
        t_start = time.monotonic()
        stall0 = cpu_stall_us()
        gens = Generators(self.prm.procs, self.loop)
        try:
            for sc in self.scenarios:
                getattr(self, f"_sc_{sc}")(gens)
        finally:
            gens.close()
            if self.etcd is not None:
                self.etcd.close()
        took = time.monotonic() - t_start
        stall1 = cpu_stall_us()
        return {
            "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(took, 1),
            # Share of the run during which some task waited for a CPU (Linux PSI): the
            # benchmark's own processes contend for two cores, but a high figure means something
            # else was running too, and the absolute numbers are worth less.
            "cpu_pressure_pct": (
                round(100 * (stall1 - stall0) / 1e6 / took, 1)
                if stall0 is not None and stall1 is not None and took > 0
                else None
            ),
            "machine": self._machine(),
            "params": {**self.prm.__dict__, "loop": self.loop, "quick": bool(self.args.quick)},
            "scenarios": self.results,
        }

    def _machine(self) -> dict[str, Any]:
        import msgpack

        m: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "msgpack": ".".join(map(str, msgpack.version)),
            # The optional compiled build (setup.py): which build of the server ran.
            "compiled": lanlic.compiled_modules(),
        }
        with contextlib.suppress(ImportError):
            import uvloop

            m["uvloop"] = str(getattr(uvloop, "__version__", "?"))
        with contextlib.suppress(OSError, IndexError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    m["cpu"] = line.split(":", 1)[1].strip()
                    break
        path = redis_server_path()
        if path is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(  # noqa: S603 - redis-server --version
                    [path, "--version"], capture_output=True, text=True, timeout=5, check=False
                ).stdout
                m["redis"] = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
        return m

    def _each_target(self, scenario: str, extra: tuple[str, ...] = ()) -> Iterator[str]:
        bucket = self.results.setdefault(scenario, {})
        for name in (*self.targets, *extra):
            if name == "redis" and self.redis_skip is not None:
                bucket["redis"] = {"skipped": self.redis_skip}
                continue
            yield name

    def _record(self, scenario: str, name: str, data: dict[str, Any]) -> None:
        self.results.setdefault(scenario, {})[name] = data
        self.say(report.one_line(scenario, name, data))

    def _common(self, ph: Phase, seats: int, wall: float) -> dict[str, Any]:
        gen_max = max(r["cpu"] for r in ph.results)
        server = ph.server_cpu()
        out: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "gen_cpu_pct": round(100 * ph.gen_cpu() / wall, 1) if wall > 0 else None,
            "gen_cpu_max_pct": round(100 * gen_max / wall, 1) if wall > 0 else None,
            "server_cpu_pct": round(100 * server / wall, 1)
            if server is not None and wall > 0
            else None,
            "rss_before": ph.rss0,
            "rss_held": None,
            "bytes_per_seat": None,
        }
        return out

    def _cpu_per(self, out: dict[str, Any], ph: Phase, count: int, unit: str) -> None:
        """CPU time per ``unit`` (a burst's client, a churn's session), in us, of the server and
        of the generators: ``server_cpu_us_per_<unit>`` and ``gen_cpu_us_per_<unit>``.

        A burst or a churn is bound by the two together when they share the cores: what the
        server spends on a client and what the generators spend making it. Their sum says how
        many a second the machine can serve, whatever the split; the percentages alone do not.
        """
        server = ph.server_cpu()
        out[f"gen_cpu_us_per_{unit}"] = round(1e6 * ph.gen_cpu() / count, 1) if count else None
        out[f"server_cpu_us_per_{unit}"] = (
            round(1e6 * server / count, 1) if server is not None and count else None
        )

    def _memory(self, out: dict[str, Any], before: int | None, held: int | None, n: int) -> None:
        out["rss_held"] = held
        if before is not None and held is not None and n > 0:
            out["bytes_per_seat"] = round((held - before) / n)

    def _sc_burst(self, gens: Generators) -> None:
        prm = self.prm
        for name in self._each_target("burst"):
            n = self._cap(name, prm.burst_n)
            with self.server(name, n, prm.lease) as tgt:
                spec = {
                    "scenario": "burst",
                    "product": self.ext_product,
                    "timeout": 60.0,
                    "max_connecting": prm.max_connecting,
                }
                ph, _ = run_phase(
                    gens, tgt, spec, _split(n, prm.procs), f"burst {name}", 60.0, self.quiet
                )
            counts = report.merge_counts(ph.results)
            seated_at = report.merge_samples(ph.results, "seated_at")
            lat = report.merge_lat(ph.results)
            seated = counts.get("seated", 0)
            all_s = max(seated_at) if seated_at else None
            wall = all_s if all_s else ph.t_done - ph.t_go
            out = self._common(ph, n, wall)
            out.update(
                {
                    "n": n,
                    "seated": seated,
                    "all_seated_s": round(all_s, 3) if all_s is not None else None,
                    "seats_per_s": round(seated / all_s) if all_s else None,
                    "refused": counts.get("refused", 0),
                    "errors": sum(v for k, v in counts.items() if k not in ("seated", "refused")),
                    "counts": counts,
                    "latency": report.latency(lat),
                }
            )
            self._memory(out, ph.rss0, ph.rss_done, seated)
            self._cpu_per(out, ph, n, "client")
            self._record("burst", name, out)

    def _sc_steady(self, gens: Generators) -> None:
        prm = self.prm
        for name in self._each_target("steady"):
            n = self._cap(name, prm.steady_n)
            with self.server(name, n, prm.lease) as tgt:
                spec = {
                    "scenario": "steady",
                    "product": self.ext_product,
                    "timeout": 90.0,
                    "period": prm.heartbeat,
                    "duration": prm.steady_s,
                    "grace": 2.0,
                    "max_connecting": prm.max_connecting,
                }
                ph, _ = run_phase(
                    gens,
                    tgt,
                    spec,
                    _split(n, prm.procs),
                    f"steady {name}",
                    prm.steady_s + 5,
                    self.quiet,
                )
            counts = report.merge_counts(ph.results)
            lat = report.merge_lat(ph.results)
            lag = report.merge_samples(ph.results, "lag")
            held = sum(int(r.get("held", 0)) for r in ph.ready)
            out = self._common(ph, n, prm.steady_s)
            out.update(
                {
                    "n": n,
                    "held": held,
                    "target_rate": round(held / prm.heartbeat, 1),
                    "rate": round(counts.get("sent", 0) / prm.steady_s, 1),
                    "answered_rate": round(len(lat) / prm.steady_s, 1),
                    "lost": counts.get("lost", 0),
                    "unanswered": counts.get("unanswered", 0),
                    "errors": sum(
                        v for k, v in counts.items() if k.startswith(("error", "connect", "hello"))
                    ),
                    "counts": counts,
                    "latency": report.latency(lat),
                    "send_lag": report.latency(lag),
                }
            )
            self._memory(out, ph.rss0, ph.rss_ready, held)
            self._record("steady", name, out)

    def _sc_saturate(self, gens: Generators) -> None:
        # Rounds alternate the targets (lanlic, ceiling, Redis, lanlic, ...) and each target's
        # median round is reported, so a burst of noise on a shared machine hits one round of
        # one target, not a whole ratio.
        prm = self.prm
        for op in ("renew", "checkout"):
            key = f"saturate-{op}"
            extra = ("ceiling-streams",) if op == "renew" and "ceiling" in self.targets else ()
            names = list(self._each_target(key, extra))
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for rnd in range(prm.rounds):
                for name in names:
                    out = self._saturate_once(gens, key, op, name, rnd)
                    if out is not None:
                        runs[name].append(out)
            for name, outs in runs.items():
                if outs:
                    outs.sort(key=lambda d: d["ops_per_s"])
                    best = dict(outs[len(outs) // 2])
                    best["rounds_ops_per_s"] = [d["ops_per_s"] for d in outs]
                    self._record(key, name, best)

    def _saturate_once(
        self, gens: Generators, key: str, op: str, name: str, rnd: int
    ) -> dict[str, Any] | None:
        prm = self.prm
        conns = prm.sat_conns
        seats = conns if op == "renew" else conns * prm.sat_depth
        if name == "lanlic" and self.external is not None and seats > self.ext_seats:
            self.say(f"note: {key} needs {seats} free seats: skipped on the external server")
            self.results[key]["lanlic"] = {"skipped": "not enough free seats"}
            return None
        with self.server(name, seats, prm.lease) as tgt:
            spec = {
                "scenario": "saturate",
                "product": self.ext_product,
                "timeout": 60.0,
                "op": op,
                "depth": prm.sat_depth,
                "duration": prm.sat_s,
                "grace": 2.0,
                "max_connecting": prm.max_connecting,
            }
            label = f"{key} {name}" + (f" round {rnd + 1}/{prm.rounds}" if prm.rounds > 1 else "")
            ph, _ = run_phase(
                gens, tgt, spec, _split(conns, prm.procs), label, prm.sat_s + 5, self.quiet
            )
        counts = report.merge_counts(ph.results)
        lat = report.merge_lat(ph.results)
        out = self._common(ph, seats, prm.sat_s)
        out.update(
            {
                "conns": conns,
                "depth": prm.sat_depth,
                "ops": len(lat),
                "ops_per_s": round(len(lat) / prm.sat_s, 1),
                "no_seat": counts.get("no_seat", 0),
                "lost": counts.get("lost", 0),
                "errors": counts.get("error", 0) + counts.get("connect_failed", 0),
                "counts": counts,
                "latency": report.latency(lat),
            }
        )
        if prm.rounds > 1:
            self.say(report.one_line(key, name, out) + f" (round {rnd + 1})")
        if not out["ops"]:
            self.say(f"  {key} {name}: no operation completed; generator counts {counts}")
        return out

    def _sc_churn(self, gens: Generators) -> None:
        prm = self.prm
        for name in self._each_target("churn"):
            if name == "lanlic" and self.external is not None:
                self.results["churn"]["lanlic"] = {
                    "skipped": "churn needs its own short-lease server"
                }
                continue
            seats = prm.churn_clients
            # Borrowers (laptops taking seats off the network and back) only exist in lanlic.
            # They borrow a product of their own (the churn's pool stays the size of the Redis
            # semaphore) from a process of their own: they stand for other machines.
            borrowers = prm.churn_borrowers if name in ("lanlic", "lanlic-policy") else 0
            nlaptops = borrowers * prm.procs
            with contextlib.ExitStack() as stack:
                laptops = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="lanlic-bench-laptops-")
                )
                tgt = stack.enter_context(self.server(name, seats, prm.churn_lease, nlaptops))
                side = None
                if nlaptops:
                    crew = Generators(1, self.loop)
                    stack.callback(crew.close)
                    side = (
                        crew,
                        {
                            "scenario": "laptops",
                            "product": LAPTOP_PRODUCT,
                            "n": nlaptops,
                            "borrow_dir": laptops,
                            "timeout": 60.0,
                            "duration": prm.churn_s,
                            "grace": 2.0,
                        },
                    )
                spec = {
                    "scenario": "churn",
                    "product": self.ext_product,
                    "timeout": 60.0,
                    "duration": prm.churn_s,
                    "hold_max": prm.churn_hold,
                    "vanish": prm.churn_vanish,
                    "heartbeat": prm.churn_lease / 3,
                    "grace": 2.0,
                    "max_connecting": prm.max_connecting,
                }

                def leak_check(ph: Phase, tgt: Target = tgt) -> int | None:
                    # Every lease a vanished client left must run out by itself.
                    time.sleep(prm.churn_lease + 0.5)
                    if tgt.name in ("lanlic", "lanlic-policy", "cluster"):
                        status = lanlic_status(tgt.host, tgt.port)
                        return sum(int(p["in_use"]) for p in status["products"])
                    if tgt.name == "redis":
                        return redis_held(tgt)
                    return None

                ph, leaked = run_phase(
                    gens,
                    tgt,
                    spec,
                    _split(prm.churn_clients, prm.procs),
                    f"churn {name}",
                    prm.churn_s + 20,
                    self.quiet,
                    leak_check,
                    side,
                )
            counts = report.merge_counts(ph.results + ph.side)
            lat = report.merge_lat(ph.results)
            out = self._common(ph, seats, prm.churn_s)
            pairs = min(counts.get("borrowed", 0), counts.get("returned", 0))
            if nlaptops:
                borrows = (
                    f"{nlaptops} laptops (a process of their own, product {LAPTOP_PRODUCT}) "
                    f"borrowed and returned {pairs} times ({pairs / prm.churn_s:.1f}/s)"
                )
            else:
                borrows = (
                    "none run" if name in ("lanlic", "lanlic-policy") else "n/a: no borrowing here"
                )
            laptops_cpu = sum(r["cpu"] for r in ph.side)
            out.update(
                {
                    "borrowers": nlaptops,
                    "borrowed": counts.get("borrowed", 0),
                    "returned": counts.get("returned", 0),
                    "borrow_pairs_per_s": round(pairs / prm.churn_s, 1),
                    "borrow_latency": report.latency(report.merge_samples(ph.side, "borrow")),
                    "return_latency": report.latency(report.merge_samples(ph.side, "return")),
                    "laptops_cpu_pct": round(100 * laptops_cpu / prm.churn_s, 1)
                    if ph.side
                    else None,
                }
            )
            out.update(
                {
                    "clients": prm.churn_clients,
                    "seats": seats,
                    "lease_s": prm.churn_lease,
                    "sessions": counts.get("sessions", 0) + counts.get("vanished", 0),
                    "sessions_per_s": round(
                        (counts.get("sessions", 0) + counts.get("vanished", 0)) / prm.churn_s, 1
                    ),
                    "granted": counts.get("granted", 0),
                    "refused": counts.get("refused", 0),
                    "vanished": counts.get("vanished", 0),
                    "leaked_after_expiry": leaked,
                    "borrows": borrows,
                    "counts": counts,
                    "latency": report.latency(lat),
                }
            )
            # Per session served, the refused tries it took included (Redis's are cheap, and the
            # ceiling refuses none); lanlic's server time includes the laptops' borrows.
            self._cpu_per(out, ph, out["sessions"], "session")
            self._record("churn", name, out)


def run_from_args(args: argparse.Namespace) -> int:
    bench = Bench(args)
    data = bench.run()
    data["ratios"] = report.ratios(data["scenarios"])
    data["targets"] = report.targets(data)
    print(report.table(data), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {args.json_out}", flush=True)
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(data) + "\n")
        print(f"wrote {args.markdown}", flush=True)
    if args.plot:
        try:
            report.plot(data, Path(args.plot))
        except ImportError:
            print(
                "lanlic bench: --plot needs matplotlib: pip install 'lanlic[bench]' "
                "(or pip install matplotlib); no plot drawn",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"wrote {args.plot}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lanlic bench",
        description="Load a lanlic server on loopback, beside the bare-asyncio ceiling and Redis.",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_from_args(args)
    except BenchError as exc:
        print(f"lanlic bench: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
