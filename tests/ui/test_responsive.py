"""The window never freezes: while the server answers slowly or not at all, its ``after`` ticks
keep coming; closing it mid-request is safe, and the next window says whether a borrow happened.

The slow server is the real one behind a loopback relay that holds every chunk for ``DELAY``
seconds each way; the silent one is a loopback socket that listens (the kernel completes the TCP
handshake) and never reads or answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliproc import Laptop, Procs, ok
from conftest import WAIT, Driver

from lanlic.ui.window import BANNER_OFFLINE, UNKNOWN_BORROW, LicenseWindow

DELAY = 0.6
#: Ticks the window must run while one request hangs (one every 100 ms: a second's worth).
TICKS = 10


class SlowRelay:
    """127.0.0.1:port -> upstream, each chunk held ``delay`` s. Bounded: stopped by ``close``."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self.swallow = False
        """Drop what the server sends (its answers are lost on the way) while True."""
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.create_connection(self.upstream, timeout=5)
            self.sockets += [down, up]
            for s in (down, up):
                s.settimeout(0.1)
            self._start(self._pump, down, up, False)
            self._start(self._pump, up, down, True)

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                self.stopping.wait(self.delay)
                if not (to_client and self.swallow):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """End the connections open now (the client will connect again)."""
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(5)
        for s in self.sockets:
            s.close()


@pytest.fixture
def silent() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as s:
        yield s.getsockname()[1]


def ticks_while_busy(gui: Driver, w: LicenseWindow, count: int) -> None:
    """Pump until the window has run ``count`` more ticks, checking it stays busy meanwhile."""
    start = w.ticks
    gui.pump(lambda: w.ticks >= start + count or not w.busy, what="ticks")
    assert w.busy, "the request ended before the ticks were counted"
    assert w.ticks >= start + count


def test_a_silent_server_never_freezes_the_window_and_closing_waits_for_nothing(
    gui: Driver, silent: int, laptop: Laptop
) -> None:
    w = gui.open(f"127.0.0.1:{silent}", request_timeout=8, wait=False)
    assert w.busy == "Looking at the licences"
    ticks_while_busy(gui, w, TICKS)
    assert w.progress.winfo_ismapped() and w.doing.cget("text") == "Looking at the licences…"
    gui.shot(w, "license-window-waiting-for-the-server")
    # Other windows of the application go on too, and so does this one's own keyboard.
    w.tree.event_generate("<Alt-f>")
    gui.root.update()
    # Closed mid-request: gone at once; the request ends off the Tk thread.
    w.close_button.invoke()
    assert w.closed and not w.finished.is_set()
    assert not gui.root.winfo_children() or all(
        not c.winfo_exists() for c in gui.root.winfo_children()
    )
    assert w.finished.wait(WAIT)

    # A window that waits it out says the server is out of reach, and why.
    w2 = gui.open(f"127.0.0.1:{silent}", request_timeout=1)
    assert w2.banner.winfo_ismapped()
    assert w2.banner.cget("text").startswith(BANNER_OFFLINE)
    assert "no answer to hello within 1" in w2.banner.cget("text")
    assert w2.snapshot is not None and not w2.snapshot.online


def test_a_slow_server_borrow_closed_mid_request_is_told_on_reopening(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    ok(laptop.run(port, "enroll"))
    relay = SlowRelay(("127.0.0.1", port), DELAY)
    try:
        w = gui.open(f"127.0.0.1:{relay.port}", wait=False)
        ticks_while_busy(gui, w, TICKS)  # the first look, slowed
        gui.idle(w)
        assert w.snapshot is not None and w.snapshot.online
        gui.select(w, "cad")
        w.spin.set("4")
        w.borrow_button.invoke()
        assert w.busy.startswith("Borrowing cad for 4 days")
        assert w.borrow_button.instate(["disabled"]) and w.return_button.instate(["disabled"])
        w.top.event_generate("<Escape>")  # closed mid-borrow
        assert w.closed
        assert w.finished.wait(WAIT)
    finally:
        relay.close()

    borrows = laptop.status(port)[1]
    assert [b["product"] for b in borrows] == ["cad"]  # it went on to its end: not half done
    w2 = gui.open(f"127.0.0.1:{port}")
    text = w2.message.cget("text")
    assert text.startswith("The borrow of cad asked for at "), text
    assert "went through: borrowed until " in text
    assert gui.row(w2, "cad")["state"] == "Borrowed (license file)"
    assert gui.row(w2, "cad")["left"] == "4 days left"
    # Said once: the next window has nothing to tell.
    w3 = gui.open(f"127.0.0.1:{port}")
    assert w3.message.cget("text") == ""
    assert not (laptop.home / "ui-borrow.json").exists()


def test_a_borrow_whose_answer_was_never_seen_is_asked_again_and_told(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    """The process died with the borrow journalled and no outcome (it may or may not have
    reached the server): the next window asks again under the same request id, and says so."""
    import json
    import secrets
    import time

    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    ok(laptop.run(port, "enroll"))
    entry = {"product": "cad", "days": 2.0, "version": "16",
             "request_id": secrets.token_hex(16), "asked": time.time() - 60}  # fmt: skip
    (laptop.home / "ui-borrow.json").write_text(json.dumps(entry))
    w = gui.open(f"127.0.0.1:{port}")
    text = w.message.cget("text")
    assert text.startswith("The borrow of cad asked for at ") and "went through" in text, text
    assert gui.row(w, "cad")["state"] == "Borrowed (license file)"
    assert [b["product"] for b in laptop.status(port)[1]] == ["cad"]
    assert not (laptop.home / "ui-borrow.json").exists()
    # Asked again with the same id: the server's answer is that same borrow, never a second.
    w2 = gui.open(f"127.0.0.1:{port}")
    assert w2.message.cget("text") == ""
    assert len(laptop.status(port)[1]) == 1


def test_a_refused_borrow_closed_mid_request_is_told_as_not_done(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    ok(laptop.run(port, "enroll"))
    # Both borrowable seats of cad are out already (two other laptops).
    for name in ("b", "c"):
        Laptop(tmp_path, name).borrow(port, "cad", "--days", "1")
    relay = SlowRelay(("127.0.0.1", port), DELAY)
    try:
        w = gui.open(f"127.0.0.1:{relay.port}")
        gui.select(w, "cad")
        w.borrow_button.invoke()
        assert w.busy.startswith("Borrowing cad")
        w.close()
        assert w.finished.wait(WAIT)
    finally:
        relay.close()
    w2 = gui.open(f"127.0.0.1:{port}")
    text = w2.message.cget("text")
    assert "did not happen: all 2 borrowable seats of cad" in text, text
    assert text.endswith("(no_borrowable_seat)")
    assert gui.row(w2, "cad")["state"] == "Network"


def test_a_borrow_whose_answer_is_lost_is_settled_when_the_server_answers_again(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    ok(laptop.run(port, "enroll"))
    relay = SlowRelay(("127.0.0.1", port), 0.0)
    try:
        w = gui.open(f"127.0.0.1:{relay.port}", request_timeout=2)
        gui.select(w, "cad")
        w.spin.set("3")
        relay.swallow = True  # the server borrows; its answer never arrives
        gui.click(w, w.borrow_button)
        assert w.detail.cget("text").startswith("code: server_unavailable — ")
        assert UNKNOWN_BORROW in w.detail.cget("text")
        assert [b["product"] for b in laptop.status(port)[1]] == ["cad"]  # it did happen
        assert gui.row(w, "cad")["state"] != "Borrowed (license file)"  # no file here yet
        relay.swallow = False
        relay.cut()
        deadline = time.monotonic() + WAIT
        while "went through" not in w.message.cget("text"):  # once the client is back
            assert time.monotonic() < deadline, w.message.cget("text")
            gui.click(w, w.refresh_button)  # the server answers again: asked again, same id
        text = w.message.cget("text")
        assert "went through: borrowed until " in text, text
        assert gui.row(w, "cad")["state"] == "Borrowed (license file)"
        assert gui.row(w, "cad")["left"] == "3 days left"
        assert len(laptop.status(port)[1]) == 1  # the same borrow, not a second seat
    finally:
        relay.close()
