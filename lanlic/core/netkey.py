"""Network keys: the vendor's signed statement of what a customer may serve on their LAN.

A network key file is UTF-8 JSON, pretty-printed (indent 2, trailing newline) so that a CAD
manager can open it and read the entitlements::

    {
      "format": "lanlic-network-key",
      "version": 1,
      "key_id": "sha256:<32 hex digits: fingerprint of the vendor key that signed it>",
      "payload": "<the entitlements: canonical JSON text, as one JSON string>",
      "signature": "<base64 of Ed25519 over DOMAIN_NETWORK_KEY + payload.encode('utf-8')>"
    }

protocol/SPEC.md section 15 is the format's definition. The payload is a JSON object (canonical
JSON, SPEC section 14: keys sorted, ASCII only) with ``customer``, ``issued``
and ``expires`` (``YYYY-MM-DD``), ``borrow_kind`` (``"act"`` or ``"key"``), ``serial`` (random
hex naming this key), ``key_id`` (the vendor fingerprint again, inside the signature) and
``products``: a list of ``{"name", "seats", "borrowable", "max_borrow_days", "versions"
([lo, hi] or null), "addon"}``.

The payload is carried as a string, not a nested object, so that the signature covers exact
bytes: ``verify_network_key`` checks the signature over ``payload.encode("utf-8")`` first and only
then decodes it, and nothing in the payload is believed before that. The outer fields carry no
authority: ``key_id`` only chooses the error message when the wrong vendor key is given, and the
payload's own ``key_id`` is what is checked after the signature. Unknown fields inside the payload
are refused, because an old server that ignored a new restriction would grant more than the
vendor sold.

This module reads no clock (today's date is passed in) and does no I/O; reading and writing the
vendor's key files lives in ``lanlic.vendorkeys``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lanlic.core import signing
from lanlic.errors import (
    KeyBadSignature,
    KeyExpired,
    KeyMalformed,
    KeyUnsigned,
    KeyWrongVendor,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_FILE_SIZE",
    "BorrowKind",
    "NetworkKey",
    "ProductEntitlement",
    "generate_vendor_key",
    "issue_network_key",
    "parse_product_spec",
    "parse_version_range",
    "verify_network_key",
]

FORMAT: Final = "lanlic-network-key"
FORMAT_VERSION: Final = 1
#: A network key file larger than this is refused before it is parsed.
MAX_FILE_SIZE: Final = 1 << 20
#: Default borrowing period, in days, for a product that allows borrowing.
DEFAULT_MAX_BORROW_DAYS: Final = 30

BorrowKind = Literal["act", "key"]
BORROW_KINDS: Final[tuple[str, ...]] = get_args(BorrowKind)

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION_RE: Final = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}")
_SERIAL_RE: Final = re.compile(r"[0-9a-f]{8,64}")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UINT_RE: Final = re.compile(r"[0-9]{1,9}")
_MAX_CUSTOMER: Final = 200
_AUTO: Final = -1

_PAYLOAD_FIELDS: Final = frozenset(
    {"customer", "issued", "expires", "borrow_kind", "serial", "products", "key_id"}
)
_PRODUCT_FIELDS: Final = frozenset(
    {"name", "seats", "borrowable", "max_borrow_days", "versions", "addon"}
)


# ------------------------------------------------------------------------------------- versions


def _version_tuple(version: str) -> tuple[int, ...] | None:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        return None
    return tuple(int(part) for part in version.split("."))


def _check_version_range(versions: tuple[str, str]) -> None:
    lo, hi = versions
    lo_t, hi_t = _version_tuple(lo), _version_tuple(hi)
    for text, parsed in ((lo, lo_t), (hi, hi_t)):
        if parsed is None:
            raise ValueError(f"version {text!r} is not a dotted number such as 10 or 16.2")
    assert lo_t is not None and hi_t is not None
    if lo_t > hi_t:
        raise ValueError(f"version range {lo}-{hi} is empty: {lo} is above {hi}")


def parse_version_range(text: str) -> tuple[str, str]:
    """``"10-16"`` -> ``("10", "16")``; ``ValueError`` unless it is ``LO-HI`` with LO <= HI."""
    lo, sep, hi = text.partition("-")
    if not sep:
        raise ValueError(f"version range {text!r} must be LO-HI, such as 10-16")
    _check_version_range((lo, hi))
    return (lo, hi)


# ------------------------------------------------------------------------------------- products


@dataclass(frozen=True, slots=True)
class ProductEntitlement:
    """One product of a network key: how many floating seats, and on what terms."""

    name: str
    """The product's name as applications ask for it: ``[a-z0-9][a-z0-9._-]{0,63}``."""
    seats: int
    """Floating seats the server may grant at once (at least 1)."""
    borrowable: int = 0
    """How many of ``seats`` may be borrowed (taken off the network) at once; 0 to ``seats``."""
    max_borrow_days: int = _AUTO
    """Longest borrowing period in days. Left out, it is 30 when ``borrowable`` > 0, else 0."""
    versions: tuple[str, str] | None = None
    """Licensed application versions, inclusive, as dotted numbers (``("10", "16")``);
    ``None`` means every version."""
    addon: bool = False
    """An add-on: a feature licence rather than an application. Informational (shown in status):
    it is granted like any other product, and nothing checks that its holder has another seat."""

    def __post_init__(self) -> None:
        if self.max_borrow_days == _AUTO and type(self.borrowable) is int:
            days = DEFAULT_MAX_BORROW_DAYS if self.borrowable > 0 else 0
            object.__setattr__(self, "max_borrow_days", days)
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"product name {self.name!r} must be 1 to 64 of a-z 0-9 . _ - "
                "starting with a letter or digit"
            )
        where = f"product {self.name!r}"
        for field_name in ("seats", "borrowable", "max_borrow_days"):
            if type(getattr(self, field_name)) is not int:
                raise ValueError(f"{where}: {field_name} must be a whole number")
        if self.seats < 1:
            raise ValueError(f"{where}: seats must be at least 1, not {self.seats}")
        if not 0 <= self.borrowable <= self.seats:
            raise ValueError(
                f"{where}: borrowable must be between 0 and the {self.seats} seats, "
                f"not {self.borrowable}"
            )
        if self.max_borrow_days < 0:
            raise ValueError(f"{where}: max-days must be 0 or more, not {self.max_borrow_days}")
        if self.borrowable > 0 and self.max_borrow_days == 0:
            raise ValueError(
                f"{where}: {self.borrowable} seats are borrowable but max-days is 0; "
                "give max-days of at least 1 or borrowable=0"
            )
        if self.versions is not None:
            if (
                not isinstance(self.versions, tuple)
                or len(self.versions) != 2
                or not all(isinstance(v, str) for v in self.versions)
            ):
                raise ValueError(f"{where}: versions must be a (low, high) pair of strings")
            try:
                _check_version_range(self.versions)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if type(self.addon) is not bool:
            raise ValueError(f"{where}: addon must be true or false")

    def allows_version(self, version: str) -> bool:
        """Whether an application of ``version`` may take a seat of this product.

        ``""`` (the client did not say) is allowed, and so is anything when ``versions`` is None.
        Otherwise the version must be a dotted number, and is compared truncated to each bound's
        length: the range 10-16 admits 16.2 and 10.0.1 and refuses 17 and 9.9.
        """
        if version == "" or self.versions is None:
            return True
        parsed = _version_tuple(version)
        if parsed is None:
            return False
        lo, hi = (_version_tuple(bound) for bound in self.versions)
        assert lo is not None and hi is not None
        return lo <= parsed[: len(lo)] and parsed[: len(hi)] <= hi


_SPEC_SYNTAX: Final = "NAME:SEATS[:borrowable=N][:max-days=N][:versions=LO-HI][:addon]"


def parse_product_spec(text: str) -> ProductEntitlement:
    """Parse the command line's ``NAME:SEATS[:borrowable=N][:max-days=N][:versions=LO-HI][:addon]``.

    Raises ``ValueError`` with a one-line message naming the spec and what is wrong with it.
    """
    try:
        return _parse_product_spec(text)
    except ValueError as exc:
        raise ValueError(f"product spec {text!r}: {exc}") from None


def _parse_uint(option: str, value: str) -> int:
    if not _UINT_RE.fullmatch(value):
        raise ValueError(f"{option} must be a whole number, not {value!r}")
    return int(value)


def _parse_product_spec(text: str) -> ProductEntitlement:
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"expected {_SPEC_SYNTAX}")
    name, seats_text, *options = parts
    seats = _parse_uint("seats", seats_text)
    kwargs: dict[str, Any] = {}
    seen: set[str] = set()
    for option in options:
        key, has_value, value = option.partition("=")
        if key in seen:
            raise ValueError(f"option {key!r} is given twice")
        seen.add(key)
        if key == "addon":
            if has_value:
                raise ValueError("addon takes no value")
            kwargs["addon"] = True
            continue
        if key not in ("borrowable", "max-days", "versions"):
            raise ValueError(
                f"unknown option {option!r}; options are borrowable=N, max-days=N, "
                "versions=LO-HI and addon"
            )
        if not has_value or not value:
            raise ValueError(f"option {key} needs a value ({key}=...)")
        if key == "borrowable":
            kwargs["borrowable"] = _parse_uint(key, value)
        elif key == "max-days":
            kwargs["max_borrow_days"] = _parse_uint(key, value)
        else:
            kwargs["versions"] = parse_version_range(value)
    return ProductEntitlement(name, seats, **kwargs)


# ------------------------------------------------------------------------------------ the key


def _check_header(
    customer: str,
    issued: datetime.date,
    expires: datetime.date,
    borrow_kind: str,
    products: tuple[ProductEntitlement, ...],
    serial: str,
) -> None:
    if not isinstance(customer, str) or not customer.strip():
        raise ValueError("customer must be a non-empty name")
    if len(customer) > _MAX_CUSTOMER or not customer.isprintable():
        raise ValueError(
            f"customer must be at most {_MAX_CUSTOMER} printable characters on one line"
        )
    for label, day in (("issued", issued), ("expires", expires)):
        if type(day) is not datetime.date:
            raise ValueError(f"{label} must be a date")
    if expires < issued:
        raise ValueError(f"expires ({expires}) is before issued ({issued})")
    if borrow_kind not in BORROW_KINDS:
        raise ValueError(
            f"borrow_kind must be one of {', '.join(BORROW_KINDS)}, not {borrow_kind!r}"
        )
    if not isinstance(serial, str) or not _SERIAL_RE.fullmatch(serial):
        raise ValueError("serial must be 8 to 64 lowercase hex digits")
    if not isinstance(products, tuple) or not products:
        raise ValueError("a network key needs at least one product")
    names: set[str] = set()
    for product in products:
        if not isinstance(product, ProductEntitlement):
            raise ValueError("products must be ProductEntitlement values")
        if product.name in names:
            raise ValueError(f"product {product.name!r} is listed twice")
        names.add(product.name)


@dataclass(frozen=True, slots=True)
class NetworkKey:
    """A verified network key: only ``verify_network_key`` should make one from a file."""

    customer: str
    """The licensee, as the vendor wrote it; shown to the CAD manager and to clients."""
    issued: datetime.date
    """The day the vendor issued the key."""
    expires: datetime.date
    """The last day the key is valid; it is expired from the day after."""
    borrow_kind: BorrowKind
    """Which borrowing scheme the vendor chose for this customer: ``"act"`` or ``"key"``."""
    products: tuple[ProductEntitlement, ...]
    """What may be served, at least one product, names unique."""
    vendor_fp: str
    """Fingerprint of the vendor key that signed this key (``signing.fingerprint``)."""
    serial: str
    """Random lowercase hex naming this key, so two keys for one customer can be told apart."""
    raw: bytes = dataclasses.field(repr=False)
    """The exact payload bytes the vendor signed (without the domain prefix)."""

    def __post_init__(self) -> None:
        _check_header(
            self.customer,
            self.issued,
            self.expires,
            self.borrow_kind,
            self.products,
            self.serial,
        )

    def product(self, name: str) -> ProductEntitlement | None:
        """The entitlement for ``name``, or None if the key does not license it."""
        for product in self.products:
            if product.name == name:
                return product
        return None

    def is_expired(self, today: datetime.date) -> bool:
        """Expired when ``today`` is after ``expires``; the day of expiry is still valid."""
        return today > self.expires


def generate_vendor_key() -> Ed25519PrivateKey:
    """A new vendor signing key. Keep it off the customer's network."""
    return Ed25519PrivateKey.generate()


def _product_to_json(product: ProductEntitlement) -> dict[str, Any]:
    return {
        "name": product.name,
        "seats": product.seats,
        "borrowable": product.borrowable,
        "max_borrow_days": product.max_borrow_days,
        "versions": list(product.versions) if product.versions is not None else None,
        "addon": product.addon,
    }


def issue_network_key(
    vendor_private: Ed25519PrivateKey,
    *,
    customer: str,
    expires: datetime.date,
    borrow_kind: BorrowKind,
    products: tuple[ProductEntitlement, ...] | list[ProductEntitlement],
    issued: datetime.date,
    serial: str | None = None,
) -> bytes:
    """Sign the entitlements and return the network key file's content.

    ``serial`` defaults to 16 random bytes in hex. Raises ``ValueError`` for entitlements a
    server would refuse (an empty customer, ``expires`` before ``issued``, no products...).
    """
    products = tuple(products)
    if serial is None:
        serial = secrets.token_hex(16)
    _check_header(customer, issued, expires, borrow_kind, products, serial)
    key_id = signing.fingerprint(vendor_private.public_key())
    body = {
        "customer": customer,
        "issued": issued.isoformat(),
        "expires": expires.isoformat(),
        "borrow_kind": borrow_kind,
        "serial": serial,
        "products": [_product_to_json(p) for p in products],
        "key_id": key_id,
    }
    payload = json.dumps(body, sort_keys=True, ensure_ascii=True)
    signature = signing.sign(vendor_private, signing.DOMAIN_NETWORK_KEY, payload.encode("utf-8"))
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key_id": key_id,
        "payload": payload,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(document, indent=2, ensure_ascii=True) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------- verifying


def _malformed(what: str) -> NoReturn:
    raise KeyMalformed(f"not a valid lanlic network key file: {what}")


def _bad_contents(what: str) -> NoReturn:
    raise KeyMalformed(
        f"the network key is signed by the vendor but its contents are invalid: {what}; "
        "ask the vendor for a new key"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        names = [name for name, _ in pairs]
        raise ValueError(f"field {next(n for n in names if names.count(n) > 1)!r} appears twice")
    return out


def _load_json(text: str) -> Any:
    """``json.loads`` that refuses repeated fields and raises only ``ValueError``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # a repeated field, or an integer too long to convert
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _decode_signature(value: object) -> bytes:
    if value is None or value == "":
        raise KeyUnsigned(
            "the network key is not signed: the file has no signature, so it cannot be trusted"
        )
    if not isinstance(value, str):
        _malformed("the signature field is not text")
    damaged = KeyBadSignature(
        "network key signature is damaged: the file was edited after the vendor signed it"
    )
    try:
        signature = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise damaged from None
    # Only the canonical encoding is accepted, so no edit to the signature text goes unnoticed.
    if len(signature) != signing.SIGNATURE_SIZE or base64.b64encode(signature) != value.encode():
        raise damaged
    return signature


def _date_field(body: dict[str, Any], name: str) -> datetime.date:
    value = body[name]
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        _bad_contents(f"{name} must be a date written YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        _bad_contents(f"{name} {value!r} is not a real date")


def _product_from_json(item: object, index: int) -> ProductEntitlement:
    if not isinstance(item, dict):
        _bad_contents(f"product {index + 1} is not a map")
    missing = sorted(_PRODUCT_FIELDS - item.keys())
    unknown = sorted(item.keys() - _PRODUCT_FIELDS)
    if missing:
        _bad_contents(f"product {index + 1} lacks {', '.join(missing)}")
    if unknown:
        _bad_contents(f"product {index + 1} has fields this server does not know: {unknown}")
    days = item["max_borrow_days"]
    if type(days) is int and days < 0:  # -1 would otherwise mean "the default"
        _bad_contents(f"product {index + 1}: max_borrow_days must be 0 or more, not {days}")
    versions = item["versions"]
    if versions is not None:
        if not isinstance(versions, list) or len(versions) != 2:
            _bad_contents(f"product {index + 1}: versions must be [low, high] or null")
        versions = (versions[0], versions[1])
    try:
        return ProductEntitlement(
            name=item["name"],
            seats=item["seats"],
            borrowable=item["borrowable"],
            max_borrow_days=item["max_borrow_days"],
            versions=versions,
            addon=item["addon"],
        )
    except ValueError as exc:
        _bad_contents(str(exc))


def _decode_payload(payload: str, raw: bytes, vendor_fp: str) -> NetworkKey:
    try:
        body = _load_json(payload)
    except ValueError as exc:
        _bad_contents(f"the payload is not JSON ({exc})")
    if not isinstance(body, dict):
        _bad_contents("the payload is not a map")
    missing = sorted(_PAYLOAD_FIELDS - body.keys())
    unknown = sorted(body.keys() - _PAYLOAD_FIELDS)
    if missing:
        _bad_contents(f"it lacks {', '.join(missing)}")
    if unknown:
        _bad_contents(f"it has fields this server does not know: {unknown}")
    if body["key_id"] != vendor_fp:
        raise KeyWrongVendor(
            f"the network key says it belongs to vendor key {body['key_id']!r}, not to "
            f"{vendor_fp}, the vendor key this server trusts"
        )
    products = body["products"]
    if not isinstance(products, list):
        _bad_contents("products is not a list")
    fields = {
        "customer": body["customer"],
        "issued": _date_field(body, "issued"),
        "expires": _date_field(body, "expires"),
        "borrow_kind": body["borrow_kind"],
        "products": tuple(_product_from_json(item, i) for i, item in enumerate(products)),
        "vendor_fp": vendor_fp,
        "serial": body["serial"],
        "raw": raw,
    }
    try:
        return NetworkKey(**fields)
    except ValueError as exc:
        _bad_contents(str(exc))


def verify_network_key(
    data: bytes, vendor_public: Ed25519PublicKey, today: datetime.date
) -> NetworkKey:
    """Check a network key file against the vendor's public key and today's date.

    The signature is checked over the exact payload bytes before anything in the payload is read.
    Raises ``KeyMalformed``, ``KeyUnsigned``, ``KeyWrongVendor``, ``KeyBadSignature`` or
    ``KeyExpired`` (all ``NetworkKeyError``), each with a message for the person who installed
    the file; nothing else escapes.
    """
    if not isinstance(data, bytes):
        _malformed("expected the file's bytes")
    if len(data) > MAX_FILE_SIZE:
        _malformed(f"the file is {len(data)} bytes, far larger than any network key")
    try:
        document = _load_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        _malformed("it is not UTF-8 text")
    except ValueError as exc:
        _malformed(f"it is not JSON ({exc}); was it cut short or edited?")
    if not isinstance(document, dict):
        _malformed("it is not a JSON object")
    if document.get("format") != FORMAT:
        _malformed(f"the format field must be {FORMAT!r}")
    version = document.get("version")
    if version != FORMAT_VERSION or type(version) is not int:
        _malformed(
            f"file version {version!r} is not one this server reads ({FORMAT_VERSION}); "
            "a newer lanlic may read it"
        )
    for name in ("key_id", "payload"):
        if not isinstance(document.get(name), str):
            _malformed(f"the {name} field is missing or not text")
    key_id: str = document["key_id"]
    payload: str = document["payload"]
    signature = _decode_signature(document.get("signature"))

    trusted_fp = signing.fingerprint(vendor_public)
    if key_id != trusted_fp:
        raise KeyWrongVendor(
            f"the network key was signed by vendor key {key_id}, but this server trusts "
            f"vendor key {trusted_fp}; it is a key for another vendor's software"
        )
    try:
        raw = payload.encode("utf-8")
    except UnicodeEncodeError:
        _malformed("the payload is not valid text")
    if not signing.verify(vendor_public, signing.DOMAIN_NETWORK_KEY, raw, signature):
        raise KeyBadSignature(
            "network key signature does not match: the file was edited after the vendor signed it"
        )

    key = _decode_payload(payload, raw, trusted_fp)
    if key.is_expired(today):
        raise KeyExpired(
            f"the network key for {key.customer} expired on {key.expires.isoformat()} "
            f"(today is {today.isoformat()}); ask the vendor for a renewed key"
        )
    return key
