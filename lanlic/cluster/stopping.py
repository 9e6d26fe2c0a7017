"""Stopping a member's etcd work with a bound: a stop never waits on a task or a close for ever.

Why this exists: on Python 3.11, ``asyncio.wait_for`` returns its inner result when the inner
awaitable finishes in the same moment as the task awaiting it is cancelled, and the cancellation
is lost (CPython gh-86296, fixed in 3.12, where ``wait_for`` is built on ``asyncio.timeout``).
aetcd creates a watch under it: a member's watch task cancelled right as etcd answered the
watch's creation went on watching, and ``EtcdSeats.close()``, awaiting that task with no bound,
waited for ever (tests/cluster/test_etcd_tls.py hung for pytest-timeout's 120 s in CI; here 2 runs
in 15, and every time with close() called one or two loop turns after the answer). Our own etcd
calls use ``asyncio.timeout``, which loses no cancellation (the same wrapper lost about one
cancel in four of a task looping over reads, measured here). But a stop cannot rely on every
library honouring a cancel, so it waits with a bound, logs what did not end and leaves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

log = logging.getLogger(__name__)

_abandoned: set[asyncio.Task[Any]] = set()
"""Tasks a stop gave up on: kept referenced until they end, so none is collected while pending."""


async def end_within(tasks: Iterable[asyncio.Task[Any] | None], seconds: float, what: str) -> int:
    """Cancel ``tasks`` and wait at most ``seconds`` for them to end. One that has not ended by
    then is cancelled once more, logged and abandoned. Returns how many were abandoned. A task
    that failed or was cancelled is no news while stopping (its outcome is retrieved, not
    raised)."""
    todo = [t for t in tasks if t is not None]
    for t in todo:
        t.cancel()
    return await _settle(todo, seconds, what)


async def close_within(closes: Iterable[Awaitable[Any]], seconds: float, what: str) -> int:
    """Run the ``closes`` (e.g. each etcd client's ``close()``) together and wait at most
    ``seconds`` for them; one still running then is cancelled, logged and abandoned. Returns
    how many were abandoned."""
    tasks = [asyncio.ensure_future(c) for c in closes]
    return await _settle(tasks, seconds, what)


async def _settle(tasks: list[asyncio.Task[Any]], seconds: float, what: str) -> int:
    if not tasks:
        return 0
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.debug("%s: %s ended with %r", what, t.get_name(), t.exception())
    for t in pending:
        t.cancel()
        _abandoned.add(t)
        t.add_done_callback(_abandoned.discard)
        log.warning(
            "%s: %s had not ended %.1f s after it was asked to; left behind", what, t, seconds
        )
    return len(pending)
