"""The server's data folder: its identity key, and a lock so two servers never share it.

Layout (more files arrive with the store)::

    DATA/
      server.key     the server's Ed25519 identity (PEM, mode 0600), made on first start
      lanlic.lock    held (an exclusive lock, see lanlic.osdeps) by the running server
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic import osdeps
from lanlic.core import signing
from lanlic.errors import LanlicError

__all__ = ["DataDir", "DataDirError", "default_data_dir"]


class DataDirError(LanlicError):
    """The data folder cannot be used (not writable, in use by another server, corrupt)."""

    code = "data_dir"


def default_data_dir() -> Path:
    """``$LANLIC_DATA``, else the user's data folder (``osdeps.user_data_dir``: on Linux
    ``$XDG_DATA_HOME/lanlic``, else ``~/.local/share/lanlic``)."""
    env = os.environ.get("LANLIC_DATA")
    if env:
        return Path(env)
    return osdeps.user_data_dir()


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock: osdeps.FileLock | None = None

    def prepare(self) -> None:
        try:
            osdeps.make_private_dir(self.path)
        except OSError as exc:
            raise DataDirError(f"cannot create the data folder {self.path}: {exc}") from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise DataDirError(f"the data folder {self.path} is not writable")

    def exposure(self) -> str | None:
        """A warning when other local users can read or enter the folder (its files are made
        private, but a folder left 0755 by a package lets them list it), else None."""
        try:
            mode = self.path.stat().st_mode & 0o777
        except OSError:
            return None
        if not mode & 0o077:
            return None
        return (
            f"the data folder {self.path} is open to other users (mode {mode:04o}); its files "
            f"are kept private, but make the folder private too: chmod 700 {self.path}"
        )

    def lock(self) -> None:
        """Take the folder for this process; refuse if another server has it."""
        self.prepare()
        try:
            lock = osdeps.FileLock(self.path / "lanlic.lock", wait=False)
        except BlockingIOError:
            raise DataDirError(
                f"another lanlic server is already using the data folder {self.path}"
            ) from None
        lock.write_note(f"{os.getpid()}\n")
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write_address(self, host: str, port: int) -> None:
        """Say where this folder's server listens, for admin commands on the same machine."""
        info = {"host": host, "port": port, "pid": os.getpid()}
        osdeps.write_atomic(self.path / "server.json", (json.dumps(info) + "\n").encode())

    def clear_address(self) -> str | None:
        """Remove ``server.json``; what went wrong, in one line, or None. (At stop the folder
        may have gone read-only: that is worth a line, not a traceback.)"""
        path = self.path / "server.json"
        try:
            path.unlink()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"could not remove {path}: {exc.strerror or exc}"
        return None

    def server_key(self) -> Ed25519PrivateKey:
        """The server's identity key, made on first use and kept across restarts."""
        path = self.path / "server.key"
        if path.exists():
            try:
                return signing.private_from_pem(path.read_bytes())
            except Exception as exc:
                raise DataDirError(f"the server key {path} is unreadable: {exc}") from exc
        key = Ed25519PrivateKey.generate()
        osdeps.write_atomic(path, signing.private_to_pem(key))
        return key
