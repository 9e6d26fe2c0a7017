"""Every history event can be filtered on: the admin page's event list, ``lanlic admin history
--event`` and the code that writes rows all agree with ``HISTORY_EVENTS``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from lanlic.core.records import HISTORY_EVENTS
from lanlic.store import Store

ROOT = Path(__file__).resolve().parents[2]
#: The ways the code names the event of a row it writes.
WRITERS = (
    r"""_event\(\s*"([a-z_]+)\"""",  # the service and the desk
    r"""_lease_event\(\s*"([a-z_]+)\"""",
    r"""_record\(\s*\w+,\s*"([a-z_]+)\"""",  # the admin page
    r"""_history_event\(\s*\(\s*"([a-z_]+)\"""",  # the server
    r"""\(\s*(?:t|time\.time\(\)),\s*"([a-z_]+)",\s*"",""",  # rows built by hand
    r"""HistoryRow\(\s*[\w.()]+,\s*"([a-z_]+)\"""",
    r""""([a-z_]+)" if state == "returned" else "([a-z_]+)\"""",
)


def written_events() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "lanlic").rglob("*.py"):
        if path.parts[-2] == "bench":
            continue  # the benchmark's own records, not history rows
        text = path.read_text(encoding="utf-8")
        for pattern in WRITERS:
            for match in re.finditer(pattern, text):
                found.update(g for g in match.groups() if g)
    return found


def test_the_code_writes_only_listed_events_and_the_list_has_no_stale_name() -> None:
    written = written_events()
    assert len(written) >= 20, written  # the scan sees the writers (not a hollow test)
    assert written <= set(HISTORY_EVENTS), written - set(HISTORY_EVENTS)
    assert set(HISTORY_EVENTS) <= written, set(HISTORY_EVENTS) - written


def test_the_admin_page_offers_every_event() -> None:
    html = (ROOT / "lanlic/admin/static/index.html").read_text(encoding="utf-8")
    select = re.search(r'<select id="history-event".*?</select>', html, re.S)
    assert select is not None
    offered = re.findall(r"<option>([a-z_]+)</option>", select.group(0))
    assert sorted(offered) == sorted(HISTORY_EVENTS)
    for name in ("policy", "policy_applied", "policy_refused", "queue_join", "queue_leave",
                 "admin_unqueue"):  # fmt: skip
        assert name in offered


def test_admin_history_event_filters_the_queue_and_policy_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "lanlic.db")
    now = time.time()
    names = ["checkout", "queue_join", "queue_leave", "admin_unqueue", "policy",
             "policy_applied", "policy_refused", "queue_join"]  # fmt: skip
    try:
        store.append_history_rows(
            [(now + i, e, "cad", "ann", "ws-1", f"row {i}") for i, e in enumerate(names)]
        )
    finally:
        store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANLIC_")}

    def history(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lanlic.cli", "admin", "history", "--data", str(tmp_path),
             *args],
            capture_output=True, text=True, timeout=30, env=env, check=False,
        )  # fmt: skip

    for event in set(names) - {"checkout"}:
        done = history("--event", event, "--json")
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)["events"]
        assert [r["event"] for r in rows] == [event] * names.count(event), (event, rows)
    table = history("--event", "queue_join")
    assert table.returncode == 0 and table.stdout.count("queue_join") == 2
    wrong = history("--event", "queue")
    assert wrong.returncode != 0 and "invalid choice" in wrong.stderr
