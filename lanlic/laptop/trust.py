"""Which license servers a client trusts: the handshake's proof, and the keys pinned on disk.

Every lanlic server has its own Ed25519 key, made on first start in its data folder. In its
``welcome`` it signs the client's fresh nonce (with the client id, its server id and the vendor
fingerprint, and in protocol version 2 its wall time too, see protocol/SPEC.md section 4), so
``verify_welcome`` knows that whoever answered holds the key it presents. That alone proves
little: anyone can make a key. What gives the key a meaning is *pinning*, trust on first use as
in SSH's ``known_hosts``: the first time a client meets a *site* (a vendor fingerprint and the
customer name on the network key) it records that site's server key; from then on a server for
that site with any other key is refused with ``ServerKeyChanged``, whose message names both
fingerprints and the command that re-pins on purpose (``lanlic trust --server HOST:PORT``).

Pins live in the client's config folder (``config_dir()``) in ``known_servers.json``, written
atomically under a lock so that two clients pinning at once lose nothing. A pins file that cannot
be read is an error, never an empty list: forgetting every pin silently would let an impostor be
trusted on "first" use.

The client's config folder also holds ``client.toml``, read by ``configured_server()``: an explicit
``server = "HOST:PORT"`` there skips discovery, for networks that block multicast.

What this does not give: the connection is not encrypted, and the signature covers the hello and
welcome only. Pinning stops a rogue server that answers in place of the real one; it does not stop
someone who can rewrite the traffic of an established connection.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanlic import osdeps
from lanlic.core import signing, welcomebatch
from lanlic.core.service import handshake_payload, handshake_v2_payload, server_time_payload
from lanlic.errors import LanlicError, ServerKeyChanged, ServerUntrusted
from lanlic.proto import messages as m

__all__ = [
    "PINS_FILE",
    "Pin",
    "ServerIdentity",
    "TrustStore",
    "TrustStoreError",
    "config_dir",
    "configured_server",
    "fingerprint_of",
    "verify_server_time",
    "verify_welcome",
]

PINS_FILE: Final = "known_servers.json"
CLIENT_CONFIG_FILE: Final = "client.toml"
_FORMAT: Final = "lanlic-known-servers"
_FP_RE: Final = re.compile(r"sha256:[0-9a-f]{32}")


class TrustStoreError(LanlicError):
    """The pins file (or the client config file) cannot be read or written."""

    code = "trust_store"


def config_dir() -> Path:
    """``$LANLIC_CONFIG``, else the user's config folder (``osdeps.user_config_dir``: on Linux
    ``$XDG_CONFIG_HOME/lanlic``, else ``~/.config/lanlic``)."""
    env = os.environ.get("LANLIC_CONFIG")
    if env:
        return Path(env)
    return osdeps.user_config_dir()


def configured_server() -> str | None:
    """The ``server`` in ``client.toml`` of the config folder, or None (no file, no entry)."""
    path = config_dir() / CLIENT_CONFIG_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrustStoreError(f"cannot read {path}: {exc.strerror}") from None
    try:
        config = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TrustStoreError(f"{path} is not valid TOML: {exc}") from None
    server = config.get("server")
    if server is None:
        return None
    if not isinstance(server, str) or not server.strip():
        raise TrustStoreError(f'{path}: server must be a string "HOST:PORT"')
    return server.strip()


def fingerprint_of(vendor_key: Ed25519PublicKey | bytes | str) -> str:
    """A vendor key's fingerprint from the key, its raw 32 bytes, or the fingerprint itself."""
    if isinstance(vendor_key, str):
        fp = vendor_key.strip().lower()
        if not _FP_RE.fullmatch(fp):
            raise ValueError(f"not a key fingerprint (sha256: and 32 hex digits): {vendor_key!r}")
        return fp
    return signing.fingerprint(vendor_key)


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Who a server proved to be in one handshake."""

    server_key: bytes
    """The server's Ed25519 public key, raw 32 bytes; it signed this connection's nonce."""
    vendor_fp: str
    """Fingerprint of the vendor key that signed the network key the server says it serves."""
    site: str
    """The customer name of that network key: with ``vendor_fp``, the site a pin is kept for."""

    @property
    def server_fp(self) -> str:
        """The server key's fingerprint, which is also its server id."""
        return signing.fingerprint(self.server_key)


def verify_welcome(
    welcome: m.Welcome, nonce: bytes, client_id: bytes, where: str = "the server"
) -> ServerIdentity:
    """Check that ``welcome`` is signed by the key it carries over ``nonce``; raise
    ``ServerUntrusted`` if not. ``where`` names the server in messages (e.g. ``host:port``)."""
    if len(nonce) != m.NONCE_SIZE:
        raise ValueError("a handshake is verified only against a fresh 32-byte nonce")
    try:
        public = signing.public_from_bytes(welcome.server_key)
    except ValueError:
        raise ServerUntrusted(
            f"{where} sent no valid server key in its welcome: it cannot prove who it is"
        ) from None
    fp = signing.fingerprint(welcome.server_key)
    if welcome.server_id != fp:
        raise ServerUntrusted(
            f"{where} calls itself {welcome.server_id[:80]!r} but presents the key {fp}"
        )
    if not _FP_RE.fullmatch(welcome.vendor_fp):
        raise ServerUntrusted(f"{where} names no valid vendor key fingerprint in its welcome")
    if welcome.version not in m.PROTOCOL_VERSIONS:
        raise ServerUntrusted(
            f"{where} answered in protocol version {welcome.version}, which this client does "
            f"not speak (it offered {list(m.PROTOCOL_VERSIONS)})"
        )
    if not _signed_handshake(public, welcome, nonce, client_id):
        raise ServerUntrusted(
            f"{where} did not sign this connection's nonce with its key {fp}: "
            "it cannot prove it holds that key, so it is not trusted"
        )
    return ServerIdentity(welcome.server_key, welcome.vendor_fp, welcome.customer)


def _signed_handshake(
    public: Ed25519PublicKey, welcome: m.Welcome, nonce: bytes, client_id: bytes
) -> bool:
    """Whether ``welcome.signature`` is the handshake signature of its version (SPEC 4): in
    version 2 it covers the welcome's ``time`` as well; in version 3 it covers the root that
    this handshake's leaf and the welcome's ``batch_path`` fold into."""
    if welcome.version == 1:
        payload = handshake_payload(nonce, client_id, welcome.server_id, welcome.vendor_fp)
        return signing.verify(public, signing.DOMAIN_HANDSHAKE, payload, welcome.signature)
    payload = handshake_v2_payload(
        nonce, client_id, welcome.server_id, welcome.vendor_fp, welcome.time
    )
    if welcome.version >= 3:
        root = welcomebatch.root_of(welcomebatch.leaf(payload), welcome.batch_path)
        return root is not None and signing.verify(
            public, signing.DOMAIN_HANDSHAKE_V3, root, welcome.signature
        )
    return signing.verify(public, signing.DOMAIN_HANDSHAKE_V2, payload, welcome.signature)


def verify_server_time(welcome: m.Welcome, nonce: bytes, client_id: bytes) -> float | None:
    """The server's wall time from ``welcome`` if its key signed it over this connection's fresh
    ``nonce`` (so it is neither forged nor a recording), else None: in version 1 the
    ``time_signature``, in version 2 the handshake's own ``signature``. The caller still decides
    whether it trusts the key (``verify_welcome``, pins, the key a borrowed file names)."""
    if len(nonce) != m.NONCE_SIZE or welcome.time <= 0:
        return None
    if welcome.version not in m.PROTOCOL_VERSIONS:
        return None
    try:
        public = signing.public_from_bytes(welcome.server_key)
    except ValueError:
        return None
    if welcome.version >= 2:
        return welcome.time if _signed_handshake(public, welcome, nonce, client_id) else None
    payload = server_time_payload(nonce, client_id, welcome.server_id, welcome.time)
    if not signing.verify(public, signing.DOMAIN_SERVER_TIME, payload, welcome.time_signature):
        return None
    return welcome.time


@dataclass(frozen=True, slots=True)
class Pin:
    """One site's trusted server key."""

    vendor_fp: str
    site: str
    """The customer name on the site's network key."""
    server_key: bytes
    """Raw 32-byte Ed25519 public key."""
    pinned_at: str
    """When it was pinned, ISO 8601 UTC."""
    address: str = ""
    """Where the server was when pinned (for people; never used to decide trust)."""
    source: str = "first use"
    """``first use`` (pinned by a client on its first connection) or ``lanlic trust``."""

    @property
    def server_fp(self) -> str:
        return signing.fingerprint(self.server_key)

    def to_json(self) -> dict[str, str]:
        return {
            "vendor_fp": self.vendor_fp,
            "site": self.site,
            "server_key": base64.b64encode(self.server_key).decode("ascii"),
            "server_fp": self.server_fp,
            "pinned_at": self.pinned_at,
            "address": self.address,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, item: Any) -> Pin:
        if not isinstance(item, dict):
            raise ValueError("a pin must be an object")
        fields = {k: item.get(k) for k in ("vendor_fp", "site", "server_key", "pinned_at")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise ValueError("a pin needs vendor_fp, site, server_key and pinned_at strings")
        try:
            raw = base64.b64decode(item["server_key"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("server_key is not base64") from None
        signing.public_from_bytes(raw)  # ValueError if not a key
        if not _FP_RE.fullmatch(item["vendor_fp"]):
            raise ValueError("vendor_fp is not a fingerprint")
        return cls(
            vendor_fp=item["vendor_fp"],
            site=item["site"],
            server_key=raw,
            pinned_at=item["pinned_at"],
            address=str(item.get("address", "")),
            source=str(item.get("source", "first use")),
        )


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class TrustStore:
    """The pinned server keys, one per site. ``TrustStore(None)`` keeps them in memory only (for
    tools and tests); ``TrustStore.default()`` uses the config folder's pins file.

    Reads are small and local (one JSON file), so they are done in place, not in a thread."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory: list[Pin] = []

    @classmethod
    def default(cls) -> TrustStore:
        return cls(config_dir() / PINS_FILE)

    # ------------------------------------------------------------------------------ reading

    def pins(self) -> list[Pin]:
        if self.path is None:
            return list(self._memory)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustStoreError(
                f"cannot read the pinned server keys {self.path}: {exc}"
            ) from None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            if doc.get("version") != 1:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            items = doc.get("servers")
            if not isinstance(items, list):
                raise ValueError("no servers list")
            return [Pin.from_json(x) for x in items]
        except ValueError as exc:
            raise TrustStoreError(
                f"the pinned server keys {self.path} are unreadable ({exc}); fix or remove the "
                "file (every server will then be trusted again on first use)"
            ) from None

    def lookup(self, vendor_fp: str, site: str) -> Pin | None:
        for pin in self.pins():
            if pin.vendor_fp == vendor_fp and pin.site == site:
                return pin
        return None

    def has_pins_for(self, vendor_fp: str | None) -> bool:
        return any(vendor_fp is None or p.vendor_fp == vendor_fp for p in self.pins())

    # ------------------------------------------------------------------------------ checking

    def check(self, identity: ServerIdentity, address: str = "", *, pin_new: bool = True) -> bool:
        """Raise ``ServerKeyChanged`` if ``identity``'s site is pinned to another key; pin it if
        the site is new and ``pin_new`` (trust on first use). True if the key was already pinned.
        """
        pin = self.lookup(identity.vendor_fp, identity.site)
        if pin is not None:
            if pin.server_key != identity.server_key:
                raise key_changed(identity, pin, address)
            return True
        if pin_new:
            with self._locked() as pins:
                # Another client may have pinned the site since we looked: check again.
                for other in pins:
                    if (other.vendor_fp, other.site) == (identity.vendor_fp, identity.site):
                        if other.server_key != identity.server_key:
                            raise key_changed(identity, other, address)
                        return True
                pins.append(
                    Pin(
                        identity.vendor_fp,
                        identity.site,
                        identity.server_key,
                        _now_iso(),
                        address,
                    )
                )
        return False

    # ------------------------------------------------------------------------------ changing

    def pin(self, identity: ServerIdentity, address: str = "", source: str = "lanlic trust") -> Pin:
        """Pin ``identity`` for its site, replacing any earlier pin (a deliberate re-pin)."""
        new = Pin(
            identity.vendor_fp, identity.site, identity.server_key, _now_iso(), address, source
        )
        with self._locked() as pins:
            pins[:] = [p for p in pins if (p.vendor_fp, p.site) != (new.vendor_fp, new.site)]
            pins.append(new)
        return new

    def forget(self, site: str, vendor_fp: str | None = None) -> list[Pin]:
        """Drop the pins of ``site`` (of every vendor, or of one); returns what was dropped."""
        with self._locked() as pins:
            gone = [p for p in pins if p.site == site and vendor_fp in (None, p.vendor_fp)]
            pins[:] = [p for p in pins if p not in gone]
        return gone

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Pin]]:
        """Read, let the caller change, and write back the pins, holding the folder's lock."""
        if self.path is None:
            pins = list(self._memory)
            yield pins
            self._memory = pins
            return
        try:
            osdeps.make_private_dir(self.path.parent)
            lock = osdeps.FileLock(self.path.with_name(self.path.name + ".lock"))
        except OSError as exc:
            raise TrustStoreError(f"cannot write to {self.path.parent}: {exc.strerror}") from None
        with lock:
            pins = self.pins()
            before = list(pins)
            yield pins
            if pins != before:
                self._write(pins)

    def _write(self, pins: list[Pin]) -> None:
        assert self.path is not None
        doc = {"format": _FORMAT, "version": 1, "servers": [p.to_json() for p in pins]}
        data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            osdeps.write_atomic(self.path, data)
        except OSError as exc:
            raise TrustStoreError(f"cannot write {self.path}: {exc.strerror}") from None


def key_changed(identity: ServerIdentity, pin: Pin, address: str = "") -> ServerKeyChanged:
    where = f"the server at {address}" if address else "the server"
    again = f"lanlic trust --server {address}" if address else "lanlic trust --server HOST:PORT"
    return ServerKeyChanged(
        f"{where} for site {identity.site!r} (vendor {identity.vendor_fp}) presents the key "
        f"{identity.server_fp}, but this client pinned {pin.server_fp} for that site on "
        f"{pin.pinned_at}. It may be an impostor. If the server was replaced on purpose, check "
        f"the new fingerprint with its administrator and re-pin it: {again}"
    )
