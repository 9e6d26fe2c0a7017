"""The ``lanlic`` parser, put together from the command modules, and ``main``, which runs one
command and turns every failure into one line (``lanlic: CODE: reason``) and an exit code:
1 for a failure, 2 for a command line that does not parse, 130 for Ctrl-C."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from lanlic import __version__
from lanlic.cli import admin, bench, borrow, seats, serve, vendor
from lanlic.cli.common import CliError, Commands, FileProblem, Parser, print_json
from lanlic.errors import LanlicError

__all__ = ["build_parser", "main"]

#: The families of commands in this package, in the order ``lanlic --help`` lists them.
FAMILIES = (vendor, serve, seats, borrow, admin, bench)

#: Commands whose code lives outside this package: each module's ``add_parser(subparsers)``
#: adds its own (and sets ``func``). The one place to hook a new one in.
ELSEWHERE: tuple[str, ...] = ("lanlic.ui.command",)

#: Options that name files or folders: on POSIX these may hold bytes that are not UTF-8 (Python
#: keeps them as surrogates), which the OS takes back as they came. Every other argument is
#: text that goes on the wire, into JSON or into the database, so it must be UTF-8.
PATH_OPTIONS = frozenset(
    {"out", "data", "license", "vendor_pub", "vendor_key", "vendor", "restore", "file",
     "request", "response", "accept", "portable_key", "json_out", "plot", "markdown"}
)  # fmt: skip

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> Parser:
    parser = Parser(prog="lanlic", description="LAN floating-license server")
    parser.add_argument("--version", action="version", version=f"lanlic {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = Commands(parser.add_subparsers(dest="command", required=True))
    for family in FAMILIES:
        family.register(commands)
    for name in ELSEWHERE:
        importlib.import_module(name).add_parser(commands.sub)
    return parser


def _check_text(args: argparse.Namespace) -> None:
    """Refuse an argument that is not UTF-8 text (bytes the locale could not decode)."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if dest in PATH_OPTIONS or not isinstance(v, str):
                continue
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                shown = v.encode("utf-8", "replace").decode()
                option = dest.replace("_", "-")
                raise CliError(
                    f"{option}: {shown!r} is not UTF-8 text (? marks the bytes that are not)"
                ) from None


def _fail(exc: LanlicError, as_json: bool) -> None:
    if as_json:
        print_json({"error": exc.code, "message": exc.message})
    print(f"lanlic: {exc.code}: {exc.message}", file=sys.stderr, flush=True)


def _quiet_stdout() -> None:
    """Whoever read our output has gone (``lanlic status | head -3``): say nothing more there,
    and no complaint at exit either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _check_text(args)
    except CliError as exc:
        _fail(exc, "--json" in (sys.argv[1:] if argv is None else argv))
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    as_json = getattr(args, "json", False) is True
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_FAILED
    except LanlicError as exc:
        _fail(exc, as_json)
        return EXIT_FAILED
    except OSError as exc:
        # A file or the network, as named by the OS: the one line says which and why.
        _fail(FileProblem.of(exc), as_json)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code
