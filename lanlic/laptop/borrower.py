"""Borrowing for the laptop user: enroll once, borrow, use offline, return.

``Borrower`` ties the container home (lanlic/laptop/container.py: the key, the enrollment, the
borrowed files and the protected local state) to this machine's fingerprint, the wall clock, and
a ``Client`` when the server is reachable. Every method that talks to the server takes the client;
the offline ones take nothing but the files at hand.

Kinds: a network key of kind ``act`` borrows into a licence file bound to this machine (the home
is the user's data folder); one of kind ``key`` borrows into a portable key (the home is that
key's folder, e.g. on a USB stick) that works on any machine it is plugged into.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanlic import osdeps
from lanlic.core import borrowing
from lanlic.core.borrowing import BorrowedLicense, EnrollmentResponse
from lanlic.errors import BorrowedFileError, BorrowRefused
from lanlic.laptop.container import ContainerHome, default_client_home
from lanlic.laptop.machine import machine_fingerprint
from lanlic.net.client import Client
from lanlic.proto import messages as m

__all__ = [
    "BORROWED_FILE",
    "BORROWED_KEY",
    "DISABLED",
    "NETWORK",
    "NOT_AVAILABLE",
    "Borrower",
    "default_portable_key",
]

DAY = 86400.0
# The licence states of ``Borrower.info``, as ``lanlic info`` and the License Information
# window (lanlic.ui) show them: one set of words, so one piece of documentation covers both.
NETWORK = "Network"
BORROWED_FILE = "Borrowed (license file)"
BORROWED_KEY = "Borrowed (portable key)"
DISABLED = "Disabled"
"""An add-on whose seat is not held."""
NOT_AVAILABLE = "Not available"
#: Returns deactivated here but not yet acknowledged by the server: product -> borrow id.
PENDING_FILE = "pending-returns.json"


def default_portable_key() -> Path | None:
    """``$LANLIC_PORTABLE_KEY``: where the plugged-in portable key is, if any."""
    env = os.environ.get("LANLIC_PORTABLE_KEY")
    return Path(env) if env else None


class Borrower:
    """One user's borrowing on this machine (or on a portable key)."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        portable_key: Path | None = None,
        machine_fp: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.portable_key = portable_key if portable_key is not None else default_portable_key()
        self.home_path = self.portable_key or home or default_client_home()
        self.clock = clock
        self._machine_fp = machine_fp

    @property
    def machine_fp(self) -> str:
        if self._machine_fp is None:
            self._machine_fp = machine_fingerprint()
        return self._machine_fp

    @property
    def kind(self) -> str:
        return "key" if self.portable_key is not None else "act"

    def home(self) -> ContainerHome | None:
        return ContainerHome.open(self.home_path, self.machine_fp if self.kind == "act" else None)

    def _home_or_create(self) -> ContainerHome:
        home = self.home()
        if home is None:
            fp = self.machine_fp if self.kind == "act" else ""
            home = ContainerHome.create(self.home_path, self.kind, fp)  # type: ignore[arg-type]
        return home

    def _enrolled(self) -> tuple[ContainerHome, EnrollmentResponse]:
        home = self.home()
        enrollment = home.enrollment() if home is not None else None
        if home is None or enrollment is None:
            where = f" --portable-key {self.portable_key}" if self.portable_key else ""
            raise BorrowRefused(
                "this machine is not enrolled for borrowing yet: run 'lanlic enroll"
                f"{where}' while the licence server can be reached, or 'lanlic enroll{where} "
                "--request FILE' and give FILE to your licence administrator",
                "not_enrolled",
            )
        return home, enrollment

    # ------------------------------------------------------------------------- enrollment

    async def enroll(self, client: Client, user: str, host: str) -> EnrollmentResponse:
        """Enroll online in one step (making the container first if there is none)."""
        home = self._home_or_create()
        request = home.enrollment_request(user, host, self.clock())
        reply = await client.call(lambda rid: m.Enroll(rid, request))
        assert isinstance(reply, m.Enrolled)
        response = home.save_enrollment(reply.response)
        home.touch(self.clock())
        return response

    def enrollment_request(self, user: str, host: str) -> bytes:
        """Offline enrollment, step 1: the request file to carry to the administrator."""
        return self._home_or_create().enrollment_request(user, host, self.clock())

    def complete_enrollment(self, response: bytes) -> EnrollmentResponse:
        """Offline enrollment, step 3: keep the administrator's response."""
        home = self.home()
        if home is None:
            raise BorrowRefused(
                "there is no enrollment request on this machine to complete: run "
                "'lanlic enroll --request FILE' first",
                "not_enrolled",
            )
        return home.save_enrollment(response)

    # -------------------------------------------------------------------------- borrowing

    async def borrow(
        self,
        client: Client,
        product: str,
        *,
        days: float | None = None,
        until: dt.datetime | None = None,
        version: str = "",
        request_id: bytes | None = None,
    ) -> BorrowedLicense:
        """Borrow a seat and keep the signed licence file; ``days`` or ``until`` (UTC).

        ``request_id`` (16 bytes) names the attempt: after a lost answer, calling again with the
        same id (and the same days) gets the same borrow back if the server made it, never a
        second seat."""
        home, enrollment = self._enrolled()
        if home.borrowed(product) is not None:
            # One file per product here: a second borrow would overwrite the first one's file,
            # leaving its seat out of the pool with nothing left to return it with.
            try:
                held = self.offline(product)
            except (BorrowedFileError, BorrowRefused):
                pass  # expired, returned or unusable: the new borrow may replace it
            else:
                raise BorrowRefused(
                    f"{product} is borrowed here already, until "
                    f"{dt.datetime.fromtimestamp(held.end, dt.UTC):%Y-%m-%d %H:%M} UTC; "
                    f"to borrow it again, return it first: lanlic return {product}",
                )
        await client.connect()
        if client.server_key != enrollment.server_key:
            raise BorrowRefused(
                "the server reached is not the one this machine enrolled with "
                f"({enrollment.server_id}); enroll again with this server to borrow from it",
                "not_enrolled",
            )
        now = self.clock()
        if until is not None:
            days = (until.timestamp() - now) / DAY
        if days is None:
            raise BorrowRefused("say how long to borrow: --days N or --until DATE")
        days = float(days)  # the proof signs the float the server will decode
        request_id = request_id or secrets.token_bytes(16)
        server_id = client.server_id
        proof = home.proof("borrow", server_id, [request_id, product, version, days])

        def make(rid: int) -> m.Message:
            return m.Borrow(rid, request_id, product, days, home.public_key, proof, version)

        reply = await client.call(make)
        assert isinstance(reply, m.Borrowed)
        home.save_borrowed(reply.file)
        # The server dated the file when the request arrived, after ``now`` was read: check it
        # at the time of the reply, or a fresh borrow is "not valid yet".
        now = max(now, self.clock())
        home.touch(now)
        return home.check_borrowed(product, now, self.machine_fp)

    async def return_(self, client: Client, product: str) -> bool:
        """Return a borrowed seat early. The file is deactivated here first, so a saved copy of
        it stops working on this machine, then the server is told. Returns False if the server
        had already ended the borrow. Idempotent.

        If the server cannot be told (the connection drops in between), the return is kept as
        pending in the container and sent again by the next ``return_`` of the product: the
        seat is not lost, it stays out of the pool until then or until the borrow's end."""
        home, _ = self._enrolled()
        pending = self._pending(home)
        data = home.borrowed(product)
        if data is not None:
            lic, _, _ = borrowing.parse_borrowed_file(data)
            borrow_id = lic.borrow_id
        elif product in pending:
            borrow_id = pending[product]
        else:
            raise BorrowRefused(
                f"there is no borrowed licence for {product} here: it was returned already, "
                "or never borrowed on this machine (see: lanlic info)",
                "borrow_unknown",
            )
        await client.connect()
        if data is not None:
            pending[product] = borrow_id
            self._save_pending(home, pending)
            home.deactivate(borrow_id, self.clock())
        proof = home.proof("return", client.server_id, [borrow_id])
        reply = await client.call(lambda rid: m.Return(rid, borrow_id, home.public_key, proof))
        assert isinstance(reply, m.Returned)
        pending.pop(product, None)
        self._save_pending(home, pending)
        return not reply.already

    async def check_online(self, client: Client, product: str | None = None) -> dict[str, str]:
        """Show the server the borrowed files kept here (all, or ``product``'s) and learn
        whether each borrow is still on (``present``). One that is over on the server (returned
        or expired: say this folder was restored from a backup taken before a return, which no
        offline check can tell) is deactivated here at once; one the server had no record of
        (its database restored from an older backup) is counted by it from now on. Returns
        ``{product: state}``; a file the server cannot place (another server's, a product its
        key no longer serves) is left as it is."""
        home = self.home() if (self.home_path / "container.key").exists() else None
        if home is None:
            return {}
        await client.connect()
        states: dict[str, str] = {}
        for name in [product] if product else home.borrowed_products():
            data = home.borrowed(name)
            if data is None:
                continue
            try:
                lic, _, _ = borrowing.parse_borrowed_file(data)
            except BorrowedFileError:
                continue
            if lic.server_key != client.server_key:
                continue  # another server's file: nothing this one can say about it
            proof = home.proof("present", client.server_id, [lic.borrow_id])

            def make(rid: int, file: bytes = data, proof: bytes = proof) -> m.Message:
                return m.Present(rid, file, proof)

            try:
                reply = await client.call(make)
            except BorrowRefused:
                continue
            assert isinstance(reply, m.Presented)
            states[name] = reply.state
            if reply.state in ("returned", "expired"):
                home.deactivate(lic.borrow_id, self.clock())
        # Re-anchor only on a time the server signed over our fresh nonce (``server_time``),
        # by a key this container enrolled with: a forged or recorded time must not undo the
        # clock check (SPEC 12, Offline use).
        if client.server_time is not None and client.server_key in home.trusted_server_keys():
            home.reanchor(client.server_time)
        home.touch(self.clock())
        return states

    @staticmethod
    def _pending(home: ContainerHome) -> dict[str, str]:
        try:
            data = json.loads((home.root / PENDING_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    @staticmethod
    def _save_pending(home: ContainerHome, pending: dict[str, str]) -> None:
        osdeps.write_atomic(home.root / PENDING_FILE, (json.dumps(pending) + "\n").encode())

    def offline(self, product: str, version: str = "") -> BorrowedLicense:
        """Check the borrowed file of ``product`` for use now, with no network; raises
        ``BorrowedFileError`` with the reason, or ``BorrowRefused`` when there is none."""
        home = self.home() if (self.home_path / "container.key").exists() else None
        if home is None or home.borrowed(product) is None:
            raise BorrowRefused(
                f"no borrowed licence for {product} on this machine", "borrow_unknown"
            )
        lic = home.check_borrowed(product, self.clock(), self.machine_fp)
        if version and lic.versions is not None:
            from lanlic.core.netkey import ProductEntitlement

            ent = ProductEntitlement(lic.product, 1, versions=lic.versions)
            if not ent.allows_version(version):
                raise BorrowedFileError(
                    f"the borrowed licence covers {lic.product} versions "
                    f"{lic.versions[0]} to {lic.versions[1]}, not {version}",
                    "file_tampered",
                )
        return lic

    # ------------------------------------------------------------------------ information

    def info(self, status: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The "License Information" dialog: every product this client knows, its state, and
        what can be done. ``status`` is the server's status, or None when it cannot be reached.
        """
        home = self.home()
        local = home.borrowed_products() if home is not None else []
        products: dict[str, dict[str, Any]] = {}
        for p in (status or {}).get("products", []):
            products[p["name"]] = p
        rows = []
        for name in sorted(set(products) | set(local)):
            p = products.get(name)
            row: dict[str, Any] = {"product": name, "addon": bool(p and p.get("addon"))}
            lic = None
            if name in local:
                try:
                    lic = self.offline(name)
                except (BorrowedFileError, BorrowRefused) as exc:
                    row["problem"] = f"{exc.code}: {exc.message}"
            if lic is not None:
                row.update(
                    state=BORROWED_FILE if lic.kind == "act" else BORROWED_KEY,
                    expires=dt.datetime.fromtimestamp(lic.end, dt.UTC).isoformat(
                        timespec="seconds"
                    ),
                    borrow_id=lic.borrow_id,
                    actions=["return"],
                )
            elif p is not None and p["free"] > 0:
                actions = []
                if p.get("borrowable", 0) > 0:
                    actions.append("borrow")
                if row["addon"]:
                    row["state"] = DISABLED
                    actions.insert(0, "enable")
                else:
                    row["state"] = NETWORK
                row["actions"] = actions
            else:
                row["state"] = NOT_AVAILABLE
                row["actions"] = []
            if p is not None:
                row.update(seats=p["seats"], free=p["free"])
            rows.append(row)
        return rows
