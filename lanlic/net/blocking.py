"""A blocking facade over ``Client`` for applications that are not asyncio (most desktop ones).

The asyncio client runs on its own event loop in a daemon thread; each call here submits a
coroutine to that loop and waits for its result. The heartbeat and reconnects therefore go on
while the application's own thread is busy. ``on_seat_lost`` callbacks run on the client's thread:
an application should hand them to its own UI thread.

    with BlockingClient("licserver:7766", app="MyCAD 16.2") as client:
        with client.checkout("cad", version="16") as seat:
            ...

    # or, with no address: find the vendor's server on the LAN
    with BlockingClient.discover(VENDOR_PUBLIC_KEY, "cad", app="MyCAD 16.2") as client:
        ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from lanlic.net.client import DISCOVER_TIMEOUT, Client, Seat, VendorKey

__all__ = ["BlockingClient"]

T = TypeVar("T")


class BlockingClient:
    """Same arguments as ``Client``; methods block until done."""

    def __init__(self, server: str | tuple[str, int] | None = None, **kwargs: Any) -> None:
        self._start(self._make(server, kwargs))

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
            Client.discover(vendor_key, product, timeout=timeout, interfaces=interfaces, **kwargs)
        )
        return self

    def _start(self, make: Coroutine[Any, Any, Client]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lanlic-client", daemon=True)
        self._thread.start()
        try:
            self._client: Client = self._call(make)
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(server: str | tuple[str, int] | None, kwargs: dict[str, Any]) -> Client:
        return Client(server, **kwargs)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the client runs on, in its own thread (``lanlic.ui`` sends its work there)."""
        return self._loop

    @property
    def client(self) -> Client:
        """The asyncio client underneath (use only from its loop)."""
        return self._client

    def connect(self) -> None:
        self._call(self._client.connect())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> BlockingClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def acquire(self, product: str, version: str = "") -> Seat:
        return self._call(self._client.acquire(product, version))

    def release(self, seat: Seat) -> None:
        self._call(self._client.release(seat))

    @contextmanager
    def checkout(self, product: str, version: str = "") -> Iterator[Seat]:
        seat = self.acquire(product, version)
        try:
            yield seat
        finally:
            self.release(seat)

    def status(self) -> dict[str, Any]:
        return self._call(self._client.status())

    def seat_lost(self, seat: Seat, timeout: float | None = None) -> bool:
        """Block until the seat is lost (True) or the timeout passes (False)."""
        try:
            self._call(seat.wait_lost(), timeout)
        except TimeoutError:
            return False
        return True
