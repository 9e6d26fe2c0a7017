"""The server's data folder: its identity key, and a lock so two servers never share it.

Layout (more files arrive with the store)::

    DATA/
      server.key     the server's Ed25519 identity (PEM, mode 0600), made on first start
      lanlic.lock    held (flock) by the running server
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import signing
from lanlic.errors import LanlicError

__all__ = ["DataDir", "DataDirError", "default_data_dir"]


class DataDirError(LanlicError):
    """The data folder cannot be used (not writable, in use by another server, corrupt)."""

    code = "data_dir"


def default_data_dir() -> Path:
    """``$LANLIC_DATA``, else ``$XDG_DATA_HOME/lanlic``, else ``~/.local/share/lanlic``."""
    env = os.environ.get("LANLIC_DATA")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "lanlic"


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 from its first byte, fsynced, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        fd = os.open(self.path / "lanlic.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirError(
                f"another lanlic server is already using the data folder {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_address(self, host: str, port: int) -> None:
        """Say where this folder's server listens, for admin commands on the same machine."""
        info = {"host": host, "port": port, "pid": os.getpid()}
        write_private(self.path / "server.json", (json.dumps(info) + "\n").encode())

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
        write_private(path, signing.private_to_pem(key))
        return key
