"""The machine fingerprint that binds an ``act`` borrowing container to one computer.

``machine_fingerprint()`` takes two things the OS keeps stable across reboots
(``lanlic.osdeps.machine_sources``; protocol/SPEC.md states each OS's rules):

* the machine id: Linux ``/etc/machine-id`` (else ``/var/lib/dbus/machine-id``), macOS the
  ``IOPlatformUUID`` (``ioreg -rd1 -c IOPlatformExpertDevice``), Windows the registry's
  ``MachineGuid`` (``HKLM\\SOFTWARE\\Microsoft\\Cryptography``). ``$LANLIC_MACHINE_ID_FILE``
  names a file to read instead, on every OS, so tests and demos can play two machines on one host;
* the primary MAC address: Linux from ``/sys/class/net`` (a physical interface not on USB first;
  a Wi-Fi card's permanent address), macOS the lowest ``enN`` port of ``networksetup
  -listallhardwareports``, Windows the smallest non-virtual adapter address ``getmac`` lists.

The fingerprint is ``"mfp:"`` + the first 32 hex digits of SHA-256 over
``machine id + "\\n" + MAC``. It does not change on reboot, suspend, a change of network, an OS
upgrade or plugging in a USB network adapter (on Linux and macOS). It changes when the OS is
reinstalled (a new machine id), when the disk is moved to other hardware, or when the primary
network card is replaced; borrowed files bound to the old fingerprint then stop working, and the
user enrolls again. Either part may be missing, not both: ``MachineUnidentified`` then.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

from lanlic import osdeps
from lanlic.errors import MachineUnidentified
from lanlic.osdeps import MachineSources

__all__ = ["ENV_MACHINE_ID_FILE", "fingerprint_of", "machine_fingerprint"]

#: Names the file to read the machine id from instead of the OS's (no fallback then).
ENV_MACHINE_ID_FILE: Final = "LANLIC_MACHINE_ID_FILE"
_PREFIX: Final = "mfp:"
_HEX_DIGITS: Final = 32


def fingerprint_of(machine_id: str, mac: str) -> str:
    """``"mfp:"`` + the first 32 hex digits of SHA-256 over ``machine_id + "\\n" + mac``."""
    digest = hashlib.sha256(f"{machine_id}\n{mac}".encode()).hexdigest()
    return _PREFIX + digest[:_HEX_DIGITS]


def machine_fingerprint(sources: MachineSources | None = None) -> str:
    """This machine's fingerprint, ``"mfp:"`` + 32 hex digits (see the module docstring), from
    ``sources`` (default: what this OS offers). ``MachineUnidentified``, saying what was looked
    for, when there is neither a machine id nor a MAC, or ``$LANLIC_MACHINE_ID_FILE`` names a
    missing or empty file."""
    if sources is None:
        sources = osdeps.machine_sources()
    machine_id = sources.machine_id
    override = os.environ.get(ENV_MACHINE_ID_FILE)
    if override:
        try:
            machine_id = Path(override).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            machine_id = ""
        if not machine_id:
            raise MachineUnidentified(
                f"${ENV_MACHINE_ID_FILE} names {override}, which is missing or empty"
            )
    if not machine_id and not sources.mac:
        raise MachineUnidentified(
            f"cannot fingerprint this machine: looked for {sources.looked_in}, found neither"
        )
    return fingerprint_of(machine_id, sources.mac)
