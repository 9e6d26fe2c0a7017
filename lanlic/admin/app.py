"""The admin web server: an aiohttp application in the licence server's own event loop.

``AdminServer(server, options)`` serves one static page and the JSON API under ``/api/``
(``openapi.json`` beside this file describes it). It reads the live state straight from the
``LicenseServer`` it is given (the pool, the borrowing desk, the announcer's state), and goes to
the database only through ``LicenseServer.store_call``, on the store's own thread, so that
nothing here blocks the loop that serves the seats. The password hash is checked on a thread of
its own for the same reason.

Security, in the order a request meets it (``_guard``):

1. With no admin password set, the page is open, but only on a loopback address and only to a
   request whose ``Host`` is a loopback name: a web page elsewhere cannot reach it by pointing a
   DNS name of its own at 127.0.0.1 (DNS rebinding). Binding to any other address is refused
   at start until a password is set (``lanlic admin password``).
2. Every ``/api/`` path but the session, login and OpenAPI ones needs a session cookie.
3. Every request that changes something needs that session's CSRF token in ``X-CSRF-Token``,
   and, when the browser says where it comes from (``Origin``), this very host.
4. Failed logins are slowed down per address (``security.LoginThrottle``) and written to the
   history, like every admin action, with who did it (``admin_*`` events).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanlic import __version__
from lanlic.admin import DEFAULT_ADMIN_PORT, AdminError, export, keys, views
from lanlic.admin.connections import AdminLimits, ConnectionGuard
from lanlic.admin.passwords import META_KEY, verify_password
from lanlic.admin.security import AdminSession, LoginThrottle, Sessions, same_token
from lanlic.core import borrowing
from lanlic.core.netkey import verify_network_key
from lanlic.core.records import HistoryRow
from lanlic.errors import BorrowedFileError, LanlicError, NetworkKeyError
from lanlic.net.server import LicenseServer
from lanlic.proto import messages as m
from lanlic.store import Store
from lanlic.store import history as hist

if TYPE_CHECKING:
    from lanlic.cluster.history import ClusterHistory
    from lanlic.cluster.service import ClusterService

__all__ = ["AdminOptions", "AdminServer", "is_loopback", "serve_admin"]

log = logging.getLogger("lanlic.admin")

T = TypeVar("T")

COOKIE: Final = "lanlic_admin"
CSRF_HEADER: Final = "X-CSRF-Token"
#: Paths under /api/ that need no session.
PUBLIC: Final = frozenset({"/api/session", "/api/login", "/api/openapi.json"})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: How often the password hash is read again (a change logs every session out).
PASSWORD_REFRESH = 2.0
MAX_PAGE: Final = 1000
MAX_UPLOAD: Final = 2 << 20
STATIC: Final = {
    "index.html": "text/html",
    "admin.js": "text/javascript",
    "admin.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
MEMBER_HISTORY: Final = (
    "the whole cluster's, every member's, read from etcd (each row names the member that "
    "served it; docs/cluster.md)"
)
HISTORY_NOT_KEPT: Final = (
    "a cluster member keeps no history yet (docs/cluster.md): the seats and borrows shown "
    "are the whole cluster's, as of now"
)


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the page on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AdminOptions:
    host: str = "127.0.0.1"
    """Address to listen on; any but a loopback one needs an admin password."""
    port: int = DEFAULT_ADMIN_PORT
    """Port to listen on; 0 picks a free one."""
    vendor_public: Ed25519PublicKey | None = None
    """The vendor key that uploaded network keys must be signed with (None: no uploads)."""
    data_dir: Path | None = None
    """Where an uploaded network key is saved (default: the store's folder)."""
    discovery: Callable[[], dict[str, Any]] | None = None
    """The announcer's state for the page (``enabled``, ``state``, ``name``, ``interfaces``)."""
    key_source: str = ""
    """Which file the running network key was read from, for the page."""
    limits: AdminLimits = dataclasses.field(default_factory=AdminLimits)
    """Timeouts and the connection cap of the admin port (``lanlic.admin.connections``)."""
    cluster: tuple[str, ...] | None = None
    """A cluster member (``lanlic.cluster.service.ClusterService``): its etcd endpoints. The
    page then shows the whole cluster (``lanlic.cluster.view``); None: a single server."""


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "bad_request", "message": f"{name} must be a number"}),
            content_type="application/json",
        ) from None
    return min(hi, max(lo, value))


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:7767`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "bad_request", "message": message}),
        content_type="application/json",
    )


def _time_param(request: web.Request, name: str) -> float | None:
    try:
        return views.parse_time(request.query.get(name))
    except ValueError as exc:
        raise _bad_request(f"{name}: {exc}") from None


class AdminServer:
    """The admin page of one ``LicenseServer``: ``await start()``, then ``await stop()``."""

    def __init__(self, server: LicenseServer, options: AdminOptions = AdminOptions()) -> None:
        self.server = server
        self.options = options
        self.host = options.host
        self.port = options.port
        self.loopback = is_loopback(options.host)
        self.sessions = Sessions()
        self.throttle = LoginThrottle()
        self.password_hash: str | None = None
        self.pending_key: dict[str, Any] | None = None
        """An installed key that a restart will serve, or None."""
        self._kdf = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lanlic-admin")
        self._assets: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        limits = options.limits
        cap = limits.max_connections
        self.guard = ConnectionGuard(
            server.loop, limits, server.limits.admin_connections if cap is None else cap
        )
        self._refresher: asyncio.Task[None] | None = None
        self.cluster: ClusterService | None = (
            cast("ClusterService", server.service) if options.cluster is not None else None
        )
        self.app = self._build_app()

    # ------------------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def data_dir(self) -> Path | None:
        if self.options.data_dir is not None:
            return self.options.data_dir
        store = self.server.store
        return None if store is None else Path(store.path).parent

    async def start(self) -> None:
        """Listen. ``AdminError`` for a non-loopback address with no password set, or when the
        port cannot be had."""
        try:
            await self._start()
        except BaseException:
            self._kdf.shutdown(wait=True)
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._assets = await loop.run_in_executor(self._kdf, _load_assets)
        self.password_hash = await self._read_password()
        if not self.loopback and self.password_hash is None:
            raise AdminError(
                f"refusing to serve the admin page on {self.host}, beyond this machine, with no "
                "admin password: set one with 'lanlic admin password' (or use --admin-host "
                "127.0.0.1, or --no-admin)"
            )
        self.pending_key = await loop.run_in_executor(self._kdf, self._find_pending_key)
        idle = self.options.limits.idle_timeout
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=idle
        )
        await runner.setup()
        assert runner.server is not None
        try:
            # Not a TCPSite: each connection goes through the guard on its way to aiohttp.
            self._listener = await loop.create_server(
                self.guard.factory(runner.server), self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            await runner.cleanup()
            raise AdminError(
                f"cannot serve the admin page on {self.host}:{self.port}: {exc.strerror}; "
                "choose another with --admin-port (0 picks a free one), or --no-admin"
            ) from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.guard.start()
        addr = self._listener.sockets[0].getsockname()
        self.host, self.port = str(addr[0]), int(addr[1])
        if self.server.store is not None or self._member_db:
            self._refresher = loop.create_task(self._refresh_password())
        log.info("admin page on %s", self.url)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        self.guard.stop()
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._kdf.shutdown(wait=True)

    @property
    def _member_db(self) -> bool:
        """A cluster member with its own database (its history and admin password only)."""
        return self.cluster is not None and self.server.history_store is not None

    async def _read_password(self) -> str | None:
        if self.server.store is None and self._member_db:
            # Read on the history's reader connection: the member's database is written by
            # its history thread only, and ``lanlic admin password --data`` sets this row.
            row = await self.server.history_call(
                lambda db: db.execute(
                    "SELECT value FROM meta WHERE key = ?", (META_KEY,)
                ).fetchone()
            )
            return str(row[0]) if row is not None and row[0] else None
        if self.server.store is None:
            return None
        value = await self.server.store_call(lambda s: s.meta(META_KEY))
        return cast(str | None, value) or None  # empty: cleared

    async def _refresh_password(self) -> None:
        while True:
            await asyncio.sleep(PASSWORD_REFRESH)
            try:
                value = await self._read_password()
            except Exception as exc:
                log.warning("could not read the admin password: %s", exc)
                continue
            if value != self.password_hash:
                self.password_hash = value
                self.sessions.clear()  # a new (or removed) password logs everyone out
                log.info("the admin password changed: every admin session ended")

    async def _store(self, fn: Callable[[Store], T]) -> T:
        if self.server.store is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps(
                    {"error": "no_store", "message": "this server runs without a data folder"}
                ),
                content_type="application/json",
            )
        return cast(T, await self.server.store_call(fn))

    async def _record(self, session: AdminSession, event: str, product: str, detail: str) -> None:
        """Write an admin action to the history at once (not in the server's next batch)."""
        row = HistoryRow(self.server.wall(), event, product, session.user, session.address, detail)
        if self.server.store is None and self._member_db:
            # A member's database is written by its history thread only: the row joins the
            # server's batch, flushed now.
            self.server._history_event((event, product, session.user, session.address, detail))
            await self.server.flush_history()
            if self.cluster is not None:  # and in etcd now, for every member's page (bounded)
                await self.cluster.history.flush(within=self.cluster.seats.call_timeout)
            return
        if self.server.store is None:
            log.info("%s by %s: %s", event, session.user, detail)
            return
        await self.server.store_call(lambda s: s.append_history([row]))

    # ------------------------------------------------------------------------ the app

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_UPLOAD, middlewares=[self._guard])
        app.on_response_prepare.append(_security_headers)
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/static/{name}", self._static)
        r.add_get("/api/openapi.json", self._openapi)
        r.add_get("/api/session", self._get_session)
        r.add_post("/api/login", self._login)
        r.add_post("/api/logout", self._logout)
        r.add_get("/api/overview", self._overview)
        r.add_get("/api/holders", self._holders)
        r.add_delete("/api/holders/{lease}", self._remove_holder)
        r.add_get("/api/borrows", self._borrows)
        r.add_get("/api/enrollments", self._enrollments)
        r.add_post("/api/enrollments", self._enroll)
        r.add_get("/api/history", self._history)
        r.add_get("/api/history.csv", self._history_csv)
        r.add_get("/api/usage", self._usage)
        r.add_put("/api/policy/{product}", self._policy)
        r.add_get("/api/queue", self._queue)
        r.add_delete("/api/queue/{ticket}", self._remove_waiter)
        r.add_get("/api/seat-policy", self._seat_policy)
        r.add_put("/api/seat-policy", self._load_seat_policy)
        r.add_post("/api/key", self._install_key)
        return app

    @property
    def open_mode(self) -> bool:
        """No password set, on loopback: the page needs no login."""
        return self.password_hash is None and self.loopback

    def _session_of(self, request: web.Request) -> AdminSession | None:
        return self.sessions.get(request.cookies.get(COOKIE), self.server.loop.time())

    def _session(self, request: web.Request) -> AdminSession:
        """The session of a request that ``_guard`` let through."""
        session = self._session_of(request)
        assert session is not None
        return session

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.open_mode and _host_name(request.host) not in LOOPBACK_NAMES:
            return _error(403, "bad_host", "this page answers to a loopback address only")
        path = request.path
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                return _error(403, "bad_origin", "a request from another site is refused")
        if path.startswith("/api/") and path not in PUBLIC:
            session = self._session_of(request)
            if session is None:
                return _error(401, "login_required", "log in first")
            if request.method not in SAFE_METHODS:
                token = request.headers.get(CSRF_HEADER, "")
                if not token or not same_token(token, session.csrf):
                    return _error(
                        403, "csrf", f"this change needs the session's {CSRF_HEADER} header"
                    )
        return await handler(request)

    # ----------------------------------------------------------------------- the page

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return self._asset("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC or name == "index.html":
            raise web.HTTPNotFound()
        return self._asset(name)

    def _asset(self, name: str) -> web.Response:
        return web.Response(
            body=self._assets[name],
            content_type=STATIC[name],
            charset="utf-8" if name != "favicon.svg" else None,
            headers={"Cache-Control": "no-cache"},
        )

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._assets["openapi.json"], content_type="application/json")

    # -------------------------------------------------------------------- sessions

    def _session_json(self, session: AdminSession | None) -> dict[str, Any]:
        return {
            "authenticated": session is not None,
            "user": session.user if session else None,
            "csrf": session.csrf if session else None,
            "open": self.open_mode,
            "password_set": self.password_hash is not None,
        }

    async def _get_session(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._session_json(self._session_of(request)))

    async def _login(self, request: web.Request) -> web.StreamResponse:
        loop = self.server.loop
        address = request.remote or "?"
        wait = self.throttle.wait(address, loop.time())
        if wait > 0:
            return _slow_down(wait)
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _error(400, "bad_request", 'send JSON: {"password": ..., "name": ...}')
        password, name = body.get("password", ""), body.get("name", "")
        if not isinstance(password, str) or not isinstance(name, str):
            return _error(400, "bad_request", "password and name must be text")
        user = " ".join(name.split())[:64] or "admin"
        self.password_hash = stored = await self._read_password()
        if stored is None:
            if not self.loopback:
                return _error(
                    403,
                    "no_password",
                    "no admin password is set: run 'lanlic admin password' on the server",
                )
            token, session = self.sessions.create(user, address, loop.time(), open=True)
            return self._logged_in(token, session)
        # Counted now, before the check: tries sent at once cannot all slip past the wait
        # while the first is in scrypt (a success below forgets the count).
        wait = self.throttle.attempt(address, loop.time())
        if wait > 0:
            return _slow_down(wait)
        ok = await loop.run_in_executor(self._kdf, verify_password, password, stored)
        if not ok:
            delay = self.throttle.wait(address, loop.time())
            anon = AdminSession(user, address, "", 0.0, 0.0, False)
            await self._record(anon, "admin_login_failed", "", "wrong password")
            if delay > 0:
                return _slow_down(delay, "wrong password")
            return _error(401, "bad_password", "wrong password")
        self.throttle.succeeded(address)
        token, session = self.sessions.create(user, address, loop.time())
        await self._record(session, "admin_login", "", "logged in")
        return self._logged_in(token, session)

    def _logged_in(self, token: str, session: AdminSession) -> web.Response:
        response = web.json_response(self._session_json(session))
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.drop(request.cookies.get(COOKIE))
        response = web.json_response({"authenticated": False})
        response.del_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------------ reads

    async def _overview(self, request: web.Request) -> web.StreamResponse:
        srv, service = self.server, self.server.service
        now, wall = srv.loop.time(), srv.wall()
        key = service.key
        discovery = self.options.discovery() if self.options.discovery else {"enabled": False}
        host, port = srv.address
        cluster, borrows = None, len(service.desk.listing())
        enrollments: int | None = len(service.desk.enrollments)
        if self.cluster is not None:
            from lanlic.cluster import view

            products = view.product_rows(self.cluster, now, wall)
            borrows = sum(p["borrowed"] for p in products)  # borrowed seats, from the mirror
            try:
                enrollments = len(await view.enrollment_rows(self.cluster))
            except LanlicError:
                enrollments = None  # etcd did not answer: the page shows no count
            cluster = {
                "member": self.cluster.seats.member,
                "etcd": list(self.options.cluster or ()),
                "history": self._member_db,
                "history_note": HISTORY_NOT_KEPT if not self._member_db else MEMBER_HISTORY,
                "chart_note": "" if self._member_db else HISTORY_NOT_KEPT,
            }
        else:
            products = views.product_rows(service, now, wall)
        return web.json_response(
            {
                "now": wall,
                "version": __version__,
                "server": {
                    "id": service.server_id,
                    "vendor_fp": key.vendor_fp,
                    "address": f"{host}:{port}",
                    "admin_address": f"{self.host}:{self.port}",
                    "lease_seconds": service.config.lease_seconds,
                    "heartbeat_seconds": service.config.heartbeat_seconds,
                    "connections": len(srv.connections),
                    "data": str(self.data_dir) if self.data_dir else None,
                },
                "key": {
                    **keys.key_summary(key),
                    "source": self.options.key_source,
                    "days_left": (
                        key.expires - dt.datetime.fromtimestamp(wall, dt.UTC).date()
                    ).days,
                },
                "pending_key": self.pending_key,
                "discovery": discovery,
                "products": products,
                "cluster": cluster,
                "counts": {
                    "holders": sum(p["in_use"] for p in products),
                    "borrows": borrows,
                    "enrollments": enrollments,
                },
                "session": self._session_json(self._session(request)),
            }
        )

    async def _holders(self, request: web.Request) -> web.StreamResponse:
        srv = self.server
        if self.cluster is not None:
            from lanlic.cluster import view

            records = await self._cluster_seats()
            rows = view.cluster_holders(self.cluster, records, srv.loop.time(), srv.wall())
            return web.json_response(
                view.holder_page(
                    rows,
                    product=request.query.get("product") or None,
                    query=request.query.get("q") or None,
                    offset=_int(request, "offset", 0, 0, 10**9),
                    limit=_int(request, "limit", 50, 1, MAX_PAGE),
                )
            )
        page = views.holder_page(
            srv.service,
            srv.loop.time(),
            srv.wall(),
            product=request.query.get("product") or None,
            query=request.query.get("q") or None,
            offset=_int(request, "offset", 0, 0, 10**9),
            limit=_int(request, "limit", 50, 1, MAX_PAGE),
        )
        return web.json_response(page)

    async def _borrows(self, request: web.Request) -> web.StreamResponse:
        wall = self.server.wall()
        if self.cluster is not None:  # the borrow records in etcd
            from lanlic.cluster import view

            items = [
                {**b, "time_left": max(0.0, b["end"] - wall)}
                for b in await view.active_borrows(self.cluster, wall)
            ]
            return web.json_response({"now": wall, "items": items})
        return web.json_response(
            {"now": wall, "items": views.borrow_rows(self.server.service.desk, wall)}
        )

    async def _enrollments(self, request: web.Request) -> web.StreamResponse:
        if self.cluster is not None:
            from lanlic.cluster import view

            try:
                items = await view.enrollment_rows(self.cluster)
            except LanlicError as exc:
                return _error(503, exc.code, exc.message)
            return web.json_response({"items": items})
        return web.json_response({"items": views.enrollment_rows(self.server.service.desk)})

    def _history_filters(self, request: web.Request) -> hist.Filters:
        return hist.Filters(
            since=_time_param(request, "since"),
            until=_time_param(request, "until"),
            product=request.query.get("product") or None,
            event=request.query.get("event") or None,
        )

    async def _cluster_seats(self) -> list[Any]:
        """The pool's seat keys read from etcd now (503 ``server_unavailable`` if it does not
        answer)."""
        assert self.cluster is not None
        try:
            records, _revision = await self.cluster.seats.read_seats()
        except LanlicError as exc:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": exc.code, "message": exc.message}),
                content_type="application/json",
            ) from None
        return records

    async def _read_history(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(db)`` on the history's own read connection: never on the store's writer."""
        if self.cluster is not None and not self._member_db:
            from lanlic.cluster.view import HistoryNotKept

            raise web.HTTPConflict(
                text=json.dumps({"error": HistoryNotKept.code, "message": HISTORY_NOT_KEPT}),
                content_type="application/json",
            )
        if self.server.store is None and not self._member_db:
            await self._store(lambda s: None)  # the no_store answer
        return cast(T, await self.server.history_call(fn))

    async def _cluster_history(self) -> ClusterHistory:
        """A member's door to the cluster's history, once the rows this member recorded are
        in etcd (a bounded wait: what etcd has not taken yet shows on the next read)."""
        assert self.cluster is not None
        if not self._member_db:
            from lanlic.cluster.view import HistoryNotKept

            raise web.HTTPConflict(
                text=json.dumps({"error": HistoryNotKept.code, "message": HISTORY_NOT_KEPT}),
                content_type="application/json",
            )
        await self.server.flush_history(refusals=True)
        await self.cluster.history.flush(within=self.cluster.seats.call_timeout)
        return self.cluster.history

    async def _history(self, request: web.Request) -> web.StreamResponse:
        filters = self._history_filters(request)
        offset = _int(request, "offset", 0, 0, 10**9)
        limit = _int(request, "limit", 100, 1, MAX_PAGE)
        if self.cluster is not None:  # every member's rows, from etcd
            history = await self._cluster_history()
            try:
                got = await history.page(filters, offset=offset, limit=limit)
            except LanlicError as exc:
                return _error(503, exc.code, exc.message)
            return web.json_response(
                {"total": got.total, "more": got.more, "offset": offset, "limit": limit,
                 "items": [r.json() for r in got.items]}
            )  # fmt: skip
        await self.server.flush_history(refusals=True)
        total, rows = await self._read_history(
            functools.partial(hist.page, filters=filters, offset=offset, limit=limit)
        )
        return web.json_response(
            {
                "total": total,
                "offset": offset,
                "limit": limit,
                "items": [
                    {"at": r.at, "event": r.event, "product": r.product, "user": r.user,
                     "host": r.host, "detail": r.detail, "count": r.count}
                    for r in rows
                ],
            }
        )  # fmt: skip

    async def _history_csv(self, request: web.Request) -> web.StreamResponse:
        filters = self._history_filters(request)
        if self.cluster is not None:
            return await self._cluster_csv(request, filters)
        await self.server.flush_history(refusals=True)
        response = await self._csv_response(request)
        await response.write(export.CSV_HEADER.encode())
        # A page at a time, each its own short read on the history's connection, written out
        # before the next is read: memory is one page, however long the history.
        after: tuple[float, int] | None = None
        while True:
            # Read and format on the history's thread, and there in SQLite with the GIL
            # released (lanlic.admin.export): the event loop only sends the bytes, so the
            # seats' requests do not wait behind the export's CSV.
            data, after = await self._read_history(
                functools.partial(export.csv_page, filters=filters, after=after)
            )
            if data:
                await response.write(data)
            if after is None:
                break
        await response.write_eof()
        return response

    async def _csv_response(self, request: web.Request) -> web.StreamResponse:
        """A history CSV download begun: its headers sent, the file named for the moment."""
        stamp = dt.datetime.fromtimestamp(self.server.wall(), dt.UTC).strftime("%Y%m%d-%H%M")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="lanlic-history-{stamp}.csv"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        return response

    async def _cluster_csv(self, request: web.Request, filters: hist.Filters) -> web.StreamResponse:
        """The cluster's history as CSV: the single server's columns and ``member``, a few
        hundred keys' rows read and written at a time (memory is that, however long)."""
        from lanlic.cluster import view

        history = await self._cluster_history()
        response = await self._csv_response(request)
        await response.write(view.CSV_HEADER.encode())
        try:
            async for rows in history.rows(filters):
                for i in range(0, len(rows), 1000):  # 5 ms of the loop a slice, then a turn
                    await response.write(view.history_csv(rows[i : i + 1000]))
                    await asyncio.sleep(0)
        except LanlicError as exc:  # etcd stopped answering: the file ends with why
            await response.write(f"# incomplete: {exc.message}\r\n".encode())
        await response.write_eof()
        return response

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("range", "day")
        if name not in views.RANGES:
            raise _bad_request(f"range must be one of {', '.join(views.RANGES)}")
        span, step = views.RANGES[name]
        srv = self.server
        pool = srv.service.pool
        # Counts and the history must agree: take the counts, then flush what led to them.
        current = {p: (pool.in_use(p), pool.borrowed(p)) for p in pool.products}
        seats = {p: e.seats for p, e in pool.products.items()}
        end = srv.wall()
        start = end - span
        events = list(views.CHART_EVENTS)
        if self.cluster is not None:
            # The cluster's counts (the mirror) walked back through every member's rows. Another
            # member's last 5-6 s may not be in etcd yet, and the walk then never undoes them:
            # the whole chart is off by their net checkouts (docs/cluster.md).
            from lanlic.cluster import view

            now = srv.loop.time()
            current = {r["name"]: (r["in_use"], r["borrowed"]) for r in
                       view.product_rows(self.cluster, now, end)}  # fmt: skip
            history = await self._cluster_history()
            try:
                rows = await history.events_since(start, events)
            except LanlicError as exc:
                return _error(503, exc.code, exc.message)
        else:
            await srv.flush_history()
            rows = await self._read_history(
                functools.partial(hist.events_since, since=start, events=events)
            )
        series = views.usage_series(rows, current, seats, start, end, step)
        return web.json_response(
            {
                "range": name,
                "start": start,
                "end": end,
                "step": step,
                "products": [
                    {"name": p, "seats": seats[p], "points": series[p]} for p in pool.products
                ],
            }
        )

    # ---------------------------------------------------------------------- actions

    async def _remove_holder(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        try:
            lease_id = bytes.fromhex(request.match_info["lease"])
        except ValueError:
            return _error(400, "bad_request", "a lease id is hex")
        lease = self.server.service.pool.lease(lease_id)
        if lease is None and self.cluster is not None:
            from lanlic.cluster import view

            records = await self._cluster_seats()
            try:
                refusal = view.remove_refusal(records, lease_id.hex(), self.cluster.seats.member)
            except LookupError:
                pass
            else:
                return _error(409, refusal.code, refusal.message)
        if lease is None or not self.server.remove_lease(lease_id):
            return _error(404, "lease_unknown", "no such seat in use (released or expired?)")
        h = lease.holder
        detail = f"removed the seat of {h.user}@{h.host} (lease {lease_id.hex()[:8]})"
        await self._record(session, "admin_remove", lease.product, detail)
        return web.json_response({"removed": True, "lease": lease_id.hex(), "user": h.user,
                                  "host": h.host, "product": lease.product})  # fmt: skip

    async def _queue(self, request: web.Request) -> web.StreamResponse:
        srv = self.server
        now, wall = srv.loop.time(), srv.wall()
        items = [
            {
                "ticket": w.ticket.hex(),
                "product": w.product,
                "position": i,
                "user": w.who.user,
                "host": w.who.host,
                "since": wall - (now - w.since),
            }
            for product in srv.service.pool.products
            for i, w in enumerate(srv.service.gate.queue.waiters(product), 1)
        ]
        return web.json_response({"items": items})

    async def _remove_waiter(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        try:
            ticket = bytes.fromhex(request.match_info["ticket"])
        except ValueError:
            return _error(400, "bad_request", "a ticket is hex")
        w = self.server.service.gate.queue.get(ticket)
        if w is None or not self.server.remove_waiter(ticket):
            return _error(404, "not_waiting", "nobody waits with that ticket (granted or gone?)")
        detail = f"removed {w.who.user}@{w.who.host} from the queue"
        await self._record(session, "admin_unqueue", w.product, detail)
        return web.json_response({"removed": True, "user": w.who.user, "host": w.who.host,
                                  "product": w.product})  # fmt: skip

    async def _seat_policy(self, request: web.Request) -> web.StreamResponse:
        srv = self.server
        policy = srv.service.gate.policy
        return web.json_response(
            {"text": policy.text, "lines": policy.lines(), "policy": policy.to_json()}
        )

    async def _load_seat_policy(self, request: web.Request) -> web.StreamResponse:
        """Validate, install and apply a seat policy file (as ``lanlic admin policy --load``)."""
        from lanlic.core.policy import PolicyError
        from lanlic.server import policyfile

        session = self._session(request)
        srv = self.server
        watch = srv.policy_watch
        if watch is None:
            return _error(409, "no_data_folder", "this server runs without a data folder")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return _error(400, "bad_request", 'send JSON: {"text": "<the policy file>"}')
        text = body["text"]
        try:
            plan = policyfile.plan(watch.folder, text)
        except PolicyError as exc:
            return _error(400, "bad_policy", str(exc))
        await srv.store_call(lambda _: policyfile.install(watch.folder, text))
        found = await srv.store_call(lambda _: watch.check())
        if found is not None and not isinstance(found, PolicyError):
            srv.service.set_policy(found, srv.now(), session.user)
            srv.flush_queue()
        detail = "; ".join(plan.changes) or "no change"
        await self._record(session, "policy", "", detail[:2000])
        return web.json_response({"changes": plan.changes, "lines": plan.policy.lines()})

    async def _policy(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        product = request.match_info["product"]
        ent = self.server.service.pool.products.get(product)
        if ent is None:
            return _error(404, "unknown_product", f"no product {product!r} in the network key")
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _error(400, "bad_request", 'send JSON: {"borrowable": N, "max_borrow_days": N}')
        values: dict[str, int | None] = {}
        for field, cap in (
            ("borrowable", ent.borrowable),
            ("max_borrow_days", ent.max_borrow_days),
        ):
            v = body.get(field)
            if v is not None and (type(v) is not int or not 0 <= v <= cap):
                return _error(
                    400,
                    "above_key",
                    f"{field} of {product} must be a whole number from 0 to {cap}, the network "
                    "key's own (null: the key's)",
                )
            values[field] = v
        b, d = values["borrowable"], values["max_borrow_days"]
        policy = await self._store(functools.partial(_set_policy, product=product, values=(b, d)))
        self.server.service.desk.policy = policy
        terms = self.server.service.desk.terms(product)
        detail = (
            f"borrowable {'as key' if b is None else b}, max days {'as key' if d is None else d}"
        )
        await self._record(session, "admin_policy", product, detail)
        return web.json_response(
            {"product": product, "borrowable": terms.borrowable, "max_borrow_days": terms.max_days,
             "policy": {"borrowable": b, "max_borrow_days": d}}
        )  # fmt: skip

    async def _install_key(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        data = await request.read()
        vendor = self.options.vendor_public
        if vendor is None:
            return _error(503, "no_vendor_key", "this server was started without a vendor key")
        current = self.server.service.key
        today = dt.datetime.fromtimestamp(self.server.wall(), dt.UTC).date()
        try:
            new = verify_network_key(data, vendor, today)
            warnings = keys.check_replacement(new, current)
        except NetworkKeyError as exc:
            await self._record(session, "admin_key_refused", "", f"{exc.code}: {exc.message}")
            return _error(400, exc.code, exc.message)
        folder = self.data_dir
        if folder is None:
            return _error(503, "no_store", "this server runs without a data folder")
        loop = self.server.loop
        try:
            path = await loop.run_in_executor(self._kdf, keys.save_installed_key, folder, data)
        except OSError as exc:
            return _error(500, "not_saved", f"could not save the key in {folder}: {exc}")
        summary = keys.key_summary(new)
        message = (
            f"The new network key (serial {new.serial[:8]}, expires {new.expires}) is verified "
            f"and saved as {path}. The running key stays in force until the licence server is "
            "restarted; the restart serves the new one."
        )
        self.pending_key = {**summary, "path": str(path), "message": message}
        await self._record(
            session, "admin_key", "", f"installed key {new.serial[:8]}, expires {new.expires}"
        )
        return web.json_response(
            {"installed": True, "applies": "restart", "path": str(path), "key": summary,
             "warnings": warnings, "message": message}
        )  # fmt: skip

    def _find_pending_key(self) -> dict[str, Any] | None:
        """At start: an installed key that differs from the one served, if a restart takes it."""
        folder, vendor = self.data_dir, self.options.vendor_public
        if folder is None or vendor is None:
            return None
        data = keys.read_installed_key(folder)
        current = self.server.service.key
        if data is None:
            return None
        today = dt.datetime.fromtimestamp(self.server.wall(), dt.UTC).date()
        try:
            installed = verify_network_key(data, vendor, today)
        except NetworkKeyError:
            return None
        if installed.serial == current.serial or keys.passed_over(installed, current):
            return None
        path = folder / keys.INSTALLED_KEY
        return {
            **keys.key_summary(installed),
            "path": str(path),
            "message": f"{path} is installed; restart the licence server to serve it.",
        }

    async def _enroll(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        data = await request.read()
        try:
            req = borrowing.read_enrollment_request(data)
        except BorrowedFileError as exc:
            return _error(400, exc.code, exc.message)
        desk = self.server.service.desk
        enroll = m.Enroll(0, data, via="offline")
        reply: m.Message
        if self.cluster is not None:  # the record goes to etcd, as through any member
            reply = await self.cluster.lending.enroll(enroll, self.server.wall())
            if isinstance(reply, m.Error):
                status = 503 if reply.code == "server_unavailable" else 400
                return _error(status, reply.code, reply.message)
        else:
            result = desk.enroll(enroll, self.server.wall())
            if isinstance(result, m.Error):
                return _error(400, result.code, result.message)
            try:
                written = await self._store(result.write)
            except web.HTTPException:
                raise
            except Exception as exc:
                reply = result.abort(exc)
            else:
                reply = result.commit(written)
        if not isinstance(reply, m.Enrolled):
            assert isinstance(reply, m.Error)
            return _error(500, reply.code, reply.message)
        await self._record(
            session, "admin_enroll", "", f"accepted the enrollment of {req.user}@{req.host} "
            f"({req.kind}, offline)"
        )  # fmt: skip
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in req.host)[:40] or "machine"
        return web.json_response(
            {"accepted": True, "user": req.user, "host": req.host, "kind": req.kind,
             "filename": f"{safe}-enrollment-response.json",
             "response": reply.response.decode("utf-8")}
        )  # fmt: skip


async def serve_admin(
    server: LicenseServer,
    host: str,
    port: int | None,
    licence_port: int,
    vendor_public: Ed25519PublicKey,
    data_dir: Path,
    key_file: Path,
    discovery: Callable[[], dict[str, Any]],
    cluster: tuple[str, ...] | None = None,
) -> AdminServer:
    """Start the admin page of ``lanlic serve``: on ``port``, else 7767, else (when the licence
    port was left to the system) a free one. ``AdminError`` when it cannot be served."""
    if port is None:
        port = 0 if licence_port == 0 else DEFAULT_ADMIN_PORT
    options = AdminOptions(
        host, port, vendor_public, data_dir, discovery, str(key_file), cluster=cluster
    )
    admin = AdminServer(server, options)
    await admin.start()
    return admin


def _set_policy(
    store: Store, product: str, values: tuple[int | None, int | None]
) -> dict[str, tuple[int | None, int | None]]:
    store.set_policy(product, *values)
    return store.policy()


async def _json_body(request: web.Request) -> Any:
    """The request's JSON, or None when it is not JSON. Nesting too deep for the parser (say
    100,000 ``[``) is bad input like any other: a 400, not a RecursionError and a 500."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        return None


def _slow_down(wait: float, message: str = "too many wrong passwords") -> web.Response:
    seconds = max(1, math.ceil(wait))
    response = _error(429, "slow_down", f"{message}: try again in {seconds} s", retry_after=seconds)
    response.headers["Retry-After"] = str(seconds)
    return response


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["Server"] = "lanlic"  # not the library's name and version
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")


def _load_assets() -> dict[str, bytes]:
    base = resources.files("lanlic.admin")
    out = {name: base.joinpath("static", name).read_bytes() for name in STATIC}
    out["openapi.json"] = base.joinpath("openapi.json").read_bytes()
    return out
