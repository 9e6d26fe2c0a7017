"""Helpers for the durability tests: real ``lanlic`` processes, simulated laptops, and file
systems the test mounts itself (a small tmpfs to fill, a read-only one).

The processes, laptops and result checks are tests/cliproc.py's (re-exported here for the
durability tests); a laptop with a user name makes the history name who did what.
Servers listen on 127.0.0.1 port 0 with no mDNS; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The processes, laptops and checks are tests/cliproc.py's; the durability tests import them here.
from cliproc import Laptop as Laptop
from cliproc import Procs as Procs
from cliproc import fails as fails
from cliproc import ok, run
from cliproc import serve_args as serve_args

DAY = 86400.0
PRODUCTS = ("cad:3:borrowable=2:max-days=14", "viewer:2:borrowable=1:max-days=7")


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
