"""Run lanlic's client and server as on another OS: ``python fakeos_run.py win32|darwin WORKDIR``.

Run by tests/osdeps/test_fake_os.py in a fresh interpreter. Before lanlic is imported it makes
this Linux look like the OS named, at the boundaries only:

* win32: ``fcntl``, ``resource``, ``termios``, ``pwd`` and ``grp`` cannot be imported (an import
  hook refuses them), ``time.clock_gettime`` and ``os.O_DIRECTORY`` are gone, the event loop
  refuses ``add_signal_handler`` (as Windows' loops do), ``sys.platform`` is ``win32``, and
  ``winreg``, ``msvcrt`` and ``getmac``'s output are the fakes of fakeos.py;
* darwin: ``sys.platform`` is ``darwin``, ``time.CLOCK_BOOTTIME`` is gone, ``fcntl.F_FULLFSYNC``
  is counted (and served by ``fsync``), ``ioreg`` and ``networksetup`` answer with recorded text;
* both: reading the Linux id files (/etc/machine-id, the dbus one, /sys/class/net) is refused
  and reported, and nothing of the OS-independent stdlib is faked.

Then it imports every module of lanlic, serves (``lanlic serve --demo``, stopped by Ctrl-C as on
that OS, then restarted on the same folder), and from a client thread checks out a seat through
several heartbeats, enrolls, borrows, uses the borrowed licence offline and returns it. It prints
one JSON line of what it saw; the test judges it.
"""

from __future__ import annotations

import asyncio  # imported for the real platform: the event loop is not what is faked
import importlib
import importlib.abc
import json
import os
import pkgutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import fakeos

TARGET, WORK = sys.argv[1], Path(sys.argv[2])
#: What Windows lacks (uvloop too: the [fast] extra leaves it out there).
BLOCKED = ("fcntl", "resource", "termios", "pwd", "grp", "uvloop") if TARGET == "win32" else ()
LINUX_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id", "/sys/class/net")
touched_linux_ids: list[str] = []
fullfsyncs = [0]


class Refuse(importlib.abc.MetaPathFinder):
    """Refuse the modules the target OS does not have, as if they were not there."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (on {TARGET})", name=name)
        return None


def refuse_linux_ids(event: str, args: tuple[Any, ...]) -> None:
    if event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
        path = os.fsdecode(args[0]) if isinstance(args[0], str | bytes | os.PathLike) else ""
        if path.startswith(LINUX_ID_PATHS):
            touched_linux_ids.append(path)
            raise FileNotFoundError(2, "No such file or directory (faked away)", path)


def become_windows() -> None:
    sys.modules["msvcrt"] = fakeos.fake_msvcrt()  # takes the real flock before fcntl goes
    sys.modules.update((m.__name__, m) for m in fakeos.fake_pywin32())
    sys.modules["winreg"] = fakeos.fake_winreg(
        {(r"SOFTWARE\Microsoft\Cryptography", "MachineGuid"): (fakeos.MACHINE_GUID, 1)}
    )
    for name in BLOCKED:
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, Refuse())
    for name in ("clock_gettime", "clock_gettime_ns", "CLOCK_BOOTTIME"):
        if hasattr(time, name):
            delattr(time, name)
    del os.O_DIRECTORY
    subprocess.CREATE_NO_WINDOW = 0x08000000  # type: ignore[attr-defined]
    if not hasattr(signal, "SIGBREAK"):
        signal.SIGBREAK = 21  # type: ignore[attr-defined]  # its number on Windows
    subprocess.run = fakeos.fake_run({"getmac": fakeos.GETMAC})  # type: ignore[assignment]

    def no_signal_handlers(self: Any, *args: Any) -> None:
        raise NotImplementedError  # as Windows' event loops answer

    loop_class = asyncio.SelectorEventLoop
    loop_class.add_signal_handler = no_signal_handlers  # type: ignore[method-assign]
    loop_class.remove_signal_handler = no_signal_handlers  # type: ignore[method-assign]
    sys.platform = "win32"  # type: ignore[misc]


def become_macos() -> None:
    import fcntl

    real_fcntl = fcntl.fcntl
    if not hasattr(fcntl, "F_FULLFSYNC"):
        fcntl.F_FULLFSYNC = 51  # type: ignore[attr-defined]  # its number on macOS

    def fcntl_spy(fd: int, cmd: int, arg: Any = 0) -> Any:
        if cmd == fcntl.F_FULLFSYNC:  # type: ignore[attr-defined]
            fullfsyncs[0] += 1
            os.fsync(fd)
            return 0
        return real_fcntl(fd, cmd, arg)

    fcntl.fcntl = fcntl_spy  # type: ignore[assignment]
    delattr(time, "CLOCK_BOOTTIME")
    subprocess.run = fakeos.fake_run(  # type: ignore[assignment]
        {"ioreg": fakeos.IOREG_INTEL, "networksetup": fakeos.NETWORKSETUP}
    )
    sys.platform = "darwin"  # type: ignore[misc]


def load_others_first() -> None:
    """Load, for the real OS, what lanlic imports from the standard library and third parties
    (many look at ``sys.platform`` as they load: multiprocessing, ssl...). Only lanlic's own
    modules then load on the faked OS; what the faked OS lacks stays unloaded."""
    import ast

    names: set[str] = set()
    for path in (fakeos.OSDEPS.parent).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    skip = {"lanlic", "msvcrt", "winreg", "servicemanager", "win32service", "win32serviceutil"}
    skip.update(BLOCKED)
    for name in sorted(names):
        if name.partition(".")[0] not in skip:
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # optional (uvloop, matplotlib) or of another OS


load_others_first()
sys.addaudithook(refuse_linux_ids)
{"win32": become_windows, "darwin": become_macos}[TARGET]()

import lanlic  # noqa: E402 - only now, on the faked OS

OTHER_BACKENDS = {
    "win32": ("lanlic.osdeps._posix", "lanlic.osdeps._linux", "lanlic.osdeps._darwin"),
    "darwin": ("lanlic.osdeps._linux", "lanlic.osdeps._windows", "lanlic.server.winservice"),
}[TARGET]
imported = []
for info in pkgutil.walk_packages(lanlic.__path__, "lanlic."):
    if info.name in OTHER_BACKENDS or info.name.endswith("__main__"):
        continue
    importlib.import_module(info.name)
    imported.append(info.name)

from lanlic import cli, osdeps  # noqa: E402
from lanlic.errors import LanlicError  # noqa: E402
from lanlic.laptop.borrower import Borrower  # noqa: E402
from lanlic.laptop.machine import machine_fingerprint  # noqa: E402
from lanlic.net.client import Client  # noqa: E402

DATA = WORK / "server"
os.environ.update(
    LANLIC_DATA=str(DATA), LANLIC_CLIENT_DATA=str(WORK / "client"), LANLIC_CONFIG=str(WORK / "conf")
)
seen: dict[str, Any] = {"imported": len(imported), "backend": osdeps._impl.__name__}


def server_address(previous: str | None, deadline: float) -> str:
    """The address in the data folder's server.json, once it is not ``previous``."""
    while time.monotonic() < deadline:
        try:
            info = json.loads((DATA / "server.json").read_text())
            address = f"127.0.0.1:{info['port']}"
            if address != previous and info["pid"] == os.getpid():
                return address
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError("the server did not write its address")


async def first_run(address: str) -> None:
    async with Client(address, app="fakeos") as client:
        seat = await client.acquire("cad", "16")
        await asyncio.sleep(5)  # beyond the 4 s lease: held only by heartbeats
        seen["seat_lost_after_heartbeats"] = seat.lost
        seen["in_use"] = (await client.status())["products"][0]["in_use"]
        await client.release(seat)
        borrower = Borrower()
        seen["machine_fp"] = borrower.machine_fp
        await borrower.enroll(client, "ana", "ana-laptop")
        await borrower.borrow(client, "cad", days=1)
    seen["offline_product"] = Borrower().offline("cad").product  # no network here


async def second_run(address: str) -> None:
    async with Client(address, app="fakeos") as client:
        seen["returned"] = await Borrower().return_(client, "cad")
        seat = await client.acquire("cad", "16")
        await client.release(seat)
    try:
        Borrower().offline("cad")
        seen["offline_after_return"] = "usable"
    except LanlicError as exc:
        seen["offline_after_return"] = exc.code


def client_side() -> None:
    try:
        deadline = time.monotonic() + 60
        first = server_address(None, deadline)
        asyncio.run(first_run(first))
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the first server stops cleanly
        asyncio.run(second_run(server_address(first, deadline)))
    except BaseException:
        seen["client_error"] = traceback.format_exc()
    finally:
        os.kill(os.getpid(), signal.SIGINT)


SERVE = ["serve", "--demo", "--data", str(DATA), "--port", "0", "--no-mdns", "--no-admin",
         "--lease", "4", "--heartbeat", "0.5"]  # fmt: skip
thread = threading.Thread(target=client_side, daemon=True)
thread.start()
seen["serve_exit"] = [cli.main(SERVE)]
if "client_error" not in seen:
    seen["serve_exit"].append(cli.main(SERVE))  # the restart, on the same data folder
thread.join(30)
seen["expected_fp"] = machine_fingerprint()
seen["blocked_loaded"] = sorted(set(BLOCKED) & set(sys.modules))
seen["touched_linux_ids"] = touched_linux_ids
seen["fullfsyncs"] = fullfsyncs[0]
print(json.dumps(seen), flush=True)
