"""Work off the Tk thread: coroutines on an asyncio loop in another thread, results handed back.

Tk may be touched from its own thread only, and a network call on that thread freezes the
window. So every request (and the disk work around it) runs as a coroutine on an asyncio loop in
another thread: the window's own, or the loop of the application's ``BlockingClient``, so the
window shares its connection. A finished job's outcome goes into a queue that the Tk thread
drains from an ``after`` tick (``poll``); a callback therefore always runs on the Tk thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from lanlic.errors import ServerUnavailable

__all__ = ["Outcome", "Worker"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


class Worker:
    """Runs coroutines on ``loop`` (a new loop in a daemon thread when None)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._own = loop is None
        self.loop = loop if loop is not None else asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        if self._own:
            self._thread = threading.Thread(target=self._run, name="lanlic-ui", daemon=True)
            self._thread.start()
        self._done: queue.SimpleQueue[tuple[Callable[[Outcome], None], Outcome]] = (
            queue.SimpleQueue()
        )
        self._jobs: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def busy(self) -> bool:
        """A job is still running."""
        with self._lock:
            return bool(self._jobs)

    def submit(
        self, coro: Coroutine[Any, Any, Any], done: Callable[[Outcome], None] | None = None
    ) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the loop; ``done(outcome)`` runs later on the thread calling
        ``poll``."""
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the application closed its client
            coro.close()
            fut = concurrent.futures.Future()
            fut.set_exception(ServerUnavailable("the licence client is closed"))
            if done is not None:
                self._done.put((done, Outcome(error=fut.exception())))
            return fut
        with self._lock:
            self._jobs.add(fut)

        def finished(f: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._jobs.discard(f)
            if done is None:
                return
            if f.cancelled():
                self._done.put((done, Outcome(error=asyncio.CancelledError())))
            elif (exc := f.exception()) is not None:
                self._done.put((done, Outcome(error=exc)))
            else:
                self._done.put((done, Outcome(value=f.result())))

        fut.add_done_callback(finished)
        return fut

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run ``coro`` and wait for it (for closing, never from a Tk callback)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def poll(self) -> int:
        """Run the callbacks of the jobs finished since the last poll; how many ran."""
        n = 0
        while True:
            try:
                done, outcome = self._done.get_nowait()
            except queue.Empty:
                return n
            done(outcome)
            n += 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until no job runs; True if none does."""
        with self._lock:
            jobs = list(self._jobs)
        if not jobs:
            return True
        _, pending = concurrent.futures.wait(jobs, timeout)
        return not pending

    def stop(self) -> None:
        """Stop the window's own loop (a shared loop belongs to the application)."""
        if not self._own or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()
