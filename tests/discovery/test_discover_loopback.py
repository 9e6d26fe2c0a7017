"""Discovery end to end on loopback, in one process: servers announced over real mDNS on
127.0.0.1, clients that find them with no address, and the servers they must refuse."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from discovery_helpers import LOOPBACK, Serve, network_key
from helpers import DEFAULT_PRODUCTS

from lanlic.core import signing
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import LicenseService, ServiceConfig, handshake_payload
from lanlic.discovery import SERVICE_TYPE, Announcer, build_txt
from lanlic.errors import LanlicError, ServerKeyChanged, ServerUnavailable, ServerUntrusted
from lanlic.laptop.trust import TrustStore
from lanlic.net.announce import announcer_for
from lanlic.net.blocking import BlockingClient
from lanlic.net.client import Client
from lanlic.net.server import LicenseServer
from lanlic.proto import messages as m
from lanlic.proto.framing import FrameDecoder, encode_frame

#: Generous bound for a discovery that should succeed (it takes ~0.1-0.3 s here).
FIND = 5.0


def fp(key: Ed25519PrivateKey) -> str:
    return signing.fingerprint(key.public_key())


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_client_discovers_and_checks_out_with_no_address(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    served = await serve()
    client = await Client.discover(
        vendor_key.public_key(), "cad", interfaces=LOOPBACK, timeout=FIND
    )
    async with client:
        assert client.address == served.address
        assert client.server_id == served.service.server_id
        assert not client.pinned  # first use...
        seat = await client.acquire("cad", "16")
        assert served.service.pool.in_use("cad") == 1 and not seat.lost
    (pin,) = TrustStore.default().pins()  # ...pinned now, on disk
    assert (pin.site, pin.vendor_fp, pin.server_fp) == (
        "ACME Engineering",
        fp(vendor_key),
        served.service.server_id,
    )
    # The vendor's fingerprint works as well as its key; the second time the key is pinned.
    async with await Client.discover(fp(vendor_key), interfaces=LOOPBACK, timeout=FIND) as again:
        assert again.pinned and again.address == served.address


def test_blocking_client_discovers(vendor_key: Ed25519PrivateKey) -> None:
    # A non-asyncio application: the server runs on a loop in a helper thread.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[LicenseServer, Announcer]:
        service = LicenseService(network_key(vendor_key), Ed25519PrivateKey.generate())
        server = LicenseServer(service)
        await server.start()
        announcer = announcer_for(service, server.host, server.port)
        await announcer.start()
        return server, announcer

    server, announcer = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        with BlockingClient.discover(
            vendor_key.public_key(), "cad", interfaces=LOOPBACK, timeout=FIND
        ) as client:
            assert client.client.address == server.address
            with client.checkout("cad") as seat:
                assert not seat.lost
                assert client.status()["products"][0]["in_use"] == 1
        with pytest.raises(ServerUnavailable):
            BlockingClient.discover(
                fp(vendor_key), "no-such-product", interfaces=LOOPBACK, timeout=0.5
            )
    finally:
        asyncio.run_coroutine_threadsafe(announcer.close(), loop).result(10)
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_discovery_with_nothing_there_ends_within_its_timeout(
    vendor_key: Ed25519PrivateKey,
) -> None:
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        await Client.discover(vendor_key.public_key(), "cad", interfaces=LOOPBACK, timeout=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4.0, elapsed  # it waited its time, and then it stopped
    msg = info.value.message
    assert f"no lanlic server of vendor {fp(vendor_key)} serving 'cad'" in msg
    assert "127.0.0.1" in msg and "LANLIC_SERVER" in msg


async def test_explicit_address_skips_discovery(
    start_server: Any, vendor_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()  # not announced at all
    host, port = server.address
    monkeypatch.setenv("LANLIC_SERVER", f"{host}:{port}")
    async with await Client.discover(vendor_key.public_key(), "cad", timeout=0.5) as client:
        assert client.address == server.address
        await client.acquire("cad")
    # The pin check applies to explicit addresses too: it pinned this server on first use.
    assert TrustStore.default().pins()[0].server_fp == server.service.server_id


async def test_other_vendors_servers_are_ignored(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    other_vendor = Ed25519PrivateKey.generate()
    theirs, ours = await asyncio.gather(serve(vendor=other_vendor), serve())
    for _ in range(2):
        async with await Client.discover(
            vendor_key.public_key(), interfaces=LOOPBACK, timeout=FIND
        ) as client:
            assert client.address == ours.address
    assert theirs.hellos == 0, "another vendor's server was contacted"
    third = Ed25519PrivateKey.generate()
    with pytest.raises(ServerUnavailable, match="another vendor"):
        await Client.discover(third.public_key(), interfaces=LOOPBACK, timeout=1.0)
    # An explicit address to a server of another vendor is refused too.
    with pytest.raises(ServerUntrusted, match="vendor"):
        await Client(theirs.address, vendor_key=vendor_key.public_key()).connect()


async def test_rogue_server_is_refused_after_a_pin(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    real = await serve()
    async with await Client.discover(fp(vendor_key), interfaces=LOOPBACK, timeout=FIND) as c:
        assert c.address == real.address  # pinned now
    # The rogue: same service, same vendor and site, another server key. While the real server is
    # there too, the pinned one is chosen and the rogue is never trusted.
    rogue = await serve()
    assert rogue.announcer.name != real.announcer.name  # the name was taken: renamed
    for _ in range(2):
        async with await Client.discover(fp(vendor_key), interfaces=LOOPBACK, timeout=FIND) as c:
            assert c.address == real.address and c.pinned
    # The real server goes away: only the rogue answers, and it is refused.
    await real.stop()
    with pytest.raises(ServerKeyChanged) as info:
        await Client.discover(fp(vendor_key), "cad", interfaces=LOOPBACK, timeout=1.5)
    msg = info.value.message
    assert real.service.server_id in msg and rogue.service.server_id in msg
    assert "impostor" in msg and "lanlic trust --server" in msg
    # The pin holds for an explicit address too; no seat was ever granted by the rogue.
    with pytest.raises(ServerKeyChanged):
        await Client(rogue.address).connect()
    assert rogue.service.pool.in_use("cad") == 0
    # Re-pinned on purpose (what `lanlic trust --server` does), the same server is accepted.
    rogue_identity = TrustStore.default().pins()[0]
    assert rogue_identity.server_fp == real.service.server_id
    from lanlic.net.finder import probe

    probed = await probe(rogue.address, deadline=asyncio.get_running_loop().time() + 5)
    TrustStore.default().pin(probed.identity, "test")
    async with await Client.discover(fp(vendor_key), interfaces=LOOPBACK, timeout=FIND) as c:
        assert c.address == rogue.address and c.pinned


class StubServer:
    """Answers every hello with a welcome that a real key did not sign over the nonce."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.key = Ed25519PrivateKey.generate()
        self.pub = signing.public_bytes(self.key.public_key())
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = FrameDecoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for item in decoder.feed(data):
                    assert isinstance(item, dict)
                    if item.get("t") != "hello":
                        continue
                    sid = signing.fingerprint(self.pub)
                    vendor_fp: str = self.vendor_fp
                    if self.mode == "replay":  # a signature over some other nonce
                        payload = handshake_payload(
                            os.urandom(32), item["client_id"], sid, vendor_fp
                        )
                        sig = signing.sign(self.key, signing.DOMAIN_HANDSHAKE, payload)
                    else:  # "none": an old server, or one without the key
                        sig = b""
                    welcome = m.Welcome(
                        id=item["id"],
                        version=1,
                        server_id=sid,
                        lease_s=60,
                        heartbeat_s=20,
                        server_key=self.pub,
                        signature=sig,
                        vendor_fp=vendor_fp,
                        customer="ACME Engineering",
                    )
                    writer.write(encode_frame(m.to_wire(welcome)))
        finally:
            writer.close()

    vendor_fp = ""

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def stub_announcer() -> AsyncIterator[list[Any]]:
    items: list[Any] = []
    yield items
    for item in reversed(items):
        if isinstance(item, Announcer):
            await item.close()
        else:
            await item.stop()


@pytest.mark.parametrize("mode", ["replay", "none"])
async def test_server_that_cannot_sign_the_nonce_is_refused(
    mode: str, vendor_key: Ed25519PrivateKey, stub_announcer: list[Any]
) -> None:
    stub = StubServer(mode)
    stub.vendor_fp = fp(vendor_key)
    host, port = await stub.start()
    stub_announcer.append(stub)
    sid = signing.fingerprint(stub.pub)
    txt = build_txt(
        protocol=[1],
        server_id=sid,
        server_fp=sid,
        vendor_fp=fp(vendor_key),
        site="ACME Engineering",
        products=["cad"],
    )
    announcer = Announcer(
        site="ACME Engineering",
        port=port,
        addresses=[host],
        txt=txt,
        server_fp=sid,
        interfaces=LOOPBACK,
    )
    stub_announcer.append(announcer)
    await asyncio.wait_for(announcer.start(), 10)
    with pytest.raises(ServerUntrusted) as info:
        await Client.discover(fp(vendor_key), "cad", interfaces=LOOPBACK, timeout=1.5)
    assert info.value.code == "server_untrusted"
    assert "did not sign this connection's nonce" in info.value.message
    assert stub.connections >= 1  # it was asked, and failed
    with pytest.raises(ServerUntrusted):
        await Client((host, port)).connect()
    assert TrustStore.default().pins() == []  # a server that proved nothing is never pinned


async def test_malformed_announcements_are_ignored(
    serve: Serve, vendor_key: Ed25519PrivateKey, stub_announcer: list[Any]
) -> None:
    listener = StubServer("none")
    host, port = await listener.start()
    stub_announcer.append(listener)
    good = build_txt(
        protocol=[1],
        server_id=fp(vendor_key),
        server_fp=fp(vendor_key),
        vendor_fp=fp(vendor_key),
        site="ACME Engineering",
        products=["cad"],
    )
    for name, txt in [
        ("bad fingerprint", {**good, "sfp": "sha256:nope"}),
        ("no txtvers", {k: v for k, v in good.items() if k != "txtvers"}),
        ("garbled proto", {**good, "proto": "1,,x"}),
    ]:
        announcer = Announcer(
            site=name,
            port=port,
            addresses=[host],
            txt=txt,
            server_fp=fp(vendor_key),
            interfaces=LOOPBACK,
        )
        stub_announcer.append(announcer)
    starting = asyncio.gather(*(a.start() for a in stub_announcer if isinstance(a, Announcer)))
    await asyncio.wait_for(starting, 10)
    # With only the malformed ones on the LAN: nothing found, and it says it ignored them.
    with pytest.raises(ServerUnavailable, match=r"ignored [1-3] malformed"):
        await Client.discover(fp(vendor_key), interfaces=LOOPBACK, timeout=1.5)
    served = await serve()
    async with await Client.discover(fp(vendor_key), interfaces=LOOPBACK, timeout=FIND) as c:
        assert c.address == served.address
    assert listener.connections == 0, "a malformed announcement was acted on"


async def test_truncated_product_list_is_checked_with_the_server(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    products = tuple(
        ProductEntitlement(f"module-{i:02d}-of-a-big-suite", seats=1) for i in range(30)
    )
    served = await serve(products=products)
    last = products[-1].name
    async with await Client.discover(fp(vendor_key), last, interfaces=LOOPBACK, timeout=FIND) as c:
        assert c.address == served.address
        await c.acquire(last)
    with pytest.raises(ServerUnavailable):
        await Client.discover(fp(vendor_key), "not-sold", interfaces=LOOPBACK, timeout=1.0)


async def test_client_follows_its_server_to_a_new_port_and_keeps_its_seat(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    # The same server (same key, same seat pool) comes back on another port, as a server moved
    # to another address keeps its identity from its data folder.
    first = await serve(lease=6.0, heartbeat=0.5)
    lost: list[LanlicError] = []
    client = await Client.discover(
        fp(vendor_key),
        "cad",
        interfaces=LOOPBACK,
        timeout=FIND,
        on_seat_lost=lambda seat, reason: lost.append(reason),
    )
    try:
        seat = await client.acquire("cad", "16")
        service = first.service
        await first.stop()  # goodbye, then every connection closed
        await wait_for(lambda: not client.connected, timeout=5)
        second = await serve(service=service)
        assert second.address[1] != first.address[1]
        await wait_for(lambda: client.connected, timeout=service.config.lease_seconds)
        assert client.address == second.address
        assert client.server_id == service.server_id
        await client.renew_now()
        assert not seat.lost and not lost
        assert service.pool.lease(seat.lease_id) is not None
        assert service.pool.in_use("cad") == 1
    finally:
        await client.close()
    assert service.pool.in_use("cad") == 0  # released cleanly at the new address


async def test_rediscovery_does_not_follow_the_site_to_another_key(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    first = await serve(lease=2.0, heartbeat=0.3)
    client = await Client.discover(fp(vendor_key), "cad", interfaces=LOOPBACK, timeout=FIND)
    try:
        seat = await client.acquire("cad")
        await first.stop()
        impostor = await serve()  # same site and vendor, another key
        reason = await asyncio.wait_for(seat.wait_lost(), 10)
        assert reason.code == "seat_lost"
        assert impostor.hellos == 0 and impostor.service.pool.in_use("cad") == 0
    finally:
        await client.close()


def test_txt_of_a_real_server_names_its_identity(vendor_key: Ed25519PrivateKey) -> None:
    service = LicenseService(
        network_key(vendor_key, products=DEFAULT_PRODUCTS),
        Ed25519PrivateKey.generate(),
        ServiceConfig(),
    )
    props = announcer_for(service, "127.0.0.1", 7766)._info.properties
    assert props[b"sfp"] == props[b"id"] == service.server_id.encode()
    assert props[b"vfp"] == fp(vendor_key).encode()
    assert props[b"products"] == b"cad,render" and b"pmore" not in props
    assert SERVICE_TYPE == "_lanlic._tcp.local."


async def test_discovery_returns_every_member_and_the_client_moves_between_them(
    serve: Serve, vendor_key: Ed25519PrivateKey
) -> None:
    # Two members of one server (one key, one pool) announce themselves; a third server of the
    # same site with another key announces too, and is no member.
    first = await serve(lease=4.0, heartbeat=0.3)
    second = await serve(service=first.service, member=True)
    other = await serve()
    # A member's instance name is its own, whatever zeroconf's caches hold at its start.
    assert second.announcer.name.startswith("ACME Engineering (")
    assert first.announcer.name != second.announcer.name
    async with Client(first.address):
        pass  # pins the members' key for the site: "other" is refused, whenever it answers
    lost: list[LanlicError] = []
    client = await Client.discover(
        fp(vendor_key),
        "cad",
        interfaces=LOOPBACK,
        timeout=FIND,
        on_seat_lost=lambda seat, reason: lost.append(reason),
    )
    try:
        assert sorted(client.servers) == sorted([first.address, second.address])
        assert other.address not in client.servers
        seat = await client.acquire("cad", "16")
        in_use = first if client.address == first.address else second
        await in_use.stop()
        await wait_for(lambda: client.connected and client.address != in_use.address, 5)
        await client.renew_now()
        assert not seat.lost and not lost
        assert first.service.pool.lease(seat.lease_id) is not None
        assert other.service.pool.in_use("cad") == 0
    finally:
        await client.close()
    assert first.service.pool.in_use("cad") == 0


def test_members_sharing_a_key_announce_host_names_of_their_own(
    vendor_key: Ed25519PrivateKey,
) -> None:
    # Cluster members share one server key; with one host name between them a browser would mix
    # their address records. A member's label (host and port) gives each its own name, stable
    # across its restarts; a lone server keeps the name its key alone gives it.
    def host(member: str = "", address: str = "127.0.0.1") -> str:
        return Announcer(
            site="ACME Engineering",
            port=7001,
            addresses=[address],
            txt={},
            server_fp=fp(vendor_key),
            interfaces=LOOPBACK,
            member=member,
        ).host_name

    label = fp(vendor_key).removeprefix("sha256:")[:12]
    assert host() == f"lanlic-{label}.local."
    a, b = host("ws-1:7001", "127.0.0.2"), host("ws-2:7001", "127.0.0.3")
    assert a != b and a.startswith(f"lanlic-{label}-") and b.startswith(f"lanlic-{label}-")
    assert host("ws-1:7001") == a  # the same member, restarted: the same name

    # Their instance names are their own too, so no member depends on zeroconf's rename (-2),
    # which needs the other's record in its cache by the end of its probes.
    def name(member: str = "", site: str = "ACME Engineering") -> str:
        return Announcer(
            site=site, port=7001, addresses=["127.0.0.1"], txt={}, server_fp=fp(vendor_key),
            interfaces=LOOPBACK, member=member,
        ).name  # fmt: skip

    assert name() == "ACME Engineering"
    m1, m2 = name("ws-1:7001"), name("ws-2:7001")
    assert m1 != m2 and m1.startswith("ACME Engineering (") and m1 == name("ws-1:7001")
    long = name("ws-1:7001", "x" * 80)
    assert len(long.encode()) <= 58 and long.endswith(m1.removeprefix("ACME Engineering"))
