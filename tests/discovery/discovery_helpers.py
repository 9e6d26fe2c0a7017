"""Helpers of the discovery tests (a module name of its own: ``conftest`` is taken)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cliproc import KEEP
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import DEFAULT_PRODUCTS, TODAY

from lanlic.core import netkey
from lanlic.core.netkey import NetworkKey, ProductEntitlement
from lanlic.core.service import LicenseService
from lanlic.discovery import Announcer
from lanlic.net.server import LicenseServer

LOOPBACK = ["127.0.0.1"]
CLI = [sys.executable, "-m", "lanlic.cli"]
#: Bound on one line of a server process's output (registration takes about 1.2 s).
LINE_TIMEOUT = 20.0


def network_key(
    vendor: Ed25519PrivateKey,
    customer: str = "ACME Engineering",
    products: tuple[ProductEntitlement, ...] = DEFAULT_PRODUCTS,
) -> NetworkKey:
    data = netkey.issue_network_key(
        vendor,
        customer=customer,
        expires=TODAY + dt.timedelta(days=365),
        borrow_kind="act",
        products=products,
        issued=TODAY,
    )
    return netkey.verify_network_key(data, vendor.public_key(), TODAY)


class Served:
    """A server on 127.0.0.1 announced on loopback, with a count of the handshakes it answered."""

    def __init__(self, server: LicenseServer, announcer: Announcer) -> None:
        self.server = server
        self.announcer = announcer
        self.hellos = 0
        service = server.service
        handle = service.handle

        def counting(session: Any, msg: Any, now: float, wall: float) -> Any:
            if msg.TYPE == "hello":
                self.hellos += 1
            return handle(session, msg, now, wall)

        service.handle = counting  # type: ignore[method-assign]

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    @property
    def service(self) -> LicenseService:
        return self.server.service

    async def stop(self) -> None:
        await self.announcer.close()
        await self.server.stop()


Serve = Callable[..., Awaitable[Served]]


# ------------------------------------------------------------------------ server processes


def cli_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_") or k in KEEP}
    env["XDG_CONFIG_HOME"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerProcess:
    """``lanlic serve --json`` as a process; ``events()`` reads its JSON lines with a deadline."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "serve",
            *args,
            "--json",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def event(self, kind: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), LINE_TIMEOUT)
            if not line:
                err = b""
                if self.proc.stderr is not None:
                    err = await asyncio.wait_for(self.proc.stderr.read(), 5)
                raise AssertionError(f"server exited before {kind!r}: {err.decode()!r}")
            event = json.loads(line)
            if event.get("event") == kind:
                return dict(event)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode
