"""``lanlic admin password`` and the admin options of ``lanlic serve``, as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD

from lanlic.admin.passwords import META_KEY, verify_password
from lanlic.store import Store

CLI = [sys.executable, "-m", "lanlic.cli"]
TIMEOUT = 20.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
        check=False,
    )  # fmt: skip


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def serve(servers: list[subprocess.Popen[str]], data: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "serve", "--demo", "--data", str(data), "--port", "0", "--no-mdns", "--json",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    servers.append(proc)
    return proc


def first_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        proc.wait(TIMEOUT)
        raise AssertionError(f"no output; stderr: {proc.stderr.read()!r}")
    return dict(json.loads(line))


def test_admin_password_is_stored_as_a_salted_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run("admin", "password", "--data", str(data), "--password-stdin", "--json",
                 stdin=PASSWORD + "\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"password_set": True, "data": str(data)}
    store = Store(data / "lanlic.db")
    try:
        stored = store.meta(META_KEY)
    finally:
        store.close()
    assert stored is not None and stored.startswith("scrypt$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password("wrong one!", stored)

    short = run("admin", "password", "--data", str(data), "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    no_tty = run("admin", "password", "--data", str(data))
    assert no_tty.returncode == 1 and "--password-stdin" in no_tty.stderr
    cleared = run("admin", "password", "--data", str(data), "--clear")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout


def test_serve_refuses_a_lan_admin_bind_without_a_password(
    tmp_path: Path, servers: list[subprocess.Popen[str]]
) -> None:
    # The licence port is loopback; only the admin page would go beyond, and it is refused
    # before it binds anything.
    proc = serve(servers, tmp_path / "demo", "--admin-host", "0.0.0.0")
    assert proc.wait(TIMEOUT) == 1
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "lanlic: admin: refusing to serve the admin page on 0.0.0.0" in err
    assert "lanlic admin password" in err


def test_serve_prints_the_admin_port_and_serves_the_page(
    tmp_path: Path, servers: list[subprocess.Popen[str]]
) -> None:
    proc = serve(servers, tmp_path / "demo")
    listening = first_line(proc)
    assert listening["admin_host"] == "127.0.0.1" and listening["admin_port"] > 0
    base = f"http://127.0.0.1:{listening['admin_port']}"
    with urllib.request.urlopen(f"{base}/", timeout=5) as r:
        page = r.read().decode()
        assert r.headers["X-Frame-Options"] == "DENY"
    assert '<script src="/static/admin.js"' in page
    with urllib.request.urlopen(f"{base}/api/session", timeout=5) as r:
        assert json.loads(r.read())["open"] is True  # demo: no password, loopback
    with urllib.request.urlopen(f"{base}/api/openapi.json", timeout=5) as r:
        assert json.loads(r.read())["openapi"].startswith("3.")

    quiet = serve(servers, tmp_path / "demo2", "--no-admin")
    assert first_line(quiet)["admin_port"] is None
