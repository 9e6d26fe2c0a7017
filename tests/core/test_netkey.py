"""Network keys: issue, verify, and every way a file can be wrong, each with its own error."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from lanlic import vendorkeys
from lanlic.core import netkey, signing
from lanlic.core.netkey import (
    NetworkKey,
    ProductEntitlement,
    issue_network_key,
    parse_product_spec,
    parse_version_range,
    verify_network_key,
)
from lanlic.errors import (
    KeyBadSignature,
    KeyExpired,
    KeyMalformed,
    KeyUnsigned,
    KeyWrongVendor,
    NetworkKeyError,
)

VENDOR = Ed25519PrivateKey.from_private_bytes(b"\x11" * 32)
VENDOR_PUB = VENDOR.public_key()
VENDOR_FP = signing.fingerprint(VENDOR_PUB)
OTHER_VENDOR = Ed25519PrivateKey.from_private_bytes(b"\x22" * 32)
ISSUED = datetime.date(2026, 1, 1)
EXPIRES = datetime.date(2026, 12, 31)
TODAY = datetime.date(2026, 6, 1)
SERIAL = "0123456789abcdef0123456789abcdef"
PRODUCTS = (
    ProductEntitlement("cad", 10, borrowable=2, versions=("10", "16")),
    ProductEntitlement("render", 2, addon=True),
)


def issue(
    private: Ed25519PrivateKey = VENDOR, customer: str = "Müller Engineering GmbH", **kw: Any
) -> bytes:
    args: dict[str, Any] = {
        "customer": customer,
        "expires": EXPIRES,
        "borrow_kind": "act",
        "products": PRODUCTS,
        "issued": ISSUED,
        "serial": SERIAL,
    }
    args.update(kw)
    return issue_network_key(private, **args)


KEY_FILE = issue()


def refused(
    cls: type[NetworkKeyError], data: bytes, today: datetime.date = TODAY
) -> NetworkKeyError:
    """Verify ``data`` and check it is refused with exactly ``cls``."""
    with pytest.raises(NetworkKeyError) as info:
        verify_network_key(data, VENDOR_PUB, today)
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    assert "\n" not in info.value.message
    return info.value


def document(data: bytes = KEY_FILE) -> dict[str, Any]:
    doc = json.loads(data)
    assert isinstance(doc, dict)
    return doc


def encode(doc: object) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def payload_body(data: bytes = KEY_FILE) -> dict[str, Any]:
    body = json.loads(document(data)["payload"])
    assert isinstance(body, dict)
    return body


def forge(payload: str | dict[str, Any], private: Ed25519PrivateKey = VENDOR) -> bytes:
    """A file whose payload is correctly signed by ``private``, whatever it says."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
    signature = signing.sign(private, signing.DOMAIN_NETWORK_KEY, text.encode())
    return encode(
        {
            "format": "lanlic-network-key",
            "version": 1,
            "key_id": signing.fingerprint(private.public_key()),
            "payload": text,
            "signature": base64.b64encode(signature).decode(),
        }
    )


# ------------------------------------------------------------------------------- round trip


def test_issue_and_verify_round_trip() -> None:
    key = verify_network_key(KEY_FILE, VENDOR_PUB, TODAY)
    assert key == NetworkKey(
        customer="Müller Engineering GmbH",
        issued=ISSUED,
        expires=EXPIRES,
        borrow_kind="act",
        products=PRODUCTS,
        vendor_fp=VENDOR_FP,
        serial=SERIAL,
        raw=document()["payload"].encode(),
    )
    assert key.product("cad") == PRODUCTS[0]
    assert key.product("render") == PRODUCTS[1]
    assert key.product("nope") is None


def test_file_format() -> None:
    text = KEY_FILE.decode("utf-8")
    assert text.endswith("}\n")
    assert text.startswith('{\n  "format": "lanlic-network-key",\n')
    doc = document()
    assert list(doc) == ["format", "version", "key_id", "payload", "signature"]
    assert doc["version"] == 1
    assert doc["key_id"] == VENDOR_FP
    body = json.loads(doc["payload"])
    assert doc["payload"] == json.dumps(body, sort_keys=True)  # canonical
    assert body == {
        "customer": "Müller Engineering GmbH",
        "issued": "2026-01-01",
        "expires": "2026-12-31",
        "borrow_kind": "act",
        "serial": SERIAL,
        "key_id": VENDOR_FP,
        "products": [
            {
                "name": "cad",
                "seats": 10,
                "borrowable": 2,
                "max_borrow_days": 30,
                "versions": ["10", "16"],
                "addon": False,
            },
            {
                "name": "render",
                "seats": 2,
                "borrowable": 0,
                "max_borrow_days": 0,
                "versions": None,
                "addon": True,
            },
        ],
    }
    signature = base64.b64decode(doc["signature"])
    assert signing.verify(
        VENDOR_PUB, signing.DOMAIN_NETWORK_KEY, doc["payload"].encode(), signature
    )


def test_serial_defaults_to_random_hex() -> None:
    a = payload_body(issue(serial=None))["serial"]
    b = payload_body(issue(serial=None))["serial"]
    assert a != b
    assert len(a) == 32 and int(a, 16) >= 0


def test_key_kind_and_lists_are_accepted() -> None:
    key = verify_network_key(issue(borrow_kind="key", products=list(PRODUCTS)), VENDOR_PUB, TODAY)
    assert key.borrow_kind == "key"
    assert key.products == PRODUCTS


def test_equivalent_json_spelling_of_the_wrapper_is_accepted() -> None:
    # The wrapper carries no authority; only the payload's exact text is signed.
    compact = json.dumps(document(), separators=(",", ":")).encode()
    assert verify_network_key(compact, VENDOR_PUB, TODAY).serial == SERIAL
    assert verify_network_key(KEY_FILE.replace(b"\n", b"\r\n"), VENDOR_PUB, TODAY)
    assert verify_network_key(KEY_FILE[:-1], VENDOR_PUB, TODAY)
    doc = document()
    doc["comment"] = "installed by IT"
    assert verify_network_key(encode(doc), VENDOR_PUB, TODAY).serial == SERIAL


# ----------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80])
def test_flipping_any_byte_is_refused(mask: int) -> None:
    # Customer is ASCII here: JSON spells non-ASCII as \u00fc, and \u00FC is the same text.
    data = issue(customer="Mueller Engineering")
    accepted = []
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= mask
        try:
            verify_network_key(bytes(flipped), VENDOR_PUB, TODAY)
        except NetworkKeyError:
            continue
        accepted.append((i, chr(data[i]), chr(flipped[i])))
    assert accepted == []


def test_flipping_the_low_bit_of_any_byte_is_refused_with_unicode_escapes() -> None:
    assert b"\\\\u00fc" in KEY_FILE
    for i in range(len(KEY_FILE)):
        flipped = bytearray(KEY_FILE)
        flipped[i] ^= 0x01
        with pytest.raises(NetworkKeyError):
            verify_network_key(bytes(flipped), VENDOR_PUB, TODAY)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_refused_or_changes_nothing(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(KEY_FILE) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != KEY_FILE[i]))
    changed = bytearray(KEY_FILE)
    changed[i] = new
    try:
        key = verify_network_key(bytes(changed), VENDOR_PUB, TODAY)
    except NetworkKeyError:
        return
    # Accepted only as another spelling of the same JSON (whitespace, \u00fc vs \u00FC).
    assert key == verify_network_key(KEY_FILE, VENDOR_PUB, TODAY)


def test_changing_seats_breaks_the_signature() -> None:
    marker = b'\\"seats\\": 10'
    assert KEY_FILE.count(marker) == 1
    for digit in b"023456789":
        edited = KEY_FILE.replace(marker, marker[:-2] + bytes([digit]) + b"0")
        err = refused(KeyBadSignature, edited)
        assert "edited after the vendor signed it" in err.message


def test_editing_the_payload_in_other_ways_breaks_the_signature() -> None:
    for old, new in [
        (b'\\"expires\\": \\"2026-12-31', b'\\"expires\\": \\"2099-12-31'),
        (b'\\"name\\": \\"cad', b'\\"name\\": \\"cax'),
        (b'\\"addon\\": true', b'\\"addon\\": false'),
        (b'\\"borrow_kind\\": \\"act', b'\\"borrow_kind\\": \\"key'),
        (b"GmbH", b"GmbH "),
    ]:
        assert KEY_FILE.count(old) == 1
        refused(KeyBadSignature, KEY_FILE.replace(old, new))


def test_changing_a_signature_byte_is_refused_as_bad_signature() -> None:
    signature = document()["signature"]
    start = KEY_FILE.index(signature.encode())
    for i in range(len(signature)):
        edited = bytearray(KEY_FILE)
        # Another valid base64 letter, so the text still decodes.
        edited[start + i] = ord("B") if signature[i] != "B" else ord("C")
        if signature[i] == "=":
            edited[start + i] = ord("A")
        refused(KeyBadSignature, bytes(edited))


def test_non_canonical_base64_signature_is_refused() -> None:
    doc = document()
    signature: str = doc["signature"]
    assert signature.endswith("==")
    # The last letter before "==" carries 4 unused bits: setting one gives the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(signature[-3])
    twin = alphabet[last ^ 0x01]
    assert base64.b64decode(signature[:-3] + twin + "==") == base64.b64decode(signature)
    for spelling in [
        signature[:-3] + twin + "==",
        signature[:-2],
        signature + "\n",
        " " + signature,
    ]:
        doc["signature"] = spelling
        refused(KeyBadSignature, encode(doc))


def test_truncated_file_is_malformed() -> None:
    end = len(KEY_FILE.rstrip())
    for n in range(end):
        refused(KeyMalformed, KEY_FILE[:n])


# ----------------------------------------------------------------------------- vendors


def test_key_of_another_vendor_is_refused() -> None:
    err = refused(KeyWrongVendor, issue(OTHER_VENDOR))
    assert VENDOR_FP in err.message
    assert signing.fingerprint(OTHER_VENDOR.public_key()) in err.message


def test_key_id_relabelled_to_the_trusted_vendor_is_a_bad_signature() -> None:
    doc = document(issue(OTHER_VENDOR))
    doc["key_id"] = VENDOR_FP
    refused(KeyBadSignature, encode(doc))


def test_payload_naming_another_vendor_is_refused() -> None:
    body = payload_body()
    body["key_id"] = signing.fingerprint(OTHER_VENDOR.public_key())
    refused(KeyWrongVendor, forge(body))


# ----------------------------------------------------------------------------- expiry


def test_expiry_day_is_valid_and_the_day_after_is_not() -> None:
    assert verify_network_key(KEY_FILE, VENDOR_PUB, EXPIRES).expires == EXPIRES
    assert verify_network_key(KEY_FILE, VENDOR_PUB, ISSUED - datetime.timedelta(days=3))
    err = refused(KeyExpired, KEY_FILE, today=EXPIRES + datetime.timedelta(days=1))
    assert "2026-12-31" in err.message and "2027-01-01" in err.message


def test_is_expired() -> None:
    key = verify_network_key(KEY_FILE, VENDOR_PUB, TODAY)
    assert not key.is_expired(EXPIRES)
    assert key.is_expired(EXPIRES + datetime.timedelta(days=1))


def test_a_bad_signature_is_reported_before_expiry() -> None:
    edited = KEY_FILE.replace(b"2026-12-31", b"2026-12-30")
    refused(KeyBadSignature, edited, today=datetime.date(2030, 1, 1))


# ----------------------------------------------------------------------------- unsigned


@pytest.mark.parametrize("value", [None, "", "absent"])
def test_unsigned_key_is_refused(value: object) -> None:
    doc = document()
    if value == "absent":
        del doc["signature"]
    else:
        doc["signature"] = value
    err = refused(KeyUnsigned, encode(doc))
    assert "not signed" in err.message


@pytest.mark.parametrize("value", [0, 12, [], {}, True])
def test_signature_that_is_not_text_is_malformed(value: object) -> None:
    doc = document()
    doc["signature"] = value
    refused(KeyMalformed, encode(doc))


# ------------------------------------------------------------------------ domain separation


@pytest.mark.parametrize(
    "domain",
    [signing.DOMAIN_HANDSHAKE, signing.DOMAIN_BORROWED_FILE, signing.DOMAIN_ENROLLMENT, b""],
)
def test_signature_from_another_domain_is_refused(domain: bytes) -> None:
    doc = document()
    signed = domain + doc["payload"].encode()
    doc["signature"] = base64.b64encode(VENDOR.sign(signed)).decode()
    refused(KeyBadSignature, encode(doc))


def test_handshake_signature_through_the_api_is_refused() -> None:
    doc = document()
    signature = signing.sign(VENDOR, signing.DOMAIN_HANDSHAKE, doc["payload"].encode())
    doc["signature"] = base64.b64encode(signature).decode()
    refused(KeyBadSignature, encode(doc))


# -------------------------------------------------------------------------- malformed files


def _with(**fields: Any) -> bytes:
    doc = document()
    for name, value in fields.items():
        if value is _DROP:
            del doc[name]
        else:
            doc[name] = value
    return encode(doc)


_DROP = object()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not JSON"),
        (b"hello", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"{}", "format"),
        (b"[" * 100_000, "not JSON"),
        (b" " * (netkey.MAX_FILE_SIZE + 1), "larger"),
        (b'{"format": "lanlic-network-key", "format": "lanlic-network-key"}', "twice"),
        (_with(format="lanlic-network-kez"), "format"),
        (_with(format=_DROP), "format"),
        (_with(version=2), "version 2"),
        (_with(version=True), "version True"),
        (_with(version=1.0), "version 1.0"),
        (_with(version="1"), "version '1'"),
        (_with(version=_DROP), "version None"),
        (_with(payload=_DROP), "payload"),
        (_with(payload={"customer": "x"}), "payload"),
        (_with(key_id=_DROP), "key_id"),
        (_with(key_id=None), "key_id"),
        (_with(payload="\ud800"), "payload"),
    ],
)
def test_malformed_file(data: bytes, words: str) -> None:
    assert words in refused(KeyMalformed, data).message


def test_str_instead_of_bytes_is_malformed() -> None:
    refused(KeyMalformed, KEY_FILE.decode())  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_network_key_errors(data: bytes) -> None:
    with pytest.raises(NetworkKeyError):
        verify_network_key(data, VENDOR_PUB, TODAY)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "format": st.just("lanlic-network-key") | _json,
            "version": st.just(1) | _json,
            "key_id": st.just(VENDOR_FP) | _json,
            "payload": st.just(document()["payload"]) | _json,
            "signature": st.just(document()["signature"]) | _json,
        },
    )
)
def test_arbitrary_documents_raise_only_network_key_errors(doc: dict[str, Any]) -> None:
    try:
        verify_network_key(encode(doc), VENDOR_PUB, TODAY)
    except NetworkKeyError:
        return
    assert doc == document()


# ------------------------------------------------------- signed, but the contents are invalid


def _body(**changes: Any) -> dict[str, Any]:
    body = payload_body()
    for name, value in changes.items():
        if value is _DROP:
            del body[name]
        else:
            body[name] = value
    return body


def _product(**changes: Any) -> dict[str, Any]:
    product: dict[str, Any] = payload_body()["products"][0]
    for name, value in changes.items():
        if value is _DROP:
            del product[name]
        else:
            product[name] = value
    return _body(products=[product])


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("not json", "payload is not JSON"),
        ("[]", "not a map"),
        ('{"a": 1, "a": 2}', "twice"),
        (_body(customer=_DROP), "lacks customer"),
        (_body(products=_DROP, serial=_DROP), "lacks products, serial"),
        (_body(hostid="abc"), "fields this server does not know: ['hostid']"),
        (_body(customer=""), "customer"),
        (_body(customer=" "), "customer"),
        (_body(customer=7), "customer"),
        (_body(customer="two\nlines"), "customer"),
        (_body(customer="x" * 201), "customer"),
        (_body(issued="2026-02-30"), "not a real date"),
        (_body(issued="20260101"), "issued must be a date"),
        (_body(expires=20261231), "expires must be a date"),
        (_body(expires="2025-12-31"), "before issued"),
        (_body(borrow_kind="lend"), "borrow_kind"),
        (_body(borrow_kind=None), "borrow_kind"),
        (_body(serial="XYZ"), "serial"),
        (_body(serial="ABCDEF0123"), "serial"),
        (_body(serial=12345678), "serial"),
        (_body(products=[]), "at least one product"),
        (_body(products={"cad": 1}), "products is not a list"),
        (_body(products=["cad"]), "product 1 is not a map"),
        (_body(products=[_product()["products"][0]] * 2), "listed twice"),
        (_product(name="CAD"), "product name 'CAD'"),
        (_product(name=""), "product name"),
        (_product(name=None), "product name"),
        (_product(seats=0), "seats must be at least 1"),
        (_product(seats="10"), "seats must be a whole number"),
        (_product(seats=True), "seats must be a whole number"),
        (_product(seats=10.0), "seats must be a whole number"),
        (_product(borrowable=11), "borrowable must be between 0 and the 10 seats"),
        (_product(borrowable=-1), "borrowable must be between"),
        (_product(max_borrow_days=-1), "max_borrow_days must be 0 or more"),
        (_product(max_borrow_days=-5), "max_borrow_days must be 0 or more, not -5"),
        (_product(max_borrow_days=0), "max-days is 0"),
        (_product(versions=[10, 16]), "versions must be a (low, high) pair of strings"),
        (_product(versions=["16", "10"]), "empty"),
        (_product(versions=["10"]), "versions must be [low, high] or null"),
        (_product(versions="10-16"), "versions must be [low, high] or null"),
        (_product(versions=["10", "x"]), "'x' is not a dotted number"),
        (_product(addon=1), "addon must be true or false"),
        (_product(addon=_DROP), "product 1 lacks addon"),
        (_product(color="red"), "product 1 has fields this server does not know"),
    ],
)
def test_signed_payload_with_invalid_contents_is_malformed(
    payload: str | dict[str, Any], words: str
) -> None:
    err = refused(KeyMalformed, forge(payload))
    assert "signed by the vendor but its contents are invalid" in err.message
    assert words in err.message


def test_forge_helper_makes_valid_keys() -> None:
    # So the table above fails for the reason it names, not because forge() is wrong.
    assert verify_network_key(forge(_body()), VENDOR_PUB, TODAY).serial == SERIAL


# ------------------------------------------------------------------------ issuing refuses


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"customer": ""}, "customer"),
        ({"customer": "a\tb"}, "customer"),
        ({"expires": datetime.date(2025, 12, 31)}, "before issued"),
        ({"expires": datetime.datetime(2026, 12, 31)}, "expires must be a date"),
        ({"borrow_kind": "lend"}, "borrow_kind"),
        ({"serial": "not hex!"}, "serial"),
        ({"serial": "abc"}, "serial"),
        ({"products": ()}, "at least one product"),
        ({"products": (PRODUCTS[0], PRODUCTS[0])}, "listed twice"),
        ({"products": ("cad:1",)}, "ProductEntitlement"),
    ],
)
def test_issue_refuses_bad_entitlements(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        issue(**changes)


# ------------------------------------------------------------------------------- products


def test_product_defaults() -> None:
    plain = ProductEntitlement("cad", 5)
    assert (plain.borrowable, plain.max_borrow_days, plain.versions, plain.addon) == (
        0,
        0,
        None,
        False,
    )
    assert ProductEntitlement("cad", 5, borrowable=1).max_borrow_days == 30
    assert ProductEntitlement("cad", 5, borrowable=1, max_borrow_days=7).max_borrow_days == 7
    assert ProductEntitlement("cad", 5, max_borrow_days=7).max_borrow_days == 7


def test_product_fields_match_the_file_format() -> None:
    names = {f.name for f in dataclasses.fields(ProductEntitlement)}
    assert names == set(payload_body()["products"][0])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cad:10", ProductEntitlement("cad", 10)),
        ("cad:1", ProductEntitlement("cad", 1)),
        ("a.b_c-9:3", ProductEntitlement("a.b_c-9", 3)),
        ("cad:10:borrowable=2", ProductEntitlement("cad", 10, borrowable=2, max_borrow_days=30)),
        ("cad:10:borrowable=10", ProductEntitlement("cad", 10, borrowable=10)),
        ("cad:10:borrowable=0", ProductEntitlement("cad", 10)),
        ("cad:10:borrowable=2:max-days=7", ProductEntitlement("cad", 10, 2, 7)),
        ("cad:10:max-days=7:borrowable=2", ProductEntitlement("cad", 10, 2, 7)),
        ("cad:10:versions=10-16", ProductEntitlement("cad", 10, versions=("10", "16"))),
        ("cad:10:versions=16.2-16.2", ProductEntitlement("cad", 10, versions=("16.2", "16.2"))),
        ("render:2:addon", ProductEntitlement("render", 2, addon=True)),
        (
            "cad:10:borrowable=3:max-days=14:versions=2024-2026:addon",
            ProductEntitlement("cad", 10, 3, 14, ("2024", "2026"), True),
        ),
    ],
)
def test_parse_product_spec(spec: str, expected: ProductEntitlement) -> None:
    assert parse_product_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "expected NAME:SEATS"),
        ("cad", "expected NAME:SEATS"),
        ("cad:", "expected NAME:SEATS"),
        (":10", "expected NAME:SEATS"),
        ("CAD:10", "product name 'CAD'"),
        ("-cad:10", "product name"),
        ("c" * 65 + ":10", "product name"),
        ("cad:ten", "seats must be a whole number, not 'ten'"),
        ("cad:-1", "seats must be a whole number"),
        ("cad:+1", "seats must be a whole number"),
        ("cad: 1", "seats must be a whole number"),
        ("cad:1_0", "seats must be a whole number"),
        ("cad:0", "seats must be at least 1"),
        ("cad:10:borrowable=11", "borrowable must be between 0 and the 10 seats, not 11"),
        ("cad:10:borrowable=-1", "borrowable must be a whole number"),
        ("cad:10:borrowable", "option borrowable needs a value"),
        ("cad:10:borrowable=", "option borrowable needs a value"),
        ("cad:10:borrowable=1:borrowable=2", "option 'borrowable' is given twice"),
        ("cad:10:max-days=x", "max-days must be a whole number"),
        ("cad:10:borrowable=2:max-days=0", "max-days is 0"),
        ("cad:10:versions=16", "must be LO-HI"),
        ("cad:10:versions=16-10", "is empty"),
        ("cad:10:versions=a-b", "'a' is not a dotted number"),
        ("cad:10:versions=10-16-18", "'16-18' is not a dotted number"),
        ("cad:10:addon=yes", "addon takes no value"),
        ("cad:10:addon:addon", "given twice"),
        ("cad:10:seats=4", "unknown option 'seats=4'"),
        ("cad:10:borrow=2", "unknown option 'borrow=2'"),
        ("cad:10:", "unknown option ''"),
    ],
)
def test_parse_product_spec_errors(spec: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_product_spec(spec)
    message = str(info.value)
    assert message.startswith(f"product spec {spec!r}: ")
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10-16", ("10", "16")),
        ("10-10", ("10", "10")),
        ("16.2-17", ("16.2", "17")),
        ("9-10", ("9", "10")),
        ("2024.1-2024.10", ("2024.1", "2024.10")),
    ],
)
def test_parse_version_range(text: str, expected: tuple[str, str]) -> None:
    assert parse_version_range(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10",
        "-",
        "10-",
        "-16",
        "16-10",
        "10.1-10.0",
        "a-b",
        "1.-2",
        "1..2-3",
        "v10-16",
        "10 -16",
    ],
)
def test_parse_version_range_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version_range(text)


@pytest.mark.parametrize(
    ("versions", "version", "allowed"),
    [
        (("10", "16"), "", True),
        (("10", "16"), "10", True),
        (("10", "16"), "13", True),
        (("10", "16"), "16", True),
        (("10", "16"), "16.2", True),
        (("10", "16"), "10.0.1", True),
        (("10", "16"), "16.99.99", True),
        (("10", "16"), "17", False),
        (("10", "16"), "17.0", False),
        (("10", "16"), "9.9", False),
        (("10", "16"), "9", False),
        (("10", "16"), "100", False),
        (("10", "16"), "abc", False),
        (("10", "16"), "16a", False),
        (("10", "16"), "16.", False),
        (("10", "16"), " 16", False),
        (("10", "16"), "-1", False),
        (("16.2", "16.4"), "16.2", True),
        (("16.2", "16.4"), "16.3.7", True),
        (("16.2", "16.4"), "16.4.9", True),
        (("16.2", "16.4"), "16.1", False),
        (("16.2", "16.4"), "16.5", False),
        (("16.2", "16.4"), "16", False),
        (("16.2", "16.4"), "17", False),
        (("2", "10"), "9", True),  # numeric, not text, order
        (("2", "10"), "10.5", True),
        (None, "", True),
        (None, "anything", True),
    ],
)
def test_allows_version(versions: tuple[str, str] | None, version: str, allowed: bool) -> None:
    assert ProductEntitlement("cad", 1, versions=versions).allows_version(version) is allowed


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "Cad", "seats": 1}, "product name"),
        ({"name": "cad", "seats": 0}, "seats must be at least 1"),
        ({"name": "cad", "seats": 2, "borrowable": 3}, "borrowable"),
        ({"name": "cad", "seats": 2, "borrowable": 1, "max_borrow_days": 0}, "max-days is 0"),
        ({"name": "cad", "seats": 2, "max_borrow_days": -2}, "max-days must be 0 or more"),
        ({"name": "cad", "seats": 2, "versions": ("10",)}, "pair"),
        ({"name": "cad", "seats": 2, "versions": ["10", "16"]}, "pair"),
        ({"name": "cad", "seats": 2, "versions": ("16", "10")}, "empty"),
        ({"name": "cad", "seats": 2, "addon": "yes"}, "addon"),
    ],
)
def test_product_entitlement_validates(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ProductEntitlement(**kwargs)


# ------------------------------------------------------------------------------ purity


def test_netkey_imports_no_io_modules() -> None:
    code = (
        "import sys, lanlic.core.netkey\n"
        "bad = {'asyncio', 'socket', 'sqlite3', 'zeroconf', 'lanlic.vendorkeys'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------- vendor key files


def test_write_and_load_vendor_keypair(tmp_path: Path) -> None:
    private = netkey.generate_vendor_key()
    key_path, pub_path = vendorkeys.write_vendor_keypair(tmp_path, private)
    assert (key_path, pub_path) == (tmp_path / "vendor.key", tmp_path / "vendor.pub")
    if os.name == "posix":
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    loaded = vendorkeys.load_vendor_private(key_path)
    public = vendorkeys.load_vendor_public(pub_path)
    assert signing.public_bytes(loaded.public_key()) == signing.public_bytes(public)
    data = issue_network_key(
        loaded,
        customer="c",
        expires=EXPIRES,
        borrow_kind="key",
        products=PRODUCTS,
        issued=ISSUED,
    )
    assert verify_network_key(data, public, TODAY).vendor_fp == signing.fingerprint(public)


def test_write_refuses_to_overwrite_the_private_key(tmp_path: Path) -> None:
    key_path, pub_path = vendorkeys.write_vendor_keypair(tmp_path, VENDOR)
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(FileExistsError):
        vendorkeys.write_vendor_keypair(tmp_path, OTHER_VENDOR)
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before


def test_write_replaces_a_stale_public_key(tmp_path: Path) -> None:
    (tmp_path / "vendor.pub").write_bytes(b"stale")
    _, pub_path = vendorkeys.write_vendor_keypair(tmp_path, VENDOR)
    assert signing.fingerprint(vendorkeys.load_vendor_public(pub_path)) == VENDOR_FP


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"x" * 100_000, signing.public_to_pem(VENDOR_PUB)],
)
def test_load_vendor_private_refuses_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "vendor.key"
    path.write_bytes(content)
    with pytest.raises(KeyMalformed) as info:
        vendorkeys.load_vendor_private(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"x" * 100_000, signing.private_to_pem(VENDOR)],
)
def test_load_vendor_public_refuses_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "vendor.pub"
    path.write_bytes(content)
    with pytest.raises(KeyMalformed) as info:
        vendorkeys.load_vendor_public(path)
    assert str(path) in info.value.message


def test_load_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        vendorkeys.load_vendor_public(tmp_path / "absent.pub")
