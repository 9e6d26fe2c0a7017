"""A loopback TCP proxy that reads lanlic frames both ways and lets a test edit them on the way:
the man in the middle who changes a welcome (or a hello) between a real client and a real server.

The tests that need one used to replace the service's ``_hello`` on the server object; a class of
the compiled build (setup.py) refuses that, and the wire is where such an edit happens anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any

import msgpack

Edit = Callable[[dict[str, Any]], dict[str, Any]]


def _same(frame: dict[str, Any]) -> dict[str, Any]:
    return frame


class FrameProxy:
    """``up`` edits each frame from the client, ``down`` each frame from the server."""

    def __init__(self, target: tuple[str, int], up: Edit = _same, down: Edit = _same) -> None:
        self.target = target
        self.up, self.down = up, down
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> FrameProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for src, dst, edit in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            t = asyncio.create_task(self._pump(src, dst, edit))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while True:
                (n,) = struct.unpack(">I", await src.readexactly(4))
                frame = msgpack.unpackb(await src.readexactly(n), raw=False)
                frame = (self.up if direction == "up" else self.down)(frame)
                body = msgpack.packb(frame, use_bin_type=True)
                dst.write(struct.pack(">I", len(body)) + body)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
