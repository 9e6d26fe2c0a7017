"""Installing a renewed network key from the admin page, and choosing the key at start.

A key uploaded on the admin page is verified against the vendor public key the server was
started with, checked to belong to the same customer, and saved into the data folder as
``network-key.lic`` (written to a temporary file, fsynced, renamed: a crash leaves the old file or
the new one, never half of one). It is **not** swapped into the running pool: seats in use,
borrows and the announcement over mDNS all rest on the key, and changing it under them is not
worth the risk for a file that changes once a year. The running key stays in force until the
server is restarted; the page and the API say so.

At start, ``lanlic serve`` serves the installed key instead of ``--license`` when it verifies and
was issued on the same day or later (a renewal), for the same customer; otherwise ``--license``,
with a note saying why the installed one was passed over.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanlic import osdeps
from lanlic.core.netkey import NetworkKey, verify_network_key
from lanlic.errors import NetworkKeyError

__all__ = [
    "INSTALLED_KEY",
    "KeyChoice",
    "KeyRefused",
    "check_replacement",
    "choose_network_key",
    "key_summary",
    "passed_over",
    "read_installed_key",
    "save_installed_key",
]

INSTALLED_KEY: Final = "network-key.lic"
"""The file name, in the data folder, of a key installed from the admin page."""


class KeyRefused(NetworkKeyError):
    """A valid key that this server must not take (another customer, the key already served)."""

    code = "key_refused"


@dataclass(frozen=True, slots=True)
class KeyChoice:
    key: NetworkKey
    """The key to serve."""
    installed: bool
    """True when it is the one installed from the admin page."""
    note: str | None = None
    """Why the installed key was passed over, if one was."""


def key_summary(key: NetworkKey) -> dict[str, Any]:
    """What the admin page shows of a key."""
    return {
        "customer": key.customer,
        "serial": key.serial,
        "issued": key.issued.isoformat(),
        "expires": key.expires.isoformat(),
        "borrow_kind": key.borrow_kind,
        "products": [
            {
                "name": p.name,
                "seats": p.seats,
                "borrowable": p.borrowable,
                "max_borrow_days": p.max_borrow_days,
                "versions": list(p.versions) if p.versions else None,
                "addon": p.addon,
            }
            for p in key.products
        ],
    }


def check_replacement(new: NetworkKey, current: NetworkKey) -> list[str]:
    """Refuse (``KeyRefused``) a key this server must not take; return warnings for the admin
    about what a restart on it will change."""
    if new.customer != current.customer:
        raise KeyRefused(
            f"this key is for {new.customer!r}, but this server serves {current.customer!r}; "
            "clients pin a server per customer, so a new site is started with --license instead"
        )
    if new.serial == current.serial:
        raise KeyRefused("this is the network key the server already serves")
    warnings: list[str] = []
    if new.issued < current.issued:
        warnings.append(
            f"this key was issued on {new.issued}, before the running one ({current.issued})"
        )
    for old in current.products:
        p = new.product(old.name)
        if p is None:
            warnings.append(f"{old.name} is not in the new key: it will no longer be served")
        elif p.seats < old.seats:
            warnings.append(f"{old.name}: {p.seats} seats instead of {old.seats}")
    if new.borrow_kind != current.borrow_kind:
        warnings.append(
            f"borrowing changes from kind {current.borrow_kind!r} to {new.borrow_kind!r}: "
            "machines enrolled for the old kind must enroll again"
        )
    return warnings


def choose_network_key(
    license_data: bytes,
    installed_data: bytes | None,
    vendor_public: Ed25519PublicKey,
    today: dt.date,
) -> KeyChoice:
    """The key ``lanlic serve`` should serve (see the module docstring). Raises the ``--license``
    key's ``NetworkKeyError`` when neither will do."""
    try:
        given: NetworkKey | None = verify_network_key(license_data, vendor_public, today)
        given_error: NetworkKeyError | None = None
    except NetworkKeyError as exc:
        given, given_error = None, exc
    if installed_data is None:
        if given_error is not None:
            raise given_error
        assert given is not None
        return KeyChoice(given, installed=False)
    try:
        installed = verify_network_key(installed_data, vendor_public, today)
    except NetworkKeyError as exc:
        if given_error is not None:
            raise given_error from None
        assert given is not None
        return KeyChoice(given, False, f"the key installed from the admin page is unusable: {exc}")
    if given is None:
        return KeyChoice(installed, True, f"the --license key is unusable: {given_error}")
    note = passed_over(installed, given)
    return KeyChoice(given, False, note) if note else KeyChoice(installed, True)


def passed_over(installed: NetworkKey, given: NetworkKey) -> str | None:
    """Why a valid installed key is not served instead of ``given`` (None: it is served)."""
    if installed.customer != given.customer:
        return (
            f"the key installed from the admin page is for {installed.customer!r}, "
            f"not {given.customer!r}"
        )
    if installed.issued < given.issued:
        return "the --license key is newer than the installed one"
    return None


def save_installed_key(data_dir: Path, content: bytes) -> Path:
    """Write ``content`` as the installed key, atomically and durably; return its path."""
    path = data_dir / INSTALLED_KEY
    osdeps.write_atomic(path, content)
    return path


def read_installed_key(data_dir: Path) -> bytes | None:
    """The installed key's bytes, or None when there is none."""
    try:
        return (data_dir / INSTALLED_KEY).read_bytes()
    except FileNotFoundError:
        return None
