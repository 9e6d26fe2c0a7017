"""Helpers of the adversarial tests: raw msgpack a well-behaved packer will not write, and
``lanlic serve`` run as a process whose memory, CPU time and log the test can read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from helpers import RawPeer

#: ``await raw_peer(address, hello=True)``, the fixture in this folder's conftest.py.
PeerFactory = Callable[..., Awaitable[RawPeer]]

#: Bound on one line of a server process's output.
LINE_TIMEOUT = 20.0


def header(n: int) -> bytes:
    return struct.pack(">I", n)


def frame(body: bytes) -> bytes:
    """A frame around ``body`` as given (which need not be msgpack at all)."""
    return header(len(body)) + body


def pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def raw_map(*pairs: tuple[Any, Any]) -> bytes:
    """A msgpack map of these pairs in order, duplicates kept (``packb`` cannot write them)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(pack(k) + pack(v) for k, v in pairs)


# ------------------------------------------------------------------------------- processes


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmHWM: peak resident memory, VmRSS: now), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def log_file(path: Path) -> BinaryIO:
    return open(path, "wb")  # the child writes it; this process only reads it back


class ServeProcess:
    """``lanlic -v serve --demo --json`` on 127.0.0.1:0 with no mDNS and no admin page.

    Its log (stderr) goes to a file, so a chatty server never blocks on a full pipe and the
    test can read all of it. ``nofile`` lowers the process's RLIMIT_NOFILE before lanlic starts.
    """

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, data: Path, nofile: int | None = None) -> ServeProcess:
        argv = ["-v", "serve", "--demo", "--data", str(data), "--host", "127.0.0.1"]
        argv += ["--port", "0", "--no-mdns", "--no-admin", "--json"]
        code = "import sys\nfrom lanlic.cli import main\n"
        if nofile is not None:
            code += (
                "import resource\n"
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n"
            )
        code += "sys.exit(main(sys.argv[1:]))\n"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
        env["PYTHONUNBUFFERED"] = "1"
        log = data.parent / f"{data.name}-server.log"
        with log_file(log) as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, *argv,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env,
            )  # fmt: skip
        server = cls(proc, log)
        try:
            event = await server.event("listening")
        except BaseException:
            await server.stop()
            raise
        server.address = (event["host"], event["port"])
        return server

    async def event(self, kind: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + LINE_TIMEOUT
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(self.proc.stdout.readline(), LINE_TIMEOUT)
            if not line:
                raise AssertionError(f"server exited before {kind!r}: {self.stderr()!r}")
            event = json.loads(line)
            if event.get("event") == kind:
                return dict(event)
        raise AssertionError(f"no {kind!r} event in time")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def connect(address: tuple[str, int], hello: bool = True) -> RawPeer:
    reader, writer = await asyncio.open_connection(*address)
    peer = RawPeer(reader, writer)
    if hello:
        welcome = await peer.hello()
        assert welcome["t"] == "welcome", welcome
    return peer
