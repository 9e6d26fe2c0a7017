"""Write protocol/vectors/documents.json: the signed documents of lanlic with fixed keys.

Ed25519 signatures are deterministic, so the same keys give the same bytes every time: another
implementation can check that it makes and accepts exactly these documents, and refuses each
tampered one with the code given. Run from the repository root:
``python protocol/vectors/make_documents.py``; tests/proto/test_document_vectors.py checks the
committed file is what this script writes, and runs every vector.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import borrowing, netkey, signing
from lanlic.core.netkey import ProductEntitlement

OUT = Path(__file__).with_name("documents.json")

VENDOR = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SERVER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CONTAINER = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
OTHER_SERVER = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
MACHINE = "mfp:00112233445566778899aabbccddeeff"
T0 = 1_800_000_000.0
DAY = 86400.0


def pub(key: Ed25519PrivateKey) -> str:
    return signing.public_bytes(key.public_key()).hex()


def flip(doc: bytes, old: str, new: str) -> bytes:
    """The document with the first ``old`` inside its payload replaced (a one-field edit)."""
    outer = json.loads(doc)
    assert old in outer["payload"], old
    outer["payload"] = outer["payload"].replace(old, new, 1)
    return (json.dumps(outer, indent=2) + "\n").encode()


def resign_outer(doc: bytes, signature: bytes) -> bytes:
    import base64

    outer = json.loads(doc)
    outer["signature"] = base64.b64encode(signature).decode()
    return (json.dumps(outer, indent=2) + "\n").encode()


def build() -> dict[str, Any]:
    products = (
        ProductEntitlement(
            "cad", seats=10, borrowable=4, max_borrow_days=30, versions=("10", "16")
        ),
        ProductEntitlement("cad-render", seats=3, addon=True),
    )
    key = netkey.issue_network_key(
        VENDOR,
        customer="ACME Engineering",
        expires=dt.date(2099, 12, 31),
        borrow_kind="act",
        products=products,
        issued=dt.date(2026, 11, 28),
        serial="00" * 16,
    )
    request = borrowing.make_enrollment_request(CONTAINER, "act", MACHINE, "ann", "lt-ann", T0)
    req = borrowing.read_enrollment_request(request)
    server_id = signing.fingerprint(SERVER.public_key())
    response = borrowing.make_enrollment_response(SERVER, req, server_id, "ACME Engineering", T0)
    borrowed = borrowing.issue_borrowed_file(
        SERVER,
        borrow_id="b-0123456789abcdef",
        product="cad",
        versions=("10", "16"),
        kind="act",
        server_id=server_id,
        customer="ACME Engineering",
        container_key=signing.public_bytes(CONTAINER.public_key()),
        machine_fp=MACHINE,
        user="ann",
        host="lt-ann",
        start=T0,
        end=T0 + 14 * DAY,
    )
    by_other = borrowing.issue_borrowed_file(
        OTHER_SERVER,
        borrow_id="b-0123456789abcdef",
        product="cad",
        versions=("10", "16"),
        kind="act",
        server_id=signing.fingerprint(OTHER_SERVER.public_key()),
        customer="ACME Engineering",
        container_key=signing.public_bytes(CONTAINER.public_key()),
        machine_fp=MACHINE,
        user="ann",
        host="lt-ann",
        start=T0,
        end=T0 + 14 * DAY,
    )
    payload = json.loads(borrowed)["payload"].encode()
    handshake_sig = signing.sign(SERVER, signing.DOMAIN_HANDSHAKE, payload)
    handshake_v2_sig = signing.sign(SERVER, signing.DOMAIN_HANDSHAKE_V2, payload)
    check = {
        "trusted_server_keys": [pub(SERVER)],
        "container_key": pub(CONTAINER),
        "machine_fp": MACHINE,
        "now": T0 + DAY,
        "last_seen": T0,
        "returned": [],
    }
    return {
        "keys": {
            "note": "Ed25519 private keys as raw 32-byte seeds (hex); never use them for real.",
            "vendor": bytes(range(32)).hex(),
            "server": bytes(range(1, 33)).hex(),
            "container": bytes(range(2, 34)).hex(),
            "other_server": bytes(range(3, 35)).hex(),
            "vendor_public": pub(VENDOR),
            "server_public": pub(SERVER),
            "container_public": pub(CONTAINER),
        },
        "network_keys": [
            {
                "name": "valid",
                "today": "2026-11-28",
                "document": key.decode(),
                "valid": True,
                "seats": {"cad": 10, "cad-render": 3},
            },
            {
                "name": "seats_raised",
                "today": "2026-11-28",
                "valid": False,
                "document": flip(key, '"seats": 10', '"seats": 90').decode(),
                "error": "key_bad_signature",
            },
            {
                "name": "expired",
                "today": "2100-01-01",
                "document": key.decode(),
                "valid": False,
                "error": "key_expired",
            },
        ],
        "enrollment": [
            {"name": "request", "kind": "request", "document": request.decode(), "valid": True},
            {
                "name": "request_user_edited",
                "kind": "request",
                "valid": False,
                "document": flip(request, '"user": "ann"', '"user": "bob"').decode(),
                "error": "file_tampered",
            },
            {"name": "response", "kind": "response", "document": response.decode(), "valid": True},
        ],
        "borrowed_files": [
            {"name": "valid", "document": borrowed.decode(), "check": check, "valid": True},
            {
                "name": "end_moved",
                "check": check,
                "valid": False,
                "document": flip(
                    borrowed, f'"end": {T0 + 14 * DAY}', f'"end": {T0 + 99 * DAY}'
                ).decode(),
                "error": "file_tampered",
            },
            {
                "name": "other_server",
                "document": by_other.decode(),
                "check": check,
                "valid": False,
                "error": "file_untrusted_server",
            },
            {
                "name": "handshake_signature_reused",
                "check": check,
                "valid": False,
                "document": resign_outer(borrowed, handshake_sig).decode(),
                "error": "file_tampered",
            },
            {
                "name": "handshake_v2_signature_reused",
                "check": check,
                "valid": False,
                "document": resign_outer(borrowed, handshake_v2_sig).decode(),
                "error": "file_tampered",
            },
            {
                "name": "another_machine",
                "document": borrowed.decode(),
                "valid": False,
                "check": {**check, "machine_fp": "mfp:" + "f" * 32},
                "error": "file_wrong_machine",
            },
            {
                "name": "after_end",
                "document": borrowed.decode(),
                "valid": False,
                "check": {**check, "now": T0 + 14 * DAY, "last_seen": T0 + 13 * DAY},
                "error": "file_expired",
            },
            {
                "name": "clock_set_back",
                "document": borrowed.decode(),
                "valid": False,
                "check": {**check, "now": T0 + DAY, "last_seen": T0 + 3 * DAY},
                "error": "clock_set_back",
            },
            {
                "name": "returned",
                "document": borrowed.decode(),
                "valid": False,
                "check": {**check, "returned": ["b-0123456789abcdef"]},
                "error": "file_returned",
            },
        ],
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUT.write_text(render(), "utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
