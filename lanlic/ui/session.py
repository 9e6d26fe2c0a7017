"""The window's work, as coroutines run off the Tk thread (see worker.py): look, borrow, return,
enable, enroll. It calls the library (``Borrower``, ``Client``) and nothing else does I/O here.

A borrow is journalled in the container's folder before it is asked for (``ui-borrow.json``) and
its outcome after, so a window closed (or a process killed) mid-request says on reopening
whether the borrow happened: an outcome not yet shown is shown once; a request with no outcome is
asked again under the same request id, which the server answers with the borrow it made, if it
made one, and never with a second seat.

The product names the server served when last asked are kept there too (``ui-products.json``),
so a window opened while the server is out of reach lists them as Not available.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanlic import osdeps
from lanlic.errors import (
    BorrowedFileError,
    BorrowRefused,
    LanlicError,
    ServerUnavailable,
    ServerUntrusted,
)
from lanlic.laptop.borrower import BORROWED_FILE, BORROWED_KEY, Borrower
from lanlic.net.client import Client, Seat
from lanlic.ui.model import Row, build_rows, local_time

__all__ = ["JOURNAL", "Changes", "Session", "Snapshot", "refusal_text"]

#: The borrow journal, in the container's folder (see the module docstring).
JOURNAL = "ui-borrow.json"
#: The products the server served when last asked, in the container's folder.
PRODUCTS = "ui-products.json"


@dataclass(slots=True)
class Snapshot:
    """What the window shows after a look."""

    rows: list[Row]
    online: bool
    """The server answered."""
    server_error: str = ""
    """Why it did not (``code: message``)."""
    enrolled: bool = False
    kind: str = "act"
    """``act`` (this machine) or ``key`` (a portable key)."""
    home: str = ""
    customer: str = ""
    server: str = ""
    """The server's address, when known."""
    notice: str = ""
    """What happened to a borrow asked for before the window last closed, said once."""


@dataclass(slots=True)
class Changes:
    """What the window changed, for ``lanlic gui --json`` and the embedding application."""

    enrolled: bool = False
    borrowed: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.enrolled or self.borrowed or self.returned or self.enabled)

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.any,
            "enrolled": self.enrolled,
            "borrowed": self.borrowed,
            "returned": self.returned,
            "enabled": self.enabled,
        }


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class Session:
    """The client, the borrower and what the window has done, all used on the worker's loop.

    ``client``: the application's (shared; never closed here), else the window makes its own at
    ``server`` (None: ``$LANLIC_SERVER``, ``client.toml``, or found over mDNS) and closes it."""

    def __init__(
        self,
        borrower: Borrower,
        *,
        client: Client | None = None,
        server: str | None = None,
        version: str = "",
        app: str = "lanlic-gui",
        vendor: Any = None,
        discover_timeout: float = 3.0,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.borrower = borrower
        self._client = client
        self._own_client = client is None
        self.server = server
        self.version = version
        self.app = app
        self.vendor = vendor
        self.discover_timeout = discover_timeout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.known: set[str] = set()
        """Products the server served when last asked: listed as Not available while it is out
        of reach."""
        self._saved: set[str] | None = None
        """The product names in ``ui-products.json`` (None: not read yet)."""
        self.seats: dict[str, Seat] = {}
        """Add-ons enabled from this window, by product."""
        self.changes = Changes()
        self._resumed = False
        self._told_unsettled = False

    # ------------------------------------------------------------------------------ client

    async def client(self) -> Client:
        """A connected client (``ServerUnavailable`` when there is none to be had)."""
        if self._client is None:
            kwargs: dict[str, Any] = {
                "app": self.app,
                "borrowed": self.borrower,
                "connect_timeout": self.connect_timeout,
                "request_timeout": self.request_timeout,
                "vendor_key": self.vendor,
            }
            if self.server is None and not os.environ.get("LANLIC_SERVER"):
                kwargs.pop("vendor_key")
                self._client = await Client.discover(
                    self.vendor, None, timeout=self.discover_timeout, **kwargs
                )
            else:
                self._client = Client(self.server, **kwargs)
        await self._client.connect()
        return self._client

    def enabled_products(self) -> set[str]:
        """Add-ons whose seat the client holds (from this window, or the application's own)."""
        held = {s.product for s in self._client.seats.values()} if self._client else set()
        return held | {p for p, s in self.seats.items() if not s.lost}

    # -------------------------------------------------------------------------------- look

    async def look(self) -> Snapshot:
        """Ask the server (if it answers) and the container; the rows to show."""
        status: dict[str, Any] | None = None
        error = ""
        address = ""
        try:
            client = await self.client()
            with contextlib.suppress(BorrowRefused, BorrowedFileError):
                # A borrow the server has ended stops working here (as `lanlic info` does).
                await self.borrower.check_online(client)
            status = await client.status()
            address = f"{client.address[0]}:{client.address[1]}"
        except (ServerUnavailable, ServerUntrusted) as exc:
            # Out of reach, or a server that is not ours: offline, and the banner says why.
            error = f"{exc.code}: {exc.message}"
        # After the status: a borrow left unsettled is asked again only of a server that answers.
        notice = await self._resume_borrow(online=status is not None) if not self._resumed else ""
        self._remember_products(status)
        return self._snapshot(status, error, address, notice)

    def _remember_products(self, status: dict[str, Any] | None) -> None:
        """Keep the server's product names beside the container (``ui-products.json``), so a
        window opened with the server out of reach still lists them, as Not available."""
        path = self.borrower.home_path / PRODUCTS
        if self._saved is None:
            self._saved = set()
            with contextlib.suppress(OSError, ValueError, TypeError):
                self._saved = {str(n) for n in json.loads(path.read_text("utf-8"))}
            self.known |= self._saved
        if status is None:
            return
        self.known = {p["name"] for p in status.get("products", [])}
        if self.known != self._saved and path.parent.is_dir():  # enrolled: the folder is there
            with contextlib.suppress(OSError):
                osdeps.write_atomic(path, (json.dumps(sorted(self.known)) + "\n").encode())
                self._saved = set(self.known)

    def _snapshot(
        self, status: dict[str, Any] | None, error: str, address: str, notice: str
    ) -> Snapshot:
        b = self.borrower
        enrolled = False
        try:
            home = b.home()
            enrolled = home is not None and home.enrollment() is not None
        except LanlicError as exc:
            error = error or f"{exc.code}: {exc.message}"
        info = b.info(status)
        licences: dict[str, Any] = {}
        for r in info:
            if r.get("state") in (BORROWED_FILE, BORROWED_KEY):
                with contextlib.suppress(LanlicError):
                    licences[r["product"]] = b.offline(r["product"])
        rows = build_rows(
            info, status, enabled=self.enabled_products(), known=self.known, borrowed=licences
        )
        return Snapshot(
            rows=rows,
            online=status is not None,
            server_error=error,
            enrolled=enrolled,
            kind=b.kind,
            home=str(b.home_path),
            customer=(status or {}).get("customer", ""),
            server=address,
            notice=notice,
        )

    # ------------------------------------------------------------------------------ borrow

    def _journal(self) -> Path:
        return self.borrower.home_path / JOURNAL

    def _read_journal(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._journal().read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_journal(self, entry: dict[str, Any] | None) -> None:
        path = self._journal()
        if entry is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        if path.parent.is_dir():
            osdeps.write_atomic(path, (json.dumps(entry) + "\n").encode())

    async def borrow(self, product: str, days: int) -> Any:
        """Borrow ``product`` for ``days`` whole days; the ``BorrowedLicense``."""
        entry = {
            "product": product,
            "days": float(days),
            "version": self.version,
            "request_id": secrets.token_hex(16),
            "asked": time.time(),
        }
        return await self._borrow(entry)

    async def _borrow(self, entry: dict[str, Any]) -> Any:
        client = await self.client()
        if self.borrower.home_path.is_dir():  # not enrolled: refused before any request
            self._write_journal(entry)  # journalled before the request leaves
        try:
            lic = await self.borrower.borrow(
                client,
                entry["product"],
                days=entry["days"],
                version=entry["version"],
                request_id=bytes.fromhex(entry["request_id"]),
            )
        except ServerUnavailable:
            # Outcome unknown: the journal stays; the next look that reaches the server asks
            # again. The window says so itself, now.
            self._resumed, self._told_unsettled = False, True
            raise
        except LanlicError as exc:
            self._write_journal({**entry, "outcome": "refused", "message": exc.message,
                                 "code": exc.code})  # fmt: skip
            raise
        self._write_journal({**entry, "outcome": "borrowed", "end": lic.end})
        self.changes.borrowed.append(entry["product"])
        return lic

    async def shown(self) -> None:
        """The window showed the last borrow's outcome: forget it (off the Tk thread too)."""
        entry = self._read_journal()
        if entry is not None and "outcome" in entry:
            self._write_journal(None)

    async def _resume_borrow(self, *, online: bool) -> str:
        """A borrow from before (the window last closed, or its answer was lost): what became of
        it, said once. With no outcome journalled it is asked again, when ``online``."""
        entry = self._read_journal()
        if entry is None:
            self._resumed = True
            return ""
        product = entry.get("product", "?")
        asked = local_time(float(entry.get("asked", 0)))
        if entry.get("outcome") is None and not online:
            if self._told_unsettled:
                return ""
            self._told_unsettled = True
            return (
                f"The borrow of {product} asked for at {asked} is not settled: the licence "
                "server did not answer it. It is asked again (the same request, never a second "
                "seat) as soon as the server can be reached."
            )
        if entry.get("outcome") is None:
            # Asked, answer never seen: ask again under the same request id.
            home = None
            with contextlib.suppress(LanlicError):
                home = self.borrower.home()
            if home is not None and home.borrowed(product) is not None:
                with contextlib.suppress(LanlicError):
                    lic = self.borrower.offline(product)
                    self._write_journal({**entry, "outcome": "borrowed", "end": lic.end})
            else:
                try:
                    await self._borrow(entry)
                except ServerUnavailable:
                    return ""  # lost again: the window has said so
                except LanlicError:
                    pass  # the refusal is journalled: said below
            entry = self._read_journal() or entry
        self._resumed = True
        self._write_journal(None)
        if entry.get("outcome") == "borrowed":
            return (
                f"The borrow of {product} asked for at {asked} went through: borrowed until "
                f"{local_time(float(entry['end']))}."
            )
        return (
            f"The borrow of {product} asked for at {asked} did not happen: "
            f"{entry.get('message', '')} ({entry.get('code', '')})"
        )

    async def return_(self, product: str) -> bool:
        changed = await self.borrower.return_(await self.client(), product)
        self.changes.returned.append(product)
        return changed

    # ------------------------------------------------------------------------------ enable

    async def enable(self, product: str) -> Seat:
        """Take one seat of the add-on and hold it while the client lives."""
        client = await self.client()
        seat = await client.acquire(product, self.version)
        self.seats[product] = seat
        self.changes.enabled.append(product)
        return seat

    # ------------------------------------------------------------------------------ enroll

    async def enroll(self) -> Any:
        """Enroll online, in one step."""
        resp = await self.borrower.enroll(await self.client(), _user(), socket.gethostname())
        self.changes.enrolled = True
        return resp

    async def write_request(self, path: Path) -> Path:
        """Offline enrollment, step 1: the request file for the licence administrator."""
        request = self.borrower.enrollment_request(_user(), socket.gethostname())
        await asyncio.to_thread(path.write_bytes, request)  # a slow USB stick, say
        return path

    async def read_response(self, path: Path) -> Any:
        """Offline enrollment, step 3: the administrator's response file."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise BorrowedFileError(
                f"cannot read {path}: {exc.strerror}", "file_tampered"
            ) from None
        resp = self.borrower.complete_enrollment(data)
        self.changes.enrolled = True
        return resp

    def use_portable_key(self, folder: Path) -> None:
        """Borrow into (and list from) the portable key in ``folder`` from now on."""
        self.borrower = Borrower(portable_key=folder, clock=self.borrower.clock)
        self._saved = None  # the key's folder keeps its own list
        if self._client is not None and self._own_client:
            self._client.borrowed = self.borrower

    # ------------------------------------------------------------------------------- close

    async def close(self) -> None:
        """Close the window's own client (releasing its seats); an application's is left."""
        if self._own_client and self._client is not None:
            await self._client.close()


def refusal_text(exc: BaseException) -> tuple[str, str]:
    """A refusal as the window shows it: the message, and a detail line with its code."""
    if isinstance(exc, LanlicError):
        return exc.message, f"code: {exc.code}"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc), f"code: {type(exc).__name__}"
    return str(exc) or type(exc).__name__, f"code: {type(exc).__name__}"
