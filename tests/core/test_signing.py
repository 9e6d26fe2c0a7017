"""Domain-separated Ed25519: round trips, no reuse across purposes, a verify that never raises."""

from __future__ import annotations

import hashlib
import itertools
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from lanlic.core import signing

ALL_DOMAINS = [
    signing.DOMAIN_NETWORK_KEY,
    signing.DOMAIN_HANDSHAKE,
    signing.DOMAIN_HANDSHAKE_V2,
    signing.DOMAIN_HANDSHAKE_V3,
    signing.DOMAIN_BORROWED_FILE,
    signing.DOMAIN_ENROLLMENT,
    signing.DOMAIN_CONTAINER_REQUEST,
    signing.DOMAIN_LOCAL_STATE,
    signing.DOMAIN_SERVER_TIME,
]
PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = PRIVATE.public_key()
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def test_domain_values_are_fixed() -> None:
    assert signing.DOMAIN_NETWORK_KEY == b"lanlic/v1/network-key\x00"
    assert signing.DOMAIN_HANDSHAKE == b"lanlic/v1/handshake\x00"
    assert signing.DOMAIN_HANDSHAKE_V2 == b"lanlic/v2/handshake\x00"
    assert signing.DOMAIN_HANDSHAKE_V3 == b"lanlic/v3/handshake-batch\x00"
    assert signing.DOMAIN_BORROWED_FILE == b"lanlic/v1/borrowed-file\x00"
    assert signing.DOMAIN_ENROLLMENT == b"lanlic/v1/enrollment\x00"
    assert signing.DOMAIN_CONTAINER_REQUEST == b"lanlic/v1/container-request\x00"
    assert signing.DOMAIN_LOCAL_STATE == b"lanlic/v1/local-state\x00"
    assert signing.DOMAIN_SERVER_TIME == b"lanlic/v1/server-time\x00"
    assert set(ALL_DOMAINS) == signing.DOMAINS


def test_domains_are_prefix_free() -> None:
    for domain in ALL_DOMAINS:
        assert domain.endswith(b"\x00")
        assert domain.count(b"\x00") == 1
    for a, b in itertools.permutations(ALL_DOMAINS, 2):
        assert not b.startswith(a)


@pytest.mark.parametrize("domain", ALL_DOMAINS)
def test_round_trip(domain: bytes) -> None:
    signature = signing.sign(PRIVATE, domain, b"payload")
    assert len(signature) == signing.SIGNATURE_SIZE
    assert signing.verify(PUBLIC, domain, b"payload", signature) is True
    assert signing.verify(PUBLIC, domain, b"payload!", signature) is False
    assert signing.verify(OTHER.public_key(), domain, b"payload", signature) is False


@pytest.mark.parametrize(("signed_in", "checked_in"), list(itertools.permutations(ALL_DOMAINS, 2)))
def test_a_signature_does_not_cross_domains(signed_in: bytes, checked_in: bytes) -> None:
    signature = signing.sign(PRIVATE, signed_in, b"same payload")
    assert signing.verify(PUBLIC, checked_in, b"same payload", signature) is False


def test_signature_covers_domain_and_payload_exactly() -> None:
    signature = signing.sign(PRIVATE, signing.DOMAIN_HANDSHAKE, b"abc")
    PUBLIC.verify(signature, signing.DOMAIN_HANDSHAKE + b"abc")  # raises if not
    # A bare signature (no domain) is not accepted in any domain.
    bare = PRIVATE.sign(signing.DOMAIN_HANDSHAKE + b"abc")
    assert bare == signature  # Ed25519 is deterministic
    assert signing.verify(PUBLIC, signing.DOMAIN_HANDSHAKE, b"abc", PRIVATE.sign(b"abc")) is False


@pytest.mark.parametrize("domain", [b"", b"lanlic/v1/network-key", b"other\x00", b"x"])
def test_sign_refuses_unknown_domains(domain: bytes) -> None:
    with pytest.raises(ValueError, match="unknown signing domain"):
        signing.sign(PRIVATE, domain, b"payload")


def test_verify_refuses_unknown_domain_even_for_a_matching_signature() -> None:
    signature = PRIVATE.sign(b"free-form" + b"payload")
    assert signing.verify(PUBLIC, b"free-form", b"payload", signature) is False


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00" * 63, b"\x00" * 64, b"\x00" * 65, b"\xff" * 64, "not bytes", None, 12],
)
def test_verify_returns_false_for_bad_signatures(signature: object) -> None:
    assert signing.verify(PUBLIC, signing.DOMAIN_HANDSHAKE, b"p", signature) is False  # type: ignore[arg-type]


def test_verify_returns_false_for_bad_payload_and_key_types() -> None:
    signature = signing.sign(PRIVATE, signing.DOMAIN_HANDSHAKE, b"p")
    assert signing.verify(PUBLIC, signing.DOMAIN_HANDSHAKE, "p", signature) is False  # type: ignore[arg-type]
    assert signing.verify(None, signing.DOMAIN_HANDSHAKE, b"p", signature) is False  # type: ignore[arg-type]


@given(st.binary(max_size=100), st.binary(max_size=100), st.sampled_from(ALL_DOMAINS))
def test_verify_never_raises(payload: bytes, signature: bytes, domain: bytes) -> None:
    assert signing.verify(PUBLIC, domain, payload, signature) is False


def test_every_bit_of_a_signature_matters() -> None:
    signature = signing.sign(PRIVATE, signing.DOMAIN_ENROLLMENT, b"p")
    for i in range(len(signature) * 8):
        flipped = bytearray(signature)
        flipped[i // 8] ^= 1 << (i % 8)
        assert signing.verify(PUBLIC, signing.DOMAIN_ENROLLMENT, b"p", bytes(flipped)) is False


def test_fingerprint() -> None:
    raw = signing.public_bytes(PUBLIC)
    expected = "sha256:" + hashlib.sha256(raw).hexdigest()[:32]
    assert signing.fingerprint(PUBLIC) == expected
    assert signing.fingerprint(raw) == expected
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", expected)
    assert signing.fingerprint(OTHER.public_key()) != expected


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33])
def test_fingerprint_refuses_wrong_length(raw: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        signing.fingerprint(raw)


def test_public_bytes_round_trip() -> None:
    raw = signing.public_bytes(PUBLIC)
    assert len(raw) == signing.PUBLIC_KEY_SIZE
    assert signing.public_bytes(signing.public_from_bytes(raw)) == raw


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33, "x" * 32, None])
def test_public_from_bytes_refuses(raw: object) -> None:
    with pytest.raises(ValueError):
        signing.public_from_bytes(raw)  # type: ignore[arg-type]


def test_pem_round_trips() -> None:
    private_pem = signing.private_to_pem(PRIVATE)
    public_pem = signing.public_to_pem(PUBLIC)
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    loaded = signing.private_from_pem(private_pem)
    assert signing.public_bytes(loaded.public_key()) == signing.public_bytes(PUBLIC)
    assert signing.public_bytes(signing.public_from_pem(public_pem)) == signing.public_bytes(PUBLIC)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an unencrypted PEM private key"),
        (b"garbage", "not an unencrypted PEM private key"),
        (signing.public_to_pem(PUBLIC), "not an unencrypted PEM private key"),
        (
            PRIVATE.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "not an unencrypted PEM private key",
        ),
        (
            _ec_key().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "not an Ed25519 private key",
        ),
    ],
)
def test_private_from_pem_refuses(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        signing.private_from_pem(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a PEM public key"),
        (signing.private_to_pem(PRIVATE), "not a PEM public key"),
        (
            _ec_key()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "not an Ed25519 public key",
        ),
    ],
)
def test_public_from_pem_refuses(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        signing.public_from_pem(data)
