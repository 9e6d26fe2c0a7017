"""The License Information window (tkinter): the product list, an information pane, and Borrow
License, Return License and Enable, each one click.

Nothing here waits for the network or the disk: every request is a coroutine of ``Session`` run
by the ``Worker`` off the Tk thread; its outcome comes back through the worker's queue, drained
by this window's ``after`` tick. While a request runs, the window shows what it is doing, the
action buttons are off, and everything else (scrolling, selecting, closing) works.

Closing mid-request is safe: the request goes on to its end off the Tk thread (the standalone
``lanlic gui`` waits for it before it exits), and a borrow's outcome is journalled (session.py),
so the next window says whether it happened.
"""

from __future__ import annotations

import gc
import threading
import time
import tkinter as tk
from collections.abc import Callable, Coroutine
from pathlib import Path
from tkinter import filedialog, font, ttk
from typing import Any

from lanlic import osdeps
from lanlic.ui.model import Row, days_left, local_time, period_bounds, return_date
from lanlic.ui.session import Changes, Session, Snapshot, refusal_text
from lanlic.ui.worker import Outcome, Worker

__all__ = ["LicenseWindow", "new_root"]

TICK_MS = 100
"""How often the window drains finished work and moves its progress bar."""
REFRESH_S = 30.0
"""How often an idle window asks the server again (a stopped server shows within this)."""
CLOSE_WAIT_S = 30.0
"""How long closing waits for a request still running (the client's own timeouts end it first)."""
TITLE = "License Information"
BANNER_OFFLINE = (
    "The licence server cannot be reached. Borrowed licences still work; the other products "
    "are not available until it can be reached again."
)


def new_root() -> tk.Tk:
    """The Tk root of a window lanlic opens on its own (never an application's: that process's
    DPI awareness is the application's to choose), made DPI-aware first: on Windows the
    awareness must be set before Tk starts, or a scaled display shows the window blurry."""
    osdeps.make_dpi_aware()
    return tk.Tk()


def _versions(r: Row) -> str:
    """The version range as the list shows it; "" when nothing is known (server out of reach)."""
    if r.versions:
        return f"{r.versions[0]} to {r.versions[1]}"
    return "any" if r.seats is not None or r.end is not None else ""


#: What to do next, said under a refusal of these codes.
HINTS = {
    "wrong_borrow_kind": "This site's licences are borrowed onto a portable key: choose the key's "
    "folder with Portable key…, then enroll it.",
    "server_key_changed": "The server presents another key than the one trusted for this site: "
    "ask your licence administrator before going on.",
}

#: Under a borrow whose answer was lost: the journal (session.py) settles it.
UNKNOWN_BORROW = (
    "Whether the borrow happened is not known yet: the window asks the server again (same "
    "request, never a second seat) as soon as it answers."
)


class LicenseWindow:
    """The window, in ``master`` (a ``Tk`` or a ``Toplevel``). Make it with
    ``show_license_information``, or directly in tests.

    ``ask_directory``, ``ask_save_file`` and ``ask_open_file`` are the file choosers (the
    platform's dialogs); tests replace them."""

    def __init__(
        self,
        master: tk.Misc,
        session: Session,
        worker: Worker,
        *,
        on_close: Callable[[Changes], Any] | None = None,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.top = master if isinstance(master, tk.Tk | tk.Toplevel) else tk.Toplevel(master)
        self.session = session
        self.worker = worker
        self.on_close = on_close
        self.refresh_s = refresh_s
        self.clock = clock
        self.ticks = 0
        """How many ``after`` ticks have run (the window is responsive while this grows)."""
        self.busy: str = ""
        """What the running request is doing ("" when idle)."""
        self.snapshot: Snapshot | None = None
        self.closed = False
        self.finished = threading.Event()
        """Set once the closed window's last request has ended and its client is closed."""
        self._after: str | None = None
        self._last_look = 0.0
        self.ask_directory: Callable[[], str] = lambda: filedialog.askdirectory(
            parent=self.top, title="The portable key's folder", mustexist=True
        )
        self.ask_save_file: Callable[[], str] = lambda: filedialog.asksaveasfilename(
            parent=self.top,
            title="Save the enrollment request",
            initialfile="lanlic-enrollment-request.json",
            defaultextension=".json",
        )
        self.ask_open_file: Callable[[], str] = lambda: filedialog.askopenfilename(
            parent=self.top,
            title="Load the enrollment response",
            filetypes=[("Enrollment response", "*.json"), ("All files", "*")],
        )
        self._build()
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.refresh()
        self._after = self.top.after(TICK_MS, self._tick)

    # ------------------------------------------------------------------------------ layout

    def _build(self) -> None:
        top = self.top
        top.title(TITLE)
        top.minsize(640, 420)
        base = font.nametofont("TkDefaultFont")
        line = base.metrics("linespace")
        style = ttk.Style(top)
        # Rows as tall as the font at the OS's scaling, not a fixed pixel height.
        style.configure("Treeview", rowheight=line + max(4, line // 3))
        style.configure("Banner.TLabel", background="#fff3cd", foreground="#5c4400", padding=8)
        style.configure("Notice.TFrame", background="#e7f1fb")
        style.configure("Notice.TLabel", background="#e7f1fb", padding=(8, 6))
        style.configure("Detail.TLabel", foreground="#555555")
        style.configure("Error.TLabel", foreground="#a40000")
        pad = max(6, line // 2)
        # Widths in characters of the font, so the OS's scaling (Tk's) applies to them too.
        wrap = (base.measure("0") or 8) * 80
        outer = ttk.Frame(top, padding=pad)
        outer.pack(fill="both", expand=True)
        outer.columnconfigure(0, weight=1)
        self.outer = outer

        self.heading = ttk.Label(outer, text="", style="Detail.TLabel", wraplength=wrap)
        self.heading.grid(row=0, column=0, sticky="ew")
        self.banner = ttk.Label(outer, text=BANNER_OFFLINE, style="Banner.TLabel", wraplength=wrap)
        self.banner.grid(row=1, column=0, sticky="ew", pady=(pad // 2, 0))

        # The first-time flow: shown until the machine (or portable key) is enrolled.
        self.enroll_box = ttk.Frame(outer, style="Notice.TFrame")
        self.enroll_box.grid(row=2, column=0, sticky="ew", pady=(pad // 2, 0))
        self.enroll_text = ttk.Label(
            self.enroll_box, text="", style="Notice.TLabel", wraplength=wrap
        )
        self.enroll_text.grid(row=0, column=0, columnspan=4, sticky="w")
        self.enroll_button = ttk.Button(
            self.enroll_box, text="Enroll now", underline=0, command=self.enroll_online
        )
        self.request_button = ttk.Button(
            self.enroll_box, text="Save request file…", underline=0, command=self.save_request
        )
        self.response_button = ttk.Button(
            self.enroll_box, text="Load response file…", underline=0, command=self.load_response
        )
        for i, b in enumerate((self.enroll_button, self.request_button, self.response_button)):
            b.grid(row=1, column=i, padx=(8 if i == 0 else 4, 0), pady=(0, 8), sticky="w")
        # Neither is known before the first look.
        self.banner.grid_remove()
        self.enroll_box.grid_remove()

        # The product list.
        lst = ttk.Frame(outer)
        lst.grid(row=3, column=0, sticky="nsew", pady=(pad, 0))
        outer.rowconfigure(3, weight=1)
        lst.columnconfigure(0, weight=1)
        lst.rowconfigure(0, weight=1)
        cols = ("product", "state", "versions", "until", "left")
        self.tree = ttk.Treeview(lst, columns=cols, show="headings", selectmode="browse", height=6)
        width = base.measure("0") or 8
        for col, text, chars in (
            ("product", "Product", 14),
            ("state", "State", 24),
            ("versions", "Version", 10),
            ("until", "Borrowed until", 22),
            ("left", "Days left", 12),
        ):
            self.tree.heading(col, text=text, anchor="w")
            self.tree.column(col, width=width * chars, stretch=col == "state")
        scroll = ttk.Scrollbar(lst, orient="vertical", command=self.tree.yview)
        self.tree.configure(yscrollcommand=scroll.set)
        self.tree.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        self.tree.bind("<<TreeviewSelect>>", lambda _e: self._show_selected())

        # The selected product's information, and the borrow period.
        self.pane = ttk.LabelFrame(outer, text="Product information", padding=pad)
        self.pane.grid(row=4, column=0, sticky="ew", pady=(pad, 0))
        self.pane.columnconfigure(1, weight=1)
        self.facts: dict[str, ttk.Label] = {}
        for i, name in enumerate(
            ("Product", "State", "Versions", "Seats", "Borrowing", "Borrowed until", "Borrow id")
        ):
            ttk.Label(self.pane, text=name + ":").grid(row=i, column=0, sticky="nw", padx=(0, 8))
            value = ttk.Label(self.pane, text="", wraplength=wrap * 3 // 4)
            value.grid(row=i, column=1, sticky="w")
            self.facts[name] = value
        period = ttk.Frame(self.pane)
        period.grid(row=7, column=0, columnspan=2, sticky="w", pady=(pad // 2, 0))
        self.period_label = ttk.Label(period, text="Borrow for", underline=11)
        self.period_label.grid(row=0, column=0)
        # No tk.StringVar here: a Variable is deleted in whichever thread the garbage collector
        # runs, and Tk refuses calls from any thread but its own.
        self.spin = ttk.Spinbox(period, from_=1, to=1, width=4, command=self._period_changed)
        self.spin.set("7")
        self.spin.grid(row=0, column=1, padx=4)
        self.spin.bind("<KeyRelease>", lambda _e: self._period_changed())
        self.spin.bind("<FocusOut>", lambda _e: self._period_changed())
        self.spin.bind("<Return>", lambda _e: self.borrow())
        self.return_on = ttk.Label(period, text="")
        self.return_on.grid(row=0, column=2)

        # The actions, and what the window is doing.
        bar = ttk.Frame(outer)
        bar.grid(row=5, column=0, sticky="ew", pady=(pad, 0))
        self.borrow_button = ttk.Button(
            bar, text="Borrow License", underline=0, command=self.borrow
        )
        self.return_button = ttk.Button(
            bar, text="Return License", underline=0, command=self.return_
        )
        self.enable_button = ttk.Button(bar, text="Enable", underline=1, command=self.enable)
        self.key_button = ttk.Button(
            bar, text="Portable key…", underline=0, command=self.choose_portable_key
        )
        self.refresh_button = ttk.Button(bar, text="Refresh", command=self.refresh)
        self.close_button = ttk.Button(bar, text="Close", command=self.close)
        for b in (self.borrow_button, self.return_button, self.enable_button):
            b.pack(side="left", padx=(0, 4))
        self.close_button.pack(side="right")
        self.refresh_button.pack(side="right", padx=(0, 4))
        self.key_button.pack(side="right", padx=(0, 4))

        status = ttk.Frame(outer)
        status.grid(row=6, column=0, sticky="ew", pady=(pad // 2, 0))
        status.columnconfigure(1, weight=1)
        self.progress = ttk.Progressbar(status, mode="indeterminate", length=80)
        self.doing = ttk.Label(status, text="", style="Detail.TLabel")
        self.message = ttk.Label(status, text="", wraplength=wrap)
        self.message.grid(row=1, column=0, columnspan=2, sticky="w")
        self.detail = ttk.Label(status, text="", style="Detail.TLabel", wraplength=wrap)
        self.detail.grid(row=2, column=0, columnspan=2, sticky="w")

        # Keyboard: every action has a key; Escape closes; the list has the focus first.
        keys: dict[str, Callable[[], None]] = {
            "<Alt-b>": self.borrow,
            "<Alt-r>": self.return_,
            "<Alt-n>": self.enable,
            "<Alt-p>": self.choose_portable_key,
            "<Alt-e>": self.enroll_online,
            "<Alt-s>": self.save_request,
            "<Alt-l>": self.load_response,
            "<Alt-f>": lambda: self.spin.focus_set(),
            "<F5>": self.refresh,
            "<Escape>": self.close,
        }
        # On macOS the key marked Alt is Option, and a window closes with Command-W.
        aqua = str(top.tk.call("tk", "windowingsystem")) == "aqua"
        if aqua:
            keys.update({"<Option-" + k[5:]: fn for k, fn in keys.items() if k.startswith("<Alt-")})
            keys["<Command-w>"] = self.close
        for seq, fn in keys.items():
            top.bind(seq, self._key(fn))
        self.tree.focus_set()

    @staticmethod
    def _key(fn: Callable[[], None]) -> Callable[[tk.Event[tk.Misc]], str]:
        def handler(_event: tk.Event[tk.Misc]) -> str:
            fn()
            return "break"

        return handler

    # --------------------------------------------------------------------------- the tick

    def _tick(self) -> None:
        if self.closed:
            return
        self.ticks += 1
        self.worker.poll()
        if not self.busy and self.clock() - self._last_look >= self.refresh_s:
            self.refresh()
        self._after = self.top.after(TICK_MS, self._tick)

    def _run(self, what: str, coro: Coroutine[Any, Any, Any], done: Callable[[Any], None]) -> bool:
        """Start a request (one at a time); ``done(value)`` on success, the refusal shown on
        failure; then the list is looked at again."""
        if self.busy or self.closed:
            coro.close()
            return False
        self.busy = what
        if not what.startswith("Looking"):
            self._say("", "")
        self._show_busy()

        looking = what.startswith("Looking")

        def finished(outcome: Outcome) -> None:
            if self.closed:
                return
            self.busy = ""
            self._show_busy()
            if outcome.error is None:
                done(outcome.value)
                return
            message, detail = refusal_text(outcome.error)
            code = getattr(outcome.error, "code", "")
            hint = HINTS.get(code, "")
            if code == "server_unavailable" and what.startswith("Borrowing"):
                hint = UNKNOWN_BORROW
            self._say(message, detail + (f" — {hint}" if hint else ""), error=True)
            if what.startswith("Borrowing"):  # the refusal is said: nothing to tell on reopening
                self.worker.submit(self.session.shown())
            if not looking:  # a failed look is not retried at once (the tick retries later)
                self.refresh()

        self.worker.submit(coro, finished)
        return True

    def _show_busy(self) -> None:
        if self.busy:
            self.progress.grid(row=0, column=0, padx=(0, 8), sticky="w")
            self.doing.configure(text=self.busy + "…")
            self.doing.grid(row=0, column=1, sticky="w")
            self.progress.start(50)
        else:
            self.progress.stop()
            self.progress.grid_remove()
            self.doing.grid_remove()
        self._update_buttons()

    def _say(self, message: str, detail: str = "", error: bool = False) -> None:
        self.message.configure(text=message, style="Error.TLabel" if error else "TLabel")
        self.detail.configure(text=detail)

    # ---------------------------------------------------------------------------- looking

    def refresh(self) -> None:
        """Ask the server and the container again."""
        self._last_look = self.clock()

        def done(snap: Snapshot) -> None:
            self._last_look = self.clock()
            self._show(snap)
            if snap.notice:
                self._say(snap.notice, "")
                self.worker.submit(self.session.shown())

        self._run("Looking at the licences", self.session.look(), done)

    def _show(self, snap: Snapshot) -> None:
        self.snapshot = snap
        where = "this machine" if snap.kind == "act" else f"the portable key in {snap.home}"
        server = (
            f"{snap.customer}, server {snap.server}"
            if snap.online
            else "the licence server is out of reach"
        )
        self.heading.configure(text=f"Licences of {where} ({server})")
        if snap.online:
            self.banner.grid_remove()
        else:
            why = f"\n({snap.server_error})" if snap.server_error else ""
            self.banner.configure(text=BANNER_OFFLINE + why)
            self.banner.grid()
        self._show_enroll(snap)
        selected = self.selected_product()
        self.tree.delete(*self.tree.get_children())
        now = self.clock()
        for r in snap.rows:
            until = local_time(r.end) if r.end is not None else ""
            left = days_left(r.end, now) if r.end is not None else ""
            versions = _versions(r)
            self.tree.insert("", "end", iid=r.product,
                             values=(r.product, r.state, versions, until, left))  # fmt: skip
        if snap.rows:
            pick = selected if selected in self.tree.get_children() else snap.rows[0].product
            self.tree.selection_set(pick)
            self.tree.focus(pick)
        self._show_selected()

    def _show_enroll(self, snap: Snapshot) -> None:
        if snap.enrolled:
            self.enroll_box.grid_remove()
            return
        if snap.kind == "key":
            text = (
                f"The portable key in {snap.home} is not enrolled yet: it has no inactive "
                "licence to borrow into. Enroll it once: now, with one click, or by files."
            )
        else:
            text = (
                "This machine has no inactive licence yet, so it cannot borrow. Get one once: "
                "with one click while the licence server can be reached, or, away from it, "
                "save a request file for your licence administrator and load the response "
                "file they give back. (A site whose licences go on a portable key: choose "
                "the key's folder with the Portable key… button.)"
            )
        self.enroll_text.configure(text=text)
        self.enroll_box.grid()

    def rows(self) -> dict[str, Row]:
        return {r.product: r for r in (self.snapshot.rows if self.snapshot else [])}

    def selected_product(self) -> str | None:
        sel = self.tree.selection()
        return str(sel[0]) if sel else None

    def selected(self) -> Row | None:
        name = self.selected_product()
        return self.rows().get(name) if name else None

    def _show_selected(self) -> None:
        r = self.selected()
        f = self.facts
        if r is None:
            for v in f.values():
                v.configure(text="")
            self._update_buttons()
            return
        f["Product"].configure(text=r.product + (" (add-on)" if r.addon else ""))
        f["State"].configure(text=r.state + (f" — {r.problem}" if r.problem else ""))
        f["Versions"].configure(text=_versions(r) or "—")
        f["Seats"].configure(text=f"{r.free} free of {r.seats}" if r.seats is not None else "—")
        if r.borrowable > 0 and r.max_days > 0:
            borrowing = f"up to {r.borrowable} seat(s), at most {r.max_days} days each"
        else:
            borrowing = "not borrowable" if r.seats is not None else "—"
        f["Borrowing"].configure(text=borrowing)
        if r.end is not None:
            until = f"{local_time(r.end)} ({days_left(r.end, self.clock())})"
        else:
            until = "—"
        f["Borrowed until"].configure(text=until)
        f["Borrow id"].configure(text=r.borrow_id or "—")
        bounds = period_bounds(r)
        if bounds is not None:
            self.spin.configure(from_=bounds[0], to=bounds[1])
        self._period_changed()
        self._update_buttons()

    def period(self) -> int | None:
        """The borrow period the picker holds, kept within the selected product's bounds."""
        r = self.selected()
        bounds = period_bounds(r) if r is not None else None
        if bounds is None:
            return None
        try:
            days = int(float(self.spin.get()))
        except ValueError:
            days = bounds[1]
        return min(max(days, bounds[0]), bounds[1])

    def _period_changed(self) -> None:
        days = self.period()
        if days is None:
            r = self.selected()
            if r is not None and "return" in r.actions:
                why = "borrowed here: return it to borrow it again"
            else:
                why = "this product cannot be borrowed now"
            self.return_on.configure(text=f"({why})")
            return
        end = return_date(self.clock(), days)
        self.return_on.configure(
            text=f"day{'s' if days != 1 else ''}: returns by itself on {local_time(end)}"
        )

    def _update_buttons(self) -> None:
        r = self.selected()
        snap = self.snapshot
        online = bool(snap and snap.online)
        enrolled = bool(snap and snap.enrolled)
        idle = not self.busy
        actions = r.actions if r is not None else ()

        def on(button: ttk.Button | ttk.Spinbox, yes: bool) -> None:
            button.state(["!disabled"] if yes else ["disabled"])

        on(self.borrow_button, idle and online and enrolled and r is not None
           and period_bounds(r) is not None)  # fmt: skip
        on(self.return_button, idle and online and "return" in actions)
        on(self.enable_button, idle and online and "enable" in actions)
        on(self.spin, idle and r is not None and period_bounds(r) is not None)
        on(self.enroll_button, idle and online)
        for b in (self.request_button, self.response_button, self.key_button, self.refresh_button):
            on(b, idle)

    # ---------------------------------------------------------------------------- actions

    def borrow(self) -> None:
        r, days = self.selected(), self.period()
        if r is None or days is None or self.borrow_button.instate(["disabled"]):
            return

        def done(lic: Any) -> None:
            self._say(
                f"Borrowed {lic.product} until {local_time(lic.end)}: it works with no network "
                "until then, and returns to the pool by itself at the end.",
            )
            self.worker.submit(self.session.shown())
            self.refresh()

        self._run(f"Borrowing {r.product} for {days} days", self.session.borrow(r.product, days),
                  done)  # fmt: skip

    def return_(self) -> None:
        r = self.selected()
        if r is None or self.return_button.instate(["disabled"]):
            return

        def done(changed: bool) -> None:
            extra = "" if changed else " (the server had already ended the borrow)"
            self._say(f"Returned {r.product}: its seat is back in the pool{extra}.")
            self.refresh()

        self._run(f"Returning {r.product}", self.session.return_(r.product), done)

    def enable(self) -> None:
        r = self.selected()
        if r is None or self.enable_button.instate(["disabled"]):
            return

        def done(_seat: Any) -> None:
            self._say(f"Enabled {r.product}: one of its seats is held while this runs.")
            self.refresh()

        self._run(f"Enabling {r.product}", self.session.enable(r.product), done)

    def enroll_online(self) -> None:
        if self.enroll_button.instate(["disabled"]) or not self.enroll_box.winfo_ismapped():
            return

        def done(resp: Any) -> None:
            self._say(f"Enrolled with {resp.customer}: this can borrow now.")
            self.refresh()

        self._run("Enrolling", self.session.enroll(), done)

    def save_request(self) -> None:
        if self.busy or not self.enroll_box.winfo_ismapped():
            return
        chosen = self.ask_save_file()
        if not chosen:
            return

        def done(path: Path) -> None:
            self._say(
                f"Saved the request to {path}. Give it to your licence administrator; load the "
                "response file they give back with the Load response file… button.",
            )
            self.refresh()

        self._run("Saving the request", self.session.write_request(Path(chosen)), done)

    def load_response(self) -> None:
        if self.busy or not self.enroll_box.winfo_ismapped():
            return
        chosen = self.ask_open_file()
        if not chosen:
            return

        def done(resp: Any) -> None:
            self._say(f"Enrolled with {resp.customer}: this can borrow now.")
            self.refresh()

        self._run("Loading the response", self.session.read_response(Path(chosen)), done)

    def choose_portable_key(self) -> None:
        if self.busy:
            return
        chosen = self.ask_directory()
        if not chosen:
            return
        self.session.use_portable_key(Path(chosen))
        self._say(f"Using the portable key in {chosen}.")
        self.refresh()

    # ------------------------------------------------------------------------------ close

    def close(self) -> None:
        """Close now; a request still running goes on to its end off the Tk thread, then the
        window's own client is closed (``finished`` is set)."""
        if self.closed:
            return
        self.closed = True
        if self._after is not None:
            self.top.after_cancel(self._after)
        self.progress.stop()
        changes = self.session.changes
        self.top.destroy()
        # The destroyed widgets are reference cycles. Collected by a garbage collection that
        # happens to run on the client's thread, they would call into Tk from the wrong thread
        # (Tk aborts the process); collected here, they are on the Tk thread.
        gc.collect()
        # The thread holds the worker and the session, never the window (see _finish_closing).
        threading.Thread(
            target=_finish_closing,
            args=(self.worker, self.session, self.finished),
            name="lanlic-ui-close",
            daemon=True,
        ).start()
        if self.on_close is not None:
            self.on_close(changes)


def _finish_closing(worker: Worker, session: Session, finished: threading.Event) -> None:
    """After the window closed: let a running request end, close the window's own client, stop
    the window's own loop. A module function, so this thread holds no Tk object."""
    try:
        worker.wait_idle(CLOSE_WAIT_S)
        worker.run(session.close(), CLOSE_WAIT_S)
    except Exception:  # noqa: S110 - closing: nothing left to tell
        pass
    finally:
        worker.stop()
        finished.set()
