"""The admin password: a salted scrypt hash in the store's meta table, never the password.

The stored text is ``scrypt$<log2 n>$<r>$<p>$<salt, base64>$<hash, base64>``, so the cost can be
raised later without breaking the hashes already stored (each carries its own parameters).
scrypt with n = 2**14, r = 8 costs about 16 MiB and some 50 ms per try: nothing for a login,
a great deal for someone guessing (who is also slowed down per address, see ``security``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from typing import Final

__all__ = [
    "META_KEY",
    "MIN_LENGTH",
    "check_new_password",
    "hash_password",
    "verify_password",
]

META_KEY: Final = "admin_password"
"""The store's meta key that holds the hash."""
MIN_LENGTH: Final = 8
LOG2_N: Final = 14
R: Final = 8
P: Final = 1
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32


def _normalise(password: str) -> bytes:
    # The same password typed on two keyboards may arrive in two Unicode forms.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        _normalise(password), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=HASH_BYTES
    )


def check_new_password(password: str) -> None:
    """ValueError with the reason when ``password`` is too weak to set."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"the admin password must be at least {MIN_LENGTH} characters")
    if password != password.strip():
        raise ValueError("the admin password must not start or end with a space")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The text to store for ``password`` (a fresh random salt unless one is given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, LOG2_N, R, P)
    b64 = base64.b64encode
    return f"scrypt${LOG2_N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the stored hash (False for a damaged hash, never raises)."""
    try:
        kind, log2_n, r, p, salt_b64, hash_b64 = stored.split("$")
        if kind != "scrypt":
            return False
        n_exp, r_i, p_i = int(log2_n), int(r), int(p)
        if not (10 <= n_exp <= 20 and 1 <= r_i <= 32 and 1 <= p_i <= 16):
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    try:
        actual = _scrypt(password, salt, n_exp, r_i, p_i)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
