"""``lanlic admin password``: set (or clear) the admin page's password in the data folder.

It writes the hash into the store's meta table, as ``lanlic admin policy`` writes the policy: a
running server picks it up within seconds (and ends every admin session).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanlic.admin.passwords import META_KEY, check_new_password, hash_password

__all__ = ["cmd_admin_password", "register"]


def _read_password(args: argparse.Namespace) -> str:
    from lanlic.cli import CliError

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the password on: use --password-stdin")
        password = getpass.getpass("new admin password: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the two passwords differ; nothing was changed")
    try:
        check_new_password(password)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return password


def cmd_admin_password(args: argparse.Namespace) -> int:
    from lanlic.server.datadir import DataDir, default_data_dir
    from lanlic.store import Store

    folder = Path(args.data) if args.data else default_data_dir()
    value = None if args.clear else hash_password(_read_password(args))
    DataDir(folder).prepare()
    store = Store(folder / "lanlic.db")
    try:
        store.set_meta(META_KEY, value or "")  # empty: no password
    finally:
        store.close()
    if args.json:
        print(json.dumps({"password_set": value is not None, "data": str(folder)}), flush=True)
    elif value is None:
        print(
            f"cleared the admin password in {folder}: the admin page is open on a loopback "
            "address only, and refused on any other"
        )
    else:
        print(
            f"set the admin password in {folder}; a running server uses it within seconds "
            "(everyone logged in to the admin page logs in again)"
        )
    return 0


def register(add: Callable[..., Any], admin_sub: Any) -> None:
    """Add ``lanlic admin password`` (see cli.build_parser)."""
    sp = add("password", cmd_admin_password, "set the admin page's password", admin_sub)
    sp.add_argument("--data", help="the server's data folder (default: ~/.local/share/lanlic)")
    how = sp.add_mutually_exclusive_group()
    how.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    how.add_argument("--clear", action="store_true", help="remove the password")
