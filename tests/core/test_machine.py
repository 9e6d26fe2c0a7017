"""The machine fingerprint, on fake /etc/machine-id files and fake /sys/class/net trees (Linux's
sources, read by lanlic.osdeps._linux)."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

from lanlic.errors import MachineUnidentified
from lanlic.laptop.machine import ENV_MACHINE_ID_FILE, machine_fingerprint
from lanlic.osdeps.machineid import linux_primary_mac

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's sources")
if sys.platform == "linux":
    from lanlic.osdeps import _linux


def primary_mac(sys_class_net: Path) -> str:
    return linux_primary_mac(_linux.net_interfaces(sys_class_net))


MACHINE_A = "0123456789abcdef0123456789abcdef"
MACHINE_B = "fedcba9876543210fedcba9876543210"


class FakeMachine:
    """A tmp folder that plays one machine: its machine-id files and its /sys/class/net."""

    def __init__(self, root: Path, machine_id: str | None = MACHINE_A) -> None:
        self.root = root
        self.machine_id = root / "etc" / "machine-id"
        self.dbus_id = root / "var" / "lib" / "dbus" / "machine-id"
        self.net = root / "sys" / "class" / "net"
        self.devices = root / "sys" / "devices"
        self.net.mkdir(parents=True)
        self.machine_id.parent.mkdir(parents=True)
        self.dbus_id.parent.mkdir(parents=True)
        if machine_id is not None:
            self.machine_id.write_text(machine_id + "\n")
        self.nic("lo", "00:00:00:00:00:00", physical=False, type_="772")

    def nic(
        self,
        name: str,
        address: str,
        *,
        physical: bool = True,
        bus: str = "pci",
        type_: str = "1",
        wifi_perm: str | None = None,
    ) -> None:
        """An interface the way sysfs shows it: a link into /sys/devices, ``device`` pointing at
        the hardware (whose ``subsystem`` names its bus) for a physical one."""
        real = self.devices / ("virtual" if not physical else bus) / "net" / name
        real.mkdir(parents=True)
        (real / "address").write_text(address + "\n")
        (real / "type").write_text(type_ + "\n")
        if physical:
            hw = self.devices / bus / "hw" / name
            hw.mkdir(parents=True)
            bus_dir = self.root / "sys" / "bus" / bus
            bus_dir.mkdir(parents=True, exist_ok=True)
            (hw / "subsystem").symlink_to(bus_dir)
            (real / "device").symlink_to(hw)
        if wifi_perm is not None:
            phy = self.devices / "phy" / name
            phy.mkdir(parents=True)
            (phy / "macaddress").write_text(wifi_perm + "\n")
            (real / "phy80211").symlink_to(phy)
        (self.net / name).symlink_to(real)

    def sources(self, net: Path | None = None) -> _linux.MachineSources:
        return _linux.machine_sources(self.machine_id, net or self.net, self.dbus_id)

    def fingerprint(self) -> str:
        return machine_fingerprint(self.sources())


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MACHINE_ID_FILE, raising=False)


def expected(machine_id: str, mac: str) -> str:
    return "mfp:" + hashlib.sha256(f"{machine_id}\n{mac}".encode()).hexdigest()[:32]


def test_format_and_definition(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.nic("enp0s31f6", "8C:16:45:AA:BB:CC")
    fp = m.fingerprint()
    assert re.fullmatch(r"mfp:[0-9a-f]{32}", fp)
    assert fp == expected(MACHINE_A, "8c:16:45:aa:bb:cc")


def test_stable_across_calls(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    m.nic("wlp2s0", "f4:8c:50:11:22:33")
    assert len({m.fingerprint() for _ in range(5)}) == 1


def test_differs_by_machine_id(tmp_path: Path) -> None:
    a = FakeMachine(tmp_path / "a", MACHINE_A)
    b = FakeMachine(tmp_path / "b", MACHINE_B)
    for m in (a, b):
        m.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    assert a.fingerprint() != b.fingerprint()


def test_differs_by_mac(tmp_path: Path) -> None:
    a = FakeMachine(tmp_path / "a")
    b = FakeMachine(tmp_path / "b")
    a.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    b.nic("enp0s31f6", "8c:16:45:aa:bb:cd")
    assert a.fingerprint() != b.fingerprint()


def test_ignores_loopback_and_zero_addresses(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)  # has lo with a zero address
    m.nic("dummy0", "00:00:00:00:00:00", physical=False)
    assert primary_mac(m.net) == ""
    assert m.fingerprint() == expected(MACHINE_A, "")
    # a loopback that somehow has an address is still not used
    m2 = FakeMachine(tmp_path / "two")
    (m2.devices / "virtual" / "net" / "lo" / "address").write_text("02:00:00:00:00:01\n")
    m2.nic("docker0", "02:42:ac:11:00:01", physical=False)
    assert primary_mac(m2.net) == "02:42:ac:11:00:01"


def test_physical_first_then_name_order(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.nic("br0", "02:42:00:00:00:01", physical=False)  # virtual, sorts first: not chosen
    m.nic("wlp2s0", "f4:8c:50:11:22:33")
    m.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    assert primary_mac(m.net) == "8c:16:45:aa:bb:cc"


def test_no_physical_falls_back_to_first_virtual(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.nic("veth1", "02:42:00:00:00:02", physical=False)
    m.nic("eth0", "02:42:00:00:00:01", physical=False)
    assert primary_mac(m.net) == "02:42:00:00:00:01"


def test_usb_adapter_does_not_displace_builtin_nic(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.nic("wlp2s0", "f4:8c:50:11:22:33")
    before = m.fingerprint()
    m.nic("enx00e04c680001", "00:e0:4c:68:00:01", bus="usb")  # sorts first, but on USB
    assert m.fingerprint() == before
    # with no built-in NIC, the USB one is used
    only_usb = FakeMachine(tmp_path / "usb")
    only_usb.nic("enx00e04c680001", "00:e0:4c:68:00:01", bus="usb")
    assert primary_mac(only_usb.net) == "00:e0:4c:68:00:01"


def test_wifi_uses_the_permanent_address(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    m.nic("wlp2s0", "ca:fe:12:34:56:78", wifi_perm="f4:8c:50:11:22:33")  # randomised now
    assert primary_mac(m.net) == "f4:8c:50:11:22:33"


def test_new_builtin_nic_first_by_name_changes_it(tmp_path: Path) -> None:
    """Documented: a new physical NIC that sorts first is a new primary MAC."""
    m = FakeMachine(tmp_path)
    m.nic("wlp2s0", "f4:8c:50:11:22:33")
    before = m.fingerprint()
    m.nic("enp5s0", "8c:16:45:aa:bb:cc")
    assert m.fingerprint() != before


def test_falls_back_to_dbus_machine_id(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, machine_id=None)
    m.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    m.dbus_id.write_text(MACHINE_B + "\n")
    assert m.fingerprint() == expected(MACHINE_B, "8c:16:45:aa:bb:cc")
    m.machine_id.write_text(MACHINE_A + "\n")  # /etc/machine-id wins when present
    assert m.fingerprint() == expected(MACHINE_A, "8c:16:45:aa:bb:cc")


def test_empty_machine_id_counts_as_missing(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, machine_id="")
    m.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    assert m.fingerprint() == expected("", "8c:16:45:aa:bb:cc")


def test_machine_id_only(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path)
    assert m.fingerprint() == expected(MACHINE_A, "")
    assert machine_fingerprint(m.sources(tmp_path / "no-sys")) == expected(MACHINE_A, "")


def test_nothing_to_fingerprint_raises(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, machine_id=None)
    with pytest.raises(MachineUnidentified, match="cannot fingerprint this machine") as caught:
        m.fingerprint()
    assert caught.value.code == "machine_unidentified"
    # the message says where lanlic looked
    assert str(m.machine_id) in str(caught.value) and str(m.net) in str(caught.value)


def test_env_override_plays_two_machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = FakeMachine(tmp_path)
    m.nic("enp0s31f6", "8c:16:45:aa:bb:cc")
    other = tmp_path / "other-machine-id"
    other.write_text(MACHINE_B + "\n")
    assert m.fingerprint() == expected(MACHINE_A, "8c:16:45:aa:bb:cc")
    monkeypatch.setenv(ENV_MACHINE_ID_FILE, str(other))
    assert m.fingerprint() == expected(MACHINE_B, "8c:16:45:aa:bb:cc")


def test_env_override_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = FakeMachine(tmp_path)
    monkeypatch.setenv(ENV_MACHINE_ID_FILE, str(tmp_path / "nope"))
    with pytest.raises(MachineUnidentified, match=ENV_MACHINE_ID_FILE):
        m.fingerprint()


def test_real_machine_smoke() -> None:
    """On the machine running the tests: well formed and stable (skipped where unreadable)."""
    try:
        fp = machine_fingerprint()
    except MachineUnidentified:
        pytest.skip("this machine has neither a machine id nor a MAC")
    assert re.fullmatch(r"mfp:[0-9a-f]{32}", fp)
    assert machine_fingerprint() == fp
