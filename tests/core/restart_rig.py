"""A real ``LicenseServer`` with its store writes under the test's control.

The server's one store thread is replaced by ``ManualExecutor``: every store call the server
makes (a reservation raise, a lease batch, a borrow) waits in a queue until the test runs it, so a
test can delay writes, let them finish in the order the server issued them, and crash the server
between any two. Everything else is the server's own async code (``run_durable``,
``sync_leases``, ``load_store``, ``stop``); only the sockets are left out: requests go to
``LicenseService.handle`` as ``data_received`` sends them, and replies to a ``FakeConn``.

``Oracle`` is the independent check: it reads the reservations from the database file through
its own connection (what a crash at this instant would leave) and counts the seats that clients
were told they hold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanlic.core.service import LicenseService, ServiceConfig, Session
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.proto import messages as m
from lanlic.store import Store


class ManualExecutor(concurrent.futures.Executor):
    """Runs submitted calls only when ``run_next`` is called, on the caller's thread."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future[Any]]]
        self.queue = []
        self.after_each: Callable[[], None] = lambda: None
        self.ran: list[tuple[str, bool]] = []
        """(name, succeeded) of every call run."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.queue.append((fn, args, fut))
        return fut

    def run_next(self) -> bool:
        if not self.queue:
            return False
        fn, args, fut = self.queue.pop(0)
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            self.ran.append((getattr(fn, "__name__", "?"), False))
            fut.set_exception(exc)
        else:
            self.ran.append((getattr(fn, "__name__", "?"), True))
            fut.set_result(result)
        self.after_each()
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None

    def drop(self) -> None:
        """A crash: the calls not yet run never happen."""
        for _, _, fut in self.queue:
            fut.cancel()
        self.queue.clear()


class FakeConn:
    def __init__(self) -> None:
        self.inbox: list[m.Message] = []

    def send(self, msg: m.Message) -> None:
        self.inbox.append(msg)


def disk_reservations(path: Path) -> dict[str, int]:
    """The reservations a crash now would leave: read through a connection of our own."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {str(p): int(n) for p, n in db.execute("SELECT product, seats FROM reservations")}
    finally:
        db.close()


class Rig:
    """One server life on ``db_path``; ``crash`` ends it, a new ``Rig`` starts the next."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, db_path: Path, key: Any, server_key: Any,
        lease: float, clock: Callable[[], float], store_cls: type[Store] = Store,
    ) -> None:  # fmt: skip
        self.loop = loop
        self.db_path = db_path
        self.store = store_cls(db_path)
        # A crash here drops the queued store calls; the file system stays up, so the test
        # need not wait for real fsyncs.
        self.store._db.execute("PRAGMA synchronous=OFF")
        self.service = LicenseService(
            key, server_key, ServiceConfig(lease_seconds=lease, heartbeat_seconds=lease / 3)
        )
        self.clock = clock
        self.executor = ManualExecutor()
        self.server: LicenseServer = loop.run_until_complete(self._make())
        self.sessions: dict[bytes, Session] = {}
        self.conns: dict[bytes, FakeConn] = {}
        self.ended = False

    async def _make(self) -> LicenseServer:
        # The loop's clock is the server's monotonic clock: the test's, here.
        self.loop.time = self.clock  # type: ignore[method-assign]
        # Time passes in steps here, with no housekeeping turn between: not a stall.
        limits = ServerLimits(stall_threshold=1e9)
        srv = LicenseServer(self.service, store=self.store, wall=lambda: 1.8e9, limits=limits)
        srv._store_thread = self.executor  # type: ignore[assignment]
        self.service.clock = lambda: (self.clock(), 1.8e9)
        return srv

    def settle(self) -> None:
        """Let the loop run what is ready (no store call finishes unless run)."""
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    def boot(self) -> None:
        task = self.loop.create_task(self.server.load_store())
        while not task.done():
            self.settle()
            self.executor.run_next()
        task.result()

    def write_one(self) -> bool:
        ran = self.executor.run_next()
        self.settle()
        return ran

    def drain(self) -> None:
        while self.write_one():
            pass

    def hello(self, client: bytes) -> None:
        s = Session()
        self.sessions[client] = s
        self.conns[client] = FakeConn()
        reply = self.service.handle(s, m.Hello(1, [1], client, "u", "h"), self.clock(), 1.8e9)
        assert isinstance(reply.message, m.Welcome)

    def ask(self, client: bytes, msg: m.Message) -> m.Message | None:
        """Handle ``msg`` as the server's ``data_received`` does; a reply that waits for the
        store comes later in ``conns[client].inbox``."""
        now = self.clock()
        reply = self.service.handle(self.sessions[client], msg, now, 1.8e9)
        if reply.durable is not None:
            self.server.run_durable(reply.durable, self.conns[client])  # type: ignore[arg-type]
            self.settle()
            return None
        return reply.message

    def start_batch(self) -> None:
        """The housekeeping sweep's lease batch, started as ``_sweep`` starts it."""
        if self.server._lease_task is None:
            self.server._lease_task = self.loop.create_task(self.server.sync_leases())
        self.settle()

    def crash(self) -> None:
        """SIGKILL: the queued store calls never run, memory is gone."""
        if self.ended:
            return
        self.ended = True
        self.executor.drop()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.settle()
        self.store.close()

    def stop(self) -> None:
        """A clean stop (Ctrl-C): ``LicenseServer.stop`` with every store call let through."""
        self.ended = True
        task = self.loop.create_task(self.server.stop())
        while not task.done():
            self.settle()
            self.executor.run_next()
        task.result()
        self.store.close()
