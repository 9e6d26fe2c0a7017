"""A real 3-member etcd cluster on loopback for tests and tools/bench_etcd.py.

Debian's etcd-server (etcd 3.4, ``/usr/bin/etcd``), never the PyPI bundles of 3.5.0-3.5.2, which can
lose committed transactions after a SIGKILL (etcd issue 13766). Each member listens on free
127.0.0.1 ports, keeps its data folder under the given directory and is stopped by its PID, never
by name. Short election settings (heartbeat 50 ms, election 500 ms) so that a leader kill recovers
in about a second.

The sync helpers (``start``, ``wait_healthy``, ``leader``) use urllib and are for set-up and
tear-down; a test whose event loop runs etcd clients uses the ``*_async`` ones, which do not block
the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
HEARTBEAT_MS = 50
ELECTION_MS = 500


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    member_id: int | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    root: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)
    token: str = field(default_factory=lambda: f"lanlic-test-{os.getpid()}-{time.monotonic_ns()}")

    def __post_init__(self) -> None:
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(
                Member(
                    name=name,
                    client_port=free_port(),
                    peer_port=free_port(),
                    data_dir=self.root / f"{name}.etcd",
                    log_path=self.root / f"{name}.log",
                )
            )

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _command(self, m: Member, state: str) -> list[str]:
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return [
            ETCD,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
        ]  # fmt: skip

    def _spawn(self, m: Member, state: str) -> None:
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(
                self._command(m, state),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start(self, timeout: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            self._spawn(m, "new")
        self.wait_healthy(timeout)

    # -- sync helpers (set-up, tear-down) --------------------------------------------------------

    def _status(self, m: Member, timeout: float = 0.5) -> dict[str, object] | None:
        req = urllib.request.Request(
            f"{m.client_url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body: dict[str, object] = json.loads(r.read())
                return body
        except OSError:
            return None

    def leader(self, timeout: float = 10.0) -> Member:
        """The member that every running member names as leader (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self._agreed_leader(
                [self._status(m) if m.running() else None for m in self.members]
            )
            if found is not None:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"no leader within {timeout}s; logs in {self.root}")

    def _agreed_leader(self, statuses: list[dict[str, object] | None]) -> Member | None:
        leaders = set()
        for m, st in zip(self.members, statuses, strict=True):
            if st is None:
                continue
            header = st.get("header")
            assert isinstance(header, dict)
            m.member_id = int(header["member_id"])
            leaders.add(int(str(st.get("leader", 0))))
        if len(leaders) != 1:
            return None
        (lid,) = leaders
        for m in self.members:
            if m.member_id == lid and m.running():
                return m
        return None

    def wait_healthy(self, timeout: float = 20.0) -> Member:
        """Every running member answers and they agree on a leader; returns the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [self._status(m) if m.running() else None for m in self.members]
            if all(
                s is not None for s, m in zip(statuses, self.members, strict=True) if m.running()
            ):
                found = self._agreed_leader(statuses)
                if found is not None:
                    return found
            time.sleep(0.05)
        raise TimeoutError(f"etcd cluster not healthy within {timeout}s; logs in {self.root}")

    # -- async helpers (while a test's event loop runs etcd clients) -----------------------------

    async def _status_async(
        self, session: aiohttp.ClientSession, m: Member
    ) -> dict[str, object] | None:
        try:
            async with session.post(
                f"{m.client_url}/v3/maintenance/status",
                data=b"{}",
                timeout=aiohttp.ClientTimeout(total=0.5),
            ) as r:
                body: dict[str, object] = await r.json(content_type=None)
                return body
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def leader_async(self, timeout: float = 10.0) -> Member:
        import asyncio

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                statuses = [
                    await self._status_async(session, m) if m.running() else None
                    for m in self.members
                ]
                found = self._agreed_leader(statuses)
                if found is not None:
                    return found
                await asyncio.sleep(0.05)
        raise TimeoutError(f"no leader within {timeout}s; logs in {self.root}")

    # -- faults, by PID --------------------------------------------------------------------------

    def kill(self, m: Member, sig: int = signal.SIGKILL) -> None:
        assert m.proc is not None and m.running(), f"{m.name} is not running"
        os.kill(m.proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            m.proc.wait(10)

    def stop(self, m: Member) -> None:
        self.kill(m, signal.SIGTERM)

    def restart(self, m: Member) -> None:
        """Start a stopped member again on its data folder (it rejoins as an existing member)."""
        assert not m.running(), f"{m.name} still runs"
        self._spawn(m, "existing")

    def close(self) -> None:
        for m in self.members:
            if m.proc is None:
                continue
            if m.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGCONT)  # in case a test left it stopped
                os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)
        # The data folders go, the logs stay: each member preallocates a 64 MB WAL (and its
        # tmp), about 370 MB a test, and pytest keeps three runs' folders (a day of runs here
        # filled the disk).
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def etcd_client(cluster: EtcdCluster) -> AsyncIterator[Any]:
    """An aetcd client on the cluster's first member, for the reads a test makes itself."""
    import aetcd

    host, _, port = cluster.endpoints[0].rpartition(":")
    client = aetcd.Client(host=host, port=int(port), timeout=2)
    try:
        yield client
    finally:
        await client.close()
