"""A blocking facade over ``Client`` for applications that are not asyncio (most desktop ones).

The asyncio client runs on its own event loop in a daemon thread, behind an anyio
``BlockingPortal``: each call here runs a coroutine there and waits for its result (an exception
comes back as raised; a call that times out is cancelled there). The heartbeat and reconnects
therefore go on while the application's own thread is busy. ``on_seat_lost``, ``on_seat_regained``
and ``on_seat_state`` callbacks run on the client's thread: an application should hand them to its
own UI thread. A lost seat is checked out again by itself (``regain=False`` turns that off):
``seat_state``, ``seat_lost`` and ``seat_regained`` tell or wait.

Why not ``anyio.from_thread.start_blocking_portal``: its thread is not a daemon, so an
application that exits without ``close()`` would hang at exit waiting for it; the portal here
lives in a daemon thread of ours, as the hand-made loop thread before it did.

    with BlockingClient("licserver:7766", app="MyCAD 16.2") as client:
        with client.checkout("cad", version="16") as seat:
            ...

    # or, with no address: find the vendor's server on the LAN
    with BlockingClient.discover(VENDOR_PUBLIC_KEY, "cad", app="MyCAD 16.2") as client:
        ...
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from lanlic.net.client import DISCOVER_TIMEOUT, Client, Seat, SeatState, ServerSpec, VendorKey

__all__ = ["BlockingClient"]

T = TypeVar("T")
#: Seconds to wait for the client's thread to start or stop.
_THREAD_WAIT = 5.0


class BlockingClient:
    """Same arguments as ``Client`` (a list of members too); methods block until done."""

    def __init__(self, server: ServerSpec | None = None, **kwargs: Any) -> None:
        self._start(functools.partial(self._make, server, kwargs))

    @classmethod
    def discover(
        cls,
        vendor_key: VendorKey | None,
        product: str | None = None,
        *,
        timeout: float = DISCOVER_TIMEOUT,
        interfaces: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> BlockingClient:
        """``Client.discover``'s twin: find the server on the LAN; returns a connected client."""
        self = cls.__new__(cls)
        self._start(
            functools.partial(
                Client.discover,
                vendor_key,
                product,
                timeout=timeout,
                interfaces=interfaces,
                **kwargs,
            )
        )
        return self

    def _start(self, make: Callable[[], Awaitable[Client]]) -> None:
        self._portal: BlockingPortal | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lanlic-client", daemon=True)
        self._thread.start()
        self._ready.wait(_THREAD_WAIT)
        if self._portal is None:
            raise RuntimeError(f"the client's event loop did not start: {self._failed!r}")
        try:
            self._client: Client = self._call(make)
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(server: ServerSpec | None, kwargs: dict[str, Any]) -> Client:
        return Client(server, **kwargs)

    def _run(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:  # reported by _start, which waits for _ready
            self._failed = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with BlockingPortal() as portal:
            self._portal = portal
            self._ready.set()
            await portal.sleep_until_stopped()

    def _call(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        assert self._portal is not None
        fut = self._portal.start_task_soon(fn)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the client runs on, in its own thread (``lanlic.ui`` sends its work there)."""
        return self._loop

    @property
    def client(self) -> Client:
        """The asyncio client underneath (use only from its loop)."""
        return self._client

    def connect(self) -> None:
        self._call(self._client.connect)

    def close(self) -> None:
        if self._portal is None:
            return
        try:
            self._call(self._client.close)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        portal, self._portal = self._portal, None
        if portal is not None:
            portal.call(portal.stop, True)  # cancel what is left, then leave the loop
            self._thread.join(_THREAD_WAIT)

    def __enter__(self) -> BlockingClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # __exit__ will not run: stop the client's thread here
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def acquire(
        self,
        product: str,
        version: str = "",
        wait: bool = False,
        timeout: float | None = None,
        on_position: Callable[[int], None] | None = None,
    ) -> Seat:
        """One seat; ``wait=True`` waits in the server's queue, at most ``timeout`` seconds
        (``Client.acquire``; ``on_position`` is called on the client's event loop thread)."""
        return self._call(
            functools.partial(self._client.acquire, product, version, wait, timeout, on_position)
        )

    def release(self, seat: Seat) -> None:
        self._call(functools.partial(self._client.release, seat))

    @contextmanager
    def checkout(
        self,
        product: str,
        version: str = "",
        wait: bool = False,
        timeout: float | None = None,
        on_position: Callable[[int], None] | None = None,
    ) -> Iterator[Seat]:
        seat = self.acquire(product, version, wait, timeout, on_position)
        try:
            yield seat
        finally:
            self.release(seat)

    def status(self) -> dict[str, Any]:
        return self._call(self._client.status)

    # What a seat's state means and how it changes is the asyncio client's alone (``Seat``'s
    # ``wait_lost`` and ``wait_regained``, on the client's loop); the facade only waits for it.

    def seat_lost(self, seat: Seat, timeout: float | None = None) -> bool:
        """Block until the seat is lost (True) or the timeout passes (False): ``Seat.wait_lost``."""
        return self._waited(seat.wait_lost, timeout)

    def seat_regained(self, seat: Seat, timeout: float | None = None) -> bool:
        """Block until the seat may be used again (True; at once if it may) or the timeout
        passes (False): ``Seat.wait_regained``, which raises why it was lost (``SeatLost``, a
        refusal) if it is gone for good."""
        return self._waited(seat.wait_regained, timeout)

    def _waited(self, wait: Callable[[], Awaitable[object]], timeout: float | None) -> bool:
        """Run a seat's ``wait_*`` on the client's loop: True once it returns, False at the
        timeout (the wait is then cancelled there)."""
        try:
            self._call(wait, timeout)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def seat_state(seat: Seat) -> SeatState:
        """Where the seat stands now: held, lost, waiting (for a free seat), regained, gone."""
        return seat.state
