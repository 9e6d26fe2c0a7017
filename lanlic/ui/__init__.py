"""``lanlic.ui``: the License Information window (tkinter, standard library).

Two ways to use it:

* standalone: ``lanlic gui [--server HOST:PORT]`` (see ``lanlic.ui.command``), which an
  application on any toolkit can also run as a child process and read what changed from;
* embedded in a Tk application: ``show_license_information(parent, client=..., borrower=...)``,
  reusing the application's ``BlockingClient`` (its connection and its loop) and ``Borrower``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lanlic.ui.session import Changes

if TYPE_CHECKING:  # tkinter is imported only when a window opens: the CLI runs without it
    import tkinter as tk

    from lanlic.laptop.borrower import Borrower
    from lanlic.net.blocking import BlockingClient
    from lanlic.ui.window import LicenseWindow

__all__ = ["Changes", "show_license_information"]


def show_license_information(
    parent: tk.Misc | None = None,
    *,
    client: BlockingClient | None = None,
    borrower: Borrower | None = None,
    server: str | None = None,
    portable_key: Path | None = None,
    version: str = "",
    app: str = "lanlic-gui",
    vendor: Any = None,
    on_close: Callable[[Changes], Any] | None = None,
    modal: bool = False,
) -> LicenseWindow | Changes:
    """Open the License Information window.

    ``client``: the application's ``BlockingClient``; the window sends its requests on that
    client's loop and connection (an add-on enabled here is held by it), and never closes it.
    Without one the window makes its own client at ``server`` (None: ``$LANLIC_SERVER``,
    ``client.toml``, else the server of ``vendor`` found on the LAN) and closes it with itself.
    ``borrower``: the application's ``Borrower`` (default: this user's, or the portable key's at
    ``portable_key``). ``version``: the application's version, for version-limited products.

    With a ``parent``, the window is a ``Toplevel`` over it and this returns the
    ``LicenseWindow`` at once (``modal=True``: waits until it is closed and returns the
    ``Changes``); ``on_close(changes)`` runs on the Tk thread when it closes. With no parent it
    makes its own Tk root, runs until closed, and returns the ``Changes``.
    """
    import tkinter as tk

    from lanlic.laptop.borrower import Borrower
    from lanlic.ui.session import Session
    from lanlic.ui.window import LicenseWindow, new_root
    from lanlic.ui.worker import Worker

    if borrower is None:
        borrower = Borrower(portable_key=portable_key)
    worker = Worker(client.loop if client is not None else None)
    session = Session(
        borrower,
        client=client.client if client is not None else None,
        server=server,
        version=version,
        app=app,
        vendor=vendor,
    )
    if parent is None:
        root = new_root()
        window = LicenseWindow(root, session, worker, on_close=on_close)
        root.mainloop()
        window.finished.wait(60)
        return session.changes
    top = tk.Toplevel(parent)
    top.transient(parent.winfo_toplevel())
    window = LicenseWindow(top, session, worker, on_close=on_close)
    if modal:
        top.grab_set()
        parent.wait_window(top)
        return session.changes
    return window
