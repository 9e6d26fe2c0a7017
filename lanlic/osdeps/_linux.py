"""Linux: POSIX, plus ``CLOCK_BOOTTIME`` and the machine identity in ``/etc`` and ``/sys``."""

# ruff: noqa: E402 - the platform assert must come first, for mypy to skip this file elsewhere
from __future__ import annotations

import sys

assert sys.platform == "linux"  # mypy checks this module for Linux only

import functools
import os
import time
from pathlib import Path
from typing import Final

from lanlic.osdeps._posix import *  # noqa: F403 - what every POSIX system shares
from lanlic.osdeps._posix import FULL_FSYNC, fsync_file, site_data_dir
from lanlic.osdeps.machineid import LinuxInterface, MachineSources, linux_primary_mac

#: Linux's own, and the POSIX parts other systems replace; the rest is ``_posix.__all__``.
__all__ = ["FULL_FSYNC", "fsync_file", "machine_sources", "site_data_dir", "uptime"]

MACHINE_ID: Final = Path("/etc/machine-id")
DBUS_MACHINE_ID: Final = Path("/var/lib/dbus/machine-id")
SYS_CLASS_NET: Final = Path("/sys/class/net")
_ARPHRD_LOOPBACK: Final = "772"


#: ``CLOCK_BOOTTIME``: monotonic, and it counts the time the machine was suspended (a partial
#: of the C call: no Python frame on the server's path).
uptime = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def net_interfaces(sys_class_net: Path = SYS_CLASS_NET) -> list[LinuxInterface]:
    """The entries of ``/sys/class/net`` that have an address, sorted by name."""
    try:
        names = sorted(entry.name for entry in sys_class_net.iterdir())
    except OSError:
        return []
    found = []
    for name in names:
        iface = sys_class_net / name
        mac = _read_text(iface / "phy80211" / "macaddress") or ""
        if not mac.replace(":", "").strip("0"):
            mac = _read_text(iface / "address") or ""
        device = iface / "device"
        physical = device.exists()
        on_usb = physical and os.path.basename(os.path.realpath(device / "subsystem")) == "usb"
        loopback = name == "lo" or _read_text(iface / "type") == _ARPHRD_LOOPBACK
        found.append(LinuxInterface(name, mac, physical, on_usb, loopback))
    return found


def machine_sources(
    machine_id_path: Path = MACHINE_ID,
    sys_class_net: Path = SYS_CLASS_NET,
    fallback_machine_id_path: Path = DBUS_MACHINE_ID,
) -> MachineSources:
    """``machine_id_path``, else ``fallback_machine_id_path``; the primary MAC of
    ``sys_class_net`` (see ``linux_primary_mac``)."""
    machine_id = _read_text(machine_id_path) or _read_text(fallback_machine_id_path) or ""
    mac = linux_primary_mac(net_interfaces(sys_class_net))
    looked_in = (
        f"a machine id in {machine_id_path} or {fallback_machine_id_path}, and a network "
        f"interface with a MAC address in {sys_class_net}"
    )
    return MachineSources(machine_id, mac, looked_in)
