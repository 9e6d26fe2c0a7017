"""``lanlic gui`` as an application on another toolkit runs it: a child process, driven here by
real X key presses (xdotool), reporting what changed by its exit code and one JSON line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cliproc import CLI, Laptop, Procs
from conftest import WAIT

from lanlic.ui.command import CHANGED

XDOTOOL = shutil.which("xdotool")
if XDOTOOL is None and os.environ.get("CI") == "true":
    raise RuntimeError("xdotool is missing: .ci/run must apt-get install xdotool")


def _xdotool(display: str, *args: str) -> str:
    assert XDOTOOL is not None
    out = subprocess.run(
        [XDOTOOL, *args],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    return out.stdout.strip()


def _window(display: str, pid: int) -> str:
    """The X window id of the window process ``pid`` shows."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            found = _xdotool(display, "search", "--pid", str(pid), "--name", "License Information")
        except subprocess.CalledProcessError:
            found = ""
        if found:
            return found.splitlines()[0]
        assert time.monotonic() < deadline, "the window did not appear"
        time.sleep(0.1)


def _gui(display: str, laptop: Laptop, port: int) -> subprocess.Popen[str]:
    env = laptop.env()
    env["DISPLAY"] = display
    return subprocess.Popen(
        [*CLI, "gui", "--server", f"127.0.0.1:{port}", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(XDOTOOL is None, reason="xdotool is missing: apt-get install xdotool")
def test_lanlic_gui_as_a_child_process_says_what_changed(
    display: str, procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    laptop = Laptop(tmp_path, "a")

    child = _gui(display, laptop, port)
    try:
        wid = _window(display, child.pid)
        _xdotool(display, "windowfocus", "--sync", wid)
        deadline = time.monotonic() + WAIT
        # Alt+E enrolls once the first look is done (until then it does nothing).
        while not (laptop.home / "enrollment.json").exists():
            assert time.monotonic() < deadline, "Alt+E did not enroll"
            _xdotool(display, "key", "alt+e")
            time.sleep(0.3)
        _xdotool(display, "key", "Escape")
        out, err = child.communicate(timeout=WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=5)
    assert child.returncode == CHANGED, err
    assert "Traceback" not in err
    assert json.loads(out) == {
        "changed": True,
        "enrolled": True,
        "borrowed": [],
        "returned": [],
        "enabled": [],
    }

    child = _gui(display, laptop, port)
    try:
        wid = _window(display, child.pid)
        _xdotool(display, "windowfocus", "--sync", wid)
        _xdotool(display, "key", "Escape")
        out, err = child.communicate(timeout=WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=5)
    assert child.returncode == 0, err
    assert json.loads(out)["changed"] is False


def test_lanlic_gui_with_no_display_is_one_line(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path, "a")
    env = laptop.env()
    env.pop("DISPLAY", None)
    result = subprocess.run(
        [*CLI, "gui", "--server", "127.0.0.1:9"], env=env, capture_output=True, text=True,
        timeout=WAIT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("lanlic: no_display: cannot open the window: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.skipif(XDOTOOL is None, reason="xdotool is missing: apt-get install xdotool")
def test_show_license_information_with_no_parent_runs_until_closed(
    display: str, procs: Procs, act_key: Path, vendor: Path, tmp_path: Path
) -> None:
    import sys

    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    laptop = Laptop(tmp_path, "a")
    env = laptop.env()
    env["DISPLAY"] = display
    script = (
        "import json; from lanlic.ui import show_license_information; "
        f"print(json.dumps(show_license_information(server='127.0.0.1:{port}').to_json()))"
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wid = _window(display, child.pid)
        _xdotool(display, "windowfocus", "--sync", wid)
        _xdotool(display, "key", "Escape")
        out, err = child.communicate(timeout=WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=5)
    assert child.returncode == 0, err
    assert json.loads(out) == {"changed": False, "enrolled": False, "borrowed": [],
                               "returned": [], "enabled": []}  # fmt: skip
