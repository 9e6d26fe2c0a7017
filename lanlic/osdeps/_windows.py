"""Windows: ``msvcrt`` locks, no folder fsync, no file modes, no descriptor limit, Ctrl-C and
Ctrl-Break as stop signals, and the machine identity from the registry and ``getmac``."""

# ruff: noqa: E402 - the platform assert must come first, for mypy to skip this file elsewhere
from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy checks this module for Windows only

import asyncio
import contextlib
import ctypes
import msvcrt
import os
import signal
import subprocess
import threading
import time
import winreg
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import platformdirs

from lanlic.osdeps.machineid import MachineSources, parse_getmac_csv

FULL_FSYNC: Final = False
MACHINE_GUID_KEY: Final = r"SOFTWARE\Microsoft\Cryptography"
GETMAC: Final = ("getmac", "/v", "/fo", "csv", "/nh")
_TIMEOUT: Final = 10.0
#: How long ``replace`` retries while another process (a virus scanner, a reader) has the
#: target open: Windows refuses to replace an open file.
_REPLACE_TRIES: Final = 20
_LOCK_POLL: Final = 0.05
#: ``PROCESS_SYSTEM_DPI_AWARE``: Tk 8.6 reads the DPI once, at start, and does not redraw when a
#: window moves to a monitor of another scale, so per-monitor awareness would draw it wrong there.
PROCESS_SYSTEM_DPI_AWARE: Final = 1


def site_data_dir(dirs: platformdirs.PlatformDirs) -> Path:
    return Path(dirs.site_data_dir)


def set_mode(path: Path, mode: int) -> None:
    """Nothing: Windows keeps no POSIX modes; a folder inherits its parent's ACL."""


def set_file_mode(fd: int, mode: int) -> None:
    """Nothing, as ``set_mode``."""


def fsync_file(fd: int) -> None:
    os.fsync(fd)  # FlushFileBuffers: through the drive's cache


def fsync_dir(path: Path) -> None:
    """Nothing: a folder cannot be opened to flush it, and NTFS journals renames itself."""


def replace(src: str | Path, dst: str | Path) -> None:
    for _ in range(_REPLACE_TRIES - 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            time.sleep(_LOCK_POLL)
    os.replace(src, dst)


def lock_fd(fd: int, *, wait: bool) -> None:
    """Lock the file's first byte (``msvcrt.LK_LOCK`` gives up after 10 s, so waiting polls)."""
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return
        except OSError:
            if not wait:
                raise BlockingIOError("the file is locked by another process") from None
        time.sleep(_LOCK_POLL)


def unlock_fd(fd: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def write_locked(fd: int, data: bytes) -> None:
    """A newline in the locked first byte (other processes cannot read it), the note after it,
    where they can."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"\n" + data)


def uptime() -> float:
    """``time.monotonic`` (QueryPerformanceCounter), which counts the time the machine slept."""
    return time.monotonic()


def fd_limit() -> int | None:
    return None  # sockets on Windows are handles with no per-process limit to derive a cap from


def on_stop(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> Callable[[], None]:
    """Ctrl-C and Ctrl-Break through ``signal.signal``, handed to the loop (the event loop has
    no ``add_signal_handler`` on Windows). A service stop calls ``stop`` from its own code."""
    sigs = [signal.SIGINT, signal.SIGBREAK]
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
            loop.call_soon_threadsafe(stop)

    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # a service's thread: signals go to the main thread; request_stop
    for sig in sigs:
        previous[sig] = signal.signal(sig, handler)

    def remove() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return remove


def read_machine_guid() -> str:
    """``HKLM\\SOFTWARE\\Microsoft\\Cryptography\\MachineGuid`` (the 64-bit view), or ""."""
    try:
        with winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE,
            MACHINE_GUID_KEY,
            0,
            winreg.KEY_READ | winreg.KEY_WOW64_64KEY,
        ) as key:
            value, kind = winreg.QueryValueEx(key, "MachineGuid")
    except OSError:
        return ""
    return value.strip() if kind == winreg.REG_SZ and isinstance(value, str) else ""


def run_getmac() -> str:
    try:
        out = subprocess.run(  # noqa: S603 - a fixed system tool, no shell
            GETMAC,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            creationflags=subprocess.CREATE_NO_WINDOW,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def machine_sources() -> MachineSources:
    return MachineSources(
        read_machine_guid(),
        parse_getmac_csv(run_getmac()),
        f"MachineGuid in HKLM\\{MACHINE_GUID_KEY}, and an adapter with a physical address in "
        f"`{' '.join(GETMAC)}`",
    )


def make_dpi_aware() -> str:
    """Declare the process DPI-aware, before Tk starts: otherwise Windows draws the window at
    96 dpi and stretches the bitmap on a scaled display (125 %, 150 %), and it looks blurry.
    ``shcore.SetProcessDpiAwareness`` (Windows 8.1 and later), else ``user32.SetProcessDPIAware``
    (Vista). Returns which call took effect: "shcore", "user32", "already" (the application or
    its manifest had set an awareness, which stands), or "" (neither call exists)."""
    windll = getattr(ctypes, "windll", None)
    if windll is None:
        return ""
    try:
        hresult = windll.shcore.SetProcessDpiAwareness(PROCESS_SYSTEM_DPI_AWARE)
    except (AttributeError, OSError):  # no shcore.dll before Windows 8.1
        pass
    else:
        return "shcore" if hresult == 0 else "already"  # E_ACCESSDENIED: set before us
    try:
        windll.user32.SetProcessDPIAware()
    except (AttributeError, OSError):
        return ""
    return "user32"
