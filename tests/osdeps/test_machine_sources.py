"""Each OS's machine identity, from recorded outputs of its sources (tests/osdeps/fakeos.py),
read by the OS's own module of lanlic.osdeps with only the boundary faked; and the failure cases:
a source missing, unreadable or saying nothing usable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fakeos import (
    GETMAC,
    GETMAC_MAC,
    IOREG_ARM,
    IOREG_INTEL,
    IOREG_UUID,
    MACHINE_GUID,
    NETWORKSETUP,
    NETWORKSETUP_MAC,
    REG_BINARY,
    REG_SZ,
    fake_msvcrt,
    fake_run,
    fake_winreg,
    load_backend,
)

from lanlic.errors import MachineUnidentified
from lanlic.laptop.machine import ENV_MACHINE_ID_FILE, fingerprint_of, machine_fingerprint
from lanlic.osdeps.machineid import (
    normalize_mac,
    parse_getmac_csv,
    parse_ioreg_platform_uuid,
    parse_networksetup_ports,
)

CRYPTO = r"SOFTWARE\Microsoft\Cryptography"


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MACHINE_ID_FILE, raising=False)


# --------------------------------------------------------------------------------- parsers


def test_normalize_mac() -> None:
    assert normalize_mac("A4-BB-6D-90-3C-42") == "a4:bb:6d:90:3c:42"
    assert normalize_mac(" 38:C9:86:41:5A:7E\n") == "38:c9:86:41:5a:7e"
    for bad in ("", "N/A", "Disabled", "00-00-00-00-00-00", "a4-bb:6d-90-3c-42", "a4:bb:6d"):
        assert normalize_mac(bad) == ""


def test_ioreg_uuid_intel_and_apple_silicon() -> None:
    assert parse_ioreg_platform_uuid(IOREG_INTEL) == IOREG_UUID
    assert parse_ioreg_platform_uuid(IOREG_ARM) == "0E7A11C4-63B2-5D8F-9E20-7B4C1A3F6D95"


def test_ioreg_without_the_uuid_gives_nothing() -> None:
    """Not the property-keys list that names it, not a serial number: only its own line."""
    lines = [ln for ln in IOREG_ARM.splitlines() if '"IOPlatformUUID" =' not in ln]
    assert parse_ioreg_platform_uuid("\n".join(lines)) == ""
    assert parse_ioreg_platform_uuid("") == ""


def test_networksetup_lowest_en_port_wins() -> None:
    """en0 (built in) over en1 (Wi-Fi), en2 (Thunderbolt) and en7 (a USB dongle listed first)."""
    assert parse_networksetup_ports(NETWORKSETUP) == NETWORKSETUP_MAC
    without_en0 = NETWORKSETUP.replace("Device: en0\n", "Device: en9\n")
    assert parse_networksetup_ports(without_en0) == "8c:85:90:2b:6e:11"  # en1 then
    assert parse_networksetup_ports("Hardware Port: Bluetooth DUN\nDevice: x\n") == ""


def test_getmac_physical_adapter_wins_whether_connected_or_not() -> None:
    """The Hyper-V switch, the VPN's TAP and Bluetooth are passed over; of the Wi-Fi card and
    the (unplugged) Ethernet port the smaller address is taken, so unplugging changes nothing."""
    assert parse_getmac_csv(GETMAC) == GETMAC_MAC
    virtual_only = "\n".join(ln for ln in GETMAC.splitlines() if "Intel" not in ln)
    assert parse_getmac_csv(virtual_only) == "00:15:5d:01:c8:02"
    assert parse_getmac_csv('"Ethernet","Intel(R) I219-V","Disabled","Disconnected"') == ""
    assert parse_getmac_csv("") == ""


# ------------------------------------------------------------------------- macOS's module


def test_darwin_sources_from_ioreg_and_networksetup(monkeypatch: pytest.MonkeyPatch) -> None:
    darwin = load_backend("_darwin", "darwin")
    calls: list[list[str]] = []
    run = fake_run({"ioreg": IOREG_INTEL, "networksetup": NETWORKSETUP})

    def spy(argv: list[str], *a: object, **k: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return run(argv, *a, **k)

    monkeypatch.setattr(subprocess, "run", spy)
    sources = darwin.machine_sources()
    assert (sources.machine_id, sources.mac) == (IOREG_UUID, NETWORKSETUP_MAC)
    assert ["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"] in calls
    assert machine_fingerprint(sources) == fingerprint_of(IOREG_UUID, NETWORKSETUP_MAC)


def test_darwin_without_its_tools_is_unidentified(monkeypatch: pytest.MonkeyPatch) -> None:
    darwin = load_backend("_darwin", "darwin")
    monkeypatch.setattr(subprocess, "run", fake_run({}))
    sources = darwin.machine_sources()
    assert (sources.machine_id, sources.mac) == ("", "")
    with pytest.raises(MachineUnidentified, match=r"IOPlatformUUID.*ioreg") as caught:
        machine_fingerprint(sources)
    assert caught.value.code == "machine_unidentified"
    assert "usage" not in str(caught.value)


def test_darwin_failing_tool_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    darwin = load_backend("_darwin", "darwin")

    def failing(argv: list[str], *a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, IOREG_INTEL, "ioreg: error")

    monkeypatch.setattr(subprocess, "run", failing)
    assert darwin.machine_sources().machine_id == ""


def test_darwin_id_alone_or_mac_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    darwin = load_backend("_darwin", "darwin")
    monkeypatch.setattr(subprocess, "run", fake_run({"ioreg": IOREG_ARM}))
    alone = darwin.machine_sources()
    assert machine_fingerprint(alone) == fingerprint_of(alone.machine_id, "")
    monkeypatch.setattr(subprocess, "run", fake_run({"networksetup": NETWORKSETUP}))
    assert machine_fingerprint(darwin.machine_sources()) == fingerprint_of("", NETWORKSETUP_MAC)


# ----------------------------------------------------------------------- Windows's module


def load_windows(
    monkeypatch: pytest.MonkeyPatch, values: dict[tuple[str, str], tuple[object, int]]
):  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "winreg", fake_winreg(values))
    monkeypatch.setitem(sys.modules, "msvcrt", fake_msvcrt())
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    return load_backend("_windows", "win32")


def test_windows_sources_from_the_registry_and_getmac(monkeypatch: pytest.MonkeyPatch) -> None:
    windows = load_windows(monkeypatch, {(CRYPTO, "MachineGuid"): (MACHINE_GUID, REG_SZ)})
    monkeypatch.setattr(subprocess, "run", fake_run({"getmac": GETMAC}))
    sources = windows.machine_sources()
    assert (sources.machine_id, sources.mac) == (MACHINE_GUID, GETMAC_MAC)
    # the 64-bit view of HKLM, whatever the Python's bitness
    (call,) = sys.modules["winreg"].calls  # type: ignore[attr-defined]
    assert call[2] == CRYPTO and call[3] & 0x0100
    assert machine_fingerprint(sources) == fingerprint_of(MACHINE_GUID, GETMAC_MAC)


@pytest.mark.parametrize(
    "values",
    [
        {},  # no such key
        {(CRYPTO, "Other"): ("x", REG_SZ)},  # the key, but no MachineGuid
        {(CRYPTO, "MachineGuid"): (b"\x01\x02", REG_BINARY)},  # not a string
        {(CRYPTO, "MachineGuid"): ("  ", REG_SZ)},  # empty
    ],
)
def test_windows_without_a_machine_guid(
    monkeypatch: pytest.MonkeyPatch, values: dict[tuple[str, str], tuple[object, int]]
) -> None:
    windows = load_windows(monkeypatch, values)
    monkeypatch.setattr(subprocess, "run", fake_run({}))
    sources = windows.machine_sources()
    assert (sources.machine_id, sources.mac) == ("", "")
    with pytest.raises(MachineUnidentified, match=r"MachineGuid in HKLM\\SOFTWARE"):
        machine_fingerprint(sources)


def test_windows_guid_without_getmac_still_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    windows = load_windows(monkeypatch, {(CRYPTO, "MachineGuid"): (MACHINE_GUID, REG_SZ)})
    monkeypatch.setattr(subprocess, "run", fake_run({}))
    assert machine_fingerprint(windows.machine_sources()) == fingerprint_of(MACHINE_GUID, "")


def test_env_override_is_read_on_every_os(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    windows = load_windows(monkeypatch, {(CRYPTO, "MachineGuid"): (MACHINE_GUID, REG_SZ)})
    monkeypatch.setattr(subprocess, "run", fake_run({"getmac": GETMAC}))
    other = tmp_path / "machine-id"  # type: ignore[operator]
    other.write_text("b" * 32 + "\n")
    monkeypatch.setenv(ENV_MACHINE_ID_FILE, str(other))
    assert machine_fingerprint(windows.machine_sources()) == fingerprint_of("b" * 32, GETMAC_MAC)
