"""The messages of protocol version 1, as frozen dataclasses, with validation from wire maps.

Every message on the wire is a msgpack map with a string type under ``"t"``. Requests carry a
request id under ``"id"`` (an unsigned integer the client chooses) and every reply repeats it, so
a client may pipeline requests and match replies out of order. Fields this version does not know
are ignored (that is how the protocol grows without breaking old peers, see protocol/SPEC.md);
missing or mistyped known fields are ``BadMessage``; an unknown ``"t"`` is ``UnknownMessage``.

``parse(map)`` turns a wire map into a message; ``to_wire(message)`` the reverse. Field names on
the wire are the dataclass field names, except ``t`` which is the class's ``TYPE``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Final

from lanlic.errors import BadMessage, UnknownMessage

__all__ = [
    "LEASE_ID_SIZE",
    "MAX_REQUEST_ID",
    "MIN_REQUEST_ID",
    "NONCE_SIZE",
    "PROTOCOL_VERSIONS",
    "Borrow",
    "Borrowed",
    "Bye",
    "Checkout",
    "Enroll",
    "Enrolled",
    "Error",
    "Goodbye",
    "Granted",
    "Hello",
    "Lost",
    "Message",
    "Notice",
    "Present",
    "Presented",
    "Reclaim",
    "Reclaimed",
    "Release",
    "Released",
    "Renew",
    "Renewed",
    "Return",
    "Returned",
    "Status",
    "StatusReply",
    "Welcome",
    "is_version",
    "parse",
    "to_wire",
]

#: Protocol versions this implementation speaks, newest last.
PROTOCOL_VERSIONS: Final = (1, 2, 3)
LEASE_ID_SIZE: Final = 16
NONCE_SIZE: Final = 32
CLIENT_ID_SIZE: Final = 16
#: A hello offers 1 to MAX_VERSIONS_OFFERED protocol versions, each in 1..VERSION_LIMIT - 1.
MAX_VERSIONS_OFFERED: Final = 64
VERSION_LIMIT: Final = 2**31
MAX_REQUEST_ID: Final = 2**63 - 1
#: Request ids are 1..MAX_REQUEST_ID: an error with id 0 is one no request can be matched to
#: (the frame's id could not be read, or the error concerns the stream, not a request).
MIN_REQUEST_ID: Final = 1
#: Upper bounds on client-supplied strings and lists, so a valid frame cannot balloon state.
MAX_NAME: Final = 256
MAX_LEASES_PER_REQUEST: Final = 4096
#: Largest signed document (enrollment request/response, borrowed file) carried in a message.
MAX_DOCUMENT: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    TYPE: ClassVar[str] = ""
    REQUEST: ClassVar[bool] = False


# ---------------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """The first message a client sends: who it is and which protocol versions it speaks."""

    TYPE: ClassVar[str] = "hello"
    REQUEST: ClassVar[bool] = True
    id: int
    versions: list[int]
    """Protocol versions the client speaks; the server picks the highest it shares."""
    client_id: bytes
    """16 random bytes the client keeps for its lifetime; leases belong to it."""
    user: str
    host: str
    app: str = ""
    """Free text naming the application and its version, shown to the admin."""
    nonce: bytes = b""
    """32 random bytes the server signs in its welcome, proving it holds the server key."""


@dataclass(frozen=True, slots=True)
class Checkout(Message):
    """Ask for one floating seat of a product, for an application of a given version."""

    TYPE: ClassVar[str] = "checkout"
    REQUEST: ClassVar[bool] = True
    id: int
    product: str
    version: str = ""
    """The application's version, checked against the product's licensed range ("" = any)."""


@dataclass(frozen=True, slots=True)
class Wait(Message):
    """A checkout that waits in line: ``granted`` at once if a seat is free for this client,
    else ``queued`` (then ``queued`` again as the place changes, and one ``granted`` or ``error``
    later, all with this request's id). SPEC section 14."""

    TYPE: ClassVar[str] = "wait"
    REQUEST: ClassVar[bool] = True
    id: int
    product: str
    version: str = ""


@dataclass(frozen=True, slots=True)
class Unwait(Message):
    """Leave the line (the client gave up)."""

    TYPE: ClassVar[str] = "unwait"
    REQUEST: ClassVar[bool] = True
    id: int
    ticket: bytes


@dataclass(frozen=True, slots=True)
class Renew(Message):
    """Heartbeat: extend every listed lease by one lease period. One frame for all of them."""

    TYPE: ClassVar[str] = "renew"
    REQUEST: ClassVar[bool] = True
    id: int
    leases: list[bytes]


@dataclass(frozen=True, slots=True)
class Release(Message):
    """Give the listed seats back at once."""

    TYPE: ClassVar[str] = "release"
    REQUEST: ClassVar[bool] = True
    id: int
    leases: list[bytes]


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Ask for the products, their counts and their holders."""

    TYPE: ClassVar[str] = "status"
    REQUEST: ClassVar[bool] = True
    id: int


@dataclass(frozen=True, slots=True)
class Bye(Message):
    """A clean goodbye: release every seat this client holds, then the server closes."""

    TYPE: ClassVar[str] = "bye"
    REQUEST: ClassVar[bool] = True
    id: int


# ----------------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The server's answer to hello."""

    TYPE: ClassVar[str] = "welcome"
    id: int
    version: int
    """The protocol version chosen for this connection."""
    server_id: str
    lease_s: float
    """Lease period in seconds: a seat not renewed for this long returns to the pool."""
    heartbeat_s: float
    """How often the client should renew."""
    server_key: bytes = b""
    """The server's Ed25519 public key (32 bytes)."""
    signature: bytes = b""
    """Signature by the server key over the handshake domain, the client's nonce and ids; in
    version 2 over the version-2 handshake domain, and ``time`` too; in version 3 over the root
    of a batch of handshakes (``batch_path``)."""
    vendor_fp: str = ""
    """Fingerprint of the vendor key that signed the served network key."""
    customer: str = ""
    epoch: int = 0
    """How many times this server's data folder has been started: a client whose seats came
    from an older epoch reclaims them (``reclaim``) instead of renewing them."""
    time: float = 0.0
    """The server's UTC wall time (seconds) when it answered; 0 when not sent."""
    time_signature: bytes = b""
    """Version 1: signature by the server key over the server-time domain, the nonce, ids and
    ``time``. Version 2 sends none (``signature`` covers ``time``)."""
    batch_path: bytes = b""
    """Version 3: the path from this handshake's leaf to the root ``signature`` signs, shared by
    the welcomes of one batch (``lanlic.core.welcomebatch``); empty in versions 1 and 2."""


@dataclass(frozen=True, slots=True)
class Granted(Message):
    TYPE: ClassVar[str] = "granted"
    id: int
    lease: bytes
    product: str
    lease_s: float
    epoch: int = 0
    """The server epoch the lease was granted in."""


@dataclass(frozen=True, slots=True)
class Queued(Message):
    """The waiting client's place in line (1 is next); sent again whenever it changes."""

    TYPE: ClassVar[str] = "queued"
    id: int
    """The ``wait`` request's id."""
    ticket: bytes
    """16 bytes naming this place in line (``unwait`` gives it up)."""
    product: str
    position: int


@dataclass(frozen=True, slots=True)
class Unwaited(Message):
    TYPE: ClassVar[str] = "unwaited"
    id: int
    ticket: bytes
    left: bool
    """False if the ticket was not in line (granted or dropped already)."""


@dataclass(frozen=True, slots=True)
class Lost(Message):
    """Not a message of its own: one entry in ``renewed.lost`` / ``released.lost``."""

    TYPE: ClassVar[str] = "lost"
    lease: bytes
    code: str


@dataclass(frozen=True, slots=True)
class Renewed(Message):
    TYPE: ClassVar[str] = "renewed"
    id: int
    leases: list[bytes]
    """The leases that were extended."""
    lost: list[Lost] = field(default_factory=list)
    """The leases that were not, each with its error code (e.g. lease_unknown)."""


@dataclass(frozen=True, slots=True)
class Released(Message):
    TYPE: ClassVar[str] = "released"
    id: int
    leases: list[bytes]
    lost: list[Lost] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    TYPE: ClassVar[str] = "status_reply"
    id: int
    server_id: str
    customer: str
    expires: str
    """The network key's expiry date, YYYY-MM-DD."""
    products: list[dict[str, Any]]
    """One map per product (SPEC section 7 lists every key): name, seats, in_use, borrowed, held,
    free, borrowable, max_borrow_days, addon, versions, holders (a list of maps: user, host, app,
    version, since, last_heartbeat as UTC seconds) and holders_total."""
    borrows: list[dict[str, Any]] = field(default_factory=list)
    """Active borrows: borrow_id, product, user, host, start, end (UTC seconds)."""


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    TYPE: ClassVar[str] = "goodbye"
    id: int
    released: int


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A request failed. ``id`` is the request's id, or 0 when it could not be read."""

    TYPE: ClassVar[str] = "error"
    id: int
    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Notice(Message):
    """Pushed by the server, not a reply: e.g. ``lease_removed`` by an admin, ``shutdown``."""

    TYPE: ClassVar[str] = "notice"
    kind: str
    message: str = ""
    leases: list[bytes] = field(default_factory=list)


# ------------------------------------------------------------------------------------ borrowing


@dataclass(frozen=True, slots=True)
class Enroll(Message):
    """Register a borrowing container (a machine or a portable key) with the server."""

    TYPE: ClassVar[str] = "enroll"
    REQUEST: ClassVar[bool] = True
    id: int
    request: bytes
    """The signed enrollment request document (the same bytes as the offline request file)."""
    via: str = "online"
    """``online``, or ``offline`` when an administrator forwards a request file."""


@dataclass(frozen=True, slots=True)
class Enrolled(Message):
    TYPE: ClassVar[str] = "enrolled"
    id: int
    response: bytes
    """The server-signed enrollment response document."""


@dataclass(frozen=True, slots=True)
class Borrow(Message):
    """Take a seat off the network for ``days``, into a licence file bound to the container."""

    TYPE: ClassVar[str] = "borrow"
    REQUEST: ClassVar[bool] = True
    id: int
    request_id: bytes
    """16 random bytes naming this borrow attempt: a retry with the same id gets the same
    borrow, never a second seat."""
    product: str
    days: float
    container_key: bytes
    """The enrolled container's raw public key."""
    proof: bytes
    """Container signature over (``borrow``, server id, request_id, product, version, days)."""
    version: str = ""


@dataclass(frozen=True, slots=True)
class Borrowed(Message):
    TYPE: ClassVar[str] = "borrowed"
    id: int
    borrow_id: str
    file: bytes
    """The server-signed borrowed licence file."""
    end: float
    """When the borrow ends and the seat returns to the pool, UTC seconds."""


@dataclass(frozen=True, slots=True)
class Return(Message):
    """Give a borrowed seat back early. Idempotent."""

    TYPE: ClassVar[str] = "return"
    REQUEST: ClassVar[bool] = True
    id: int
    borrow_id: str
    container_key: bytes
    proof: bytes
    """Container signature over (``return``, server id, borrow_id)."""


@dataclass(frozen=True, slots=True)
class Returned(Message):
    TYPE: ClassVar[str] = "returned"
    id: int
    borrow_id: str
    already: bool = False
    """True when the borrow had already ended (returned or expired): nothing changed."""


@dataclass(frozen=True, slots=True)
class Present(Message):
    """Show the server a borrowed licence file this container holds. The server says whether the
    borrow is still on, and counts one it has no record of (its database was restored from a
    backup older than the borrow)."""

    TYPE: ClassVar[str] = "present"
    REQUEST: ClassVar[bool] = True
    id: int
    file: bytes
    """The server-signed borrowed licence file, exactly as received."""
    proof: bytes
    """Container signature over (``present``, server id, borrow id): only the container the
    file was issued to may present it."""


@dataclass(frozen=True, slots=True)
class Presented(Message):
    TYPE: ClassVar[str] = "presented"
    id: int
    borrow_id: str
    state: str
    """``active``; ``adopted`` (the server had no record of it and counts it from now on);
    ``returned`` or ``expired`` (over: the client deactivates its file)."""
    end: float
    """The borrow's end, UTC seconds, as in the file."""


# ------------------------------------------------------------------------------ restart/reclaim


@dataclass(frozen=True, slots=True)
class Reclaim(Message):
    """After the server restarted (a new epoch): ask for seats held before it, by lease id.

    Within the reclaim window (one lease period from the restart) the server holds the seats
    that may have been in use for exactly this; the leases keep their ids."""

    TYPE: ClassVar[str] = "reclaim"
    REQUEST: ClassVar[bool] = True
    id: int
    seats: list[dict[str, Any]]
    """One map per seat: ``lease`` (bytes 16), ``product`` (str), ``version`` (str)."""


@dataclass(frozen=True, slots=True)
class Reclaimed(Message):
    TYPE: ClassVar[str] = "reclaimed"
    id: int
    leases: list[bytes]
    """The leases the client holds again, in the new epoch."""
    epoch: int
    lost: list[Lost] = field(default_factory=list)
    """Those it does not, with the reason (``no_seat``, ``lease_unknown``...)."""


# ----------------------------------------------------------------------------------- validation

_TYPES: dict[str, type[Message]] = {
    c.TYPE: c
    for c in (
        Hello,
        Checkout,
        Renew,
        Release,
        Status,
        Bye,
        Welcome,
        Granted,
        Renewed,
        Released,
        StatusReply,
        Goodbye,
        Error,
        Notice,
        Enroll,
        Enrolled,
        Borrow,
        Borrowed,
        Return,
        Returned,
        Present,
        Presented,
        Reclaim,
        Reclaimed,
        Wait,
        Queued,
        Unwait,
        Unwaited,
    )
}


def _fail(t: str, name: str, want: str) -> BadMessage:
    return BadMessage(f"{t}: field {name!r} must be {want}")


#: A field's check: ``check(t, name, value)`` is the value to keep, or raises ``BadMessage``
#: naming the message type, the field and what it must be.
Checker = Callable[[str, str, Any], Any]


def _rule(
    ok: Callable[[Any], bool], want: str, convert: Callable[[Any], Any] | None = None
) -> Checker:
    """A field that is valid when ``ok(value)``, kept as ``convert(value)`` (or as it came)."""

    def check(t: str, name: str, v: Any) -> Any:
        if not ok(v):
            raise _fail(t, name, want)
        return v if convert is None else convert(v)

    return check


def _list(
    ok: Callable[[Any], bool], want: str, ok_item: Callable[[Any], bool], want_item: str
) -> Checker:
    """A list that is valid when ``ok(list)``, then each item when ``ok_item(item)``."""

    def check(t: str, name: str, v: Any) -> Any:
        if type(v) is not list or not ok(v):
            raise _fail(t, name, want)
        if not all(ok_item(item) for item in v):
            raise _fail(t, name, want_item)
        return v

    return check


def _bytes(size: int) -> Checker:
    return _rule(lambda v: type(v) is bytes and len(v) == size, f"{size} bytes")


def _text(limit: int = MAX_NAME) -> Checker:
    return _rule(
        lambda v: type(v) is str and len(v) <= limit, f"a string of at most {limit} characters"
    )


def _number(v: Any) -> bool:
    return type(v) in (int, float) and 0 <= v < 1e12  # rejects NaN and infinities too


#: An application version: 1 to 8 parts of 1 to 9 ASCII digits, joined by dots (SPEC 7).
_VERSION_RE: Final = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}")


def is_version(v: str) -> bool:
    """Whether ``v`` may be sent as an application version: ``""`` (not given) or dotted digits."""
    return v == "" or _VERSION_RE.fullmatch(v) is not None


def _reclaim_seat(item: Any) -> bool:
    return (
        type(item) is dict
        and type(item.get("lease")) is bytes
        and len(item["lease"]) == LEASE_ID_SIZE
        and type(item.get("product")) is str
        and len(item["product"]) <= MAX_NAME
        and type(item.get("version", "")) is str
        and is_version(item.get("version", ""))
    )


def _check_lost(t: str, name: str, v: Any) -> list[Lost]:
    if type(v) is not list:
        raise _fail(t, name, "a list of maps")
    out = []
    for item in v:
        if type(item) is not dict:
            raise _fail(t, name, "a list of maps")
        lease = _BY_NAME["lease"](t, "lease", item.get("lease"))
        out.append(Lost(lease=lease, code=_BY_TYPE["str"](t, "code", item.get("code"))))
    return out


def _check_days(t: str, name: str, v: Any) -> float:
    days: float = _NUMBER(t, name, v)
    if days <= 0:
        raise _fail(t, name, "a number of days above 0")
    return days


_ANY_BYTES: Final = _rule(lambda v: type(v) is bytes, "bytes")
_DOCUMENT: Final = _rule(
    lambda v: type(v) is bytes and len(v) <= MAX_DOCUMENT, f"at most {MAX_DOCUMENT} bytes"
)
_NUMBER: Final = _rule(_number, "a non-negative number", float)

#: The checks of fields known by their name, whatever the message.
_BY_NAME: Final[dict[str, Checker]] = {
    "client_id": _bytes(CLIENT_ID_SIZE),
    # Empty (no signed time wanted) or a fresh 32 bytes.
    "nonce": _rule(lambda v: type(v) is bytes and len(v) in (0, NONCE_SIZE), f"{NONCE_SIZE} bytes"),
    "lease": _bytes(LEASE_ID_SIZE),
    "server_key": _ANY_BYTES,
    "signature": _ANY_BYTES,
    "time_signature": _ANY_BYTES,
    "batch_path": _ANY_BYTES,
    "versions": _list(
        lambda v: 0 < len(v) <= MAX_VERSIONS_OFFERED, "a non-empty list of protocol versions",
        lambda i: type(i) is int and 0 < i < VERSION_LIMIT, "a list of positive integers",
    ),
    "leases": _list(
        lambda v: len(v) <= MAX_LEASES_PER_REQUEST,
        f"a list of at most {MAX_LEASES_PER_REQUEST} lease ids",
        lambda i: type(i) is bytes and len(i) == LEASE_ID_SIZE,
        f"a list of {LEASE_ID_SIZE}-byte lease ids",
    ),
    "lost": _check_lost,
    "message": _text(4096),
    "request": _DOCUMENT,
    "response": _DOCUMENT,
    "file": _DOCUMENT,
    "ticket": _bytes(16),
    "request_id": _bytes(16),
    "container_key": _bytes(32),
    "proof": _bytes(64),
    "seats": _list(
        lambda v: len(v) <= MAX_LEASES_PER_REQUEST,
        f"a list of at most {MAX_LEASES_PER_REQUEST} maps",
        _reclaim_seat,
        "a list of {lease: 16 bytes, product: str, version: str} maps",
    ),
    "days": _check_days,
}  # fmt: skip

#: The checks of fields known by their name in requests (a client's message) only.
_IN_REQUESTS: Final[dict[str, Checker]] = {
    "id": _rule(
        lambda v: type(v) is int and MIN_REQUEST_ID <= v <= MAX_REQUEST_ID,
        f"an integer in {MIN_REQUEST_ID}..{MAX_REQUEST_ID}",
    ),
    "version": _rule(
        lambda v: type(v) is str and is_version(v), '"" or a dotted number such as 16 or 2024.1'
    ),
}

#: The checks of the other fields, by their type.
_BY_TYPE: Final[dict[str, Checker]] = {
    "bool": _rule(lambda v: type(v) is bool, "true or false"),
    "int": _rule(
        lambda v: type(v) is int and 0 <= v <= MAX_REQUEST_ID, f"an integer in 0..{MAX_REQUEST_ID}"
    ),
    "float": _NUMBER,
    "str": _text(),
    "list[dict[str, Any]]": _list(
        lambda v: True, "a list of maps", lambda i: type(i) is dict, "a list of maps"
    ),
}


def _checker_for(cls: type[Message], f: dataclasses.Field[Any]) -> Callable[[Any], Any]:
    """The field's check: by its name in requests, else by its name, else by its type."""
    check = _IN_REQUESTS.get(f.name) if cls.REQUEST else None
    check = check or _BY_NAME.get(f.name) or _BY_TYPE.get(str(f.type))
    if check is None:  # pragma: no cover
        raise AssertionError(f"no checker for {cls.__name__}.{f.name}: {f.type}")
    return partial(check, cls.TYPE, f.name)


# Precomputed per type: (name, checker, required). Built once at import.
_SCHEMA: dict[str, tuple[type[Message], list[tuple[str, Any, bool]]]] = {}
for _t, _cls in _TYPES.items():
    _fields = []
    for _f in dataclasses.fields(_cls):
        _required = _f.default is dataclasses.MISSING and _f.default_factory is dataclasses.MISSING
        _fields.append((_f.name, _checker_for(_cls, _f), _required))
    _SCHEMA[_t] = (_cls, _fields)


_ABSENT: Final = object()


def parse(wire: dict[str, Any]) -> Message:
    """Validate a decoded wire map and build its message, or raise a ``ProtocolError``."""
    t = wire.get("t")
    if type(t) is not str:
        raise BadMessage("message has no string type field 't'")
    entry = _SCHEMA.get(t)
    if entry is None:
        raise UnknownMessage(f"unknown message type {t[:64]!r}")
    cls, fields = entry
    kwargs: dict[str, Any] = {}
    for name, check, required in fields:
        v = wire.get(name, _ABSENT)
        if v is not _ABSENT:
            kwargs[name] = check(v)
        elif required:
            raise BadMessage(f"{t}: missing field {name!r}")
    return cls(**kwargs)


def to_wire(msg: Message) -> dict[str, Any]:
    """The wire map of a message (ready for ``encode_frame``)."""
    names = _WIRE_FIELDS.get(type(msg))
    if names is None:
        names = _WIRE_FIELDS[type(msg)] = tuple(f.name for f in dataclasses.fields(msg))
    out: dict[str, Any] = {"t": msg.TYPE}
    for name in names:
        v = getattr(msg, name)
        if name == "lost":
            v = [{"lease": x.lease, "code": x.code} for x in v]
        elif name == "batch_path" and not v:
            continue  # versions 1 and 2 have none: their welcomes stay byte for byte as they were
        out[name] = v
    return out


# Field names per message class, in declaration order: ``dataclasses.fields`` is slow per call.
_WIRE_FIELDS: dict[type[Message], tuple[str, ...]] = {}


def request_id_of(wire: dict[str, Any]) -> int:
    """The id an error about this map carries: its ``id`` when that is a request id (an integer
    in 1..2**63-1), else 0, which no request can have."""
    rid = wire.get("id")
    if type(rid) is int and MIN_REQUEST_ID <= rid <= MAX_REQUEST_ID:
        return rid
    return 0
