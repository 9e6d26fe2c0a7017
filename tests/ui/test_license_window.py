"""The License Information window, driven under Xvfb against real servers on 127.0.0.1 (see
conftest.py): enroll, borrow, the server gone and back, return; add-ons; offline enrollment by
files; the portable-key kind; refusals as messages."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cliproc import Laptop, Procs, ok
from conftest import Driver

from lanlic.ui.window import BANNER_OFFLINE, LicenseWindow

BORROWED = "Borrowed (license file)"
KEY_BORROWED = "Borrowed (portable key)"
DAY = 86400.0


def test_enroll_borrow_offline_and_back_then_return(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, _ = procs.serve(act_key, vendor, data, "--no-admin")
    server = procs.started[-1]
    w = gui.open(f"127.0.0.1:{port}")

    # First time: every product as `lanlic info` words it, and the machine not enrolled yet.
    assert gui.states(w) == {"cad": "Network", "cad-render": "Disabled", "viewer": "Network"}
    assert gui.row(w, "cad")["versions"] == "10 to 16"
    assert not w.banner.winfo_ismapped()
    assert w.enroll_box.winfo_ismapped()
    assert "no inactive licence yet" in w.enroll_text.cget("text")
    assert w.borrow_button.instate(["disabled"])
    gui.shot(w, "license-window-not-enrolled")

    gui.click(w, w.enroll_button)
    assert not w.enroll_box.winfo_ismapped()
    assert w.message.cget("text") == "Enrolled with ACME Engineering: this can borrow now."
    assert w.session.changes.enrolled

    # Borrow: the picker is bounded by the key's 14 days and shows the return date.
    gui.select(w, "cad")
    assert w.facts["Borrowing"].cget("text") == "up to 2 seat(s), at most 14 days each"
    assert str(w.spin.cget("to")) in ("14", "14.0")
    w.spin.set("99")
    assert w.period() == 14
    w.spin.set("3")
    w.spin.event_generate("<KeyRelease>")
    gui.root.update()
    assert w.return_on.cget("text").startswith("days: returns by itself on ")
    before = time.time()
    gui.click(w, w.borrow_button)
    row = gui.row(w, "cad")
    assert row["state"] == BORROWED, w.message.cget("text")
    borrowed = laptop.status(port)[1]
    assert [b["product"] for b in borrowed] == ["cad"]
    end = borrowed[0]["end"]
    assert end == pytest.approx(before + 3 * DAY, abs=30)
    local = dt.datetime.fromtimestamp(end).astimezone().strftime("%Y-%m-%d %H:%M")
    assert row["until"].startswith(local)
    assert row["left"] == "3 days left"
    assert w.message.cget("text").startswith(f"Borrowed cad until {local}")
    assert w.return_button.instate(["!disabled"])
    assert w.facts["Borrow id"].cget("text") == borrowed[0]["borrow_id"]
    gui.shot(w, "license-window-borrowed", docs="license-window.png")

    # The server goes away: the borrowed product is still there, the rest Not available.
    assert server.stop() == 0
    w.top.event_generate("<F5>")
    gui.idle(w)
    assert gui.states(w) == {
        "cad": BORROWED,
        "cad-render": "Not available",
        "viewer": "Not available",
    }
    assert gui.row(w, "cad")["until"].startswith(local)
    assert w.banner.winfo_ismapped() and w.banner.cget("text").startswith(BANNER_OFFLINE)
    assert w.return_button.instate(["disabled"])  # a return needs the server
    gui.shot(w, "license-window-server-gone")
    # A window opened now knows the products too (kept beside the licences).
    w_later = gui.open(f"127.0.0.1:{port}", connect_timeout=2)
    assert gui.states(w_later) == gui.states(w)

    # Back again on the same port: return it, and it is a network licence again.
    procs.serve(act_key, vendor, data, "--no-admin", "--port", str(port))
    gui.click(w, w.refresh_button)
    assert not w.banner.winfo_ismapped()
    assert gui.row(w, "cad")["state"] == BORROWED
    gui.select(w, "cad")
    gui.click(w, w.return_button)
    assert gui.row(w, "cad") == {"state": "Network", "versions": "10 to 16", "until": "",
                                 "left": ""}  # fmt: skip
    assert w.message.cget("text") == "Returned cad: its seat is back in the pool."
    assert laptop.status(port)[1] == []
    assert w.session.changes.to_json() == {
        "changed": True,
        "enrolled": True,
        "borrowed": ["cad"],
        "returned": ["cad"],
        "enabled": [],
    }


def test_enable_an_addon_holds_its_seat_while_the_window_is_open(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    w = gui.open(f"127.0.0.1:{port}")
    gui.select(w, "viewer")
    assert w.enable_button.instate(["disabled"])  # not an add-on
    gui.select(w, "cad-render")
    assert gui.row(w, "cad-render")["state"] == "Disabled"
    assert w.facts["Product"].cget("text") == "cad-render (add-on)"
    gui.click(w, w.enable_button)
    assert gui.row(w, "cad-render")["state"] == "Network", w.message.cget("text")
    assert w.enable_button.instate(["disabled"])
    assert laptop.status(port)[0]["cad-render"]["in_use"] == 1
    assert w.session.changes.enabled == ["cad-render"]
    gui.shot(w, "license-window-addon-enabled")
    w.close()
    assert w.finished.wait(20)
    assert laptop.status(port)[0]["cad-render"]["in_use"] == 0  # released with the window


def test_offline_enrollment_by_request_and_response_files(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, server_id = procs.serve(act_key, vendor, data, "--no-admin")
    # The laptop is away: the server address it knows does not answer.
    w = gui.open(f"127.0.0.1:{_closed_port()}", connect_timeout=2)
    assert w.banner.winfo_ismapped() and gui.states(w) == {}
    assert w.enroll_box.winfo_ismapped()
    assert w.enroll_button.instate(["disabled"])  # online enrollment needs the server
    request, response = tmp_path / "request.json", tmp_path / "response.json"
    w.ask_save_file = lambda: str(request)
    gui.click(w, w.request_button)
    assert request.is_file(), w.message.cget("text")
    assert w.message.cget("text").startswith(f"Saved the request to {request}.")
    gui.shot(w, "license-window-offline-enrollment")

    admin = Laptop(tmp_path, "admin")
    args = ["admin", "enroll", "--accept", str(request), "--out", str(response)]
    ok(admin.run(None, *args, "--data", str(data)))

    w.ask_open_file = lambda: str(response)
    gui.click(w, w.response_button)
    assert w.message.cget("text") == "Enrolled with ACME Engineering: this can borrow now."
    assert not w.enroll_box.winfo_ismapped()
    assert w.session.changes.enrolled
    # Enrolled for real: back at the office, it borrows.
    w2 = gui.open(f"127.0.0.1:{port}")
    gui.select(w2, "cad")
    gui.click(w2, w2.borrow_button)
    assert gui.row(w2, "cad")["state"] == BORROWED, w2.message.cget("text")
    assert laptop.status(port)[1][0]["product"] == "cad"
    assert server_id


def test_portable_key_kind_refusal_then_the_keys_folder(
    gui: Driver, procs: Procs, key_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(key_key, vendor, tmp_path / "data", "--no-admin")
    w = gui.open(f"127.0.0.1:{port}")
    gui.click(w, w.enroll_button)
    # A refusal is its message, with the code on a detail line: never a traceback.
    assert "'key'" in w.message.cget("text") and "'act'" in w.message.cget("text")
    assert w.detail.cget("text").startswith("code: wrong_borrow_kind — ")
    assert "choose the key's folder with Portable key…" in w.detail.cget("text")
    assert "Traceback" not in w.message.cget("text")
    gui.shot(w, "license-window-refused")

    usb = tmp_path / "usb"
    w.ask_directory = lambda: str(usb)
    w.key_button.invoke()
    gui.idle(w)
    assert "portable key" in w.enroll_text.cget("text") and str(usb) in w.enroll_text.cget("text")
    gui.click(w, w.enroll_button)
    assert not w.enroll_box.winfo_ismapped(), w.message.cget("text")
    gui.select(w, "cad")
    w.spin.set("2")
    gui.click(w, w.borrow_button)
    assert gui.row(w, "cad")["state"] == KEY_BORROWED, w.message.cget("text")
    assert gui.row(w, "cad")["left"] == "2 days left"
    assert (usb / "borrows" / "cad.lic").is_file()
    assert not (laptop.home / "borrows").exists()
    gui.shot(w, "license-window-portable-key")


def test_keyboard_alone_selects_borrows_and_closes(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    ok(laptop.run(port, "enroll"))
    w = gui.open(f"127.0.0.1:{port}")
    # The list has the focus when the window gets it (Xvfb has no window manager to give it).
    assert w.top.focus_lastfor() is w.tree
    w.tree.focus_force()
    assert w.selected_product() == "cad"  # the first row is selected to begin with
    w.tree.event_generate("<Down>")
    gui.pump(lambda: w.selected_product() == "cad-render", what="Down to select the next row")
    assert w.facts["Product"].cget("text") == "cad-render (add-on)"
    w.tree.event_generate("<Up>")
    gui.pump(lambda: w.selected_product() == "cad", what="Up to select cad again")
    w.tree.event_generate("<Alt-f>")
    gui.pump(lambda: w.top.focus_get() is w.spin, what="Alt-F to the period")
    w.spin.set("5")
    w.spin.event_generate("<Return>")  # Enter in the period borrows
    gui.idle(w)
    assert gui.row(w, "cad")["state"] == BORROWED, w.message.cget("text")
    assert gui.row(w, "cad")["left"] == "5 days left"
    w.tree.event_generate("<Alt-r>")
    gui.idle(w)
    assert gui.row(w, "cad")["state"] == "Network", w.message.cget("text")
    w.tree.event_generate("<Escape>")
    assert w.closed
    assert w.finished.wait(20)


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_embedded_in_a_tk_application_it_uses_the_applications_client(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    from lanlic.laptop.borrower import Borrower
    from lanlic.net.blocking import BlockingClient
    from lanlic.ui import show_license_information

    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    borrower = Borrower()
    app = BlockingClient(f"127.0.0.1:{port}", app="MyCAD 16", borrowed=borrower)
    try:
        app.connect()
        closed: list[dict[str, object]] = []
        w = show_license_information(
            gui.root, client=app, borrower=borrower, version="16",
            on_close=lambda changes: closed.append(changes.to_json()),
        )  # fmt: skip
        assert isinstance(w, LicenseWindow)
        gui.windows.append(w)
        gui.idle(w)
        assert w.session.borrower is borrower
        gui.select(w, "cad-render")
        gui.click(w, w.enable_button)
        assert gui.row(w, "cad-render")["state"] == "Network", w.message.cget("text")
        # The seat is the application's: its client holds it, and keeps it after the window.
        assert [s.product for s in app.client.seats.values()] == ["cad-render"]
        w.close()
        assert w.finished.wait(20)
        assert closed and closed[0]["enabled"] == ["cad-render"]
        assert app.client.connected
        status = app.status()
        [render] = [p for p in status["products"] if p["name"] == "cad-render"]
        assert render["in_use"] == 1 and render["holders"][0]["app"] == "MyCAD 16"
    finally:
        app.close()


def test_the_period_picker_follows_the_admins_lower_limit(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, port, _ = procs.serve(act_key, vendor, data, "--no-admin")
    ok(laptop.run(port, "enroll"))
    w = gui.open(f"127.0.0.1:{port}")
    gui.select(w, "cad")
    assert period_to(w) == 14  # the key's
    ok(laptop.run(None, "admin", "policy", "cad", "--max-days", "5", "--data", str(data)))
    deadline = time.monotonic() + 20
    while period_to(w) != 5:  # the running server applies it within a second
        assert time.monotonic() < deadline, "the admin's limit did not reach the window"
        gui.click(w, w.refresh_button)
    assert w.facts["Borrowing"].cget("text") == "up to 2 seat(s), at most 5 days each"
    w.spin.set("9")
    assert w.period() == 5
    w.spin.event_generate("<KeyRelease>")
    gui.root.update()
    gui.click(w, w.borrow_button)
    assert gui.row(w, "cad")["left"] == "5 days left", w.message.cget("text")


def period_to(w: LicenseWindow) -> int:
    return int(float(str(w.spin.cget("to"))))


def test_the_cli_runs_without_tkinter() -> None:
    """``lanlic`` builds its parser (``gui`` included) without importing tkinter."""
    import subprocess
    import sys

    probe = (
        "import sys; from lanlic.cli import build_parser; build_parser(); "
        "print('tkinter' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"


def test_a_damaged_licence_folder_is_said_in_one_line_and_not_retried_in_a_loop(
    gui: Driver, procs: Procs, act_key: Path, vendor: Path, laptop: Laptop, tmp_path: Path
) -> None:
    _, port, _ = procs.serve(act_key, vendor, tmp_path / "data", "--no-admin")
    laptop.home.mkdir()
    (laptop.home / "container.key").write_text("not a key\n")  # and no container.json
    w = gui.open(f"127.0.0.1:{port}")
    assert "holds a container key but no container.json" in w.message.cget("text")
    assert w.detail.cget("text") == "code: container"
    samples = []
    for _ in range(30):
        gui.root.update()
        samples.append(w.busy)
        time.sleep(0.02)
    assert set(samples) == {""}, "a failed look must not start another at once"
