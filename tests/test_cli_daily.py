"""Daily use without surprises (issue 11): what makes no sense is refused with the rule, the
server's machine has one default data folder, times are for people (and ISO 8601 UTC in JSON),
and the policy set from the command line is in the history as the admin page's is.

One server runs on 127.0.0.1 with no ``--data``, in a HOME of the test's own, in the time zone
Europe/Paris (so local time differs from UTC and says so)."""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliproc import Laptop, Procs, base_env, ok, run
from cliproc import fails as _fails


def fails(result: subprocess.CompletedProcess[str], code: str) -> str:
    """``cliproc.fails``, also for a command line refused as it is parsed (exit 2)."""
    if code == "usage" and result.returncode == 2:
        result = subprocess.CompletedProcess(result.args, 1, result.stdout, result.stderr)
    return _fails(result, code)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("daily")
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in base_env().items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), TZ="Europe/Paris")
    laptop = Laptop(tmp, "laptop", user="dana")
    laptop_env = {**laptop.env(), "HOME": str(home), "TZ": "Europe/Paris"}
    vendor = tmp / "vendor"
    ok(run(["vendor", "keygen", "--out", str(vendor), "--json"], env))
    lic = tmp / "acme.lic"
    ok(run(["vendor", "issue", "--vendor-key", str(vendor / "vendor.key"), "--customer", "ACME",
            "--expires", "2030-12-31", "--borrow-kind", "act", "--product",
            "cad:5:borrowable=4:max-days=30", "--product", "render:1:addon", "--out", str(lic),
            "--json"], env))  # fmt: skip
    procs = Procs()
    try:
        proc = procs.start(
            ["serve", "--license", str(lic), "--vendor-pub", str(vendor / "vendor.pub"),
             "--host", "127.0.0.1", "--port", "0", "--no-mdns", "--no-admin", "--json"], env
        )  # fmt: skip
        event = proc.read_json()
        server = f"127.0.0.1:{event['port']}"
        ok(run(["enroll", "--server", server, "--json"], laptop_env))
        yield {"env": env, "laptop": laptop_env, "server": server, "data": Path(event["data"]),
               "home": home, "tmp": tmp, "vendor": vendor, "lic": lic, "procs": procs}  # fmt: skip
    finally:
        procs.close_all()


def test_serve_and_the_admin_commands_share_the_default_data_folder(site: dict[str, Any]) -> None:
    data = site["home"] / ".local" / "share" / "lanlic"
    assert site["data"] == data and (data / "lanlic.db").is_file()
    helped = run(["serve", "--help"], {**site["env"], "COLUMNS": "2000"})
    assert f"else {data};" in helped.stdout
    said = ok(run(["admin", "password", "--clear", "--json"], site["env"]))
    assert said == {"password_set": False, "data": str(data)}
    assert ok(run(["admin", "history", "--json"], site["env"]))["events"] is not None


def _policy(site: dict[str, Any], *args: str) -> Any:
    return run(["admin", "policy", *args, "--json"], site["env"])


def test_policy_refuses_what_the_key_does_not_allow_and_records_a_change(
    site: dict[str, Any],
) -> None:
    message = fails(_policy(site, "cad", "--borrowable", "5"), "usage")
    assert "0 to 4" in message and "never raise" in message
    assert "from 0" in fails(_policy(site, "cad", "--borrowable", "-1"), "usage")
    assert "0 to 30" in fails(_policy(site, "cad", "--max-days", "31"), "usage")
    message = fails(_policy(site, "nosuch", "--borrowable", "1"), "usage")
    assert "no product 'nosuch'" in message and "cad, render" in message
    done = ok(_policy(site, "cad", "--borrowable", "3"))
    assert (done["borrowable"], done["changed"], done["key"]["borrowable"]) == (3, True, 4)
    events = ok(run(["admin", "history", "--json"], site["env"]))["events"]
    policy = [e for e in events if e["event"] == "admin_policy"]
    assert len(policy) == 1 and policy[0]["product"] == "cad"
    assert policy[0]["host"] == socket.gethostname() and "borrowable 3" in policy[0]["detail"]
    ok(_policy(site, "cad", "--clear"))


def test_borrow_lengths_outside_the_range_say_the_range(site: dict[str, Any]) -> None:
    def borrow(*args: str) -> Any:
        return run(["borrow", "cad", "--server", site["server"], *args, "--json"], site["laptop"])

    for days in ("0", "-1"):
        message = fails(borrow("--days", days), "usage")
        assert "more than 0 and at most 30 days" in message, message
    assert "at most 30 days" in fails(borrow("--days", "1e308"), "borrow_too_long")
    assert "is past" in fails(borrow("--until", "2001-02-03"), "usage")
    for days in ("nan", "inf"):
        assert "not a number of days" in fails(borrow("--days", days), "usage")


def test_serve_refuses_timing_that_makes_no_sense_with_the_rule(site: dict[str, Any]) -> None:
    base = ["serve", "--license", str(site["lic"]), "--vendor-pub",
            str(site["vendor"] / "vendor.pub"), "--no-mdns", "--no-admin", "--json"]  # fmt: skip
    assert "longer than --heartbeat" in fails(
        run([*base, "--lease", "10", "--heartbeat", "20"], site["env"]), "usage"
    )
    message = fails(run([*base, "--lease", "20", "--heartbeat", "19"], site["env"]), "usage")
    assert "stall threshold" in message and "SPEC section 6" in message
    assert "above 0" in fails(run([*base, "--heartbeat", "0"], site["env"]), "usage")
    assert "above 0" in fails(run([*base, "--lease", "-1"], site["env"]), "usage")


def test_vendor_issue_refuses_to_overwrite_without_force(site: dict[str, Any]) -> None:
    out = site["tmp"] / "again.lic"
    args = ["vendor", "issue", "--vendor-key", str(site["vendor"] / "vendor.key"), "--customer",
            "ACME", "--expires", "2030-12-31", "--borrow-kind", "act", "--product", "cad:1",
            "--out", str(out), "--json"]  # fmt: skip
    ok(run(args, site["env"]))
    first = out.read_bytes()
    assert "already exists" in fails(run(args, site["env"]), "usage")
    assert out.read_bytes() == first
    ok(run([*args, "--force"], site["env"]))
    assert out.read_bytes() != first


def test_backup_into_a_missing_folder_makes_it_or_refuses(site: dict[str, Any]) -> None:
    folder = site["tmp"] / "backups"
    said = ok(run(["admin", "backup", f"{folder}/", "--json"], site["env"]))
    assert folder.is_dir() and Path(said["backup"]).parent == folder
    missing = site["tmp"] / "nowhere" / "x.db"
    assert "no folder" in fails(
        run(["admin", "backup", str(missing), "--json"], site["env"]), "usage"
    )
    assert not missing.parent.exists()


LOCAL = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (CET|CEST)")


def test_times_are_local_with_their_zone_and_iso_utc_in_json(site: dict[str, Any]) -> None:
    laptop = site["laptop"]
    procs: Procs = site["procs"]
    holder = procs.start(["checkout", "cad", "--server", site["server"], "--hold", "30"], laptop)
    assert holder.read_line().startswith("checked out cad")
    status = run(["status", "--server", site["server"]], laptop)
    assert LOCAL.search(status.stdout), status.stdout
    body = ok(run(["status", "--server", site["server"], "--json"], laptop))
    held = next(p for p in body["products"] if p["name"] == "cad")["holders"][0]
    assert held["since_utc"] == dt.datetime.fromtimestamp(held["since"], dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    lic = ok(run(["borrow", "cad", "--server", site["server"], "--days", "2", "--json"], laptop))
    assert lic["end_utc"].endswith("Z")
    info = run(["info", "--server", site["server"]], laptop)
    lines = info.stdout.splitlines()
    header, cad = lines[0], next(x for x in lines if x.startswith("cad "))
    # The columns fit their content: ACTIONS starts where its header does, after EXPIRES.
    assert LOCAL.search(cad) and cad.index("return") == header.index("ACTIONS"), info.stdout
    # A refusal names who asked; no epoch seconds in the details.
    fails(run(["borrow", "render", "--server", site["server"], "--days", "1", "--json"], laptop),
          "not_borrowable")  # fmt: skip
    # History is written in batches about once a second: wait for the refusal's.
    deadline = time.monotonic() + 15
    while True:
        history = run(["admin", "history"], site["env"]).stdout
        refusals = [x for x in history.splitlines() if " refusal " in x]
        if refusals or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert refusals, history
    refusal = refusals[0]
    assert "dana" in refusal and socket.gethostname() in refusal, history
    assert LOCAL.search(refusal) and not re.search(r"\b\d{10}\b", history), history
    borrowed = next(x for x in history.splitlines() if " borrow " in x)
    assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CET", borrowed), borrowed
    ok(run(["return", "cad", "--server", site["server"], "--json"], laptop))
    holder.stop()
