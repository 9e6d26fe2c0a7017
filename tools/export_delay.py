"""``python tools/export_delay.py [--rows N] [--seconds S]``: how long a history export holds up
the seats (issue 12, point 4: "an export never delays a checkout by more than a few ms").

One run, one real ``lanlic serve --demo`` (its own process, admin page on loopback) on a data
folder whose history holds ``--rows`` rows. A client takes a seat and gives it back in a loop,
timing each checkout's round trip, in three phases (run ``--rounds`` times):

* ``idle``: nothing else runs (the baseline);
* ``web export``: ``GET /api/history.csv`` streams the whole history meanwhile;
* ``cli export``: ``lanlic admin history --csv`` reads the same folder meanwhile.

Then, in this process, the cause alone: how late an event loop's 1 ms timer fires while
another thread exports the same history, formatted per row in Python (the way before issue
12.4's mend, rebuilt here for the comparison) or per page by SQLite (``lanlic.admin.export``),
at the default switch interval and at 50 ms (which makes a GIL held at a stretch stand out from
the machine's own scheduling noise).

It prints each phase's checkouts, their p50, p99 and max round trip in ms, the share slower
than 3 ms, and the export's rows and time. Compare phases of the same run: on a shared machine
absolute figures drift between runs (and the checkouts themselves add rows to the history).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from lanlic.admin import export
from lanlic.admin.views import csv_cell
from lanlic.proto.framing import FrameDecoder, encode_frame
from lanlic.store import Store
from lanlic.store import history as hist

#: Each phase's checkouts are bounded by count and time.
MAX_CHECKOUTS = 200_000
#: A checkout slower than this counts as held up ("a few milliseconds").
SLOW_MS = 3
#: Pause between checkouts (s): the client does not keep a core busy by itself.
GAP = 0.001
#: ``--server-code``: where the server and CLI processes import lanlic from ("": as this one).
SERVER_CODE = ""


class Peer:
    """One licence-port connection that checks a seat out and gives it back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.inbox: list[dict[str, Any]] = []
        self.next_id = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> Peer:
        peer = cls(*await asyncio.open_connection(host, port))
        await peer.request(
            "hello", versions=[1], client_id=secrets.token_bytes(16), user="bench",
            host="bench", app="export_delay", nonce=secrets.token_bytes(32),
        )  # fmt: skip
        return peer

    async def request(self, t: str, **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        self.writer.write(encode_frame({"t": t, "id": self.next_id, **fields}))
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.inbox.extend(x for x in self.decoder.feed(data) if isinstance(x, dict))
        reply = self.inbox.pop(0)
        if reply.get("id") != self.next_id:
            raise AssertionError(f"reply out of order: {reply}")
        return reply

    async def cycle(self) -> float:
        """One checkout (timed, s) and its release (not timed)."""
        start = time.perf_counter()
        reply = await self.request("checkout", product="cad")
        took = time.perf_counter() - start
        if reply["t"] != "granted":
            raise AssertionError(f"checkout refused: {reply}")
        await self.request("release", leases=[reply["lease"]])
        return took


def fill_history(data: Path, rows: int) -> None:
    """``rows`` history rows of the usual shapes, over the last 300 days."""
    store = Store(data / "lanlic.db")
    now = time.time()
    step = 300 * 86400 / rows
    events = ("checkout", "release", "refusal", "borrow", "return")
    batch = [
        (now - 300 * 86400 + i * step, events[i % 5], ("cad", "cad-render", "viewer")[i % 3],
         f"user{i % 97}", f"ws-{i % 41:03d}.acme.example", f"lease {i:08x} for 60 s")
        for i in range(rows)
    ]  # fmt: skip
    with store._db:
        store._db.execute("BEGIN")
        store._db.executemany(
            "INSERT INTO history(at, event, product, user, host, detail) VALUES (?, ?, ?, ?, ?, ?)",
            batch,
        )
    store.close()


def lanlic_env() -> dict[str, str]:
    """The environment of the ``lanlic`` processes: ``--server-code`` first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
    if SERVER_CODE:
        env["PYTHONPATH"] = SERVER_CODE
    return env


async def start_server(data: Path) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    env = lanlic_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lanlic", "serve", "--demo", "--data", str(data), "--json",
        "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--no-mdns",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the server exited before it listened")
        event = json.loads(line)
        if event.get("event") == "listening":
            return proc, event


def web_export(base: str) -> tuple[int, float]:
    """Log in (no password is set: loopback, open mode), then stream the CSV export to
    nowhere; its lines and seconds."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    login = urllib.request.Request(
        base + "/api/login", data=b'{"password": ""}', headers={"Content-Type": "application/json"}
    )
    opener.open(login, timeout=30).close()
    start = time.perf_counter()
    lines = 0
    with opener.open(base + "/api/history.csv", timeout=600) as r:
        while chunk := r.read(65536):
            lines += chunk.count(b"\n")
    return lines, time.perf_counter() - start


def cli_export(data: Path) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lanlic", "admin", "history", "--csv", "--data", str(data)],
        capture_output=True, check=True, timeout=600, env=lanlic_env(),
    )  # fmt: skip
    return done.stdout.count(b"\n"), time.perf_counter() - start


async def phase(peer: Peer, during: Any, seconds: float) -> tuple[list[float], str]:
    """Checkouts for ``seconds`` (or, with ``during``, for as long as it runs)."""
    samples: list[float] = []
    task = None if during is None else asyncio.ensure_future(asyncio.to_thread(during))
    end = time.monotonic() + seconds
    while len(samples) < MAX_CHECKOUTS and time.monotonic() < end + 600:
        samples.append(await peer.cycle())
        await asyncio.sleep(GAP)  # a checkout arrives at any moment, not back to back
        if task is None and time.monotonic() >= end:
            break
        if task is not None and task.done():
            break
    note = ""
    if task is not None:
        lines, took = await task
        note = f"  ({lines - 1} rows exported in {took:.2f} s)"
    return samples, note


def line(name: str, samples: list[float], note: str, what: str = "checkouts") -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98]
    slow = sum(1 for x in ms if x > SLOW_MS) / len(ms)
    return (
        f"{name:<11} {len(ms):>7} {what:<9}  p50 {statistics.median(ms):5.2f}"
        f"  p99 {p99:6.2f}  max {ms[-1]:6.2f} ms  >{SLOW_MS} ms {slow:6.2%}{note}"
    )


async def run(rows: int, seconds: float, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lanlic-export-delay-"))
    data = folder / "data"
    proc = None
    try:
        proc, event = await start_server(data)  # creates the database and its key
        proc.terminate()
        await proc.wait()
        fill_history(data, rows)
        proc, event = await start_server(data)
        url = f"http://127.0.0.1:{event['admin_port']}"
        peer = await Peer.connect(event["host"], event["port"])
        for _ in range(200):  # warm up
            await peer.cycle()
        print(f"history: {rows} rows; server pid {proc.pid}; Python {sys.version.split()[0]}")
        for _ in range(rounds):  # rounds, so that a burst of load elsewhere shows as such
            print(line("idle", *await phase(peer, None, seconds)))
            print(line("web export", *await phase(peer, lambda: web_export(url), seconds)))
            print(line("cli export", *await phase(peer, lambda: cli_export(data), seconds)))
        peer.writer.close()
        proc.terminate()
        await proc.wait()
        await gil_hold(data / "lanlic.db")
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def python_rows(db_path: Path) -> int:
    """The export as it was: rows read a page at a time, each formatted in Python."""
    db = hist.open_reader(db_path)
    size, after = 0, None
    try:
        while True:
            rows, after = hist.page_after(db, hist.Filters(), after, 500)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\r\n")
            for r in rows:
                when = dt.datetime.fromtimestamp(r.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
                cells = (when, f"{r.at:.3f}", r.event, r.product, r.user, r.host, r.detail,
                         str(r.count))  # fmt: skip
                writer.writerow([csv_cell(c) for c in cells])
            size += len(buf.getvalue().encode())
            if after is None:
                return size
    finally:
        db.close()


def sqlite_lines(db_path: Path) -> int:
    """The export as it is: ``lanlic.admin.export.csv_page``."""
    db = hist.open_reader(db_path)
    size, after = 0, None
    try:
        while True:
            data, after = export.csv_page(db, hist.Filters(), after)
            size += len(data)
            if after is None:
                return size
    finally:
        db.close()


async def timer_lateness(work: Any) -> list[float]:
    """How late (s) a 1 ms timer fires, again and again, while ``work`` runs on a thread."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()), daemon=True)
    thread.start()
    late: list[float] = []
    while not done.is_set() and len(late) < MAX_CHECKOUTS:
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late.append(time.perf_counter() - start - 0.001)
    thread.join()
    return late


async def gil_hold(db_path: Path) -> None:
    default = sys.getswitchinterval()
    try:
        for interval in (default, 0.05):
            sys.setswitchinterval(interval)
            print(f"timer 1 ms, switch interval {interval * 1000:g} ms, export on a thread:")
            print(line("  idle", await timer_lateness(lambda: time.sleep(2)), "", "timers"))
            for name, work in (("  python", python_rows), ("  sqlite", sqlite_lines)):
                print(line(name, await timer_lateness(lambda w=work: w(db_path)), "", "timers"))
    finally:
        sys.setswitchinterval(default)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="history rows (default 200000)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each idle phase")
    p.add_argument("--rounds", type=int, default=2, help="times the three phases run")
    p.add_argument(
        "--server-code", default="", metavar="DIR",
        help="run the server and the CLI export from this checkout (e.g. one before a change);"
        " the in-process part always runs this one",
    )  # fmt: skip
    args = p.parse_args()
    global SERVER_CODE
    SERVER_CODE = args.server_code
    asyncio.run(run(args.rows, args.seconds, max(1, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
