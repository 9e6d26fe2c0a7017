"""``lanlic service``: the systemd unit (verified by systemd-analyze where it is installed), the
launchd plist, install/remove of the unit files, and the Windows service on faked pywin32."""

from __future__ import annotations

import asyncio
import json
import plistlib
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from lanlic import cli, osdeps
from lanlic.server import service


def lanlic(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lanlic", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_unit_is_sandboxed() -> None:
    unit = service.systemd_unit("/usr/bin/python3", "/etc/lanlic/k.lic", "/etc/lanlic/v.pub", [])
    for line in (
        "DynamicUser=yes",
        "StateDirectory=lanlic",
        "ConfigurationDirectory=lanlic",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "KillSignal=SIGTERM",
        "ExecStart=/usr/bin/python3 -m lanlic serve --license /etc/lanlic/k.lic "
        "--vendor-pub /etc/lanlic/v.pub --data /var/lib/lanlic",
    ):
        assert line in unit.splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    out = lanlic("service", "print-unit", "--system", "linux", "--", "--port", "7766")
    assert out.returncode == 0, out.stderr
    unit = tmp_path / "lanlic.service"
    unit.write_text(out.stdout)
    check = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (check.returncode, check.stderr) == (0, ""), check.stderr
    assert "--port 7766" in out.stdout
    # the check is real: a misspelt key in the same unit is reported
    unit.write_text(out.stdout.replace("ProtectSystem=", "ProtectSystm="))
    check = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key" in check.stderr


def test_launchd_plist() -> None:
    text = service.launchd_plist("/usr/local/bin/python3", "/k.lic", "/v.pub", ["--port", "9"])
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "org.lanlic.server"
    assert plist["ProgramArguments"] == [
        "/usr/local/bin/python3", "-m", "lanlic", "serve", "--license", "/k.lic",
        "--vendor-pub", "/v.pub", "--data", "/Library/Application Support/lanlic", "--port", "9",
    ]  # fmt: skip
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardErrorPath"] == "/Library/Logs/lanlic/lanlic.log"


@pytest.mark.parametrize("system", ["linux", "macos"])
def test_install_and_remove_write_and_delete_the_unit(system: str, tmp_path: Path) -> None:
    path = tmp_path / "unit"
    out = lanlic(
        "service", "install", "--system", system, "--path", str(path),
        "--license", "/etc/lanlic/k.lic", "--vendor-pub", "/etc/lanlic/v.pub",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "/etc/lanlic/k.lic" in path.read_text()
    assert ("systemctl" if system == "linux" else "launchctl") in out.stdout
    out = lanlic("service", "remove", "--system", system, "--path", str(path))
    assert out.returncode == 0 and not path.exists()
    out = lanlic("service", "remove", "--system", system, "--path", str(path))
    assert out.returncode == 1
    assert out.stderr.startswith("lanlic: service: there is no service file")


def test_install_needs_the_key_files() -> None:
    out = lanlic("service", "install", "--system", "linux", "--path", "/nonexistent/x")
    assert out.returncode == 2 and "--license" in out.stderr


# ------------------------------------------------------------------------ Windows, faked


@pytest.fixture
def pywin32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.SimpleNamespace:
    """pywin32's modules as far as lanlic.server.winservice uses them; the service's data folder
    is a tmp folder."""
    calls: list[Any] = []

    class ServiceFramework:
        def __init__(self, args: Any) -> None:
            calls.append(("init", args))

        def ReportServiceStatus(self, status: int) -> None:
            calls.append(("status", status))

    util = types.ModuleType("win32serviceutil")
    util.ServiceFramework = ServiceFramework  # type: ignore[attr-defined]
    util.HandleCommandLine = lambda cls, argv: calls.append(("cmdline", cls, argv))  # type: ignore[attr-defined]
    svc = types.ModuleType("win32service")
    svc.SERVICE_STOP_PENDING = 3  # type: ignore[attr-defined]
    manager = types.ModuleType("servicemanager")
    manager.LogInfoMsg = lambda msg: calls.append(("log", msg))  # type: ignore[attr-defined]
    for mod in (util, svc, manager):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    import lanlic.server

    # a fresh winservice, on these fakes (the package keeps the module as an attribute too)
    monkeypatch.delitem(sys.modules, "lanlic.server.winservice", raising=False)
    monkeypatch.delattr(lanlic.server, "winservice", raising=False)
    monkeypatch.setattr(osdeps, "site_data_dir", lambda: tmp_path / "ProgramData" / "lanlic")
    return types.SimpleNamespace(calls=calls, data=tmp_path / "ProgramData" / "lanlic")


def test_windows_install_saves_the_arguments_and_registers(
    pywin32: types.SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["service", "install", "--system", "windows", "--license", r"C:\keys\site.lic",
         "--vendor-pub", r"C:\keys\vendor.pub", "--", "--port", "7766"]
    )  # fmt: skip
    assert code == 0
    saved = json.loads((pywin32.data / "service.json").read_text())
    assert saved["serve"] == [
        "serve", "--license", r"C:\keys\site.lic", "--vendor-pub", r"C:\keys\vendor.pub",
        "--port", "7766",
    ]  # fmt: skip
    (cmd,) = [c for c in pywin32.calls if c[0] == "cmdline"]
    assert cmd[1].__name__ == "LanlicService" and cmd[2][1:] == ["--startup", "auto", "install"]
    assert "sc start lanlic" in capsys.readouterr().out
    assert cli.main(["service", "remove", "--system", "windows"]) == 0
    assert [c[2][1:] for c in pywin32.calls if c[0] == "cmdline"][-1] == ["remove"]


def test_windows_service_runs_serve_and_stops_on_the_scm_stop(
    pywin32: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SvcDoRun runs 'lanlic serve' with the saved arguments and the data folder, logging to
    lanlic.log there; SvcStop ends it through osdeps.request_stop."""
    from lanlic.server import winservice

    osdeps.make_private_dir(pywin32.data)
    (pywin32.data / "service.json").write_text(json.dumps({"serve": ["serve", "--demo"]}))
    ran: list[list[str]] = []
    started = threading.Event()

    def fake_main(argv: list[str]) -> int:  # stands for 'lanlic serve': waits for its stop
        ran.append(argv)

        async def serve() -> None:
            stop = asyncio.Event()
            remove = osdeps.on_stop(asyncio.get_running_loop(), stop.set)
            print("serving")
            started.set()
            await stop.wait()
            remove()

        asyncio.run(serve())
        return 0

    import lanlic.__main__

    monkeypatch.setattr(lanlic.__main__, "main", fake_main)
    svc = winservice.LanlicService(["lanlic"])
    runner = threading.Thread(target=svc.SvcDoRun)  # the SCM's thread, not the main one
    runner.start()
    assert started.wait(30)
    svc.SvcStop()
    runner.join(30)
    assert not runner.is_alive() and svc.exit_code == 0
    assert ran == [["serve", "--demo", "--data", str(pywin32.data)]]
    assert "serving" in (pywin32.data / "lanlic.log").read_text()
    assert ("status", 3) in pywin32.calls
