"""Test helpers shared by every test folder (on sys.path through pytest's ``pythonpath``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import netkey
from lanlic.core.netkey import NetworkKey, ProductEntitlement
from lanlic.proto.framing import FrameDecoder, encode_frame

TODAY = dt.datetime.now(dt.UTC).date()

DEFAULT_PRODUCTS = (
    ProductEntitlement("cad", seats=3, borrowable=2, max_borrow_days=14, versions=("10", "16")),
    ProductEntitlement("render", seats=1, addon=True),
)


def make_key(
    vendor: Ed25519PrivateKey,
    products: tuple[ProductEntitlement, ...] = DEFAULT_PRODUCTS,
    *,
    expires: dt.date | None = None,
    borrow_kind: netkey.BorrowKind = "act",
) -> NetworkKey:
    expires = expires or TODAY + dt.timedelta(days=365)
    issued = min(TODAY, expires)
    data = netkey.issue_network_key(
        vendor,
        customer="ACME Engineering",
        expires=expires,
        borrow_kind=borrow_kind,
        products=products,
        issued=issued,
    )
    return netkey.verify_network_key(data, vendor.public_key(), issued)


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.inbox: list[dict[str, Any]] = []
        self.client_id = secrets.token_bytes(16)
        self._id = 100

    def next_id(self) -> int:
        self._id += 1
        return self._id

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, wire: dict[str, Any]) -> None:
        await self.send_raw(encode_frame(wire))

    async def send_body(self, body: bytes) -> None:
        await self.send_raw(struct.pack(">I", len(body)) + body)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("server closed the connection")
            for item in self.decoder.feed(data):
                assert isinstance(item, dict), item
                self.inbox.append(item)
        return self.inbox.pop(0)

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
                self.inbox.extend(x for x in self.decoder.feed(data) if isinstance(x, dict))
        except ConnectionResetError:
            return True

    async def request(self, t: str, **fields: Any) -> dict[str, Any]:
        rid = self.next_id()
        await self.send({"t": t, "id": rid, **fields})
        reply = await self.recv()
        assert reply.get("id") == rid, reply
        return reply

    async def hello(self, user: str = "tester") -> dict[str, Any]:
        return await self.request(
            "hello",
            versions=[1],
            client_id=self.client_id,
            user=user,
            host="testhost",
            app="test",
            nonce=secrets.token_bytes(32),
        )

    def close(self) -> None:
        self.writer.close()


def in_ci() -> bool:
    """``CI`` is set: a skip fails the run (tests/conftest.py), and so does a check left out."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
