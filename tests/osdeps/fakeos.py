"""Fakes for the OS boundaries lanlic.osdeps crosses, so Windows' and macOS' code runs here.

Each fake stands where the real thing is called and nowhere deeper: the registry (``winreg``),
``msvcrt``'s byte lock, and the output of ``ioreg``, ``networksetup`` and ``getmac``. The outputs
are shaped after real ones (the field names, order, quoting and indentation those tools print);
the identifiers in them are made up.
"""

# ruff: noqa: E501 - recorded outputs keep the line lengths the tools print
from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

OSDEPS = Path(__file__).resolve().parents[2] / "lanlic" / "osdeps"

# ------------------------------------------------------------------------- recorded outputs

#: ``ioreg -rd1 -c IOPlatformExpertDevice`` on an Intel MacBook Pro (values made up).
IOREG_INTEL = """\
+-o MacBookPro15,1  <class IOPlatformExpertDevice, id 0x100000110, registered, matched, active, busy 0 (1353 ms), retain 42>
    {
      "IOPlatformSystemSleepPolicy" = <534c505402000a000000000000000000000000000000000000000000>
      "compatible" = <"MacBookPro15,1">
      "version" = <"1.0">
      "board-id" = <"Mac-937A206F2EE63C01">
      "IOInterruptSpecifiers" = (<0900000005000000>)
      "platform-feature" = <0200000000000000>
      "serial-number" = <4330325a4b30414e4c56444d0000000000000000000000000000000000000000>
      "IOInterruptControllers" = ("io-apic-0")
      "IOPlatformUUID" = "5C9F3E1A-2B7D-5E40-8C61-9A0D4F2B7E13"
      "target-type" = <"Mac">
      "IOBusyInterest" = "IOCommand is not serializable"
      "model" = <"MacBookPro15,1">
      "manufacturer" = <"Apple Inc.">
      "IOPlatformSerialNumber" = "C02ZK0ANLVDM"
      "product-name" = <"MacBookPro15,1">
      "IOConsoleSecurityInterest" = "IOCommand is not serializable"
      "name" = <"/">
      "clock-frequency" = <00e1f505>
      "IOPolledInterface" = "SMCPolledInterface is not serializable"
    }
"""
IOREG_UUID = "5C9F3E1A-2B7D-5E40-8C61-9A0D4F2B7E13"

#: The same on an Apple silicon Mac mini: other properties, the same line for the UUID.
IOREG_ARM = """\
+-o Macmini9,1  <class IOPlatformExpertDevice, id 0x100000208, registered, matched, active, busy 0 (28 ms), retain 29>
    {
      "IORegistryEntryPropertyKeys" = ("IOPlatformUUID","IOPlatformSerialNumber")
      "manufacturer" = <"Apple Inc.">
      "compatible" = <"J274AP","Macmini9,1","AppleARM">
      "model" = <"Macmini9,1">
      "IOPlatformSerialNumber" = "C07FN2XYQ6NV"
      "IOPlatformUUID" = "0E7A11C4-63B2-5D8F-9E20-7B4C1A3F6D95"
      "target-type" = <"J274">
      "name" = <"device-tree">
    }
"""

#: ``networksetup -listallhardwareports`` on an iMac with a USB Ethernet dongle and Thunderbolt.
NETWORKSETUP = """\

Hardware Port: Bluetooth DUN
Device: Bluetooth-Modem
Ethernet Address: N/A

Hardware Port: USB 10/100/1000 LAN
Device: en7
Ethernet Address: 00:e0:4c:68:12:34

Hardware Port: Ethernet
Device: en0
Ethernet Address: 38:c9:86:41:5a:7e

Hardware Port: Wi-Fi
Device: en1
Ethernet Address: 8c:85:90:2b:6e:11

Hardware Port: Thunderbolt Bridge
Device: bridge0
Ethernet Address: N/A

Hardware Port: Thunderbolt 1
Device: en2
Ethernet Address: 82:1f:3c:58:d0:01

VLAN Configurations
===================
"""
NETWORKSETUP_MAC = "38:c9:86:41:5a:7e"

#: ``getmac /v /fo csv /nh`` on a Windows 11 laptop with Hyper-V and a VPN client.
GETMAC = """\
"vEthernet (Default Switch)","Hyper-V Virtual Ethernet Adapter","00-15-5D-01-C8-02","\\Device\\Tcpip_{6B1F0A57-3C2E-4D8B-9A61-2E7F5C0D4B93}"
"Wi-Fi","Intel(R) Wi-Fi 6 AX201 160MHz","D8-F8-83-5E-21-07","\\Device\\Tcpip_{0C4D2E9A-7B15-4F63-8E20-5A9D1C3B7F64}"
"Ethernet","Intel(R) Ethernet Connection (13) I219-V","A4-BB-6D-90-3C-42","Media disconnected"
"Bluetooth Network Connection","Bluetooth Device (Personal Area Network)","D8-F8-83-5E-21-0B","Media disconnected"
"OpenVPN TAP-Windows6","TAP-Windows Adapter V9","00-FF-3A-9C-41-D2","Media disconnected"
"""
GETMAC_MAC = "a4:bb:6d:90:3c:42"

#: The registry's MachineGuid (HKLM\\SOFTWARE\\Microsoft\\Cryptography), a REG_SZ.
MACHINE_GUID = "3f9c2a71-8d4e-4b6a-a0c5-7e21d94f6b38"

REG_SZ = 1
REG_BINARY = 3


# ------------------------------------------------------------------------------------ fakes


def fake_winreg(values: Mapping[tuple[str, str], tuple[Any, int]]) -> types.ModuleType:
    """A ``winreg`` whose HKLM holds ``values``: {(key path, value name): (data, type)}."""
    mod = types.ModuleType("winreg")
    mod.HKEY_LOCAL_MACHINE = 0x80000002  # type: ignore[attr-defined]
    mod.KEY_READ = 0x20019  # type: ignore[attr-defined]
    mod.KEY_WOW64_64KEY = 0x0100  # type: ignore[attr-defined]
    mod.REG_SZ = REG_SZ  # type: ignore[attr-defined]
    mod.REG_BINARY = REG_BINARY  # type: ignore[attr-defined]
    mod.calls = []  # type: ignore[attr-defined]

    class Key:
        def __init__(self, path: str) -> None:
            self.path = path

        def __enter__(self) -> Key:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    def open_key(root: int, path: str, reserved: int = 0, access: int = 0) -> Key:
        mod.calls.append(("OpenKey", root, path, access))  # type: ignore[attr-defined]
        if root != mod.HKEY_LOCAL_MACHINE or not any(p == path for p, _ in values):  # type: ignore[attr-defined]
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return Key(path)

    def query_value_ex(key: Key, name: str) -> tuple[Any, int]:
        try:
            return values[(key.path, name)]
        except KeyError:
            raise FileNotFoundError(2, "The system cannot find the file specified") from None

    mod.OpenKey = open_key  # type: ignore[attr-defined]
    mod.QueryValueEx = query_value_ex  # type: ignore[attr-defined]
    return mod


def fake_msvcrt() -> types.ModuleType:
    """An ``msvcrt`` whose byte lock is an flock on the same descriptor: the same meaning
    (exclusive, refused at once with LK_NBLCK, dropped when the holder dies), taken from the
    real ``fcntl`` before anything can hide it."""
    import fcntl

    flock = fcntl.flock
    mod = types.ModuleType("msvcrt")
    mod.LK_UNLCK, mod.LK_LOCK, mod.LK_NBLCK = 0, 1, 2  # type: ignore[attr-defined]

    def locking(fd: int, mode: int, nbytes: int) -> None:
        if mode == mod.LK_UNLCK:  # type: ignore[attr-defined]
            flock(fd, fcntl.LOCK_UN)
        elif mode == mod.LK_NBLCK:  # type: ignore[attr-defined]
            try:
                flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PermissionError(13, "Permission denied") from None  # as Windows says
        else:
            flock(fd, fcntl.LOCK_EX)

    mod.locking = locking  # type: ignore[attr-defined]
    return mod


def fake_run(outputs: Mapping[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A ``subprocess.run`` for system tools: the recorded output of each tool named by its
    program's base name, and "command not found" (``FileNotFoundError``) for any other."""

    def run(argv: Any, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        name = Path(argv[0]).name
        if name not in outputs:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return subprocess.CompletedProcess(argv, 0, outputs[name], "")

    return run


def load_backend(name: str, platform: str) -> types.ModuleType:
    """Execute ``lanlic/osdeps/<name>.py`` as if on ``platform`` (the caller has put fakes for
    what it imports in place), as a module object of its own: nothing in ``sys.modules``
    changes."""
    real = sys.platform
    spec = importlib.util.spec_from_file_location(f"_fake_{platform}_{name}", OSDEPS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.platform = platform  # type: ignore[misc]
    try:
        spec.loader.exec_module(module)
    finally:
        sys.platform = real  # type: ignore[misc]
    return module


def fake_pywin32() -> list[types.ModuleType]:
    """pywin32's service modules (the [windows] extra), as far as lanlic imports them."""

    class ServiceFramework:
        def __init__(self, args: Any) -> None:
            self.args = args

        def ReportServiceStatus(self, status: int) -> None:
            pass

    util = types.ModuleType("win32serviceutil")
    util.ServiceFramework = ServiceFramework  # type: ignore[attr-defined]
    util.HandleCommandLine = lambda cls, argv: None  # type: ignore[attr-defined]
    svc = types.ModuleType("win32service")
    svc.SERVICE_STOP_PENDING = 3  # type: ignore[attr-defined]
    manager = types.ModuleType("servicemanager")
    manager.LogInfoMsg = lambda msg: None  # type: ignore[attr-defined]
    return [util, svc, manager]
