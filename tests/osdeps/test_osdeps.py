"""lanlic.osdeps on the machine running the tests: folders, locks, durable writes, the clock,
the descriptor limit and stop signals. (Windows and macOS code paths are checked by the fake-OS
run and by mypy for each platform.)"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lanlic import osdeps

POSIX = sys.platform != "win32"


def test_linux_folders_are_the_xdg_ones_lanlic_always_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if sys.platform != "linux":
        pytest.skip("the XDG folders are Linux's")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert osdeps.user_data_dir() == tmp_path / "home" / ".local" / "share" / "lanlic"
    assert osdeps.user_config_dir() == tmp_path / "home" / ".config" / "lanlic"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert osdeps.user_data_dir() == tmp_path / "data" / "lanlic"
    assert osdeps.user_config_dir() == tmp_path / "config" / "lanlic"
    assert osdeps.site_data_dir() == Path("/var/lib/lanlic")


def test_write_atomic_replaces_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    osdeps.write_atomic(path, b"one")
    osdeps.write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    if POSIX:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        osdeps.write_atomic(tmp_path / "vendor.pub", b"pub", mode=0o644)
        assert stat.S_IMODE((tmp_path / "vendor.pub").stat().st_mode) == 0o644


def test_write_atomic_failure_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    osdeps.write_atomic(path, b"old")
    with pytest.raises(TypeError):
        osdeps.write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_new_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "container.key"
    osdeps.write_new(path, b"key")
    with pytest.raises(FileExistsError):
        osdeps.write_new(path, b"other")
    assert path.read_bytes() == b"key"
    if POSIX:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_make_private_dir(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    osdeps.make_private_dir(folder)
    assert folder.is_dir()
    if POSIX:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


HOLD = """
import sys, time
from pathlib import Path
from lanlic import osdeps
lock = osdeps.FileLock(Path(sys.argv[1]), wait=False)
print("held", flush=True)
sys.stdin.readline()
"""


def test_lock_is_exclusive_between_processes_and_dropped_with_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "lanlic.lock"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            with pytest.raises(BlockingIOError):
                osdeps.FileLock(path, wait=False)
        finally:
            holder.kill()
            holder.wait(30)
    with osdeps.FileLock(path, wait=False) as lock:
        lock.write_note("1234\n")
        assert b"1234" in path.read_bytes()


def test_uptime_never_goes_back() -> None:
    a = osdeps.uptime()
    b = osdeps.uptime()
    assert 0 <= a <= b


def test_fd_limit_matches_the_os() -> None:
    limit = osdeps.fd_limit()
    if POSIX:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert limit == (None if soft == resource.RLIM_INFINITY else soft)
    else:
        assert limit is None


@pytest.mark.skipif(not POSIX, reason="SIGTERM is a POSIX signal")
async def test_on_stop_calls_back_on_sigterm_and_can_be_removed() -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    remove = osdeps.on_stop(loop, stopped.set)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopped.wait(), 10)
    finally:
        remove()
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
