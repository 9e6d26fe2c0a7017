"""Run the README's shell blocks verbatim, as a new user would type them (issue 11).

A block is run when the line before its fence marks it:

- ``<!-- readme-test: run -->``: by the test suite (``tests/test_readme.py``), with the package
  under test as the ``lanlic`` command, in a new network namespace (its own loopback, so the
  README's port 7766 is free even with a demo running on the machine) when root;
- ``<!-- readme-test: install -->``: by ``python tests/readme_run.py --install`` (CI), in a
  copy of the repository, from a fresh venv made by the block itself, with the network to reach
  PyPI. ``python -m pytest`` there only collects the suite (``PYTEST_ADDOPTS``), which CI runs
  on its own.

The blocks run in order in one bash session, in a temporary HOME and working folder, each line
as written (a line ending in a backslash joins the next). Commands that run until stopped
(``lanlic serve``, ``lanlic checkout``, ``lanlic enable``) run in the background until they say
they are ready, and are stopped by their process group id at the end. Any other command that
exits non-zero fails the run, naming it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*-->")
#: Commands that run until stopped, and what they print once ready.
LONG_RUNNING = {
    "serve": "serving",
    "checkout": r"checked out\|using the",
    "enable": r"checked out\|using the",
}
#: How long a background command may take to say it is ready (the install block's includes
#: pip installing the package).
READY_SECONDS = {"run": 60, "install": 900}


def blocks(text: str, kind: str) -> list[list[str]]:
    """The commands of each ``sh`` block marked ``kind``, continuation lines joined."""
    found: list[list[str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        mark = MARK.search(line)
        if mark is None or mark[1] != kind:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        assert j < len(lines) and lines[j].startswith("```sh"), f"README line {i + 1}: no sh block"
        commands, pending = [], ""
        for body in lines[j + 1 :]:
            if body.startswith("```"):
                break
            if body.rstrip().endswith("\\"):
                pending += body.rstrip()[:-1] + " "
                continue
            commands.append(pending + body)
            pending = ""
        found.append(commands)
    return found


def _long_running(command: str) -> str | None:
    """The readiness pattern of a command that runs until stopped, or None."""
    code = command.split("#", 1)[0]
    for name, ready in LONG_RUNNING.items():
        if re.search(rf"(^|&&|;)\s*lanlic {name}\b", code):
            return ready
    return None


def script(commands: list[str], kind: str, logs: Path) -> str:
    """One bash script running ``commands`` in order, stopping at the first that fails."""
    out = [
        "set -u",
        "set -m  # each background job in its own process group, to stop it whole",
        "pids=()",
        'stop_all() { for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done; wait; }',
        "trap stop_all EXIT",
        "wait_for() {  # FILE PATTERN SECONDS PID",
        '  for ((i = 0; i < $3 * 10; i++)); do grep -qs "$2" "$1" && return 0',
        '    kill -0 "$4" 2>/dev/null || { echo "readme-run: it exited:"; cat "$1"; return 1; }',
        "    sleep 0.1; done",
        '  echo "readme-run: not ready within $3 s:"; cat "$1"; return 1',
        "}",
    ]
    for n, command in enumerate(commands):
        if not command.split("#", 1)[0].strip():
            out.append(command)  # a comment or a blank line, as written
            continue
        out.append(f"echo {shlex.quote('+ ' + command)}")
        ready = _long_running(command)
        if ready is not None:
            log = logs / f"{n}.out"
            out += [
                f"( {command}\n) > {shlex.quote(str(log))} 2>&1 &",
                "pids+=($!)",
                f"wait_for {shlex.quote(str(log))} {shlex.quote(ready)} "
                f"{READY_SECONDS[kind]} $! || exit 1",
            ]
        else:
            out += [
                command,
                "rc=$?",
                f"[ $rc -eq 0 ] || {{ echo {shlex.quote('readme-run: failed: ' + command)} "
                '"(exit $rc)"; exit 1; }',
            ]
    out.append('echo "readme-run: every command worked"')
    return "\n".join(out) + "\n"


def _launcher(bin_dir: Path) -> None:
    """A ``lanlic`` command that runs the package under test (what ``pip install`` makes)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "lanlic"
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m lanlic.cli "$@"\n')
    path.chmod(0o755)


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def run(kind: str, tmp: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run every block marked ``kind`` in ``tmp``; the bash session's outcome."""
    commands = [c for block in blocks(README.read_text(), kind) for c in block]
    assert commands, f"no README block is marked readme-test: {kind}"
    home, work, logs = tmp / "home", tmp / "work", tmp / "logs"
    for d in (home, work, logs):
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANLIC_", "XDG_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    if kind == "install":
        _copy_checkout(work)
        env["PYTEST_ADDOPTS"] = "--collect-only -q"  # CI runs the suite itself
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    else:
        _launcher(tmp / "bin")
        env["PATH"] = f"{tmp / 'bin'}{os.pathsep}{env['PATH']}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    (tmp / "run.sh").write_text(script(commands, kind, logs))
    argv = ["bash", str(tmp / "run.sh")]
    if kind == "run" and own_loopback_possible():
        # A loopback of its own: port 7766 is free even with a demo server on this machine.
        argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
        argv += ["bash", str(tmp / "run.sh")]
    return subprocess.run(
        argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def own_loopback_possible() -> bool:
    return os.geteuid() == 0 and all(shutil.which(c) for c in ("unshare", "ip"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--install", action="store_true", help="run the install blocks (a fresh venv, PyPI)"
    )
    args = p.parse_args()
    kind = "install" if args.install else "run"
    with tempfile.TemporaryDirectory(prefix="lanlic-readme-") as tmp:
        result = run(kind, Path(tmp), timeout=1800)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
