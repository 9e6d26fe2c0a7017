"""What POSIX systems share: ``fcntl`` locks, folder fsync, file modes, ``RLIMIT_NOFILE``, stop
signals through the event loop. ``_linux`` and ``_darwin`` start from this; other POSIX systems
(the BSDs) use it alone."""

# ruff: noqa: E402 - the platform assert must come first, for mypy to skip this file elsewhere
from __future__ import annotations

import sys

assert sys.platform != "win32"  # mypy checks this module for POSIX only

import asyncio
import contextlib
import fcntl
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import platformdirs

from lanlic.osdeps.machineid import MachineSources

#: What every POSIX system takes from here as it is: ``_linux`` and ``_darwin`` import these
#: with ``*`` and name only what they do their own way (the BSDs take this whole module).
__all__ = [
    "fd_limit",
    "fsync_dir",
    "lock_fd",
    "make_dpi_aware",
    "on_stop",
    "replace",
    "set_file_mode",
    "set_mode",
    "unlock_fd",
    "write_locked",
]

FULL_FSYNC: Final = False
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def site_data_dir(dirs: platformdirs.PlatformDirs) -> Path:
    return Path("/var/lib") / dirs.appname if dirs.appname else Path("/var/lib")


def set_mode(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):  # FAT on a USB stick has no modes
        os.chmod(path, mode)


def set_file_mode(fd: int, mode: int) -> None:
    with contextlib.suppress(OSError):
        os.fchmod(fd, mode)


def fsync_file(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (FAT on a USB stick) cannot fsync a folder
    finally:
        os.close(fd)


def replace(src: str | Path, dst: str | Path) -> None:
    os.replace(src, dst)


def lock_fd(fd: int, *, wait: bool) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)


def unlock_fd(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def write_locked(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def uptime() -> float:
    """POSIX promises no clock that counts suspend: the monotonic one (the BSDs' counts it)."""
    return time.monotonic()


def fd_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def on_stop(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach the main thread only; osdeps.request_stop still works
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)

    def remove() -> None:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    return remove


def machine_sources() -> MachineSources:
    return MachineSources("", "", f"nothing: lanlic reads no machine id on {sys.platform}")


def make_dpi_aware() -> str:
    """Nothing: X11 and macOS hand Tk the display's real resolution without asking."""
    return ""
