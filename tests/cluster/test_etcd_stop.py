"""A member's store stops within a bound, whatever moment it is stopped at and whether etcd
answers or not (``EtcdSeats.close``; ``lanlic.cluster.stopping`` says why).

Found by a hang of test_etcd_tls.py in CI (120 s): the store's watch task, cancelled by
``close()`` one or two loop turns after etcd answered the watch's creation, did not end (aetcd
creates a watch under Python 3.11's ``asyncio.wait_for``, which then returns to a cancelled
task), and ``close()`` awaited it with no bound. The same ``wait_for`` in the store's own etcd
calls lost about one cancellation in four of a task reading in a loop (a keepalive or a reaper
cancelled that way would run on, and its stop wait for ever).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import pytest
from etcd_cluster import EtcdCluster
from tcp_proxy import TcpProxy

from lanlic.cluster.etcd import EtcdSeats
from lanlic.cluster.stopping import close_within, end_within

PREFIX = "/lanlic/test-stop"

#: Longer than any bound of a stop (two call timeouts a step), short of pytest-timeout's 120 s:
#: a stop that takes this long is a hang.
HUNG = 10.0


def store(endpoints: list[str], prefix: str = PREFIX, **kw: Any) -> EtcdSeats:
    return EtcdSeats(endpoints, prefix=prefix, products={"cad": 2}, member="a", **kw)


async def ended_within(aw: Any, seconds: float) -> tuple[bool, float]:
    """Run ``aw`` in a task and wait for it at most ``seconds``: (it ended, how long it took).
    A task still running then is cancelled and left (it hung: the test fails on it)."""
    task = asyncio.ensure_future(aw)
    began = time.monotonic()
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return False, seconds
    task.result()
    return True, time.monotonic() - began


def etcd_answered_the_watch(s: EtcdSeats) -> bool:
    """etcd's answer to the store's watch has reached aetcd (its watcher registered the watch):
    the task that asked for it resumes a loop turn or two later. Read from aetcd's state because
    nothing public tells that moment, and that moment is the hang's."""
    watcher = getattr(s._client, "_watcher", None)
    return watcher is not None and bool(watcher._callbacks)


async def test_close_as_etcd_answers_the_watch_ends_the_watch_and_returns(
    etcd_cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # Before the fix: close() waited for ever on the watch task at turns 0 and 1 (3 of 3 each).
    caplog.set_level(logging.WARNING, logger="lanlic.cluster.stopping")
    for turns in range(4):
        s = store(etcd_cluster.endpoints)
        await s.start()
        watch = s._watch_task
        assert watch is not None
        began = time.monotonic()
        while not etcd_answered_the_watch(s):
            assert time.monotonic() - began < HUNG, "etcd never answered the watch"
            await asyncio.sleep(0)
        for _ in range(turns):
            await asyncio.sleep(0)
        ended, took = await ended_within(s.close(), HUNG)
        if not ended:
            watch.cancel()  # unstick it so that the test can clean up
        assert ended, f"close() {turns} loop turn(s) after etcd answered the watch hung"
        assert took < 5 * s.call_timeout, f"close() took {took:.2f} s"
        await asyncio.sleep(0.05)
        assert watch.done(), "the watch task outlived close()"
    # It ended because it was cancelled, not because the stop gave up on it after its bound.
    assert not [r for r in caplog.records if "left behind" in r.getMessage()]


async def test_a_stop_leaves_behind_what_does_not_end_within_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``end_within`` and ``close_within`` on work that ignores a cancel (as a library that lost
    it does) return at their bound, say so, and cancel it once more."""
    caplog.set_level(logging.WARNING, logger="lanlic.cluster.stopping")

    async def deaf(seconds: float) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(seconds)  # the first cancel lost; a second one ends it

    stubborn = asyncio.create_task(deaf(60), name="deaf")
    obedient = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)  # both are running (a task cancelled before it ran just ends)
    began = time.monotonic()
    assert await end_within([stubborn, obedient, None], 0.3, "test") == 1
    assert time.monotonic() - began < 2.0
    assert obedient.cancelled()
    await asyncio.sleep(0)
    assert stubborn.done(), "the task left behind was not cancelled again"
    began = time.monotonic()
    assert await close_within([deaf(0.2), asyncio.sleep(0)], 0.3, "test close") == 1
    assert time.monotonic() - began < 2.0
    await asyncio.sleep(0.4)  # the close left behind ends on its own
    said = [r.getMessage() for r in caplog.records]
    assert sum("left behind" in x for x in said) == 2, said


async def test_a_task_cancelled_in_an_etcd_call_ends(etcd_cluster: EtcdCluster) -> None:
    """A task reading through the store (as the reaper does), cancelled at random moments: it
    ends each time. Before the fix 96 of 400 such cancels were lost (the task read on)."""
    s = store(etcd_cluster.endpoints)
    await s.start()
    rng = random.Random(16)
    try:
        for i in range(40):

            async def reader() -> None:
                while True:
                    await s.read_seats()

            task = asyncio.create_task(reader())
            await asyncio.sleep(rng.random() * 0.003)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                task.cancel()  # once more, to clean up
                await asyncio.wait({task}, timeout=2.0)
            assert done, f"cancel {i + 1} was lost: the task went on reading"
            assert task.cancelled()
    finally:
        await s.close()


async def test_a_member_cut_off_from_etcd_stops_within_its_bound(
    etcd_cluster: EtcdCluster,
) -> None:
    """Its only endpoint is a proxy that blackholes (the connection stays open, nothing comes
    back): close() with a revoke, and close() while its calls are still timing out, return
    within the store's bounds. (This passed before the fix too: the gRPC close itself does not
    wait on the peer; it holds the bounds on the revoke and on the closes.)"""
    target = etcd_cluster.members[0]
    for i, (revoke, settle) in enumerate(((True, 0.0), (False, 0.0), (True, 1.5))):
        proxy = TcpProxy("127.0.0.1", target.client_port)
        await proxy.start()
        s = store([proxy.endpoint], f"{PREFIX}/{i}", call_timeout=0.5, etcd_ttl=5)
        closed = False
        try:
            await s.start()
            await s.checkout("cad", "c", "l")
            proxy.mode = "blackhole"
            await asyncio.sleep(settle)  # keepalives and the watch time out and move on
            ended, took = await ended_within(s.close(revoke=revoke), HUNG)
            closed = ended
            assert ended, f"close(revoke={revoke}) of a cut-off member hung"
            # a revoke's call timeout, then two steps of two call timeouts at most
            assert took < 5 * s.call_timeout + 1.0, f"close took {took:.2f} s"
        finally:
            if not closed:
                await ended_within(s.close(), HUNG)
            await proxy.close()
