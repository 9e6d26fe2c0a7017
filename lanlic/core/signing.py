"""Ed25519 signatures, each bound to one purpose by a domain prefix.

lanlic signs several kinds of bytes with Ed25519: the vendor signs network keys and enrollments,
the server signs handshakes and borrowed-seat files. Without separation, anyone who can make a
key sign bytes of one kind (the server signs a client's nonce in every handshake) could present
that signature as one of another kind. So every signature is made over ``domain + payload``, where
``domain`` is one of the ``DOMAIN_*`` constants below. Each domain ends in a NUL byte and contains
no other, so no domain is a prefix of another and no two (domain, payload) pairs sign the same
bytes. ``sign`` refuses any other domain; ``verify`` answers False for one.

Fingerprints name a public key in a form a person can compare and copy:
``"sha256:"`` followed by the first 16 bytes of SHA-256 of the raw 32-byte key, in lowercase hex.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "DOMAINS",
    "DOMAIN_BORROWED_FILE",
    "DOMAIN_CONTAINER_REQUEST",
    "DOMAIN_ENROLLMENT",
    "DOMAIN_HANDSHAKE",
    "DOMAIN_HANDSHAKE_V2",
    "DOMAIN_HANDSHAKE_V3",
    "DOMAIN_LOCAL_STATE",
    "DOMAIN_NETWORK_KEY",
    "DOMAIN_SERVER_TIME",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "fingerprint",
    "private_from_pem",
    "private_to_pem",
    "public_bytes",
    "public_from_bytes",
    "public_from_pem",
    "public_to_pem",
    "sign",
    "verify",
]

DOMAIN_NETWORK_KEY: Final = b"lanlic/v1/network-key\x00"
DOMAIN_HANDSHAKE: Final = b"lanlic/v1/handshake\x00"
#: Protocol version 2's welcome: one signature over the handshake and the server's time.
DOMAIN_HANDSHAKE_V2: Final = b"lanlic/v2/handshake\x00"
#: Protocol version 3's welcome: one signature over the root of a batch of handshakes.
DOMAIN_HANDSHAKE_V3: Final = b"lanlic/v3/handshake-batch\x00"
DOMAIN_BORROWED_FILE: Final = b"lanlic/v1/borrowed-file\x00"
DOMAIN_ENROLLMENT: Final = b"lanlic/v1/enrollment\x00"
#: Borrow and return requests, signed by the client's container key (proof it holds it).
DOMAIN_CONTAINER_REQUEST: Final = b"lanlic/v1/container-request\x00"
#: The client's local borrowing state (last-seen time, returned borrows), signed by its container.
DOMAIN_LOCAL_STATE: Final = b"lanlic/v1/local-state\x00"
#: The server's wall time in its welcome, over the client's nonce: a time a laptop can trust.
DOMAIN_SERVER_TIME: Final = b"lanlic/v1/server-time\x00"
#: Every domain a signature may be made in.
DOMAINS: Final = frozenset(
    {
        DOMAIN_NETWORK_KEY,
        DOMAIN_HANDSHAKE,
        DOMAIN_HANDSHAKE_V2,
        DOMAIN_HANDSHAKE_V3,
        DOMAIN_BORROWED_FILE,
        DOMAIN_ENROLLMENT,
        DOMAIN_CONTAINER_REQUEST,
        DOMAIN_LOCAL_STATE,
        DOMAIN_SERVER_TIME,
    }
)

PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
_FINGERPRINT_PREFIX: Final = "sha256:"
_FINGERPRINT_BYTES: Final = 16


def sign(private: Ed25519PrivateKey, domain: bytes, payload: bytes) -> bytes:
    """Sign ``domain + payload``; ``domain`` must be one of the ``DOMAIN_*`` constants."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown signing domain {domain!r}")
    return private.sign(domain + payload)


def verify(public: Ed25519PublicKey, domain: bytes, payload: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``public``'s signature over ``domain + payload``.

    Never raises: an unknown domain, a signature of the wrong length or type, or any other bad
    input is simply False.
    """
    if domain not in DOMAINS or not isinstance(payload, bytes):
        return False
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        public.verify(signature, domain + payload)
    except (InvalidSignature, ValueError, TypeError, AttributeError):
        return False
    return True


def public_bytes(public: Ed25519PublicKey) -> bytes:
    """The raw 32-byte form of a public key."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_bytes(raw: bytes) -> Ed25519PublicKey:
    """A public key from its raw 32 bytes; ``ValueError`` if they are not one."""
    if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from exc


def fingerprint(public: Ed25519PublicKey | bytes) -> str:
    """``"sha256:"`` + 32 lowercase hex digits naming the key (``public`` or its raw bytes)."""
    raw = public if isinstance(public, bytes) else public_bytes(public)
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    return _FINGERPRINT_PREFIX + hashlib.sha256(raw).digest()[:_FINGERPRINT_BYTES].hex()


def private_to_pem(private: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (protect the file, not the bytes)."""
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_from_pem(data: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PKCS#8 PEM; ``ValueError`` for anything else."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 private key (found {type(key).__name__})")
    return key


def public_to_pem(public: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_from_pem(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from SubjectPublicKeyInfo PEM; ``ValueError`` for anything else."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key (found {type(key).__name__})")
    return key
