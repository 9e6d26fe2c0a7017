"""The Windows service, on pywin32's service framework (``pip install lanlic[windows]``).

``install`` registers the service ``lanlic`` (started at boot, as LocalSystem) and writes the
``lanlic serve`` arguments to ``%PROGRAMDATA%\\lanlic\\service.json``; the service runs them with
that folder as its data folder and its log in ``lanlic.log`` there. The Service Control Manager's
stop request calls ``osdeps.request_stop``: the server stops as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import servicemanager
import win32service
import win32serviceutil

from lanlic import osdeps
from lanlic.server.service import NAME, WINDOWS_ARGS_FILE

__all__ = ["LanlicService", "install", "remove"]


def data_dir() -> Path:
    return osdeps.site_data_dir()


class LanlicService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
    _svc_name_ = NAME
    _svc_display_name_ = "lanlic licence server"
    _svc_description_ = "Serves floating licences on the LAN (lanlic serve)."

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.exit_code = 0

    def SvcStop(self) -> None:
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        osdeps.request_stop()

    def SvcDoRun(self) -> None:
        self.exit_code = run_service()


def run_service(stopped: threading.Event | None = None) -> int:
    """Serve with the saved arguments, logging to the data folder, until asked to stop."""
    # The service runs the lanlic command as ``python -m lanlic`` does (lanlic.cli itself is
    # imported by the command's entry points only).
    import lanlic.__main__ as command

    folder = data_dir()
    osdeps.make_private_dir(folder)
    saved = json.loads((folder / WINDOWS_ARGS_FILE).read_text(encoding="utf-8"))
    argv = [*saved["serve"], "--data", str(folder)]
    log = open(folder / "lanlic.log", "a", encoding="utf-8", buffering=1)
    with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        logging.basicConfig(stream=log, level=logging.INFO, force=True)
        servicemanager.LogInfoMsg(f"lanlic: serving from {folder}")
        code = command.main(argv)
    if stopped is not None:
        stopped.set()
    return code


def install(serve: list[str]) -> None:
    folder = data_dir()
    osdeps.make_private_dir(folder)
    doc = {"service": NAME, "serve": serve}
    osdeps.write_atomic(folder / WINDOWS_ARGS_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    win32serviceutil.HandleCommandLine(
        LanlicService, argv=[sys.argv[0], "--startup", "auto", "install"]
    )
    print(f"installed the service {NAME}; start it with: sc start {NAME}")


def remove() -> None:
    win32serviceutil.HandleCommandLine(LanlicService, argv=[sys.argv[0], "remove"])
