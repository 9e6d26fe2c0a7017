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
from tcp_proxy import TcpProxy

Edit = Callable[[dict[str, Any]], dict[str, Any]]


def _same(frame: dict[str, Any]) -> dict[str, Any]:
    return frame


class FrameProxy(TcpProxy):
    """``up`` edits each frame from the client, ``down`` each frame from the server (the
    connections and their closing are ``TcpProxy``'s; only the pumping differs)."""

    def __init__(self, target: tuple[str, int], up: Edit = _same, down: Edit = _same) -> None:
        super().__init__(*target)
        self.up, self.down = up, down

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.endpoint.rsplit(":", 1)
        return host, int(port)

    async def start(self) -> FrameProxy:  # type: ignore[override]
        await super().start()
        return self

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
