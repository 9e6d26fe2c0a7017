"""DNS-SD over mDNS (python-zeroconf): servers announce ``_lanlic._tcp.local.``, clients browse.

This module knows nothing of the licence protocol. It turns what a server says of itself into an
mDNS announcement, and what a browser hears back into ``Announcement`` values; deciding which
server to trust is ``lanlic.net.finder``'s job, by a real handshake, because anything in mDNS can
be forged by anyone on the LAN.

The TXT record (protocol/SPEC.md, "Discovery"), every string at most 255 bytes::

    txtvers=1                 this TXT layout
    proto=1,2,3               protocol versions the server speaks, comma-separated
    id=sha256:...             the server id
    sfp=sha256:...            fingerprint of the server's key (equal to id in protocol 1)
    vfp=sha256:...            fingerprint of the vendor key that signed the served network key
    site=ACME Engineering     the customer name (truncated to fit; a hint, not an identity)
    products=cad,cad-render   product names, comma-separated, truncated at a name boundary
    pmore=1                   only when the product list above was truncated

Where mDNS goes: nowhere the caller did not choose. ``interfaces=None`` means every interface of
the host (zeroconf's ``InterfaceChoice.All``); tests and demos pass ``["127.0.0.1"]`` or run in a
network namespace of their own. ``announce_interfaces`` derives a server's default from its listen
address, so a server bound to 127.0.0.1 never announces itself beyond the host.

Browsing asks QM questions (multicast replies): with a responder on the same host, the default QU
question is answered by unicast to whichever socket holds port 5353, which costs about a second.
It also asks as a legacy unicast querier (from a port of its own), see ``Browser``.

Which service type: ``_lanlic._tcp.local.``, unless ``$LANLIC_MDNS_SERVICE`` names another
(``service_type``). Servers and clients that share another type see only each other: the test
suite gives each test one of its own, so it never finds a server it did not start (a demo
running on the same host, another developer's tests), and nobody finds its servers.

Hostile announcements are expected: a TXT record that does not parse is skipped (and counted in
``Browser.ignored``), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from lanlic.errors import ServerUnavailable

__all__ = [
    "SERVICE_ENV",
    "SERVICE_TYPE",
    "Announcement",
    "Announcer",
    "Browser",
    "announce_addresses",
    "announce_interfaces",
    "build_txt",
    "instance_name",
    "listens_everywhere",
    "parse_txt",
    "service_type",
]

log = logging.getLogger("lanlic.discovery")

SERVICE_TYPE: Final = "_lanlic._tcp.local."
#: The environment variable that names another service type to announce and browse.
SERVICE_ENV: Final = "LANLIC_MDNS_SERVICE"
#: A DNS-SD service name (RFC 6335 5.1: 1-15 letters, digits and inner hyphens) over TCP.
_SERVICE_RE: Final = re.compile(
    r"(_(?!.*--)[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?\._tcp)(?:\.local\.?)?", re.IGNORECASE
)
TXT_VERSION: Final = "1"
#: A DNS TXT string holds at most 255 bytes (key, "=" and value together).
MAX_TXT_STRING: Final = 255
#: A whole TXT record a browser reads, bytes: RFC 6763 (6.2) advises against more than 1300;
#: ours is at most about 650 (``build_txt``). A bigger one is not a lanlic server's: ignored.
MAX_TXT_RECORD: Final = 1300
#: An instance name is one DNS label: at most 63 bytes; room is left for zeroconf's "-N" suffix.
MAX_INSTANCE_BYTES: Final = 58
#: How long one announcement's records are looked up for, ms (they usually come with the PTR).
RESOLVE_TIMEOUT_MS: Final = 2000
#: Browse as a legacy unicast querier too, besides QM (see ``Browser``); off only to measure.
LEGACY_UNICAST = True
_FP_RE: Final = re.compile(r"sha256:[0-9a-f]{32}")
_PRODUCT_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

Interfaces = Sequence[str] | None
"""IP addresses of the interfaces to use, or None for every interface of the host."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one server says of itself over mDNS. Unauthenticated: a hint for whom to ask."""

    name: str
    """The DNS-SD instance name, e.g. ``ACME Engineering`` (``-2`` appended if it was taken)."""
    addresses: tuple[str, ...]
    port: int
    protocol: tuple[int, ...]
    """Protocol versions the server says it speaks."""
    server_id: str
    server_fp: str
    vendor_fp: str
    site: str
    """The customer name, possibly truncated."""
    products: tuple[str, ...]
    products_complete: bool
    """False when the server had more products than fit in the TXT record."""

    def serves(self, product: str) -> bool | None:
        """True or False if the TXT says; None if the list was truncated and does not say."""
        if product in self.products:
            return True
        return False if self.products_complete else None


def service_type() -> str:
    """The DNS-SD service type servers announce and clients browse: ``$LANLIC_MDNS_SERVICE``
    (``_name._tcp``), else ``_lanlic._tcp.local.``. ``ServerUnavailable`` if the variable is not
    a service type (nothing could be found with it)."""
    text = os.environ.get(SERVICE_ENV, "").strip()
    if not text:
        return SERVICE_TYPE
    match = _SERVICE_RE.fullmatch(text)
    if match is None or not re.search("[a-z]", match.group(1).split(".")[0], re.IGNORECASE):
        raise ServerUnavailable(
            f"{SERVICE_ENV}={text!r} is not a DNS-SD service type such as _lanlic._tcp "
            "(an underscore, 1 to 15 letters, digits or hyphens, then ._tcp)"
        )
    return f"{match.group(1).lower()}.local."


# ------------------------------------------------------------------------------------ TXT


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def build_txt(
    *,
    protocol: Sequence[int],
    server_id: str,
    server_fp: str,
    vendor_fp: str,
    site: str,
    products: Sequence[str],
) -> dict[str, str]:
    """The TXT properties of a server, every ``key=value`` string within 255 bytes."""
    txt = {
        "txtvers": TXT_VERSION,
        "proto": ",".join(str(v) for v in protocol),
        "id": server_id,
        "sfp": server_fp,
        "vfp": vendor_fp,
        "site": _truncate_utf8(site, MAX_TXT_STRING - len("site=")),
    }
    room = MAX_TXT_STRING - len("products=")
    listed: list[str] = []
    used = 0
    for name in products:
        cost = len(name.encode("utf-8")) + (1 if listed else 0)
        if used + cost > room:
            break
        listed.append(name)
        used += cost
    txt["products"] = ",".join(listed)
    if len(listed) < len(products):
        txt["pmore"] = "1"
    return txt


def _text(props: dict[bytes, bytes | None], key: bytes) -> str:
    value = props.get(key)
    if value is None:
        raise ValueError(f"no {key.decode()} in the TXT record")
    return value.decode("utf-8")  # UnicodeDecodeError is a ValueError


def _fingerprint(props: dict[bytes, bytes | None], key: bytes) -> str:
    value = _text(props, key)
    if not _FP_RE.fullmatch(value):
        raise ValueError(f"{key.decode()} is not a key fingerprint")
    return value


def parse_txt(
    name: str,
    addresses: Sequence[str],
    port: int,
    props: dict[bytes, bytes | None],
    service: str = SERVICE_TYPE,
) -> Announcement:
    """The announcement of instance ``name`` (of ``service``) at ``addresses``:``port`` with TXT
    ``props``; ``ValueError`` if the TXT record is not one this version reads.

    Unknown keys are ignored, so later versions can add some."""
    if not 0 < port < 65536:
        raise ValueError("no valid port")
    if not addresses:
        raise ValueError("no address")
    if _text(props, b"txtvers") != TXT_VERSION:
        raise ValueError("unknown txtvers")
    try:
        protocol = tuple(int(v) for v in _text(props, b"proto").split(","))
    except ValueError:
        raise ValueError("proto is not a list of versions") from None
    if not protocol or any(not 0 < v < 2**31 for v in protocol):
        raise ValueError("proto is not a list of versions")
    products_text = _text(props, b"products")
    products = tuple(products_text.split(",")) if products_text else ()
    if any(not _PRODUCT_RE.fullmatch(p) for p in products):
        raise ValueError("products is not a list of product names")
    site = _text(props, b"site")
    if not site.isprintable():
        raise ValueError("site is not printable text")
    return Announcement(
        name=name.removesuffix("." + service),
        addresses=tuple(addresses),
        port=port,
        protocol=protocol,
        server_id=_fingerprint(props, b"id"),
        server_fp=_fingerprint(props, b"sfp"),
        vendor_fp=_fingerprint(props, b"vfp"),
        site=site,
        products=products,
        products_complete=props.get(b"pmore") != b"1",
    )


def instance_name(site: str) -> str:
    """A DNS-SD instance name from a customer name: one line, at most 58 bytes of UTF-8."""
    name = " ".join(site.split()) or "lanlic"
    return _truncate_utf8(name, MAX_INSTANCE_BYTES).strip() or "lanlic"


# ----------------------------------------------------------------------- where to announce


def listens_everywhere(host: str) -> bool:
    """True for 0.0.0.0 and :: (every address of the host)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def announce_interfaces(listen_host: str, interfaces: Interfaces = None) -> Interfaces:
    """Where a server announces itself: the ``interfaces`` asked for, else those of its listen
    address. A server listening on one address announces on that address only (127.0.0.1: on
    loopback only); only one listening on every address (0.0.0.0 or ::) announces everywhere.
    """
    if interfaces:
        return list(interfaces)
    if listens_everywhere(listen_host):
        return None
    return [listen_host]


def announce_addresses(listen_host: str, interfaces: Interfaces = None) -> list[str]:
    """The addresses a server puts in its A/AAAA records: its listen address, or, when it
    listens on every address, those of the chosen interfaces (by default every non-loopback
    IPv4 address of the host, or 127.0.0.1 if it has none)."""
    if not listens_everywhere(listen_host):
        return [listen_host]
    if interfaces:
        return list(interfaces)
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return sorted(set(found)) or ["127.0.0.1"]


def _zeroconf(interfaces: Interfaces, unicast: bool = False) -> AsyncZeroconf:
    if interfaces is None:
        return AsyncZeroconf(
            interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only, unicast=unicast
        )
    return AsyncZeroconf(interfaces=list(interfaces), unicast=unicast)


# ------------------------------------------------------------------------------ announcing


class Announcer:
    """Registers one server's service; ``await start()``, then ``await close()`` (goodbye)."""

    def __init__(
        self,
        *,
        site: str,
        port: int,
        addresses: Sequence[str],
        txt: dict[str, str],
        server_fp: str,
        interfaces: Interfaces = None,
        member: str = "",
    ) -> None:
        self.interfaces = interfaces
        self.service = service_type()
        host_label = server_fp.removeprefix("sha256:")[:12]
        name = instance_name(site)
        if member:
            # Cluster members share one server key, and so would share one host name with
            # different addresses: a browser would mix their address records (or see a
            # conflict). A member's own label keeps each member's host name its own, and its
            # instance name too: zeroconf renames a taken name (-2) only if the other's record
            # is in its cache by the end of its probes, which members starting together (or
            # on a busy machine) can miss, and two members would then announce one name.
            tag = hashlib.sha256(member.encode("utf-8")).hexdigest()[:8]
            host_label += "-" + tag
            suffix = f" ({tag})"
            name = _truncate_utf8(name, MAX_INSTANCE_BYTES - len(suffix)).strip() + suffix
        self._info = AsyncServiceInfo(
            self.service,
            f"{name}.{self.service}",
            port=port,
            parsed_addresses=list(addresses),
            properties=dict(txt),
            # One host name per server key: two servers on one machine (or one moved to a new
            # address) never mix their address records in a browser's cache.
            server=f"lanlic-{host_label}.local.",
        )
        self._aiozc: AsyncZeroconf | None = None
        self._broadcast: asyncio.Future[object] | None = None

    @property
    def host_name(self) -> str:
        """The mDNS host name whose address records this announcement carries."""
        return str(self._info.server)

    @property
    def name(self) -> str:
        """The instance name actually registered (zeroconf appends -2, -3... if it was taken)."""
        return self._info.name.removesuffix("." + self.service)

    async def start(self) -> None:
        """Probe for the name (about 1.2 s, renaming if taken) and start announcing."""
        self._aiozc = _zeroconf(self.interfaces)
        try:
            broadcast = await self._aiozc.async_register_service(self._info, allow_name_change=True)
        except BaseException:
            await self._aiozc.async_close()
            self._aiozc = None
            raise
        self._broadcast = asyncio.ensure_future(broadcast)

    async def close(self) -> None:
        """Send the goodbye (TTL 0) and close the sockets. Safe to call twice."""
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        if self._broadcast is not None and not self._broadcast.done():
            self._broadcast.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._broadcast
        try:
            goodbye = await aiozc.async_unregister_service(self._info)
            await goodbye
        except Exception as exc:  # the goodbye is a courtesy: never fail a shutdown on it
            log.warning("mDNS goodbye failed: %s", exc)
        finally:
            await aiozc.async_close()


# -------------------------------------------------------------------------------- browsing


class Browser:
    """Browse for lanlic servers: ``async with Browser(interfaces) as b: await b.next()``.

    Every announcement that resolves and parses is queued once per (name, addresses, port, TXT);
    a server that comes back on another port is queued again.

    It asks two ways at once, because each is slow where the other is fast. QM questions from
    port 5353 get multicast answers, which pass firewalls that allow mDNS; but a responder
    multicasts a record at most once a second (RFC 6762, 6.), so a second browse within a second
    of the last answer waits about a second. Legacy unicast questions, from a port of our own,
    get an immediate unicast answer to that port every time, also from a responder on the same
    host, but a strict host firewall may drop those answers."""

    def __init__(self, interfaces: Interfaces = None) -> None:
        self.interfaces = interfaces
        self.service = service_type()
        self._ignored: set[str] = set()
        self._queue: asyncio.Queue[Announcement] = asyncio.Queue()
        self._seen: set[Announcement] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._zcs: list[AsyncZeroconf] = []
        self._browsers: list[AsyncServiceBrowser] = []
        self._question: dict[Zeroconf, DNSQuestionType | None] = {}

    async def __aenter__(self) -> Browser:
        try:
            ways = [(False, DNSQuestionType.QM)] + ([(True, None)] if LEGACY_UNICAST else [])
            for unicast, question in ways:
                try:
                    aiozc = _zeroconf(self.interfaces, unicast=unicast)
                except OSError as exc:
                    if not unicast:
                        raise
                    log.debug("mDNS: no legacy unicast browsing: %s", exc)
                    continue
                self._zcs.append(aiozc)
                self._question[aiozc.zeroconf] = question
                self._browsers.append(
                    AsyncServiceBrowser(
                        aiozc.zeroconf,
                        self.service,
                        handlers=[self._on_change],
                        question_type=question,
                    )
                )
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for browser in self._browsers:
            await browser.async_cancel()
        for aiozc in self._zcs:
            await aiozc.async_close()
        self._browsers, self._zcs = [], []

    @property
    def ignored(self) -> int:
        """How many services were skipped because their TXT record did not parse."""
        return len(self._ignored)

    async def next(self) -> Announcement:
        """The next announcement (wait for it with a deadline: it may never come)."""
        return await self._queue.get()

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        task = asyncio.ensure_future(self._resolve(zeroconf, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        try:
            info = AsyncServiceInfo(self.service, name)
            if not await info.async_request(
                zeroconf, RESOLVE_TIMEOUT_MS, question_type=self._question.get(zeroconf)
            ):
                log.debug("mDNS: %r did not resolve", name)
                return
            addresses = info.parsed_addresses(IPVersion.V4Only)
            if len(info.text or b"") > MAX_TXT_RECORD:
                raise ValueError(f"TXT record of {len(info.text or b'')} bytes is too big")
            ann = parse_txt(name, addresses, info.port or 0, info.properties, self.service)
        except (ValueError, BadTypeInNameException) as exc:
            self._ignored.add(name)
            log.debug("mDNS: ignoring %r: %s", name, exc)
            return
        if ann not in self._seen:
            self._seen.add(ann)
            self._queue.put_nowait(ann)
