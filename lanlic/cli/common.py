"""What every ``lanlic`` command shares, and the only module the command modules import from here.

The command modules (``vendor``, ``serve``, ``seats``, ``borrow``, ``admin``, ``bench``) each add
their subcommands to the parser through ``Commands`` and use the helpers below; none imports
another, so a change to one family never ripples through the rest (``tests/test_cli_layout.py``
holds that).

Failing well is the CLI's job: every failure a user can cause ends in one line on stderr,
``lanlic: CODE: reason``, and a non-zero exit. Arguments are checked as they are parsed (a port
is 0 to 65535, a time is a finite number in its range, an address parses), so a bad value is a
``usage`` error naming the option, never an exception from deep inside the library.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lanlic.errors import LanlicError

if TYPE_CHECKING:
    from lanlic.net.client import Client

__all__ = [
    "DB_NAME",
    "DEMO_PORT",
    "KEY_TERMS",
    "CliError",
    "Commands",
    "FileProblem",
    "Handler",
    "Parser",
    "connect",
    "data_folder",
    "default_data_folder",
    "explicit_server",
    "iso_utc",
    "local_time",
    "print_json",
    "run_async",
    "say",
    "table",
    "user_name",
]

DEMO_PORT = 7766
#: The server's database in its data folder.
DB_NAME = "lanlic.db"
#: The store's meta key under which ``serve`` keeps what its network key allows per product,
#: for ``admin policy`` to check a change against.
KEY_TERMS = "key_terms"
#: The largest number an option takes: below SPEC's 10^12 for float fields, and within what
#: asyncio's timers and a SQLite integer hold.
LARGEST = 1e9
LARGEST_WHOLE = 10**9

Handler = Callable[[argparse.Namespace], int]


class CliError(LanlicError):
    """A command used wrongly, or asked for something that makes no sense."""

    code = "usage"


class CannotListen(LanlicError):
    """``serve`` cannot listen where it was told: the port is taken (often by another lanlic
    still running), or the address is not this machine's. Its own code, so a script or service
    manager can tell it from a command line typed wrongly (``usage``)."""

    code = "listen"

    @classmethod
    def of(cls, exc: OSError, host: str, port: int) -> CannotListen:
        # The OS's words for the errno (uvloop's own message repeats the address).
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return cls(f"cannot listen on {host}:{port}: {reason}")


class FileProblem(LanlicError):
    """A file or folder named on the command line cannot be read or written."""

    code = "file"

    @classmethod
    def of(cls, exc: OSError, what: str = "") -> FileProblem:
        name = what or (str(exc.filename) if exc.filename is not None else "")
        reason = exc.strerror or str(exc)
        return cls(f"{name}: {reason}" if name else reason)


# ------------------------------------------------------------------------------------ parser


class Parser(argparse.ArgumentParser):
    """argparse, with its complaints in one line (``lanlic: usage: ...``) instead of a usage
    block, so a script reading stderr sees the same shape for every failure."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see: {self.prog} --help)")


def port_number(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def number(
    low: float,
    high: float = LARGEST,
    *,
    low_open: bool = False,
    unit: str = "",
    whole: bool = False,
) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (excluded when ``low_open``) to ``high``."""
    above = f"above {low:g}" if low_open else f"from {low:g}"
    upto = f" to {high:g}" if high < LARGEST else ""
    allowed = f"a {'whole ' if whole else ''}number {above}{upto}{unit}"

    def parse(text: str) -> float:
        try:
            value = float(int(text)) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    parse.__name__ = "number"
    return parse


def whole(low: int, high: int = LARGEST_WHOLE) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""
    check = number(low, high, whole=True)

    def parse(text: str) -> int:
        return int(check(text))

    parse.__name__ = "whole"
    return parse


#: Seconds to wait or hold: above 0 (and below about 30 years, which asyncio's timers take).
seconds = number(0, low_open=True, unit=" s")
#: Seconds to hold a seat: 0 takes one and gives it back at once (a check that one can be had).
hold_seconds = number(0, unit=" s")


def address(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT``), or the members of one pool ``HOST:PORT,HOST:PORT``,
    checked now so a bad one is a usage error."""
    from lanlic.net.client import parse_servers

    try:
        parse_servers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class Commands:
    """Adds subcommands to one level of the parser: each gets ``--json`` and its handler."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub

    def add(self, name: str, fn: Handler, help_: str, **kwargs: Any) -> Parser:
        sp: Parser = self.sub.add_parser(name, help=help_, description=help_, **kwargs)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=fn)
        return sp

    def group(self, name: str, help_: str, dest: str) -> Commands:
        """A command with subcommands of its own (``lanlic vendor ...``)."""
        sp = self.sub.add_parser(name, help=help_, description=help_)
        return Commands(sp.add_subparsers(dest=dest, required=True))


def add_find(sp: argparse.ArgumentParser) -> None:
    """The options that say which server a client command talks to."""
    sp.add_argument(
        "--server",
        type=address,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the server, or the members of a redundant one (default: $LANLIC_SERVER, else "
        "client.toml, else find it over mDNS)",
    )
    sp.add_argument(
        "--interface", action="append", metavar="IP", help="browse on this interface only"
    )
    sp.add_argument("--vendor", help="only servers of this vendor: fingerprint or .pub file")
    sp.add_argument(
        "--discover-timeout",
        type=seconds,
        default=3.0,
        metavar="S",
        help="seconds to look (default 3)",
    )


def add_data(sp: argparse.ArgumentParser) -> None:
    """``--data``, with the default folder in the help."""
    sp.add_argument(
        "--data",
        metavar="DIR",
        help=f"the server's data folder (default: $LANLIC_DATA, else {default_data_folder()})",
    )


# ----------------------------------------------------------------------------------- running


def run_async(coro: Any) -> Any:
    """Run ``coro`` on uvloop when it is installed, else on asyncio (outside the ``except``, so
    no error of the command is chained to the missing uvloop)."""
    run: Callable[[Any], Any]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    return run(coro)


def vendor_key(text: str | None) -> Any:
    """``--vendor``: a fingerprint (``sha256:...``) or a vendor public key file."""
    if text is None:
        return None
    if text.strip().lower().startswith("sha256:"):
        from lanlic.laptop.trust import fingerprint_of

        try:
            return fingerprint_of(text)
        except ValueError as exc:
            raise CliError(f"--vendor: {exc}") from None
    from lanlic.vendorkeys import load_vendor_public

    try:
        return load_vendor_public(Path(text))
    except OSError as exc:
        raise CliError(f"--vendor: cannot read {text}: {exc.strerror}") from None


def checked_interfaces(interfaces: list[str] | None) -> list[str] | None:
    """``--interface`` addresses, each one this host has (else mDNS fails with a bare OSError)."""
    if not interfaces:
        return interfaces
    import ipaddress
    import socket

    for ip in interfaces:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CliError(f"--interface: {ip!r} is not an IP address") from None
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, 0))
            except OSError:
                raise CliError(f"--interface: {ip} is not an address of this host") from None
    return interfaces


def explicit_server() -> str | None:
    """An address (or a list of members) given outside the command line: ``$LANLIC_SERVER``,
    else ``client.toml``."""
    from lanlic.laptop.trust import configured_server

    server = os.environ.get("LANLIC_SERVER") or configured_server()
    if server:
        from lanlic.net.client import parse_servers

        try:
            parse_servers(server)
        except ValueError as exc:
            raise CliError(f"$LANLIC_SERVER or client.toml: {exc}") from None
    return server


async def connect(args: argparse.Namespace, product: str | None, **kwargs: Any) -> Client:
    """A connected client: at ``--server``, else ``$LANLIC_SERVER`` or ``client.toml``, else the
    server found over mDNS (on ``--interface``, of ``--vendor``, serving ``product``)."""
    from lanlic.net.client import Client

    vendor = vendor_key(args.vendor)
    server = args.server or explicit_server()
    if server:
        client = Client(server, vendor_key=vendor, **kwargs)
        await client.connect()
        return client
    interfaces = checked_interfaces(args.interface)
    return await Client.discover(
        vendor, product, timeout=args.discover_timeout, interfaces=interfaces, **kwargs
    )


async def with_client(args: argparse.Namespace, product: str | None, fn: Any) -> Any:
    """``fn(client)`` on a client from ``connect``, closed after."""
    client = await connect(args, product)
    try:
        return await fn(client)
    finally:
        await client.close()


def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# ------------------------------------------------------------------------------ data folder


def default_data_folder() -> Path:
    """The server's data folder when ``--data`` is not given: ``$LANLIC_DATA``, else the OS's
    usual place for a user's data (lanlic.osdeps: ``~/.local/share/lanlic`` on Linux)."""
    from lanlic.server.datadir import default_data_dir

    return default_data_dir()


def data_folder(args: argparse.Namespace) -> Path:
    return Path(args.data) if getattr(args, "data", None) else default_data_folder()


def existing_database(folder: Path) -> Path:
    db = folder / DB_NAME
    if not db.is_file():
        hint = "" if folder != default_data_folder() else " (the default folder)"
        raise CliError(
            f"no lanlic database in {folder}{hint}; pass --data with the server's folder"
        )
    return db


# ----------------------------------------------------------------------------------- output


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str), flush=True)


def say(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """``obj`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print_json(obj)
    else:
        print(text, flush=True)


def local_time(ts: float) -> str:
    """A time for people: local time with its zone, to the second."""
    when = dt.datetime.fromtimestamp(ts).astimezone()
    zone = when.strftime("%Z")
    if not zone or not zone.isalpha():
        zone = when.strftime("UTC%z")
    return when.strftime("%Y-%m-%d %H:%M:%S ") + zone


def iso_utc(ts: float) -> str:
    """A time for machines: ISO 8601 in UTC, to the second (``2027-01-15T09:30:00Z``)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """Print rows under a header, each column as wide as its widest cell (the last one is left
    ragged); the columns numbered in ``right`` are right-aligned."""
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        cells = []
        for i, (cell, w) in enumerate(zip(r, widths, strict=True)):
            if i == len(head) - 1 and i not in right:
                cells.append(str(cell))
            else:
                cells.append(str(cell).rjust(w) if i in right else str(cell).ljust(w))
        print("  ".join(cells).rstrip(), flush=False)
    sys.stdout.flush()
