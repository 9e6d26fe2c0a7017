"""The blocking facade on anyio's BlockingPortal: results and errors come back to the caller's
thread, a wait that times out is cancelled on the client's loop, and an application that never
calls close() still exits (the client's thread is a daemon)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from lanlic.errors import ServerUnavailable
from lanlic.net.blocking import BlockingClient


def test_seat_lost_times_out_and_the_wait_is_cancelled(server_address: tuple[str, int]) -> None:
    with BlockingClient(server_address, user="bob") as client:
        seat = client.acquire("cad", "16")
        assert client.seat_lost(seat, timeout=0.2) is False

        async def tasks_waiting() -> int:
            me = asyncio.current_task()
            return sum(
                1 for t in asyncio.all_tasks() if t is not me and "wait_lost" in repr(t.get_coro())
            )

        assert client._call(tasks_waiting) == 0
        client.release(seat)
    assert not client._thread.is_alive()


def test_a_failing_connect_raises_in_the_caller_and_stops_the_thread() -> None:
    with (
        pytest.raises(ServerUnavailable),
        BlockingClient(("127.0.0.1", 1), user="bob", connect_timeout=1),
    ):
        pass
    # the conftest fails the test if the client's thread outlives it


EXIT_WITHOUT_CLOSE = """
import sys
from lanlic.net.blocking import BlockingClient
client = BlockingClient(("127.0.0.1", int(sys.argv[1])), user="bob")
client.acquire("cad", "16")
print("held", flush=True)
"""


def test_an_application_that_never_closes_still_exits(server_address: tuple[str, int]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(server_address[1])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "held\n"
