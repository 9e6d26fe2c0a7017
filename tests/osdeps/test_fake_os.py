"""The Done-when of issue 17: lanlic's client and server run as on Windows and as on macOS.

tests/osdeps/fakeos_run.py does the run in a fresh interpreter (the fakes reach into the
interpreter's modules); this judges what it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakeos import GETMAC_MAC, IOREG_UUID, MACHINE_GUID, NETWORKSETUP_MAC

from lanlic.laptop.machine import fingerprint_of

HERE = Path(__file__).resolve().parent
EXPECTED_FP = {
    "win32": fingerprint_of(MACHINE_GUID, GETMAC_MAC),
    "darwin": fingerprint_of(IOREG_UUID, NETWORKSETUP_MAC),
}


def run_as(target: str, work: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["USERNAME"] = "ana"  # what Windows sets; getpass reads it before pwd
    out = subprocess.run(
        [sys.executable, str(HERE / "fakeos_run.py"), target, str(work)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-4000:]
    seen: dict[str, object] = json.loads(lines[-1])
    assert "client_error" not in seen, seen["client_error"]
    return seen


@pytest.mark.parametrize("target", ["win32", "darwin"])
def test_client_and_server_run_as_on(target: str, tmp_path: Path) -> None:
    seen = run_as(target, tmp_path)
    assert (
        seen["backend"]
        == {"win32": "lanlic.osdeps._windows", "darwin": "lanlic.osdeps._darwin"}[target]
    )
    assert seen["imported"] > 50  # every module of lanlic but the other OSes' backends
    assert seen["serve_exit"] == [0, 0]  # served, stopped by Ctrl-C, restarted, stopped
    assert seen["seat_lost_after_heartbeats"] is False and seen["in_use"] == 1
    assert seen["machine_fp"] == seen["expected_fp"] == EXPECTED_FP[target]
    assert seen["offline_product"] == "cad"
    assert seen["returned"] is True
    assert seen["offline_after_return"] != "usable"
    assert seen["blocked_loaded"] == []
    assert seen["touched_linux_ids"] == []
    if target == "darwin":
        assert seen["fullfsyncs"] > 0  # the durable writes asked macOS for a full flush
