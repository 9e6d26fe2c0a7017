"""The machine fingerprint that binds an ``act`` borrowing container to one computer.

``machine_fingerprint()`` reads two things, both stable across reboots:

* the machine id: ``/etc/machine-id`` (made once when the OS is installed), else
  ``/var/lib/dbus/machine-id``; ``$LANLIC_MACHINE_ID_FILE`` replaces the default path, so tests
  and demos can play two machines on one host;
* the primary MAC address, from ``/sys/class/net``: among the interfaces with a non-zero
  ``address``, a physical one (it has a ``device`` entry) that is not on USB, else a physical one
  on USB (a dongle or a dock), else any other that is not loopback; within each group the name
  that sorts first. For Wi-Fi the card's permanent address (``phy80211/macaddress``) is used, as
  NetworkManager may randomise the interface's address while it scans.

The fingerprint is ``"mfp:"`` + the first 32 hex digits of SHA-256 over
``machine id + "\\n" + MAC``. It does not change on reboot, suspend, a change of network, an OS
upgrade or plugging in a USB network adapter. It changes when the OS is reinstalled (a new machine
id), when the disk is moved to other hardware, or when a new built-in network card comes first by
name (or the primary one is replaced); borrowed files bound to the old fingerprint then stop
working, and the user enrolls again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

__all__ = ["ENV_MACHINE_ID_FILE", "machine_fingerprint", "primary_mac"]

DEFAULT_MACHINE_ID: Final = Path("/etc/machine-id")
DBUS_MACHINE_ID: Final = Path("/var/lib/dbus/machine-id")
DEFAULT_SYS_CLASS_NET: Final = Path("/sys/class/net")
#: Names the machine-id file to read instead of /etc/machine-id (no fallback then).
ENV_MACHINE_ID_FILE: Final = "LANLIC_MACHINE_ID_FILE"
_ARPHRD_LOOPBACK: Final = "772"
_PREFIX: Final = "mfp:"
_HEX_DIGITS: Final = 32


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _mac(text: str | None) -> str:
    """A MAC address in lowercase, or "" when absent or all zeros."""
    mac = (text or "").strip().lower()
    if not mac or not mac.replace(":", "").strip("0"):
        return ""
    return mac


def primary_mac(sys_class_net: Path = DEFAULT_SYS_CLASS_NET) -> str:
    """The primary MAC address as described in the module docstring, or "" if there is none."""
    try:
        names = sorted(entry.name for entry in sys_class_net.iterdir())
    except OSError:
        return ""
    ranked: list[tuple[int, str, str]] = []
    for name in names:
        iface = sys_class_net / name
        mac = _mac(_read_text(iface / "phy80211" / "macaddress")) or _mac(
            _read_text(iface / "address")
        )
        if not mac:
            continue
        device = iface / "device"
        if device.exists():
            on_usb = os.path.basename(os.path.realpath(device / "subsystem")) == "usb"
            rank = 1 if on_usb else 0
        elif name == "lo" or _read_text(iface / "type") == _ARPHRD_LOOPBACK:
            continue
        else:
            rank = 2
        ranked.append((rank, name, mac))
    return min(ranked)[2] if ranked else ""


def _machine_id(machine_id_path: Path, fallback: Path) -> str:
    override = os.environ.get(ENV_MACHINE_ID_FILE)
    if override and machine_id_path == DEFAULT_MACHINE_ID:
        text = _read_text(Path(override))
        if not text:
            raise OSError(f"${ENV_MACHINE_ID_FILE} names {override}, which is missing or empty")
        return text
    return _read_text(machine_id_path) or _read_text(fallback) or ""


def machine_fingerprint(
    machine_id_path: Path = DEFAULT_MACHINE_ID,
    sys_class_net: Path = DEFAULT_SYS_CLASS_NET,
    *,
    fallback_machine_id_path: Path = DBUS_MACHINE_ID,
) -> str:
    """This machine's fingerprint, ``"mfp:"`` + 32 hex digits (see the module docstring).

    ``machine_id_path`` is read (``$LANLIC_MACHINE_ID_FILE`` instead when the default is given),
    then ``fallback_machine_id_path`` if it is missing or empty. Either part may be missing, not
    both: ``OSError`` then.
    """
    machine_id = _machine_id(machine_id_path, fallback_machine_id_path)
    mac = primary_mac(sys_class_net)
    if not machine_id and not mac:
        raise OSError(
            f"cannot fingerprint this machine: no machine id in {machine_id_path} or "
            f"{fallback_machine_id_path}, and no network interface with a MAC address in "
            f"{sys_class_net}"
        )
    digest = hashlib.sha256(f"{machine_id}\n{mac}".encode()).hexdigest()
    return _PREFIX + digest[:_HEX_DIGITS]
