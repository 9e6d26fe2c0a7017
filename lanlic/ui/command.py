"""``lanlic gui``: the License Information window on its own, for users and for applications
on other toolkits, which run it as a child process and learn what changed from its exit code
(``CHANGED`` when anything did, 0 when nothing did) or, with ``--json``, from the one JSON line
it prints on stdout when it closes::

    {"changed": true, "enrolled": false, "borrowed": ["cad"], "returned": [], "enabled": []}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lanlic.errors import LanlicError

__all__ = ["CHANGED", "NoDisplay", "add_parser", "run"]

#: The exit code when the window changed something (enrolled, borrowed, returned, enabled).
CHANGED = 3


class NoDisplay(LanlicError):
    """The window cannot open: no display (no $DISPLAY on Linux), or Tk is missing."""

    code = "no_display"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``gui`` to the ``lanlic`` command's subparsers."""
    text = "the License Information window: borrow, return, enable, enroll"
    sp: argparse.ArgumentParser = subparsers.add_parser("gui", help=text, description=text)
    sp.add_argument("--server", help="HOST:PORT (default: $LANLIC_SERVER, else find it over mDNS)")
    sp.add_argument(
        "--portable-key",
        metavar="PATH",
        help="the portable key's folder (default: $LANLIC_PORTABLE_KEY)",
    )
    sp.add_argument("--vendor", metavar="FINGERPRINT", help="only a server of this vendor")
    sp.add_argument("--version", dest="version", default="", help="the application's version")
    sp.add_argument("--app", default="lanlic-gui", help="application name shown to the admin")
    sp.add_argument(
        "--json", action="store_true", help="on closing, print what changed as one JSON line"
    )
    sp.set_defaults(func=run)
    return sp


def run(args: argparse.Namespace) -> int:
    """Open the window; when it closes, say what changed."""
    try:
        import tkinter as tk

        from lanlic.ui.window import new_root

        root = new_root()
    except ImportError:
        raise NoDisplay("this Python has no tkinter (install python3-tk)") from None
    except tk.TclError as exc:
        raise NoDisplay(f"cannot open the window: {exc}") from None
    from lanlic.laptop.borrower import Borrower
    from lanlic.ui.session import Session
    from lanlic.ui.window import LicenseWindow
    from lanlic.ui.worker import Worker

    key = Path(args.portable_key) if args.portable_key else None
    session = Session(
        Borrower(portable_key=key),
        server=args.server,
        version=args.version,
        app=args.app,
        vendor=args.vendor,
    )
    window = LicenseWindow(root, session, Worker())
    root.mainloop()
    if not window.closed:  # the root went away some other way
        window.close()
    window.finished.wait(60)
    changes = session.changes
    if args.json:
        print(json.dumps(changes.to_json()), flush=True)
    sys.stdout.flush()
    return CHANGED if changes.any else 0
