"""macOS: POSIX, plus ``F_FULLFSYNC``, a clock that counts sleep, and the machine identity from
``ioreg`` and ``networksetup``."""

# ruff: noqa: E402 - the platform assert must come first, for mypy to skip this file elsewhere
from __future__ import annotations

import sys

assert sys.platform == "darwin"  # mypy checks this module for macOS only

import fcntl
import functools
import os
import subprocess
import time
from pathlib import Path
from typing import Final

import platformdirs

from lanlic.osdeps._posix import *  # noqa: F403 - what every POSIX system shares
from lanlic.osdeps.machineid import (
    MachineSources,
    parse_ioreg_platform_uuid,
    parse_networksetup_ports,
)

#: macOS's own; the rest is ``_posix.__all__``.
__all__ = ["FULL_FSYNC", "fsync_file", "machine_sources", "site_data_dir", "uptime"]

FULL_FSYNC: Final = True
IOREG: Final = ("/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice")
NETWORKSETUP: Final = ("/usr/sbin/networksetup", "-listallhardwareports")
_TIMEOUT: Final = 10.0


def site_data_dir(dirs: platformdirs.PlatformDirs) -> Path:
    return Path(dirs.site_data_dir)


def fsync_file(fd: int) -> None:
    """``F_FULLFSYNC``: macOS's ``fsync`` leaves the data in the drive's cache. A file system
    that refuses it (some network shares) gets the plain ``fsync``."""
    try:
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    except OSError:
        os.fsync(fd)


#: ``CLOCK_MONOTONIC``, which on macOS (unlike ``time.monotonic``) counts sleep.
uptime = functools.partial(time.clock_gettime, time.CLOCK_MONOTONIC)


def run_tool(argv: tuple[str, ...]) -> str:
    """A system tool's output, or "" when it is missing or fails."""
    try:
        out = subprocess.run(  # noqa: S603 - a fixed system tool, no shell
            argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def machine_sources() -> MachineSources:
    return MachineSources(
        parse_ioreg_platform_uuid(run_tool(IOREG)),
        parse_networksetup_ports(run_tool(NETWORKSETUP)),
        f"an IOPlatformUUID in `{' '.join(IOREG)}`, and a port with an Ethernet Address in "
        f"`{' '.join(NETWORKSETUP)}`",
    )
