"""Helpers for tests that drive the ``lanlic`` command as real processes.

Commands run with the test's environment minus every ``LANLIC_`` variable (``base_env``), so a
developer's own settings never leak in; a "laptop" adds its own container home
(``LANLIC_CLIENT_DATA``), machine id (``LANLIC_MACHINE_ID_FILE``), pinned server keys
(``LANLIC_CONFIG``) and optionally a user name (``LOGNAME``/``USER``, which ``getpass.getuser``
reads). Every wait is bounded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

CLI = [sys.executable, "-m", "lanlic.cli"]
#: Bound on any one CLI command that is expected to finish by itself.
RUN_TIMEOUT = 20.0
#: Bound on waiting for a process's next line of output.
LINE_TIMEOUT = 10.0


#: The ``LANLIC_`` variables a command keeps: the test's own mDNS service type (conftest.py).
KEEP = ("LANLIC_MDNS_SERVICE",)


def base_env() -> dict[str, str]:
    """This process's environment without any ``LANLIC_`` variable but ``KEEP``, and unbuffered
    output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_") or k in KEEP}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``lanlic ARGS`` to the end (at most ``RUN_TIMEOUT``), output captured as text."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env if env is not None else base_env(),
        cwd=cwd,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    """A command that succeeded with one JSON line (or several: a list of them)."""
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return lines[0] if len(lines) == 1 else lines


def fails(result: subprocess.CompletedProcess[str], code: str, notes: int = 0) -> str:
    """A failed ``--json`` command: exit 1, ``lanlic: <code>: <reason>`` as the last line of
    stderr after ``notes`` warning lines, and the same code as JSON on stdout; the reason."""
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    err = result.stderr
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == notes + 1, f"not {notes + 1} line(s): {err!r}"
    last = err.splitlines()[-1]
    assert last.startswith(f"lanlic: {code}: "), err
    body = json.loads(result.stdout)
    assert body["error"] == code, body
    assert last == f"lanlic: {code}: {body['message']}"
    message: str = body["message"]
    return message


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: str) -> str:
    """A failed command: non-zero exit and exactly ``lanlic: <code>: <reason>`` on stderr."""
    assert result.returncode != 0, result
    err = result.stderr
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(f"lanlic: {code}: "), err
    assert "Traceback" not in err
    return err.strip()


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

    def run(self, port: int | None, *args: str) -> subprocess.CompletedProcess[str]:
        """``lanlic ARGS --json``, with ``--server 127.0.0.1:PORT`` when a port is given."""
        where = ["--server", f"127.0.0.1:{port}"] if port is not None else []
        return run([*args, *where, "--json"], self.env())

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

    def copied_to(self, tmp: Path, name: str) -> Laptop:
        """Another machine (a new machine id) holding a copy of this laptop's home folder."""
        other = Laptop(tmp, name, self.user)
        shutil.copytree(self.home, other.home)
        return other


class Proc:
    """A background ``lanlic`` process whose stdout is read line by line with a deadline."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else base_env(),
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, timeout: float = LINE_TIMEOUT) -> str:
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
                raise AssertionError(
                    f"{self.args} exited {code} before a line; stderr: {self.stderr()!r}"
                )
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def read_json(self, timeout: float = LINE_TIMEOUT) -> dict[str, Any]:
        obj = json.loads(self.read_line(timeout))
        assert isinstance(obj, dict)
        return obj

    def stderr(self) -> str:
        """What the process wrote to stderr (once it has exited)."""
        assert self.popen.stderr is not None
        if self.popen.poll() is None:
            return "<still running>"
        return self.popen.stderr.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> int:
        """Send ``sig`` (SIGKILL after ``grace`` s if it is still running); return the exit
        code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self._reap(grace)

    def _reap(self, grace: float) -> int:
        """Wait up to ``grace`` s for the exit (SIGKILL then); the exit code."""
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=max(grace, 0.0))
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def close(self, grace: float = 5.0) -> None:
        self.stop(grace=grace)
        for f in (self.popen.stdout, self.popen.stderr):
            if f is not None:
                f.close()


class ProcGroup:
    """The background processes a test starts; ``running`` ends every one of them after."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, env)
        self.started.append(proc)
        return proc

    @classmethod
    def running(cls) -> Iterator[Self]:
        """A new group for a fixture to yield; then ``close_all``. (One after the other, two
        cluster members whose etcd a test had already stopped took their 5 s each, their stop
        waiting on etcd, bounded: 10 s a test.)"""
        p = cls()
        try:
            yield p
        finally:
            p.close_all()

    def close_all(self, grace: float = 5.0) -> None:
        """End every process: each still running is sent SIGCONT (one a test stopped would not
        die of SIGTERM) and SIGTERM, the last started first, then they share one ``grace``
        before SIGKILL."""
        for proc in reversed(self.started):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in reversed(self.started):
            proc.close(grace=deadline - time.monotonic())


def serve_args(network_key: Path, vendor: Path, data: Path, *extra: str) -> list[str]:
    """``lanlic serve`` on ``data``, 127.0.0.1 port 0, no mDNS, ``--json``, then ``extra``."""
    args = ["serve", "--license", str(network_key), "--vendor-pub", str(vendor / "vendor.pub")]
    return [*args, "--data", str(data), "--host", "127.0.0.1", "--port", "0", "--no-mdns",
            "--json", *extra]  # fmt: skip


class Procs(ProcGroup):
    """Servers started with ``serve_args`` and laptops' checkouts."""

    def serve(
        self, network_key: Path, vendor: Path, data: Path, *extra: str
    ) -> tuple[Proc, int, str]:
        """Start a server on ``data`` and wait for its ``listening`` line: (proc, port, id).

        A restart on the port a stopped server had (``--port N``) is tried again for up to 5 s
        while the port is in use: between the stop and the start any process on the machine
        may take it for a moment (a connection's source port, a free-port probe; CI runs two
        suites at once), which the server rightly refuses."""
        for _ in range(20):
            proc = self.start(serve_args(network_key, vendor, data, *extra))
            event = proc.read_json()
            if event.get("event") == "restored":
                event = proc.read_json()
            taken = "address already in use" in str(event.get("message", "")).lower()
            if not (taken and "--port" in extra):
                break
            proc.popen.wait(timeout=10)
            time.sleep(0.25)
        assert event.get("event") == "listening" and event["host"] == "127.0.0.1", event
        return proc, event["port"], event["server_id"]

    def checkout(self, laptop: Laptop, port: int, product: str, hold: float = 30) -> Proc:
        """Start ``lanlic checkout`` on ``laptop`` and wait until it holds its seat."""
        args = ["checkout", product, "--server", f"127.0.0.1:{port}", "--hold", str(hold)]
        proc = self.start([*args, "--json"], laptop.env())
        event = proc.read_json()
        assert event["event"] == "checked_out" and event["product"] == product, event
        return proc


def read_json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The next line of ``proc``'s stdout as a JSON object, read a byte at a time (nothing
    past the line is consumed) within ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"no output line within {timeout} s")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise AssertionError(f"process exited with {proc.wait(5)}")
        line += chunk
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


def issue_network_key(
    vendor: Path, out: Path, customer: str, kind: str, products: tuple[str, ...]
) -> Path:
    """``lanlic vendor issue`` a network key for a year with ``vendor``'s key (from
    ``vendor keygen --out vendor``), borrow kind ``kind`` and ``products`` (NAME:SEATS...)."""
    expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365)).isoformat()
    args = ["vendor", "issue", "--vendor-key", str(vendor / "vendor.key"), "--customer", customer]
    args += ["--expires", expires, "--borrow-kind", kind, "--out", str(out), "--json"]
    for product in products:
        args += ["--product", product]
    ok(run(args))
    return out
