"""The seat policy on real processes: a server on 127.0.0.1, ``lanlic admin policy --load`` while
seats are held, and each rule refused or granted as it should be. Users are set per "laptop" with
``USER``/``LOGNAME`` (what ``getpass.getuser`` reads: the identity is self-declared). Every wait is
bounded; the ``procs`` fixture ends every process a test starts.
"""

from __future__ import annotations

import http.cookiejar
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cliproc import Laptop, Procs, fails, issue_network_key, ok, run, serve_args

from lanlic.store import Store

PRODUCTS = ("cad:3:borrowable=3:max-days=14", "viewer:2")


@pytest.fixture(scope="module")
def net_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("key") / "net.lic"
    return issue_network_key(vendor, out, "ACME", "act", PRODUCTS)


def load(data: Path, text: str, tmp: Path) -> Any:
    f = tmp / "new-policy.toml"
    f.write_text(text)
    return run(["admin", "policy", "--load", str(f), "--data", str(data), "--json"])


def wait_in_force(data: Path) -> dict[str, Any]:
    """``admin policy --show`` until the server has applied the file (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        shown: dict[str, Any] = ok(
            run(["admin", "policy", "--show", "--data", str(data), "--json"])
        )
        if shown["in_force"] or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


def hold(procs: Procs, laptop: Laptop, port: int, product: str) -> None:
    args = ["checkout", product, "--server", f"127.0.0.1:{port}", "--hold", "60", "--json"]
    event = procs.start(args, laptop.env()).read_json()
    assert event["event"] == "checked_out", event


def in_use(laptop: Laptop, port: int, product: str) -> int:
    n: int = laptop.status(port)[0][product]["in_use"]
    return n


POLICY = """\
[groups.users]
designers = ["alice"]

[products.cad]
reserve = [{ seats = 1, group = "designers" }]
max = [{ seats = 2, user = "bob" }]

[products.viewer]
exclude = [{ user = "mallory" }]
"""


def test_policy_loaded_live_while_seats_are_held(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, _ = procs.serve(net_key, vendor, data)
    alice, bob, carol, mallory = (
        Laptop(tmp_path, name, name) for name in ("alice", "bob", "carol", "mallory")
    )
    for _ in range(2):
        hold(procs, bob, port, "cad")
    hold(procs, mallory, port, "viewer")

    result = load(data, POLICY, tmp_path)
    loaded = ok(result)
    assert loaded["checked_against_key"] is True
    assert "+ cad: reserve 1 for group designers" in loaded["changes"]
    assert "+ viewer: exclude user mallory" in loaded["changes"]
    shown = wait_in_force(data)
    assert shown["in_force"] is True, shown
    assert shown["policy"]["products"]["cad"]["max"] == [{"user": "bob", "seats": 2}]

    # Nobody lost a seat to the new rules.
    assert in_use(bob, port, "cad") == 2 and in_use(bob, port, "viewer") == 1
    # MAX: bob has his 2.
    assert "bob" in fails(bob.run(port, "checkout", "cad"), "limit_reached")
    # RESERVE: the one seat left is the designers'.
    assert "reserved" in fails(carol.run(port, "checkout", "cad"), "no_seat")
    ok(alice.run(port, "checkout", "cad", "--hold", "0.01"))
    # EXCLUDE: mallory keeps the seat she had, and gets no new one.
    fails(mallory.run(port, "checkout", "viewer"), "not_allowed")
    ok(carol.run(port, "checkout", "viewer", "--hold", "0.01"))

    history = Store(data / "lanlic.db").history()
    [row] = [h for h in history if h.event == "policy"]
    assert row.user == __import__("getpass").getuser()
    assert "reserve 1 for group designers" in row.detail


def test_include_and_an_invalid_file_refused_with_its_line(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, _ = procs.serve(net_key, vendor, data)
    ok(load(data, '[products.viewer]\ninclude = [{ user = "alice" }]\n', tmp_path))
    assert wait_in_force(data)["in_force"]
    alice, bob = Laptop(tmp_path, "alice", "alice"), Laptop(tmp_path, "bob", "bob")
    fails(bob.run(port, "checkout", "viewer"), "not_allowed")
    ok(alice.run(port, "checkout", "viewer", "--hold", "0.01"))

    bad = '[products.viewer]\ninclude = [{ user = "alice" }]\n\nmax = [{ seats = 1, host = "x" }]\n'
    result = load(data, bad, tmp_path)
    assert result.returncode != 0
    assert "line 4:" in result.stderr and "nothing applied" in result.stderr
    bad = '[products.nosuch]\nmax = [{ seats = 1, user = "x" }]\n'
    result = load(data, bad, tmp_path)
    assert "line 1:" in result.stderr and "no product 'nosuch'" in result.stderr
    # The policy in force is the first one still.
    shown = ok(run(["admin", "policy", "--show", "--data", str(data), "--json"]))
    assert shown["in_force"] and shown["lines"] == ["viewer: include user alice"]
    fails(bob.run(port, "checkout", "viewer"), "not_allowed")


def test_borrow_lowwater_and_the_per_user_borrow_limit(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, _ = procs.serve(net_key, vendor, data)
    text = "[products.cad]\nborrow_lowwater = 1\nmax_borrowed_per_user = 1\n"
    ok(load(data, text, tmp_path))
    assert wait_in_force(data)["in_force"]
    alice, bob, carol = (Laptop(tmp_path, n, n) for n in ("alice", "bob", "carol"))
    alice.borrow(port, "cad", "--days", "3")
    alice_at_home = Laptop(tmp_path, "alice-home", "alice")  # another machine, the same user
    ok(alice_at_home.run(port, "enroll"))
    fails(alice_at_home.run(port, "borrow", "cad", "--days", "3"), "limit_reached")
    bob.borrow(port, "cad", "--days", "3")
    ok(carol.run(port, "enroll"))
    message = fails(carol.run(port, "borrow", "cad", "--days", "3"), "no_borrowable_seat")
    assert "borrow_lowwater" in message
    ok(
        carol.run(port, "checkout", "cad", "--hold", "0.01")
    )  # the low-water seat is still a floating seat


def waiter(procs: Procs, laptop: Laptop, port: int, product: str, *extra: str) -> Any:
    args = ["checkout", product, "--server", f"127.0.0.1:{port}", "--wait", "--hold", "60"]
    return procs.start([*args, *extra, "--json"], laptop.env())


def queue_of(laptop: Laptop, port: int, product: str) -> list[tuple[int, str]]:
    return [(w["position"], w["user"]) for w in laptop.status(port)[0][product]["queue"]]


def test_waiters_get_seats_in_order_and_a_vanished_one_is_dropped(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(net_key, vendor, tmp_path / "data")
    bob, carol, dave, erin = (Laptop(tmp_path, n, n) for n in ("bob", "carol", "dave", "erin"))
    holders = []
    for _ in range(2):
        args = ["checkout", "viewer", "--server", f"127.0.0.1:{port}", "--hold", "60", "--json"]
        holders.append(procs.start(args, bob.env()))
        assert holders[-1].read_json()["event"] == "checked_out"

    first = waiter(procs, carol, port, "viewer")
    assert first.read_json() == {"event": "queued", "product": "viewer", "position": 1}
    second = waiter(procs, dave, port, "viewer")
    assert second.read_json()["position"] == 2
    third = waiter(procs, erin, port, "viewer")
    assert third.read_json()["position"] == 3
    assert queue_of(bob, port, "viewer") == [(1, "carol"), (2, "dave"), (3, "erin")]
    plain = run(["status", "--server", f"127.0.0.1:{port}"], bob.env())
    assert "viewer: #2 dave@" in plain.stdout, plain.stdout

    # A waiter that vanishes (killed: no goodbye) leaves the line; the one behind moves up.
    second.stop(signal.SIGKILL)
    assert third.read_json()["position"] == 2
    assert queue_of(bob, port, "viewer") == [(1, "carol"), (2, "erin")]

    # A seat given back goes to the head of the line, at once.
    assert holders[0].stop() == 0
    assert first.read_json()["event"] == "checked_out"
    assert third.read_json()["position"] == 1
    assert holders[1].stop() == 0
    assert third.read_json()["event"] == "checked_out"
    assert queue_of(bob, port, "viewer") == []


def test_a_waiter_gives_up_at_its_timeout(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(net_key, vendor, tmp_path / "data")
    bob, carol = Laptop(tmp_path, "bob", "bob"), Laptop(tmp_path, "carol", "carol")
    for _ in range(2):
        hold(procs, bob, port, "viewer")
    result = carol.run(port, "checkout", "viewer", "--wait", "--timeout", "1")
    assert result.returncode == 1
    assert '"position": 1' in result.stdout
    assert "lanlic: no_seat: no seat of viewer within 1 s; left the queue" in result.stderr
    assert queue_of(bob, port, "viewer") == []


def test_a_waiter_never_allowed_is_refused_at_once(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, _ = procs.serve(net_key, vendor, data)
    ok(load(data, POLICY, tmp_path))
    assert wait_in_force(data)["in_force"]
    mallory = Laptop(tmp_path, "mallory", "mallory")
    fails(mallory.run(port, "checkout", "viewer", "--wait"), "not_allowed")


def test_waiters_rejoin_the_line_after_a_server_restart(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    """A restart empties the line (SPEC 16): each waiting ``checkout --wait`` reconnects, joins
    the new line by itself, and gets its seat as seats free, within its one timeout."""
    data = tmp_path / "data"
    server, port, _ = procs.serve(net_key, vendor, data)
    bob, carol, dave = (Laptop(tmp_path, n, n) for n in ("bob", "carol", "dave"))
    holders = [procs.checkout(bob, port, "viewer", hold=60) for _ in range(2)]
    first = waiter(procs, carol, port, "viewer", "--timeout", "60")
    assert first.read_json()["position"] == 1
    second = waiter(procs, dave, port, "viewer", "--timeout", "60")
    assert second.read_json()["position"] == 2

    assert server.stop() == 0
    procs.serve(net_key, vendor, data, "--port", str(port))
    # Both come back into the line, in the order they reconnect (the backoff decides).
    places = {first.read_json()["position"], second.read_json()["position"]}
    assert places <= {1, 2} and 1 in places
    assert sorted(u for _, u in queue_of(bob, port, "viewer")) == ["carol", "dave"]
    assert in_use(bob, port, "viewer") == 2  # bob's seats were taken back, not given away

    # Seats given back go to the line, as before the restart.
    assert holders[0].stop() == 0
    assert holders[1].stop() == 0
    events = [p.read_json() for p in (first, second)]
    while any(e["event"] == "queued" for e in events):  # a move to number 1 may come first
        events = [e if e["event"] == "checked_out" else p.read_json()
                  for e, p in zip(events, (first, second), strict=True)]  # fmt: skip
    assert [e["event"] for e in events] == ["checked_out", "checked_out"]
    assert queue_of(bob, port, "viewer") == []


class AdminPage:
    """The admin page of a ``lanlic serve`` process, over HTTP on 127.0.0.1 (no password set:
    loopback only, as a fresh install is)."""

    def __init__(self, port: int, name: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        self.csrf = self.call("POST", "/api/login", {"name": name, "password": ""})["csrf"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if hasattr(self, "csrf"):  # every change after the login carries it
            req.add_header("X-CSRF-Token", self.csrf)
        with self.opener.open(req, timeout=10) as r:
            return json.loads(r.read())


def test_the_admin_removes_a_waiter_who_is_told_at_once(
    procs: Procs, vendor: Path, net_key: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = procs.start(serve_args(net_key, vendor, data, "--admin-port", "0"))
    listening = server.read_json()
    port, admin_port = listening["port"], listening["admin_port"]
    bob, carol, dave = (Laptop(tmp_path, n, n) for n in ("bob", "carol", "dave"))
    holders = [procs.checkout(bob, port, "viewer", hold=60) for _ in range(2)]
    first = waiter(procs, carol, port, "viewer")
    assert first.read_json()["position"] == 1
    second = waiter(procs, dave, port, "viewer")
    assert second.read_json()["position"] == 2

    page = AdminPage(admin_port, "Dana")
    items = page.call("GET", "/api/queue")["items"]
    assert [(w["position"], w["user"]) for w in items] == [(1, "carol"), (2, "dave")]
    removed = page.call("DELETE", f"/api/queue/{items[0]['ticket']}")
    assert removed["user"] == "carol"
    # Carol is told at once and her checkout fails; dave moves up.
    assert first.popen.wait(timeout=10) == 1
    assert "removed from the queue by the administrator" in first.stderr()
    assert second.read_json()["position"] == 1
    assert queue_of(bob, port, "viewer") == [(1, "dave")]
    assert holders[0].stop() == 0
    assert second.read_json()["event"] == "checked_out"

    store = Store(data / "lanlic.db")
    try:
        history = store.history()
    finally:
        store.close()
    [row] = [h for h in history if h.event == "admin_unqueue"]
    assert row.product == "viewer" and row.user == "Dana" and "carol" in row.detail
