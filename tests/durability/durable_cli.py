"""Helpers for the durability tests: real ``lanlic`` processes, simulated laptops, and file
systems the test mounts itself (a small tmpfs to fill, a read-only one).

Each laptop is a set of environment variables on its client processes (``LANLIC_CLIENT_DATA``,
``LANLIC_MACHINE_ID_FILE``, ``LANLIC_CONFIG``), as in tests/test_cli_borrow.py, plus a user name
(``LOGNAME``/``USER``, which ``getpass.getuser`` reads) so the history names who did what.
Servers listen on 127.0.0.1 port 0 with no mDNS; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "lanlic.cli"]
#: Bound on any one CLI command that is expected to finish by itself.
RUN_TIMEOUT = 20.0
#: Bound on waiting for a process's next line of output.
LINE_TIMEOUT = 10.0
DAY = 86400.0
PRODUCTS = ("cad:3:borrowable=2:max-days=14", "viewer:2:borrowable=1:max-days=7")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env if env is not None else base_env(),
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    """A command that succeeded with one JSON line (or several: a list of them)."""
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return lines[0] if len(lines) == 1 else lines


def fails(result: subprocess.CompletedProcess[str], code: str) -> str:
    """A failed ``--json`` command: exit 1, one line ``lanlic: <code>: <reason>`` on stderr, the
    same code as JSON on stdout; the reason."""
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    err = result.stderr
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(f"lanlic: {code}: "), err
    body = json.loads(result.stdout)
    assert body["error"] == code, body
    assert err == f"lanlic: {code}: {body['message']}\n"
    message: str = body["message"]
    return message


class Laptop:
    """One simulated machine and its user: container home, machine id and pins under ``tmp``."""

    def __init__(self, tmp: Path, name: str, user: str | None = None) -> None:
        self.name = name
        self.user = user
        self.home = tmp / f"home-{name}"
        self.machine = tmp / f"machine-{name}"
        self.config = tmp / f"config-{name}"
        self.machine.write_text(secrets.token_hex(16) + "\n")

    def env(self) -> dict[str, str]:
        env = base_env()
        env["LANLIC_CLIENT_DATA"] = str(self.home)
        env["LANLIC_MACHINE_ID_FILE"] = str(self.machine)
        env["LANLIC_CONFIG"] = str(self.config)
        if self.user is not None:
            env["LOGNAME"] = env["USER"] = self.user
        return env

    def run(self, port: int, *args: str) -> subprocess.CompletedProcess[str]:
        """``lanlic ARGS --server 127.0.0.1:PORT --json``."""
        return run([*args, "--server", f"127.0.0.1:{port}", "--json"], self.env())

    def status(self, port: int) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """``lanlic status --json``: products by name, and the active borrows."""
        body = ok(self.run(port, "status"))
        return {p["name"]: p for p in body["products"]}, body["borrows"]

    def borrow(self, port: int, *args: str) -> dict[str, Any]:
        """Enroll online (once) and borrow; the ``borrow --json`` output."""
        if not self.home.exists():
            ok(self.run(port, "enroll"))
        lic: dict[str, Any] = ok(self.run(port, "borrow", *args))
        return lic


class Proc:
    """A background ``lanlic`` process whose stdout is read line by line with a deadline."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self._buf = b""

    def read_json(self, timeout: float = LINE_TIMEOUT) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from {self.args} within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = self.popen.wait(timeout=5)
                raise AssertionError(f"{self.args} exited {code} before a line: {self.stderr()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj

    def stderr(self) -> str:
        """What the process wrote to stderr (once it has exited)."""
        assert self.popen.stderr is not None
        if self.popen.poll() is None:
            return "<still running>"
        return self.popen.stderr.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGKILL after 5 s if it is still running); return the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def close(self) -> None:
        self.stop()
        for f in (self.popen.stdout, self.popen.stderr):
            if f is not None:
                f.close()


def serve_args(network_key: Path, vendor: Path, data: Path, *extra: str) -> list[str]:
    args = ["serve", "--license", str(network_key), "--vendor-pub", str(vendor / "vendor.pub")]
    return [*args, "--data", str(data), "--host", "127.0.0.1", "--port", "0", "--no-mdns",
            "--json", *extra]  # fmt: skip


class Procs:
    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, env if env is not None else base_env())
        self.started.append(proc)
        return proc

    def serve(
        self, network_key: Path, vendor: Path, data: Path, *extra: str
    ) -> tuple[Proc, int, str]:
        """Start a server on ``data`` and wait for its ``listening`` line: (proc, port, id)."""
        proc = self.start(serve_args(network_key, vendor, data, *extra))
        event = proc.read_json()
        if event.get("event") == "restored":
            event = proc.read_json()
        assert event["event"] == "listening" and event["host"] == "127.0.0.1", event
        return proc, event["port"], event["server_id"]

    def checkout(self, laptop: Laptop, port: int, product: str, hold: float = 30) -> Proc:
        """Start ``lanlic checkout`` on ``laptop`` and wait until it holds its seat."""
        args = ["checkout", product, "--server", f"127.0.0.1:{port}", "--hold", str(hold)]
        proc = self.start([*args, "--json"], laptop.env())
        event = proc.read_json()
        assert event["event"] == "checked_out" and event["product"] == product, event
        return proc


def procs_fixture() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        for proc in reversed(p.started):
            proc.close()


def make_vendor(out: Path) -> Path:
    ok(run(["vendor", "keygen", "--out", str(out), "--json"]))
    return out


def issue(vendor: Path, out: Path, products: tuple[str, ...] = PRODUCTS) -> Path:
    expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365)).isoformat()
    args = ["vendor", "issue", "--vendor-key", str(vendor / "vendor.key")]
    args += ["--customer", "ACME Engineering", "--expires", expires, "--borrow-kind", "act"]
    for product in products:
        args += ["--product", product]
    ok(run([*args, "--out", str(out), "--json"]))
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: compared before and after a refusal."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------------- mounts


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: the test mounts its own tmpfs (read-only, or small enough to fill), "
            "and file permissions alone do not make a folder unwritable or a disk full"
        )


def _sh(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr.strip()}"


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mountpoint`` for the block; always unmounted after."""
    need_root()
    mountpoint.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        result = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
        if result.returncode != 0:  # still busy (a process the test failed to stop): detach
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def remount(mountpoint: Path, *, read_only: bool) -> None:
    _sh("mount", "-o", "remount," + ("ro" if read_only else "rw"), str(mountpoint))


def fill(folder: Path) -> Path:
    """Write a filler file into ``folder`` until its file system says ENOSPC; return it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 16, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler
