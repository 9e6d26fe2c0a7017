"""What each OS offers to tell one machine from another, read into the same two strings.

Pure: the functions here parse what the OS modules read (a registry value, ``ioreg``'s text,
``networksetup``'s and ``getmac``'s listings, the entries of ``/sys/class/net``), so each OS's
rules are tested on any OS from recorded outputs. protocol/SPEC.md states the same rules, so
another implementation computes the same fingerprint (``lanlic.laptop.machine``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LinuxInterface",
    "MachineSources",
    "linux_primary_mac",
    "normalize_mac",
    "parse_getmac_csv",
    "parse_ioreg_platform_uuid",
    "parse_networksetup_ports",
]

_MAC_RE: Final = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")


@dataclass(frozen=True, slots=True)
class MachineSources:
    """The machine's id and primary MAC address, each "" when the OS gave none."""

    machine_id: str
    """The OS's machine id as stored, whitespace stripped (Linux ``/etc/machine-id``, macOS
    ``IOPlatformUUID``, Windows ``MachineGuid``)."""
    mac: str
    """The primary MAC address, lowercase hex pairs joined by ``:``."""
    looked_in: str
    """Where they were looked for, in words, for the error when both are missing."""


def normalize_mac(text: str | None) -> str:
    """A MAC address as lowercase pairs joined by ``:``, or "" when absent, malformed or all
    zeros (``AA-BB-..`` from Windows is accepted)."""
    mac = (text or "").strip().lower()
    if not _MAC_RE.fullmatch(mac):
        return ""
    mac = mac.replace("-", ":")
    return mac if mac.replace(":", "").strip("0") else ""


# ------------------------------------------------------------------------------------ Linux


@dataclass(frozen=True, slots=True)
class LinuxInterface:
    """One entry of ``/sys/class/net``, as ``lanlic.osdeps._linux`` reads it."""

    name: str
    mac: str
    """The Wi-Fi card's permanent address (``phy80211/macaddress``) if any, else ``address``."""
    physical: bool
    """It has a ``device`` entry (a card, not a bridge, tunnel or VPN)."""
    on_usb: bool
    """Its device's subsystem is ``usb`` (a dongle or a dock)."""
    loopback: bool
    """Named ``lo`` or of ARP type 772."""


def _linux_mac(text: str) -> str:
    """As the kernel shows it, lowercase; "" when absent or all zeros (any length: Linux has
    had the rule since before this module, and a stricter one would move fingerprints)."""
    mac = text.strip().lower()
    return mac if mac.replace(":", "").strip("0") else ""


def linux_primary_mac(interfaces: Iterable[LinuxInterface]) -> str:
    """Among the interfaces with a MAC: a physical one not on USB, else a physical one on USB,
    else any other that is not loopback; within each group the name that sorts first."""
    ranked: list[tuple[int, str, str]] = []
    for iface in interfaces:
        mac = _linux_mac(iface.mac)
        if not mac:
            continue
        if iface.physical:
            rank = 1 if iface.on_usb else 0
        elif iface.loopback:
            continue
        else:
            rank = 2
        ranked.append((rank, iface.name, mac))
    return min(ranked)[2] if ranked else ""


# ------------------------------------------------------------------------------------ macOS

_IOREG_UUID_RE: Final = re.compile(r'^\s*"IOPlatformUUID"\s*=\s*"([^"]*)"\s*$', re.MULTILINE)
_EN_RE: Final = re.compile(r"en([0-9]+)")


def parse_ioreg_platform_uuid(text: str) -> str:
    """The ``IOPlatformUUID`` in the output of ``ioreg -rd1 -c IOPlatformExpertDevice``, or ""
    when there is none."""
    found = _IOREG_UUID_RE.search(text)
    return found.group(1).strip() if found else ""


def parse_networksetup_ports(text: str) -> str:
    """The primary MAC in ``networksetup -listallhardwareports``: the ``Ethernet Address`` of the
    ``enN`` device with the lowest N that has one (``en0``, the built-in port, on every Mac),
    or "". These are the ports' hardware addresses, not the private per-network addresses
    macOS may put on Wi-Fi."""
    best: tuple[int, str] | None = None
    device = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "Hardware Port":
            device = ""
        elif key == "Device":
            device = value
        elif key == "Ethernet Address":
            number = _EN_RE.fullmatch(device)
            mac = normalize_mac(value)
            if number and mac and (best is None or int(number.group(1)) < best[0]):
                best = (int(number.group(1)), mac)
    return best[1] if best else ""


# ---------------------------------------------------------------------------------- Windows

#: Words in an adapter's description that mark it virtual (Hyper-V, VPN, Bluetooth...): such
#: adapters come and go, so they are chosen only when nothing else has a MAC.
_VIRTUAL_WORDS: Final = (
    "virtual",
    "hyper-v",
    "vpn",
    "tap-",
    "tunnel",
    "loopback",
    "bluetooth",
    "miniport",
    "vmware",
    "virtualbox",
    "wsl",
)


def parse_getmac_csv(text: str) -> str:
    """The primary MAC in ``getmac /v /fo csv /nh`` (connection name, adapter description,
    physical address, transport): the smallest address of an adapter whose description names
    none of ``_VIRTUAL_WORDS``, else the smallest of the others, or "". A disconnected or
    disabled adapter still counts, so turning Wi-Fi off changes nothing."""
    ranked: list[tuple[int, str]] = []
    for row in csv.reader(text.splitlines()):
        if len(row) < 3:
            continue
        mac = normalize_mac(row[2])
        if not mac:
            continue
        virtual = any(word in row[1].lower() for word in _VIRTUAL_WORDS)
        ranked.append((1 if virtual else 0, mac))
    return min(ranked)[1] if ranked else ""
