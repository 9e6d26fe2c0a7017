"""The laptop side of borrowing: a *container home*, one folder that holds one borrowing identity.

Layout::

    HOME/
      container.key        the container's Ed25519 private key (PEM, mode 0600, made once)
      container.json       {"kind": "act" | "key", "machine_fp": "mfp:..." | ""}
      state.json           local state signed by the container key: the latest time lanlic saw
                           here ("last_seen", UTC seconds) and the borrows returned from here
      enrollment.json      the server's signed enrollment response, once enrolled
      borrows/<product>.lic   borrowed licence files

An ``act`` home lives in the user's data folder (``default_client_home()``) and is bound to the
machine fingerprint it was made on; opened on another machine it reports ``foreign`` and every
borrowed file in it is refused (``file_wrong_machine``). A ``key`` home *is* a portable key: a
folder, e.g. on a USB stick, with no machine fingerprint, usable wherever it is plugged in.

Why the state is signed: the clock check of a borrowed file compares the local clock with the
latest time lanlic saw, and a saved copy of a returned file is refused because its borrow id is in
the returned list. Both live in ``state.json``; an edited (or deleted) state is refused as if the
clock had been set back. ``create`` writes the first state, so a home without one was tampered
with. (Restoring a whole earlier copy of the home is beyond what an offline check can detect.)

Every method that needs the time takes ``now`` (UTC seconds); nothing here reads a clock. Every
write is atomic and durable (``osdeps.write_atomic``), private to the user (mode 0600 on POSIX).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic import osdeps
from lanlic.core import borrowing, signing
from lanlic.core.borrowing import BorrowedLicense, EnrollmentResponse, FileCheck
from lanlic.errors import BorrowedFileError, LanlicError

__all__ = ["ContainerError", "ContainerHome", "LocalState", "default_client_home"]

Kind = Literal["act", "key"]

KEY_FILE: Final = "container.key"
META_FILE: Final = "container.json"
STATE_FILE: Final = "state.json"
ENROLLMENT_FILE: Final = "enrollment.json"
BORROWS_DIR: Final = "borrows"
LIC_SUFFIX: Final = ".lic"
FMT_STATE: Final = "lanlic-local-state"
MAX_FILE: Final = 256 * 1024
#: Product names, as in network keys; also safe as file names.
_PRODUCT_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class ContainerError(LanlicError):
    """A container home that cannot be used: unreadable, incomplete or not a container."""

    code = "container"


def default_client_home() -> Path:
    """``$LANLIC_CLIENT_DATA``, else ``client`` in the user's data folder
    (``osdeps.user_data_dir``: on Linux ``$XDG_DATA_HOME/lanlic/client``, else
    ``~/.local/share/lanlic/client``)."""
    env = os.environ.get("LANLIC_CLIENT_DATA")
    if env:
        return Path(env)
    return osdeps.user_data_dir() / "client"


# ---------------------------------------------------------------------------------- file helpers


def _read_limited(path: Path) -> bytes | None:
    """The file's bytes, or None if it does not exist."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_FILE:
        raise ContainerError(f"{path} is too large to be a lanlic file")
    return data


def _check_now(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of UTC seconds, not {now!r}")
    return float(now)


# ---------------------------------------------------------------------------------- local state


@dataclass(frozen=True, slots=True)
class LocalState:
    """What ``state.json`` holds, once its signature is checked."""

    last_seen: float | None
    """The latest time lanlic saw here (UTC seconds); None before the first check."""
    returned: tuple[str, ...]
    """Borrow ids returned or deactivated here."""


_EDITED: Final = (
    "the local licence state ({path}) was edited or removed: borrowed licences are refused, "
    "as when the clock is set back"
)


# -------------------------------------------------------------------------------- the container


class ContainerHome:
    """One borrowing identity in a folder (see the module docstring). Make it with ``create``,
    find it with ``open``."""

    def __init__(
        self, root: Path, kind: Kind, machine_fp: str, private_key: Ed25519PrivateKey, foreign: bool
    ) -> None:
        self.root = root
        self.kind: Kind = kind
        self.machine_fp = machine_fp
        """The fingerprint of the machine the home was made on (``act``); "" for a key."""
        self.private_key = private_key
        self.public_key: bytes = signing.public_bytes(private_key.public_key())
        """The container's raw 32-byte public key."""
        self.foreign = foreign
        """True for an ``act`` home opened on another machine than the one it was made on."""

    def __repr__(self) -> str:
        return f"ContainerHome({str(self.root)!r}, kind={self.kind!r}, {self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """The container key's fingerprint, ``sha256:...``."""
        return signing.fingerprint(self.public_key)

    # ------------------------------------------------------------------ create and open

    @classmethod
    def create(cls, root: Path, kind: Kind, machine_fp: str) -> ContainerHome:
        """Make a new container in ``root`` (created, mode 0700): a fresh key, its kind and
        machine, and a first local state. ``FileExistsError`` if a container is there already.
        ``machine_fp`` is the current machine's for ``act`` and must be "" for ``key``."""
        if kind not in ("act", "key"):
            raise ValueError(f"a container is of kind 'act' or 'key', not {kind!r}")
        if (kind == "act") != bool(machine_fp):
            raise ValueError("an 'act' container needs the machine fingerprint; a 'key' has none")
        root = Path(root)
        osdeps.make_private_dir(root)
        key = Ed25519PrivateKey.generate()
        osdeps.write_new(root / KEY_FILE, signing.private_to_pem(key))
        try:
            home = cls(root, kind, machine_fp, key, foreign=False)
            home._save_state(LocalState(last_seen=None, returned=()))
            meta = {"kind": kind, "machine_fp": machine_fp}
            osdeps.write_atomic(root / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        except BaseException:
            for name in (META_FILE, STATE_FILE, KEY_FILE):
                with contextlib.suppress(OSError):
                    os.unlink(root / name)
            raise
        return home

    @classmethod
    def open(cls, root: Path, current_machine_fp: str | None = None) -> ContainerHome | None:
        """The container in ``root``, or None if there is none. For an ``act`` home, give
        ``current_machine_fp`` to learn whether it was copied from another machine (``foreign``).
        ``ContainerError`` if the folder holds a damaged or incomplete container."""
        root = Path(root)
        key_path = root / KEY_FILE
        pem = _read_limited(key_path)
        if pem is None:
            return None
        meta_raw = _read_limited(root / META_FILE)
        if meta_raw is None:
            raise ContainerError(
                f"{root} holds a container key but no {META_FILE} (was making it interrupted?); "
                f"remove the folder and enroll again"
            )
        try:
            key = signing.private_from_pem(pem)
            meta = json.loads(meta_raw.decode("utf-8"))
            kind, machine_fp = meta["kind"], meta["machine_fp"]
            if kind not in ("act", "key") or not isinstance(machine_fp, str):
                raise ValueError("bad kind or machine_fp")
            if (kind == "act") != bool(machine_fp):
                raise ValueError("a machine fingerprint goes with kind 'act' only")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise ContainerError(f"the container in {root} is damaged: {exc}") from None
        foreign = (
            kind == "act" and current_machine_fp is not None and machine_fp != current_machine_fp
        )
        return cls(root, kind, machine_fp, key, foreign=foreign)

    # ------------------------------------------------------------------------- enrollment

    def enrollment_request(self, user: str, host: str, now: float) -> bytes:
        """A signed enrollment request for this container, to send or to carry to the admin."""
        if self.foreign:
            raise ContainerError(
                f"the container in {self.root} was made on another machine; make a new one here"
            )
        return borrowing.make_enrollment_request(
            self.private_key, self.kind, self.machine_fp, user, host, _check_now(now)
        )

    def save_enrollment(self, response: bytes) -> EnrollmentResponse:
        """Check the server's enrollment response against this container and keep it.
        ``BorrowedFileError`` if it is edited or meant for another container."""
        resp = borrowing.read_enrollment_response(response, self.public_key)
        if resp.request.kind != self.kind or resp.request.machine_fp != self.machine_fp:
            raise BorrowedFileError(
                "the enrollment response names another kind or machine than this container",
                "file_wrong_machine",
            )
        osdeps.write_atomic(self.root / ENROLLMENT_FILE, response)
        return resp

    def enrollment(self) -> EnrollmentResponse | None:
        """The saved enrollment, checked again; None when not enrolled."""
        data = _read_limited(self.root / ENROLLMENT_FILE)
        if data is None:
            return None
        return borrowing.read_enrollment_response(data, self.public_key)

    def trusted_server_keys(self) -> set[bytes]:
        """The server keys whose borrowed files this container accepts: its enrollment's."""
        resp = self.enrollment()
        return {resp.server_key} if resp is not None else set()

    def proof(self, op: str, server_id: str, fields: list[Any]) -> bytes:
        """The container's signature over a borrow or return request (proof it holds the key)."""
        payload = borrowing.container_proof_payload(op, server_id, fields)
        return signing.sign(self.private_key, signing.DOMAIN_CONTAINER_REQUEST, payload)

    # ---------------------------------------------------------------------- borrowed files

    def _lic_path(self, product: str) -> Path | None:
        if not isinstance(product, str) or not _PRODUCT_RE.fullmatch(product):
            return None
        return self.root / BORROWS_DIR / (product + LIC_SUFFIX)

    def save_borrowed(self, file: bytes) -> Path:
        """Keep a borrowed licence file under ``borrows/<product>.lic``; returns its path.
        ``BorrowedFileError`` if it is not a borrowed file or is for another container."""
        lic, _, _ = borrowing.parse_borrowed_file(file)
        if lic.container_key != self.public_key:
            raise BorrowedFileError(
                f"this borrowed licence file is for another container ({lic.kind}), not "
                f"{self.fingerprint}",
                "file_no_key" if self.kind == "key" else "file_wrong_machine",
            )
        path = self._lic_path(lic.product)
        if path is None:
            raise BorrowedFileError(
                f"the borrowed licence file names a bad product {lic.product!r}", "file_tampered"
            )
        osdeps.make_private_dir(path.parent)
        osdeps.write_atomic(path, file)
        return path

    def borrowed(self, product: str) -> bytes | None:
        """The stored borrowed file for ``product`` (unchecked), or None."""
        path = self._lic_path(product)
        return None if path is None else _read_limited(path)

    def borrowed_products(self) -> list[str]:
        """The products with a stored borrowed file, sorted."""
        try:
            entries = list((self.root / BORROWS_DIR).iterdir())
        except OSError:
            return []
        names = (e.name[: -len(LIC_SUFFIX)] for e in entries if e.name.endswith(LIC_SUFFIX))
        return sorted(n for n in names if _PRODUCT_RE.fullmatch(n))

    def check_borrowed(
        self,
        product: str,
        now: float,
        current_machine_fp: str,
        plugged_key: bytes | None = None,
    ) -> BorrowedLicense:
        """Check the stored borrowed file of ``product`` for use now, with no network; on success
        remember ``now`` as seen. ``BorrowedFileError`` with the reason otherwise;
        ``FileNotFoundError`` when there is no such file.

        ``plugged_key`` is the public key of the portable key plugged in, for a file of kind
        ``key`` kept in an ``act`` home; a ``key`` home is itself the portable key.
        """
        now = _check_now(now)
        data = self.borrowed(product)
        if data is None:
            raise FileNotFoundError(f"no borrowed licence for {product!r} in {self.root}")
        if self.kind == "act" and self.machine_fp != current_machine_fp:
            raise BorrowedFileError(
                f"the licence folder {self.root} was made on another machine (was it copied?)",
                "file_wrong_machine",
            )
        state = self._load_state()
        unchecked, _, _ = borrowing.parse_borrowed_file(data)
        if self.kind == "key" or unchecked.kind == "act":
            container_key: bytes | None = self.public_key
        else:
            container_key = plugged_key
        check = FileCheck(
            trusted_server_keys=self.trusted_server_keys(),
            container_key=container_key,
            machine_fp=current_machine_fp,
            now=now,
            last_seen=state.last_seen,
            returned=frozenset(state.returned),
        )
        lic = borrowing.verify_borrowed_file(data, check)
        if lic.product != product:
            raise BorrowedFileError(
                f"the file kept for {product!r} is a licence for {lic.product!r}", "file_tampered"
            )
        self._advance(state, now)
        return lic

    def deactivate(self, borrow_id: str, now: float) -> None:
        """Mark a borrow returned here, so no saved copy of its file works here again, and delete
        its file. Idempotent."""
        now = _check_now(now)
        try:
            state = self._load_state()
        finally:
            self._delete_borrow(borrow_id)
        returned = state.returned
        if borrow_id not in returned:
            returned = (*returned, borrow_id)
        last_seen = now if state.last_seen is None else max(state.last_seen, now)
        self._save_state(LocalState(last_seen=last_seen, returned=returned))

    def reanchor(self, server_time: float) -> None:
        """Pull the latest time seen back to ``server_time`` if it is ahead of it: after a clock
        that once ran ahead (and was put right), a still-valid file works again. Only for a time
        the server signed over this connection's fresh nonce, by a key this container trusts
        (``Borrower`` checks both); an unsigned or recorded time would undo the clock check."""
        server_time = _check_now(server_time)
        state = self._load_state()
        if state.last_seen is not None and state.last_seen > server_time:
            self._save_state(LocalState(last_seen=server_time, returned=state.returned))

    def touch(self, now: float) -> None:
        """Remember ``now`` as seen (it never goes back): after every server contact and check."""
        self._advance(self._load_state(), _check_now(now))

    def state(self) -> LocalState:
        """The local state, its signature checked (``BorrowedFileError`` if edited)."""
        return self._load_state()

    # ---------------------------------------------------------------------------- internals

    def _delete_borrow(self, borrow_id: str) -> None:
        for product in self.borrowed_products():
            path = self._lic_path(product)
            data = self.borrowed(product)
            if path is None or data is None:
                continue
            try:
                lic, _, _ = borrowing.parse_borrowed_file(data)
            except BorrowedFileError:
                continue
            if lic.borrow_id == borrow_id:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                osdeps.fsync_dir(path.parent)

    def _advance(self, state: LocalState, now: float) -> None:
        if state.last_seen is not None and state.last_seen >= now:
            return
        self._save_state(LocalState(last_seen=now, returned=state.returned))

    def _save_state(self, state: LocalState) -> None:
        body = {"last_seen": state.last_seen, "returned": list(state.returned)}
        payload = json.dumps(body, sort_keys=True, ensure_ascii=True)
        sig = signing.sign(self.private_key, signing.DOMAIN_LOCAL_STATE, payload.encode("utf-8"))
        doc = {
            "format": FMT_STATE,
            "version": 1,
            "payload": payload,
            "signature": base64.b64encode(sig).decode("ascii"),
        }
        osdeps.write_atomic(self.root / STATE_FILE, (json.dumps(doc, indent=2) + "\n").encode())

    def _load_state(self) -> LocalState:
        path = self.root / STATE_FILE
        edited = BorrowedFileError(_EDITED.format(path=path), "clock_set_back")
        try:
            data = _read_limited(path)
        except ContainerError:
            raise edited from None
        if data is None:
            raise edited
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != FMT_STATE:
                raise ValueError("not a local state")
            payload, sig_text = doc["payload"], doc["signature"]
            if not isinstance(payload, str) or not isinstance(sig_text, str):
                raise ValueError("bad field types")
            sig = base64.b64decode(sig_text, validate=True)
        except (ValueError, KeyError, UnicodeDecodeError, binascii.Error, RecursionError):
            raise edited from None
        pub = self.private_key.public_key()
        if not signing.verify(pub, signing.DOMAIN_LOCAL_STATE, payload.encode("utf-8"), sig):
            raise edited
        body = json.loads(payload)
        last_seen, returned = body["last_seen"], body["returned"]
        return LocalState(
            last_seen=None if last_seen is None else float(last_seen),
            returned=tuple(str(r) for r in returned),
        )
