"""The vendor's key pair on disk.

Kept out of ``lanlic.core`` so the core stays pure (no file I/O). ``vendor.key`` is the private
key (unencrypted PKCS#8 PEM, mode 0600, never overwritten); ``vendor.pub`` is the public key
(SubjectPublicKeyInfo PEM, mode 0644) that ships with the server to verify network keys.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lanlic import osdeps
from lanlic.core import signing
from lanlic.errors import KeyMalformed

__all__ = [
    "PRIVATE_NAME",
    "PUBLIC_NAME",
    "load_vendor_private",
    "load_vendor_public",
    "write_vendor_keypair",
]

PRIVATE_NAME: Final = "vendor.key"
PUBLIC_NAME: Final = "vendor.pub"
#: PEM key files are a few hundred bytes; anything much larger is not one.
_MAX_PEM: Final = 64 * 1024


def write_vendor_keypair(directory: Path, private: Ed25519PrivateKey) -> tuple[Path, Path]:
    """Write ``vendor.key`` (0600) and ``vendor.pub`` (0644) into ``directory``.

    Raises ``FileExistsError`` rather than overwrite an existing ``vendor.key``: losing the
    vendor key would orphan every network key it signed. An existing ``vendor.pub`` is replaced.
    Returns ``(private_path, public_path)``.
    """
    private_path = Path(directory) / PRIVATE_NAME
    public_path = Path(directory) / PUBLIC_NAME
    if private_path.exists() or private_path.is_symlink():
        raise FileExistsError(
            errno.EEXIST, "refusing to overwrite an existing vendor private key", str(private_path)
        )
    osdeps.write_new(private_path, signing.private_to_pem(private))
    try:
        osdeps.write_atomic(public_path, signing.public_to_pem(private.public_key()), mode=0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _read(path: Path, what: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(_MAX_PEM + 1)
    if len(data) > _MAX_PEM:
        raise KeyMalformed(f"{path}: too large to be {what}")
    return data


def load_vendor_private(path: Path) -> Ed25519PrivateKey:
    """Read ``vendor.key``. ``KeyMalformed`` (naming the file) if it is not an Ed25519 PEM key;
    ``OSError`` if it cannot be read."""
    data = _read(Path(path), "a vendor private key")
    try:
        return signing.private_from_pem(data)
    except ValueError as exc:
        raise KeyMalformed(f"{path}: not a vendor private key ({exc})") from None


def load_vendor_public(path: Path) -> Ed25519PublicKey:
    """Read ``vendor.pub``. ``KeyMalformed`` (naming the file) if it is not an Ed25519 PEM key;
    ``OSError`` if it cannot be read."""
    data = _read(Path(path), "a vendor public key")
    try:
        return signing.public_from_pem(data)
    except ValueError as exc:
        raise KeyMalformed(f"{path}: not a vendor public key ({exc})") from None
