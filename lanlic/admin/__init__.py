"""The admin web page and the JSON API behind it, served by ``lanlic serve`` on its own port.

A CAD manager opens one page to see who holds which seat, who has borrowed what until when, and
how full the pool has been; and acts: ends a lease, lowers borrowing terms, installs a renewed
network key, accepts an offline enrollment. The page uses only the JSON API under ``/api/``
(described in ``openapi.json`` beside this file), so a script can do the same.

The modules, from the pure to the adapter:

* ``passwords``: the admin password as a salted scrypt hash in the store's meta table.
* ``security``: sessions, CSRF tokens and the login throttle; time passed in.
* ``keys``: installing a network key into the data folder, and choosing the key at start.
* ``views``: the JSON the API returns, built from the running server's pool and desk.
* ``export``: the history as CSV, each line formatted by SQLite (the GIL released).
* ``app``: the aiohttp application, run in the licence server's own event loop.
* ``command``: ``lanlic admin password``.

This module imports none of them, so that the command line stays quick to start.
"""

from __future__ import annotations

from lanlic.errors import LanlicError

__all__ = ["DEFAULT_ADMIN_PORT", "AdminError"]

#: The admin page's port when ``lanlic serve`` is not told otherwise (the licence port + 1).
DEFAULT_ADMIN_PORT = 7767


class AdminError(LanlicError):
    """The admin page cannot be served as asked (a LAN address with no password, a busy port)."""

    code = "admin"
