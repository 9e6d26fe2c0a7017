"""The License Information window under a real X server (Xvfb), against real ``lanlic serve``
processes on 127.0.0.1.

Xvfb is started once for the module's tests on a display it picks itself (``-displayfd``: no
guessed number can collide with another developer's) and stopped by its PID. Skipped, saying
why, only where Xvfb is not installed and not under CI (``CI=true``), where a missing Xvfb fails:
.ci/run installs it (``apt-get install xvfb``).

The window runs in the test's own process, driven through Tk's own event machinery
(``invoke``, ``event_generate``, ``update``); the platform's file choosers are the only parts
replaced (``window.ask_*``). Screenshots (imagemagick's ``import``) go to build/test-artifacts/;
with LANLIC_UPDATE_DOCS=1, the README's copy in docs/ is refreshed too.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cliproc import Laptop, issue_network_key

from lanlic.laptop.borrower import Borrower
from lanlic.ui.session import Session
from lanlic.ui.window import LicenseWindow
from lanlic.ui.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts"
DOCS = ROOT / "docs"
XVFB = shutil.which("Xvfb")
IMPORT = shutil.which("import")
#: Read now: the ``laptop`` fixture clears every LANLIC_ variable.
UPDATE_DOCS = os.environ.get("LANLIC_UPDATE_DOCS") == "1"
#: Bound on any one wait for the window.
WAIT = 20.0

if XVFB is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("Xvfb is missing: .ci/run must apt-get install xvfb")
    pytest.skip("Xvfb is missing: apt-get install xvfb (.ci/run does)", allow_module_level=True)


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """A fresh Xvfb; its display name (``:N``)."""
    assert XVFB is not None
    read, write = os.pipe()
    proc = subprocess.Popen(
        [XVFB, "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        number = b""
        deadline = time.monotonic() + WAIT
        while not number.endswith(b"\n"):
            assert time.monotonic() < deadline, "Xvfb did not say its display"
            chunk = os.read(read, 16)
            assert chunk, f"Xvfb exited with {proc.wait(5)}"
            number += chunk
        yield f":{int(number)}"
    finally:
        os.close(read)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def act_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    products = (
        "cad:3:borrowable=2:max-days=14:versions=10-16",
        "cad-render:2:addon",
        "viewer:2",
    )
    out = tmp_path_factory.mktemp("act") / "net.lic"
    return issue_network_key(vendor, out, "ACME Engineering", "act", products)


@pytest.fixture(scope="module")
def key_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("key") / "net.lic"
    products = ("cad:3:borrowable=2:max-days=14",)
    return issue_network_key(vendor, out, "ACME Field Office", "key", products)


@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Laptop:
    """This process plays the laptop: the window's borrower and client use its folders."""
    lap = Laptop(tmp_path, "a")
    for name in [k for k in os.environ if k.startswith("LANLIC_")]:
        monkeypatch.delenv(name)
    for name, value in lap.env().items():
        if name.startswith("LANLIC_"):
            monkeypatch.setenv(name, value)
    return lap


class Driver:
    """One License Information window in a Tk root on ``display``, pumped by the test."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.root = tk.Tk(screenName=display)
        self.root.withdraw()
        self.windows: list[LicenseWindow] = []

    def open(
        self,
        server: str | None,
        *,
        borrower: Borrower | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        refresh_s: float = 3600.0,
        wait: bool = True,
    ) -> LicenseWindow:
        session = Session(
            borrower or Borrower(),
            server=server,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            version="16",
        )
        top = tk.Toplevel(self.root)
        top.geometry("+0+0")
        window = LicenseWindow(top, session, Worker(), refresh_s=refresh_s)
        self.windows.append(window)
        if wait:
            self.idle(window)
        return window

    def pump(self, until: Callable[[], Any], timeout: float = WAIT, what: str = "") -> None:
        """Run Tk's event loop until ``until()`` holds (at most ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"not within {timeout} s: {what or until}"
            self.root.update()
            time.sleep(0.01)
        self.root.update()

    def idle(self, window: LicenseWindow) -> None:
        self.pump(lambda: not window.busy, what="the window to finish its request")

    def click(self, window: LicenseWindow, button: Any) -> None:
        """Press a button as a user does, then wait for the request it starts."""
        assert button.instate(["!disabled"]), f"{button.cget('text')} is disabled"
        button.invoke()
        self.idle(window)

    def select(self, window: LicenseWindow, product: str) -> None:
        window.tree.selection_set(product)
        window.tree.focus(product)
        self.root.update()

    def row(self, window: LicenseWindow, product: str) -> dict[str, str]:
        values = window.tree.item(product, "values")
        name, state, versions, until, left = (str(v) for v in values)
        assert name == product
        return {"state": state, "versions": versions, "until": until, "left": left}

    def states(self, window: LicenseWindow) -> dict[str, str]:
        return {p: self.row(window, p)["state"] for p in window.tree.get_children()}

    def shot(self, window: LicenseWindow, name: str, docs: str | None = None) -> Path:
        """A screenshot of the window: build/test-artifacts/NAME.png (and docs/DOCS)."""
        for _ in range(5):
            self.root.update()
            time.sleep(0.02)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        out = ARTIFACTS / f"{name}.png"
        if IMPORT is None:
            if os.environ.get("CI") == "true":
                raise AssertionError("imagemagick's import is missing: .ci/run must install it")
            return out
        wid = window.top.winfo_id()
        subprocess.run(
            [IMPORT, "-display", self.display, "-window", hex(wid), str(out)],
            check=True,
            timeout=WAIT,
            capture_output=True,
        )
        assert out.stat().st_size > 1000
        if docs and UPDATE_DOCS:
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(out, DOCS / docs)
        return out

    def close(self) -> None:
        for w in self.windows:
            if not w.closed:
                w.close()
        try:
            for w in self.windows:
                assert w.finished.wait(WAIT), "the window's worker did not finish"
        finally:
            self.root.destroy()
            # Tk objects must be freed on the Tk thread: collect their cycles here, now.
            self.windows.clear()
            del self.root
            gc.collect()


@pytest.fixture
def gui(display: str) -> Iterator[Driver]:
    driver = Driver(display)
    try:
        yield driver
    finally:
        driver.close()
