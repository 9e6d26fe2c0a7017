"""Borrowing, pure: the signed documents (enrollment request and response, borrowed licence
file), the proofs a client's container gives, and the rules a borrow must pass.

Three documents travel between a laptop and the server, each a small JSON object whose
``payload`` is a string (canonical JSON) and whose ``signature`` is base64 Ed25519 over a domain
prefix and the payload's exact UTF-8 bytes, like a network key::

    {"format": "lanlic-enrollment-request", "version": 1, "payload": "...", "signature": "..."}

* enrollment request: made on the laptop, signed by the *container* key it contains (proof of
  possession); carried to the server online or as a file (offline enrollment).
* enrollment response: the server's acceptance, signed by the *server* key.
* borrowed licence file: product, versions, borrow id, server id and key, container key, machine
  fingerprint (``act`` kind) or none (``key`` kind), start and end in UTC seconds; signed by the
  server key that the client pinned. ``verify_borrowed_file`` is what makes offline use safe.

Nothing here reads a clock or a file: times and the local state are passed in.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import signing
from lanlic.errors import BorrowedFileError, BorrowRefused

__all__ = [
    "CLOCK_TOLERANCE",
    "BorrowTerms",
    "BorrowedLicense",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "FileCheck",
    "borrow_terms",
    "container_proof_payload",
    "issue_borrowed_file",
    "make_enrollment_request",
    "make_enrollment_response",
    "read_enrollment_request",
    "read_enrollment_response",
    "verify_borrowed_file",
]

Kind = Literal["act", "key"]
FMT_REQUEST: Final = "lanlic-enrollment-request"
FMT_RESPONSE: Final = "lanlic-enrollment-response"
FMT_BORROWED: Final = "lanlic-borrowed-license"
MAX_DOCUMENT: Final = 64 * 1024
#: How far back the local clock may go, relative to the last time lanlic saw it, before a
#: borrowed file is refused (time-zone mistakes and NTP steps are smaller than this).
CLOCK_TOLERANCE: Final = 10 * 60.0
DAY: Final = 86400.0


# ---------------------------------------------------------------------------- signed documents


def _seal(private: Ed25519PrivateKey, domain: bytes, fmt: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, sort_keys=True, ensure_ascii=True)
    sig = signing.sign(private, domain, payload.encode("utf-8"))
    doc = {
        "format": fmt,
        "version": 1,
        "payload": payload,
        "signature": base64.b64encode(sig).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _open(data: bytes, fmt: str, what: str) -> tuple[str, bytes]:
    """Split a document into (payload text, signature) without trusting either yet."""
    if not isinstance(data, bytes) or len(data) > MAX_DOCUMENT:
        raise BorrowedFileError(f"not a {what}: too large or not bytes", "file_tampered")
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != 1:
            raise ValueError("wrong format")
        payload, sig_text = doc["payload"], doc["signature"]
        if not isinstance(payload, str) or not isinstance(sig_text, str):
            raise ValueError("wrong field types")
        payload.encode("utf-8")  # a lone surrogate ("\ud800" in the JSON) has no UTF-8 bytes
        sig = base64.b64decode(sig_text, validate=True)
        if base64.b64encode(sig).decode("ascii") != sig_text:
            raise ValueError("non-canonical base64")
    except (ValueError, KeyError, UnicodeDecodeError, binascii.Error, RecursionError) as exc:
        raise BorrowedFileError(
            f"not a valid {what} (damaged or edited): {exc}", "file_tampered"
        ) from None
    return payload, sig


def _body(payload: str, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # "[[[[..." nests past the recursion limit
        body = None
    if not isinstance(body, dict):
        raise BorrowedFileError(f"the {what} payload is not an object", "file_tampered")
    return body


def _field(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if kind is float and type(value) is int:
        value = float(value) if abs(value) < 2**1000 else None  # float(10**400) overflows
    if type(value) is not kind or (type(value) is float and not math.isfinite(value)):  # NaN
        raise BorrowedFileError(f"the {what} has a bad {name!r} field", "file_tampered")
    return value


def _b64(value: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise BorrowedFileError(f"the {what} has a bad key field", "file_tampered")
    return raw


def _enc(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# ------------------------------------------------------------------------------- enrollment


@dataclass(frozen=True, slots=True)
class EnrollmentRequest:
    container_key: bytes
    """The container's raw Ed25519 public key."""
    kind: Kind
    machine_fp: str
    """The machine's fingerprint for ``act``; "" for a portable key."""
    user: str
    host: str
    created: float

    @property
    def container_fp(self) -> str:
        return signing.fingerprint(self.container_key)


@dataclass(frozen=True, slots=True)
class EnrollmentResponse:
    request: EnrollmentRequest
    server_id: str
    server_key: bytes
    customer: str
    enrolled_at: float
    raw: bytes
    """The whole signed response document."""


def make_enrollment_request(
    container: Ed25519PrivateKey, kind: Kind, machine_fp: str, user: str, host: str, now: float
) -> bytes:
    body = {
        "role": "request",
        "container_key": _enc(signing.public_bytes(container.public_key())),
        "kind": kind,
        "machine_fp": machine_fp,
        "user": user,
        "host": host,
        "created": now,
    }
    return _seal(container, signing.DOMAIN_ENROLLMENT, FMT_REQUEST, body)


def _request_from_body(body: dict[str, Any], what: str) -> EnrollmentRequest:
    kind = _field(body, "kind", str, what)
    if kind not in ("act", "key"):
        raise BorrowedFileError(f"the {what} names an unknown kind", "file_tampered")
    machine_fp = _field(body, "machine_fp", str, what)
    if (kind == "act") != bool(machine_fp):
        raise BorrowedFileError(
            f"the {what}: a machine fingerprint goes with kind act only", "file_tampered"
        )
    return EnrollmentRequest(
        container_key=_b64(_field(body, "container_key", str, what), 32, what),
        kind=kind,
        machine_fp=machine_fp,
        user=_field(body, "user", str, what)[:256],
        host=_field(body, "host", str, what)[:256],
        created=_field(body, "created", float, what),
    )


def read_enrollment_request(data: bytes) -> EnrollmentRequest:
    """Check an enrollment request: well formed and signed by the key it carries."""
    what = "enrollment request"
    payload, sig = _open(data, FMT_REQUEST, what)
    body = _body(payload, what)
    if body.get("role") != "request":
        raise BorrowedFileError(f"not an {what}", "file_tampered")
    req = _request_from_body(body, what)
    pub = signing.public_from_bytes(req.container_key)
    if not signing.verify(pub, signing.DOMAIN_ENROLLMENT, payload.encode("utf-8"), sig):
        raise BorrowedFileError(f"the {what} signature does not match", "file_tampered")
    return req


def make_enrollment_response(
    server: Ed25519PrivateKey,
    req: EnrollmentRequest,
    server_id: str,
    customer: str,
    now: float,
) -> bytes:
    body = {
        "role": "response",
        "container_key": _enc(req.container_key),
        "kind": req.kind,
        "machine_fp": req.machine_fp,
        "user": req.user,
        "host": req.host,
        "created": req.created,
        "server_id": server_id,
        "server_key": _enc(signing.public_bytes(server.public_key())),
        "customer": customer,
        "enrolled_at": now,
    }
    return _seal(server, signing.DOMAIN_ENROLLMENT, FMT_RESPONSE, body)


def read_enrollment_response(data: bytes, container_key: bytes) -> EnrollmentResponse:
    """Check a response: signed by the server key in it, and for this container."""
    what = "enrollment response"
    payload, sig = _open(data, FMT_RESPONSE, what)
    body = _body(payload, what)
    if body.get("role") != "response":
        raise BorrowedFileError(f"not an {what}", "file_tampered")
    req = _request_from_body(body, what)
    server_key = _b64(_field(body, "server_key", str, what), 32, what)
    pub = signing.public_from_bytes(server_key)
    if not signing.verify(pub, signing.DOMAIN_ENROLLMENT, payload.encode("utf-8"), sig):
        raise BorrowedFileError(f"the {what} signature does not match", "file_tampered")
    if req.container_key != container_key:
        raise BorrowedFileError(
            f"the {what} is for another machine or key, not this one", "file_wrong_machine"
        )
    return EnrollmentResponse(
        request=req,
        server_id=_field(body, "server_id", str, what),
        server_key=server_key,
        customer=_field(body, "customer", str, what),
        enrolled_at=_field(body, "enrolled_at", float, what),
        raw=data,
    )


def container_proof_payload(op: str, server_id: str, fields: list[Any]) -> bytes:
    """What a container signs (DOMAIN_CONTAINER_REQUEST) to borrow or return: the operation,
    the server it is meant for, and the request's fields, so a proof cannot be replayed for
    another operation or another server."""
    out: bytes = msgpack.packb([op, server_id, *fields], use_bin_type=True)
    return out


# ---------------------------------------------------------------------------------- borrowing


@dataclass(frozen=True, slots=True)
class BorrowTerms:
    """The effective borrowing terms of one product: the key's, lowered by the admin's policy."""

    borrowable: int
    max_days: int


def borrow_terms(
    key_borrowable: int, key_max_days: int, policy: tuple[int | None, int | None] | None
) -> BorrowTerms:
    """The admin may lower the key's terms, never raise them."""
    b, d = policy or (None, None)
    return BorrowTerms(
        borrowable=key_borrowable if b is None else max(0, min(b, key_borrowable)),
        max_days=key_max_days if d is None else max(0, min(d, key_max_days)),
    )


def check_borrow_request(
    *,
    product: str,
    terms: BorrowTerms,
    key_kind: Kind,
    container_kind: str,
    days: float,
    active_borrows: int,
) -> None:
    """Raise ``BorrowRefused`` with the reason, or return if the rules allow this borrow.
    (Whether a seat is free is the pool's to say.)"""
    if terms.borrowable <= 0 or terms.max_days <= 0:
        raise BorrowRefused(f"{product} cannot be borrowed under this licence", "not_borrowable")
    if container_kind != key_kind:
        want = "a machine-bound licence file" if key_kind == "act" else "a portable key"
        raise BorrowRefused(
            f"this network key borrows into {want} (kind {key_kind!r}); this container is of "
            f"kind {container_kind!r}",
            "wrong_borrow_kind",
        )
    if not 0 < days <= terms.max_days:
        raise BorrowRefused(
            f"{product} may be borrowed for at most {terms.max_days} days, not {days:g}",
            "borrow_too_long",
        )
    if active_borrows >= terms.borrowable:
        raise BorrowRefused(
            f"all {terms.borrowable} borrowable seats of {product} are borrowed",
            "no_borrowable_seat",
        )


@dataclass(frozen=True, slots=True)
class BorrowedLicense:
    borrow_id: str
    product: str
    versions: tuple[str, str] | None
    kind: Kind
    server_id: str
    server_key: bytes
    customer: str
    container_key: bytes
    machine_fp: str
    """The machine the file is bound to (``act``); "" for a portable key."""
    user: str
    host: str
    start: float
    """UTC seconds: valid from here..."""
    end: float
    """...to here, when the seat returns to the server's pool by itself."""
    raw: bytes
    """The whole signed file."""


def issue_borrowed_file(
    server: Ed25519PrivateKey,
    *,
    borrow_id: str,
    product: str,
    versions: tuple[str, str] | None,
    kind: Kind,
    server_id: str,
    customer: str,
    container_key: bytes,
    machine_fp: str,
    user: str,
    host: str,
    start: float,
    end: float,
) -> bytes:
    body = {
        "borrow_id": borrow_id,
        "product": product,
        "versions": list(versions) if versions else None,
        "kind": kind,
        "server_id": server_id,
        "server_key": _enc(signing.public_bytes(server.public_key())),
        "customer": customer,
        "container_key": _enc(container_key),
        "machine_fp": machine_fp,
        "user": user,
        "host": host,
        "start": start,
        "end": end,
    }
    return _seal(server, signing.DOMAIN_BORROWED_FILE, FMT_BORROWED, body)


def parse_borrowed_file(data: bytes) -> tuple[BorrowedLicense, str, bytes]:
    """Decode a borrowed file *without* trusting it: (licence, payload, signature)."""
    what = "borrowed licence file"
    payload, sig = _open(data, FMT_BORROWED, what)
    body = _body(payload, what)
    versions = body.get("versions")
    if versions is not None and (
        type(versions) is not list
        or len(versions) != 2
        or not all(type(v) is str for v in versions)
    ):
        raise BorrowedFileError(f"the {what} has bad versions", "file_tampered")
    kind = _field(body, "kind", str, what)
    if kind not in ("act", "key"):
        raise BorrowedFileError(f"the {what} has an unknown kind", "file_tampered")
    lic = BorrowedLicense(
        borrow_id=_field(body, "borrow_id", str, what),
        product=_field(body, "product", str, what),
        versions=(versions[0], versions[1]) if versions else None,
        kind=kind,
        server_id=_field(body, "server_id", str, what),
        server_key=_b64(_field(body, "server_key", str, what), 32, what),
        customer=_field(body, "customer", str, what),
        container_key=_b64(_field(body, "container_key", str, what), 32, what),
        machine_fp=_field(body, "machine_fp", str, what),
        user=_field(body, "user", str, what),
        host=_field(body, "host", str, what),
        start=_field(body, "start", float, what),
        end=_field(body, "end", float, what),
        raw=data,
    )
    return lic, payload, sig


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What the laptop knows when it checks a borrowed file offline."""

    trusted_server_keys: Collection[bytes]
    """Server keys this client pinned (or got in its enrollment response)."""
    container_key: bytes | None
    """The public key of the container at hand: the machine's, or the plugged-in portable key;
    None when there is none (no portable key plugged in)."""
    machine_fp: str
    """This machine's fingerprint now."""
    now: float
    """The local clock, UTC seconds."""
    last_seen: float | None
    """The latest time lanlic saw on this machine (from its protected local state)."""
    returned: Collection[str]
    """Borrow ids this machine has returned or deactivated."""


def verify_borrowed_file(data: bytes, check: FileCheck) -> BorrowedLicense:
    """Check a borrowed file for offline use, or raise ``BorrowedFileError`` with its reason:
    ``file_tampered``, ``file_untrusted_server``, ``file_wrong_machine``, ``file_no_key``,
    ``file_not_yet_valid``, ``file_expired``, ``clock_set_back``, ``file_returned``."""
    lic, payload, sig = parse_borrowed_file(data)
    pub = signing.public_from_bytes(lic.server_key)
    if not signing.verify(pub, signing.DOMAIN_BORROWED_FILE, payload.encode("utf-8"), sig):
        raise BorrowedFileError(
            "the borrowed licence file was edited: its signature does not match", "file_tampered"
        )
    if lic.server_key not in check.trusted_server_keys:
        raise BorrowedFileError(
            f"the borrowed licence file is signed by a server this machine does not trust "
            f"({signing.fingerprint(lic.server_key)})",
            "file_untrusted_server",
        )
    if lic.borrow_id in check.returned:
        raise BorrowedFileError(
            f"borrow {lic.borrow_id} was returned; this copy of the file is no longer valid",
            "file_returned",
        )
    if lic.kind == "key":
        if check.container_key is None:
            raise BorrowedFileError(
                "this licence was borrowed into a portable key: plug the key in", "file_no_key"
            )
        if check.container_key != lic.container_key:
            raise BorrowedFileError(
                "this licence was borrowed into another portable key than the one plugged in",
                "file_no_key",
            )
    elif check.container_key != lic.container_key or check.machine_fp != lic.machine_fp:
        raise BorrowedFileError(
            "this licence file is bound to another machine (was it copied?)", "file_wrong_machine"
        )
    if check.last_seen is not None and check.now < check.last_seen - CLOCK_TOLERANCE:
        # Also what a clock that once ran ahead leaves behind (last_seen in the future): say
        # both ways out, since the laptop cannot tell which of the two times was wrong.
        ok_from = check.last_seen - CLOCK_TOLERANCE
        try:
            until = f"{dt.datetime.fromtimestamp(ok_from, dt.UTC):%Y-%m-%d %H:%M} UTC"
        except (OverflowError, ValueError, OSError):
            until = f"{ok_from:.0f} (UTC seconds)"
        raise BorrowedFileError(
            "the clock of this machine was set back (or was once ahead): borrowed licences are "
            "refused until it is right again. To recover, set the clock right and connect to "
            f"the server once (e.g. lanlic info), or wait until {until}",
            "clock_set_back",
        )
    # A laptop's clock a little behind the server's must not refuse a file it was just given.
    if check.now < lic.start - CLOCK_TOLERANCE:
        raise BorrowedFileError(
            "the borrowed licence is not valid yet (check the clock)", "file_not_yet_valid"
        )
    if check.now >= lic.end:
        raise BorrowedFileError("the borrowed licence has expired", "file_expired")
    return lic
