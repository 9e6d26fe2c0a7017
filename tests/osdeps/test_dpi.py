"""DPI awareness for the License Information window: on Windows the process is declared aware of
the display's scale before Tk starts (else a scaled display stretches the window and it looks
blurry). Windows' code runs here with ``ctypes.windll`` faked: the DLLs lanlic calls, each call
recorded, and the ones an older Windows lacks missing as ctypes reports them."""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tkinter as tk
import types
from typing import Any

import pytest
from fakeos import fake_msvcrt, fake_winreg, load_backend

from lanlic import osdeps
from lanlic.ui import command, window

E_ACCESSDENIED = -2147024891  # HRESULT 0x80070005, as ctypes hands a negative int back


class FakeDll:
    """One DLL: its functions record their arguments in ``calls`` and return ``result``."""

    def __init__(self, name: str, calls: list[tuple[Any, ...]], functions: dict[str, int]) -> None:
        self._name, self._calls, self._functions = name, calls, functions

    def __getattr__(self, function: str) -> Any:
        if function not in self._functions:  # what ctypes says for a function the DLL lacks
            raise AttributeError(f"function '{function}' not found")

        def call(*args: Any) -> int:
            self._calls.append((self._name, function, *args))
            return self._functions[function]

        return call


class FakeWindll:
    """``ctypes.windll`` with only the DLLs given; any other is "could not find module"."""

    def __init__(self, dlls: dict[str, dict[str, int]]) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._dlls = dlls

    def __getattr__(self, name: str) -> FakeDll:
        if name.startswith("_") or name not in self._dlls:
            raise FileNotFoundError(f"Could not find module '{name}' (or one of its dependencies)")
        return FakeDll(name, self.calls, self._dlls[name])


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "winreg", fake_winreg({}))
    monkeypatch.setitem(sys.modules, "msvcrt", fake_msvcrt())
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    return load_backend("_windows", "win32")


SHCORE = {"SetProcessDpiAwareness": 0}
USER32 = {"SetProcessDPIAware": 1}


@pytest.mark.parametrize(
    ("dlls", "outcome", "calls"),
    [
        # Windows 8.1 and later: system-DPI aware through shcore; user32 left alone
        (
            {"shcore": SHCORE, "user32": USER32},
            "shcore",
            [("shcore", "SetProcessDpiAwareness", 1)],
        ),
        # the application (or its manifest) chose an awareness first: it stands
        (
            {"shcore": {"SetProcessDpiAwareness": E_ACCESSDENIED}, "user32": USER32},
            "already",
            [("shcore", "SetProcessDpiAwareness", 1)],
        ),
        # Windows 7 / Vista: no shcore.dll, user32's older call
        ({"user32": USER32}, "user32", [("user32", "SetProcessDPIAware")]),
        # a shcore.dll without the function (a stripped-down Windows), then user32
        ({"shcore": {}, "user32": USER32}, "user32", [("user32", "SetProcessDPIAware")]),
        # neither call exists: the window opens as before, unscaled
        ({"user32": {}}, "", []),
    ],
)
def test_windows_declares_dpi_awareness(
    monkeypatch: pytest.MonkeyPatch,
    windows: types.ModuleType,
    dlls: dict[str, dict[str, int]],
    outcome: str,
    calls: list[tuple[Any, ...]],
) -> None:
    windll = FakeWindll(dlls)
    monkeypatch.setattr(ctypes, "windll", windll, raising=False)
    assert windows.make_dpi_aware() == outcome
    assert windll.calls == calls


def test_windows_without_windll_does_nothing(
    monkeypatch: pytest.MonkeyPatch, windows: types.ModuleType
) -> None:
    monkeypatch.delattr(ctypes, "windll", raising=False)
    assert windows.make_dpi_aware() == ""


def test_this_os_needs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    windll = FakeWindll({"shcore": SHCORE, "user32": USER32})
    monkeypatch.setattr(ctypes, "windll", windll, raising=False)  # never reached off Windows
    assert osdeps.make_dpi_aware() == ""
    assert windll.calls == []


def test_lanlic_gui_makes_the_process_dpi_aware_before_tk_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``lanlic gui`` (and ``show_license_information`` without a parent: both through
    ``window.new_root``) declares the awareness first, then starts Tk. Tk is stopped at its
    start (as with no display), so no window is needed."""
    order: list[str] = []

    def dpi() -> str:
        order.append("dpi")
        return ""

    def no_display(*args: object, **kwargs: object) -> None:
        order.append("tk")
        raise tk.TclError("no display name and no $DISPLAY environment variable")

    monkeypatch.setattr(osdeps, "make_dpi_aware", dpi)
    monkeypatch.setattr(tk, "Tk", no_display)
    args = argparse.Namespace(portable_key=None, server=None, version="", app="t", vendor=None)
    with pytest.raises(command.NoDisplay, match="cannot open the window"):
        command.run(args)
    assert order == ["dpi", "tk"]
    order.clear()
    with pytest.raises(tk.TclError):
        window.new_root()
    assert order == ["dpi", "tk"]
