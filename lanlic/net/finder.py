"""Finding a licence server on the LAN: browse mDNS, then prove each candidate by a handshake.

An mDNS announcement is a claim anyone on the LAN can make, so it only says whom to ask. Each
candidate that matches the vendor and product is *probed*: a connection, a ``hello`` with a fresh
nonce, the ``welcome``'s signature checked (``lanlic.laptop.trust.verify_welcome``), a ``bye``. The
choice then follows the pins (``lanlic.laptop.trust.TrustStore``):

1. a server whose key is pinned for its site is taken at once;
2. a server of a pinned site that presents another key is refused (``ServerKeyChanged``);
3. a server of a new site is taken at once when no site of this vendor is pinned yet; when one
   is, the pinned server gets ``PINNED_GRACE`` seconds more to answer before the new one is taken.

Redundant servers (members of one pool) share one server key and each announces itself: the
``Found`` server comes with every address announced under its key (``Found.members``, the chosen
one first), gathered for ``MEMBERS_GRACE`` more seconds; the client tries them in turn when it
must move on, and its handshake with each proves the key as for the first (an announcement alone
is never trusted).

Nothing here pins: the client pins when it connects for real. If nothing fits by the deadline, the
most telling reason is raised: a changed key, then an untrusted server, else ``ServerUnavailable``
naming what was heard and how to give an address instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from lanlic.core import signing
from lanlic.discovery import SERVICE_ENV, SERVICE_TYPE, Announcement, Browser, Interfaces
from lanlic.errors import (
    BadFrame,
    LanlicError,
    ServerKeyChanged,
    ServerUnavailable,
    ServerUntrusted,
    error_for_code,
)
from lanlic.laptop.trust import ServerIdentity, TrustStore, verify_welcome
from lanlic.net.client import format_address
from lanlic.proto import messages as m
from lanlic.proto.framing import FrameDecoder, encode_frame

__all__ = [
    "MEMBERS_GRACE",
    "PINNED_GRACE",
    "PROBE_TIMEOUT",
    "Found",
    "Probed",
    "find_server",
    "probe",
]

#: Seconds one probe (connect, hello, welcome, bye) may take.
PROBE_TIMEOUT: Final = 3.0
#: Seconds a pinned server is waited for once an unpinned one has proved itself.
PINNED_GRACE: Final = 1.0
#: Seconds the search goes on listening, once a server is chosen, for other members announcing
#: its key (they answer the same question, within milliseconds of each other on a LAN).
MEMBERS_GRACE: Final = 0.2


@dataclass(frozen=True, slots=True)
class Probed:
    """A server that proved it holds its key."""

    address: tuple[str, int]
    identity: ServerIdentity
    products: tuple[str, ...] | None = None
    """The products it serves, when they were asked for (its TXT list was truncated)."""


@dataclass(frozen=True, slots=True)
class Found:
    """The server ``find_server`` chose."""

    address: tuple[str, int]
    identity: ServerIdentity
    pinned: bool
    """Its key was already pinned for its site."""
    announcement: Announcement
    members: tuple[tuple[str, int], ...] = ()
    """Every address announced under its key: ``address`` first, then the other members (not
    yet proved: the client's handshake proves each)."""


async def probe(address: tuple[str, int], *, deadline: float, products: bool = False) -> Probed:
    """Connect, say hello with a fresh nonce, verify the welcome, and leave (``bye``).

    Raises ``ServerUntrusted`` if the signature does not hold, ``ServerUnavailable`` if the
    server cannot be reached or does not answer by ``deadline`` (the loop's clock)."""
    where = format_address(address)
    try:
        async with asyncio.timeout_at(deadline):
            return await _probe(address, where, products)
    except TimeoutError:
        raise ServerUnavailable(f"{where} did not answer in time") from None
    except (OSError, BadFrame) as exc:
        raise ServerUnavailable(f"cannot reach {where}: {exc}") from None


async def _probe(address: tuple[str, int], where: str, products: bool) -> Probed:
    reader, writer = await asyncio.open_connection(*address)
    decoder = FrameDecoder()
    inbox: list[m.Message] = []

    async def request(msg: m.Message) -> m.Message:
        writer.write(encode_frame(m.to_wire(msg)))
        rid = getattr(msg, "id")  # noqa: B009 - every request has one
        while True:
            for reply in inbox:
                if getattr(reply, "id", None) == rid:
                    inbox.remove(reply)
                    if isinstance(reply, m.Error):
                        raise error_for_code(reply.code, reply.message)
                    return reply
            data = await reader.read(65536)
            if not data:
                raise ServerUnavailable(f"{where} closed the connection")
            for item in decoder.feed(data):
                if isinstance(item, BadFrame):
                    raise item
                inbox.append(m.parse(item))

    try:
        nonce, client_id = secrets.token_bytes(m.NONCE_SIZE), secrets.token_bytes(16)
        hello = m.Hello(
            id=1,
            versions=list(m.PROTOCOL_VERSIONS),
            client_id=client_id,
            user="",
            host="",
            app="lanlic-probe",
            nonce=nonce,
        )
        welcome = await request(hello)
        if not isinstance(welcome, m.Welcome):
            raise ServerUntrusted(f"{where} did not answer hello with a welcome")
        identity = verify_welcome(welcome, nonce, client_id, where)
        served: tuple[str, ...] | None = None
        if products:
            status = await request(m.Status(id=2))
            if isinstance(status, m.StatusReply):
                served = tuple(str(p.get("name")) for p in status.products)
        with contextlib.suppress(LanlicError, OSError):
            await request(m.Bye(id=3))
        return Probed(address, identity, served)
    except LanlicError as exc:
        if isinstance(exc, ServerUntrusted | ServerUnavailable):
            raise
        raise ServerUnavailable(f"{where} did not complete a handshake: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _probe_any(
    addresses: Sequence[tuple[str, int]], deadline: float, products: bool
) -> Probed | LanlicError:
    """The first address of one announcement that proves itself, else the last reason."""
    loop = asyncio.get_running_loop()
    error: LanlicError = ServerUnavailable("no address")
    for address in addresses:
        try:
            return await probe(
                address, deadline=min(deadline, loop.time() + PROBE_TIMEOUT), products=products
            )
        except LanlicError as exc:
            if not isinstance(error, ServerUntrusted):
                error = exc
    return error


def describe_interfaces(interfaces: Interfaces) -> str:
    return "every interface" if interfaces is None else ", ".join(interfaces)


async def find_server(
    *,
    vendor_fp: str | None,
    product: str | None,
    deadline: float,
    interfaces: Interfaces,
    trust: TrustStore,
    site: str | None = None,
    server_key: bytes | None = None,
) -> Found:
    """Browse until a server fits (see the module's docstring), or raise by ``deadline``.

    ``vendor_fp`` None accepts every vendor (tools; an application passes its own). ``site`` and
    ``server_key`` restrict the search to one known server: a client re-finding the server it
    was connected to."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    refused: list[LanlicError] = []
    heard: list[str] = []
    tried: set[tuple[str, int]] = set()
    probes: dict[asyncio.Future[Any], Announcement] = {}
    fallback: Found | None = None
    fallback_until = float("inf")
    announced: dict[str, list[tuple[str, int]]] = {}
    """Per announced server key: the addresses announced under it, in the order heard."""
    wait_for_pins = server_key is None and trust.has_pins_for(vendor_fp)
    want_fp = signing.fingerprint(server_key) if server_key is not None else None

    def consider(ann: Announcement) -> None:
        if vendor_fp is not None and ann.vendor_fp != vendor_fp:
            heard.append(f"{ann.name!r} (another vendor, {ann.vendor_fp})")
            return
        if not set(ann.protocol) & set(m.PROTOCOL_VERSIONS):
            heard.append(f"{ann.name!r} (protocol {ann.protocol}, not ours)")
            return
        if product is not None and ann.serves(product) is False:
            heard.append(f"{ann.name!r} (does not serve {product})")
            return
        if want_fp is not None and ann.server_fp != want_fp:
            heard.append(f"{ann.name!r} (another server, {ann.server_fp})")
            return
        members = announced.setdefault(ann.server_fp, [])
        members.extend((a, ann.port) for a in ann.addresses if (a, ann.port) not in members)
        addresses = [(a, ann.port) for a in ann.addresses if (a, ann.port) not in tried]
        if not addresses:
            return
        tried.update(addresses)
        want_products = product is not None and ann.serves(product) is None
        task = asyncio.ensure_future(_probe_any(addresses, deadline, want_products))
        probes[task] = ann

    def decide(ann: Announcement, result: Probed | LanlicError) -> Found | None:
        nonlocal fallback, fallback_until
        if isinstance(result, ServerUntrusted):
            refused.append(result)
            return None
        if isinstance(result, LanlicError):
            heard.append(f"{ann.name!r} ({result.message})")
            return None
        identity, where = result.identity, format_address(result.address)
        if vendor_fp is not None and identity.vendor_fp != vendor_fp:
            refused.append(
                ServerUntrusted(
                    f"{where} announced vendor {ann.vendor_fp} but serves {identity.vendor_fp}"
                )
            )
            return None
        if product is not None and result.products is not None and product not in result.products:
            heard.append(f"{ann.name!r} (does not serve {product})")
            return None
        if site is not None and identity.site != site:
            heard.append(f"{ann.name!r} (site {identity.site!r})")
            return None
        try:
            pinned = trust.check(identity, where, pin_new=False)
        except ServerKeyChanged as exc:
            refused.append(exc)
            return None
        if server_key is not None and identity.server_key != server_key:
            refused.append(
                ServerUntrusted(
                    f"{where} presents the key {identity.server_fp}, not {want_fp} of the server "
                    "this client was connected to"
                )
            )
            return None
        found = Found(result.address, identity, pinned, ann)
        if pinned or not wait_for_pins:
            return found
        if fallback is None:
            fallback, fallback_until = found, loop.time() + PINNED_GRACE
        return None

    getter: asyncio.Future[Any] = loop.create_future()  # the browser's next announcement

    async def with_members(found: Found, browser: Browser) -> Found:
        """``found`` with every address announced under its key (listening a little longer)."""
        nonlocal getter
        fp = found.identity.server_fp
        members = [found.address]
        members.extend(a for a in announced.get(fp, ()) if a not in members)
        until = min(deadline, loop.time() + MEMBERS_GRACE)
        while (left := until - loop.time()) > 0:
            done, _ = await asyncio.wait({getter}, timeout=left)
            if not done:
                break
            ann: Announcement = getter.result()
            getter = asyncio.ensure_future(browser.next())
            if ann.server_fp == fp and ann.vendor_fp == found.identity.vendor_fp:
                members.extend((a, ann.port) for a in ann.addresses if (a, ann.port) not in members)
        return dataclasses.replace(found, members=tuple(members))

    async with Browser(interfaces) as browser:
        getter = asyncio.ensure_future(browser.next())
        try:
            while True:
                until = min(deadline, fallback_until)
                now = loop.time()
                if now >= until:
                    break
                done, _ = await asyncio.wait(
                    {getter, *probes}, timeout=until - now, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    consider(getter.result())
                    getter = asyncio.ensure_future(browser.next())
                for task in done:
                    ann = probes.pop(task, None)
                    if ann is not None:
                        chosen = decide(ann, task.result())
                        if chosen is not None:
                            return await with_members(chosen, browser)
            if fallback is not None:
                return await with_members(fallback, browser)
        finally:
            for task in (getter, *probes):
                task.cancel()
            for task in (getter, *probes):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        ignored, service = browser.ignored, browser.service
    for reason in refused:
        if isinstance(reason, ServerKeyChanged):
            raise reason
    if refused:
        raise refused[0]
    what = "no lanlic server"
    if vendor_fp is not None:
        what += f" of vendor {vendor_fp}"
    if product is not None:
        what += f" serving {product!r}"
    if site is not None:
        what += f" for site {site!r}"
    detail = f"; heard only {', '.join(heard[:5])}" if heard else ""
    if ignored:
        detail += f"; ignored {ignored} malformed announcement(s)"
    if service != SERVICE_TYPE:
        detail += f"; looked only for service {service} (set by {SERVICE_ENV})"
    raise ServerUnavailable(
        f"{what} answered on {describe_interfaces(interfaces)} within "
        f"{deadline - started:.1f} s{detail}. If this network blocks multicast, give the "
        "server's address: --server HOST:PORT or LANLIC_SERVER=HOST:PORT"
    )
