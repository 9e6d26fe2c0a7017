"""The servers the benchmark starts, each in a process of its own.

``python -m lanlic.bench.serve KIND --host 127.0.0.1 ...`` prints one JSON line with its port,
then serves until SIGTERM. Kinds:

* ``lanlic``: the real ``LicenseServer`` and ``LicenseService``, in process (no mDNS), over a
  network key signed on the spot by a vendor key made on the spot.
* ``ceiling``: the physical limit of this design in Python: an ``asyncio.Protocol`` that splits
  the same frames, decodes each msgpack body and answers a small map, with no other logic.
* ``ceiling-streams``: the same with asyncio streams (a reader task per connection), to answer
  whether ``Protocol`` or streams is the faster base.

The host must be a loopback address: the benchmark never listens anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack

from lanlic import osdeps

__all__ = ["main"]

_header = struct.Struct(">I")


class CeilingProtocol(asyncio.Protocol):
    """Decode every frame a read delivered, answer each with ``{"t": "ok", "id": id}``."""

    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (n,) = _header.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            obj = msgpack.unpackb(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            body = msgpack.packb({"t": "ok", "id": obj.get("id", 0)})
            out.append(_header.pack(len(body)))
            out.append(body)
        if pos:
            del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def _ceiling_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readexactly(4)
            (n,) = _header.unpack(head)
            obj = msgpack.unpackb(await reader.readexactly(n))
            body = msgpack.packb({"t": "ok", "id": obj.get("id", 0)})
            writer.write(_header.pack(len(body)) + body)
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _bench_service(seats: int, lease: float, heartbeat: float, product: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from lanlic.core import netkey
    from lanlic.core.service import LicenseService, ServiceConfig

    vendor = netkey.generate_vendor_key()
    today = dt.datetime.now(dt.UTC).date()
    data = netkey.issue_network_key(
        vendor,
        customer="lanlic bench",
        expires=today + dt.timedelta(days=30),
        borrow_kind="act",
        products=(netkey.ProductEntitlement(product, seats=seats),),
        issued=today,
    )
    key = netkey.verify_network_key(data, vendor.public_key(), today)
    return LicenseService(
        key,
        Ed25519PrivateKey.generate(),
        ServiceConfig(lease_seconds=lease, heartbeat_seconds=heartbeat),
    )


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    osdeps.on_stop(loop, stop.set)
    stopper: Callable[[], Any]
    if args.kind == "lanlic":
        from lanlic.net.server import LicenseServer, ServerLimits

        service = _bench_service(args.seats, args.lease, args.heartbeat, args.product)
        lic = LicenseServer(
            service, args.host, args.port, ServerLimits(max_connections=args.max_connections)
        )
        await lic.start()
        port = lic.port
        stopper = lic.stop
    elif args.kind == "ceiling":
        srv = await loop.create_server(
            CeilingProtocol, args.host, args.port, backlog=4096, reuse_address=True
        )
        port = srv.sockets[0].getsockname()[1]

        async def stopper() -> None:
            srv.close()

    elif args.kind == "ceiling-streams":
        srv2 = await asyncio.start_server(
            _ceiling_streams, args.host, args.port, backlog=4096, reuse_address=True
        )
        port = srv2.sockets[0].getsockname()[1]

        async def stopper() -> None:
            srv2.close()

    else:  # pragma: no cover - argparse restricts it
        raise SystemExit(f"unknown kind {args.kind}")
    print(json.dumps({"port": port, "loop": type(loop).__module__}), flush=True)
    await stop.wait()
    await stopper()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lanlic.bench.serve")
    p.add_argument("kind", choices=["lanlic", "ceiling", "ceiling-streams"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--seats", type=int, default=100_000)
    p.add_argument("--product", default="bench")
    p.add_argument("--lease", type=float, default=5.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--max-connections", type=int, default=15000)
    args = p.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        p.error("the benchmark serves on loopback only")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(args))
    else:
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
