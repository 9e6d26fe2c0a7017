"""Everything that differs by operating system, in one place (psutil's layout: one module per OS
family, chosen once at import, behind this facade).

What the rest of lanlic asks of the OS, and what each family answers:

==================  ===========================  ==========================  ======================
                    Linux (``_linux``)           macOS (``_darwin``)         Windows (``_windows``)
==================  ===========================  ==========================  ======================
folders             XDG (``~/.local/share``,     ``~/Library/Application     ``%LOCALAPPDATA%``
                    ``~/.config``)               Support``
exclusive lock      ``fcntl.flock``              ``fcntl.flock``             ``msvcrt.locking``
durable write       ``fsync`` + folder fsync     ``F_FULLFSYNC`` + folder    ``fsync`` (no folder
                                                 fsync                       fsync on Windows)
private files       mode 0600 / 0700             mode 0600 / 0700            the profile's ACL
                                                                             (not set by lanlic)
suspend-aware clock ``CLOCK_BOOTTIME``           ``CLOCK_MONOTONIC``         ``time.monotonic``
                                                 (counts sleep on macOS)     (counts sleep)
descriptor limit    ``RLIMIT_NOFILE``            ``RLIMIT_NOFILE``           none
stop signals        SIGINT, SIGTERM              SIGINT, SIGTERM             Ctrl-C, Ctrl-Break,
                    (``add_signal_handler``)     (``add_signal_handler``)    a service stop
                                                                             (``request_stop``)
DPI awareness       nothing (Tk reads X's DPI)   nothing (Retina is native)  system DPI, before Tk
                                                                             (``shcore``/``user32``)
machine identity    ``/etc/machine-id``,         ``ioreg`` IOPlatformUUID,   registry MachineGuid,
                    ``/sys/class/net``           ``networksetup`` MACs       ``getmac`` MACs
==================  ===========================  ==========================  ======================

Other POSIX systems (the BSDs) get ``_posix`` alone: everything but a machine identity.

No other module of lanlic imports ``fcntl``, ``resource``, ``msvcrt`` or ``winreg``, or reads
``/etc`` or ``/sys``: tests fake an OS by faking these modules' boundaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import platformdirs

from lanlic.osdeps.machineid import MachineSources

if sys.platform == "win32":
    from lanlic.osdeps import _windows as _impl
elif sys.platform == "darwin":
    from lanlic.osdeps import _darwin as _impl
elif sys.platform == "linux":
    from lanlic.osdeps import _linux as _impl
else:
    from lanlic.osdeps import _posix as _impl

__all__ = [
    "APP_NAME",
    "FULL_FSYNC",
    "FileLock",
    "MachineSources",
    "fd_limit",
    "fsync_dir",
    "fsync_file",
    "machine_sources",
    "make_dpi_aware",
    "make_private_dir",
    "on_stop",
    "request_stop",
    "site_data_dir",
    "uptime",
    "user_config_dir",
    "user_data_dir",
    "user_log_dir",
    "write_atomic",
    "write_new",
]

APP_NAME: Final = "lanlic"
#: True where a plain fsync does not reach the disk's platter (macOS): SQLite then needs
#: ``PRAGMA fullfsync`` to keep the promise that a borrow is on disk before the client hears yes.
FULL_FSYNC: Final[bool] = _impl.FULL_FSYNC

_DIRS: Final = platformdirs.PlatformDirs(APP_NAME, appauthor=False)


# ------------------------------------------------------------------------------------ folders


def user_data_dir() -> Path:
    """The user's data folder for lanlic: ``$XDG_DATA_HOME/lanlic`` or ``~/.local/share/lanlic``
    on Linux, ``~/Library/Application Support/lanlic`` on macOS, ``%LOCALAPPDATA%\\lanlic`` on
    Windows."""
    return Path(_DIRS.user_data_dir)


def user_config_dir() -> Path:
    """The user's config folder: ``$XDG_CONFIG_HOME/lanlic`` or ``~/.config/lanlic`` on Linux;
    the same as the data folder on macOS and Windows."""
    return Path(_DIRS.user_config_dir)


def user_log_dir() -> Path:
    """Where a user's lanlic writes logs (``~/.local/state/lanlic/log``,
    ``~/Library/Logs/lanlic``, ``%LOCALAPPDATA%\\lanlic\\Logs``)."""
    return Path(_DIRS.user_log_dir)


def site_data_dir() -> Path:
    """The machine-wide data folder a service uses: ``/var/lib/lanlic`` on Linux (systemd's
    ``StateDirectory``), ``/Library/Application Support/lanlic`` on macOS,
    ``%PROGRAMDATA%\\lanlic`` on Windows."""
    return _impl.site_data_dir(_DIRS)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) readable by this user only: mode 0700 on POSIX (quietly
    not on file systems without modes, FAT on a USB stick). On Windows nothing is set: the folder
    inherits its parent's ACL, which under the user's profile means the user, SYSTEM and the
    Administrators."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _impl.set_mode(path, 0o700)


# ---------------------------------------------------------------------------- durable writes


def fsync_file(fd: int) -> None:
    """Flush a file's data to the disk itself (``F_FULLFSYNC`` on macOS, where ``fsync`` stops
    at the drive's cache)."""
    _impl.fsync_file(fd)


def fsync_path(path: Path) -> None:
    """``fsync_file`` on a file named by its path (opened for writing, as Windows asks)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        _impl.fsync_file(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a deletion in ``path`` durable: fsync the folder on POSIX; nothing on
    Windows, where NTFS journals the rename itself and a folder cannot be opened to fsync it.
    A file system that cannot fsync a folder (FAT on a USB stick) is let be."""
    _impl.fsync_dir(path)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Put ``data`` in ``path`` atomically and durably: a temporary file beside it (``mode`` from
    its first byte on POSIX), flushed to disk, renamed over ``path``, and the folder fsynced.
    A crash leaves the old file or the new one, never a mix; the temporary file is removed on
    failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                _impl.set_file_mode(f.fileno(), mode)
            f.write(data)
            f.flush()
            _impl.fsync_file(f.fileno())
        _impl.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _impl.fsync_dir(path.parent)


def write_new(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` (never a symlink's target) with ``data``, durably; ``FileExistsError``
    if it exists. For keys that must never be overwritten. Removed again on failure."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            _impl.set_file_mode(f.fileno(), mode)  # the umask may have narrowed open's mode
            f.write(data)
            f.flush()
            _impl.fsync_file(f.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    _impl.fsync_dir(path.parent)


# -------------------------------------------------------------------------------------- lock


class FileLock:
    """An exclusive lock on a lock file, held until ``release`` (or the process ends: the OS
    drops it then, so a killed holder never leaves it stuck). ``fcntl.flock`` on POSIX,
    ``msvcrt.locking`` of the file's first byte on Windows."""

    def __init__(self, path: Path, *, wait: bool = True) -> None:
        """Open (mode 0600) and lock ``path``. With ``wait`` False, ``BlockingIOError`` if
        another process holds it."""
        self.path = Path(path)
        self.fd: int | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        try:
            _impl.lock_fd(fd, wait=wait)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def write_note(self, text: str) -> None:
        """Replace the lock file's content (who holds it, for a human reading it)."""
        assert self.fd is not None
        _impl.write_locked(self.fd, text.encode())

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                _impl.unlock_fd(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------ clock, limits, stop


#: Seconds on a clock that never jumps and keeps counting while the machine is suspended
#: (the anchor the wall clock is checked against). The OS's own clock call, not a wrapper:
#: the server reads it on every read of requests.
uptime: Callable[[], float] = _impl.uptime


def fd_limit() -> int | None:
    """The soft limit on open file descriptors, or None where there is none (Windows) or it is
    unlimited."""
    return _impl.fd_limit()


#: What ``request_stop`` calls: one per ``on_stop`` still in force.
_stoppers: list[Callable[[], None]] = []


def on_stop(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> Callable[[], None]:
    """Call ``stop`` in ``loop`` when the process is asked to stop: Ctrl-C and SIGTERM on POSIX;
    Ctrl-C and Ctrl-Break on Windows; and ``request_stop`` on any OS (a Windows service's stop
    callback). Returns the function that removes the handlers again."""
    remove_handlers = _impl.on_stop(loop, stop)

    def stop_soon() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
            loop.call_soon_threadsafe(stop)

    _stoppers.append(stop_soon)

    def remove() -> None:
        remove_handlers()
        with contextlib.suppress(ValueError):
            _stoppers.remove(stop_soon)

    return remove


def request_stop() -> None:
    """Stop, from any thread, whatever waits on ``on_stop`` (a Windows service's stop)."""
    for stop_soon in list(_stoppers):
        stop_soon()


# -------------------------------------------------------------------------------- display


def make_dpi_aware() -> str:
    """Before lanlic opens a Tk window of its own: on Windows, declare the process aware of the
    display's scale (system DPI), so a scaled display (125 %, 150 %) shows the window sharp
    instead of stretched and blurry; nothing elsewhere. Returns the call that took effect
    ("shcore", "user32"), "already" where the process had an awareness set, or "" for none."""
    return _impl.make_dpi_aware()


# ------------------------------------------------------------------------- machine identity


def machine_sources() -> MachineSources:
    """What this OS offers to tell this machine apart: a machine id and the primary MAC address
    (see ``lanlic.osdeps.machineid`` and protocol/SPEC.md); either may be "" when missing."""
    return _impl.machine_sources()
