"""Every subcommand, given bad arguments, fails in one line: ``lanlic: CODE: reason`` on stderr,
a non-zero exit, and no traceback on stdout or stderr (issue 11).

One server runs on 127.0.0.1 for the commands that reach one, in a home folder of the test's own
(so the default data folder and the laptop's files are the test's). The commands run as real
processes, a few at a time in threads (the machine is slow and shared); each is bounded.
"""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cliproc import CLI, RUN_TIMEOUT, Laptop, Procs, base_env, ok, run

#: A TEST-NET-3 address (RFC 5737): on no interface of this host.
NOT_HERE = "203.0.113.7"
PAST = "2001-02-03"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A home folder, a vendor, a network key, a server on its default data folder."""
    tmp = tmp_path_factory.mktemp("errors")
    home = tmp / "home"
    home.mkdir()
    env = {**base_env(), "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config")}  # fmt: skip
    env.pop("DISPLAY", None)
    laptop = Laptop(tmp, "laptop")
    env.update({k: v for k, v in laptop.env().items() if k.startswith("LANLIC_")})
    vendor = tmp / "vendor"
    ok(run(["vendor", "keygen", "--out", str(vendor), "--json"], env))
    expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365)).isoformat()
    lic = tmp / "acme.lic"
    ok(run(["vendor", "issue", "--vendor-key", str(vendor / "vendor.key"), "--customer", "ACME",
            "--expires", expires, "--borrow-kind", "act", "--product",
            "cad:5:borrowable=4:max-days=30", "--product", "render:1:addon", "--out", str(lic),
            "--json"], env))  # fmt: skip
    garbage = tmp / "garbage.txt"
    garbage.write_text("not a key, not a request\n")
    data = home / "data" / "lanlic"  # the default data folder under this HOME
    procs = Procs()
    try:
        proc = procs.start(
            ["serve", "--license", str(lic), "--vendor-pub", str(vendor / "vendor.pub"),
             "--host", "127.0.0.1", "--port", "0", "--no-mdns", "--no-admin", "--json"], env
        )  # fmt: skip
        event = proc.read_json()
        assert event["event"] == "listening" and event["data"] == str(data), event
        server = f"127.0.0.1:{event['port']}"
        ok(run(["enroll", "--server", server, "--json"], env))
        yield {"tmp": str(tmp), "server": server, "vendor": str(vendor), "lic": str(lic),
               "garbage": str(garbage), "home": home, "env": env}  # fmt: skip
    finally:
        procs.close_all()


def bad_arguments(s: dict[str, Any]) -> list[list[str]]:
    """The issue's cases, and more of the same kinds, for every subcommand."""
    srv = ["--server", s["server"]]
    tmp, vendor, lic, garbage = s["tmp"], s["vendor"], s["lic"], s["garbage"]
    key = ["--vendor-key", f"{vendor}/vendor.key", "--customer", "X", "--borrow-kind", "act"]
    issue = ["vendor", "issue", *key, "--expires", "2030-01-01", "--product", "cad:1"]
    serve = ["serve", "--license", lic, "--vendor-pub", f"{vendor}/vendor.pub", "--no-mdns",
             "--no-admin", "--host", "127.0.0.1"]  # fmt: skip
    # fmt: off
    return [
        # the command line itself
        [], ["nope"], ["--nope"], ["vendor"], ["admin"],
        # vendor
        ["vendor", "keygen"],
        ["vendor", "keygen", "--out", "/proc/foo"],
        ["vendor", "keygen", "--out", vendor],  # vendor.key exists
        ["vendor", "keygen", "--out", garbage],  # a file, not a folder
        [*issue, "--out", "/missing/dir/x.lic"],
        [*issue, "--out", lic],  # exists: refused without --force
        [*issue, "--out", "/proc/x.lic", "--force"],
        ["vendor", "issue", *key, "--expires", "2030-13-01", "--product", "cad:1", "--out", "x"],
        ["vendor", "issue", *key, "--expires", "2030-01-01", "--product", "cad:x", "--out", "x"],
        ["vendor", "issue", *key, "--expires", "2030-01-01", "--product", "cad:1e999",
         "--out", f"{tmp}/y.lic"],
        ["vendor", "issue", "--vendor-key", garbage, "--customer", "X", "--borrow-kind", "act",
         "--expires", "2030-01-01", "--product", "cad:1", "--out", f"{tmp}/z.lic"],
        ["vendor", "issue", "--vendor-key", "/missing.key", "--customer", "X", "--borrow-kind",
         "act", "--expires", "2030-01-01", "--product", "cad:1", "--out", f"{tmp}/z.lic"],
        ["vendor", "issue", *key[:4], "--borrow-kind", "nope", "--expires", "2030-01-01",
         "--product", "cad:1", "--out", f"{tmp}/z.lic"],
        # serve
        ["serve", "--demo", "--port", "99999"],
        ["serve", "--demo", "--admin-port", "99999"],
        ["serve", "--demo", "--port", "-1"],
        ["serve", "--demo", "--port", "http"],
        [*serve, "--lease", "0"],
        [*serve, "--lease", "-1"],
        [*serve, "--lease", "nan"],
        [*serve, "--lease", "inf"],
        [*serve, "--heartbeat", "0"],
        [*serve, "--heartbeat", "nan"],
        [*serve, "--lease", "10", "--heartbeat", "20"],
        [*serve, "--lease", "20", "--heartbeat", "19"],  # within the stall threshold
        [*serve, "--lease", "4"],  # a heartbeat of a third: still within it
        ["serve"],
        ["serve", "--license", "/missing.lic", "--vendor-pub", f"{vendor}/vendor.pub"],
        ["serve", "--license", lic, "--vendor-pub", "/missing.pub"],
        ["serve", "--license", garbage, "--vendor-pub", f"{vendor}/vendor.pub", "--no-mdns"],
        ["serve", "--license", lic, "--vendor-pub", garbage, "--no-mdns"],
        [*serve, "--port", "0", "--data", "/proc/lanlic"],
        [*serve, "--port", "0", "--data", garbage],
        ["serve", "--demo", "--host", NOT_HERE, "--port", "0", "--no-admin", "--no-mdns",
         "--data", f"{tmp}/demo-a"],
        ["serve", "--demo", "--host", "127.0.0.1", "--port", "0", "--no-admin", "--interface",
         NOT_HERE, "--data", f"{tmp}/demo-b"],
        ["serve", "--demo", "--port", "0", "--no-admin", "--no-mdns", "--restore",
         "/missing.db", "--data", f"{tmp}/demo-c"],
        [*serve, "--port", "0"],  # the default data folder is the running server's
        # checkout, enable, status
        ["checkout", "cad", *srv, "--hold", "nan"],
        ["checkout", "cad", *srv, "--hold", "-1"],
        ["checkout", "cad", *srv, "--hold", "inf"],
        ["checkout", "cad", *srv, "--hold", "-0.5"],
        ["checkout", "cad", "--server", "127.0.0.1:99999"],
        ["checkout", "cad", "--server", ":7766"],
        ["checkout", "cad", "--server", "[::1"],
        ["checkout", "cad", "--server", "127.0.0.1:1"],
        ["checkout", "nosuch", *srv],
        ["checkout", "cad", *srv, "--version", "sixteen"],
        ["checkout", "caf\udcff", *srv],  # bytes that are not UTF-8, as Python passes them on
        ["checkout", "cad", *srv, "--app", "\udcff"],
        ["vendor", "issue", *key[:2], "--customer", "\udcff", "--borrow-kind", "act",
         "--expires", "2030-01-01", "--product", "cad:1", "--out", f"{tmp}/u.lic"],
        ["checkout", "cad", *srv, "--vendor", "sha256:zz"],
        ["checkout", "cad", *srv, "--vendor", "/missing.pub"],
        ["checkout", "cad", *srv, "--vendor", garbage],
        ["checkout", "cad", "--discover-timeout", "nan"],
        ["checkout", "cad", "--interface", NOT_HERE, "--discover-timeout", "0.5"],
        ["checkout", "cad", "--interface", "not-an-ip", "--discover-timeout", "0.5"],
        ["enable", "cad", *srv],  # not an add-on
        ["enable", "render", *srv, "--hold", "nan"],
        ["status", "--server", "127.0.0.1:99999"],
        ["status", "--server", ":7766"],
        ["status", "--server", "127.0.0.1:1"],
        ["status", "--interface", NOT_HERE],
        # servers, trust
        ["servers", "--interface", NOT_HERE],
        ["servers", "--interface", "not-an-ip"],
        ["servers", "--timeout", "nan"],
        ["servers", "--timeout", "-1"],
        ["servers", "--vendor", "sha256:zz"],
        ["trust"],
        ["trust", "--server", ":7766"],
        ["trust", "--server", "127.0.0.1:1"],
        ["trust", "--forget", "nobody"],
        ["trust", "--list", "--forget", "x"],
        ["trust", *srv, "--expect", "sha256:00"],  # pinned already, but not that key
        # borrowing
        ["enroll", "--request", "/proc/x/req.json"],
        ["enroll", "--response", "/missing.json"],
        ["enroll", "--response", garbage],
        ["enroll", "--server", ":1"],
        ["borrow", "cad", *srv],
        ["borrow", "cad", *srv, "--days", "0"],
        ["borrow", "cad", *srv, "--days", "-1"],
        ["borrow", "cad", *srv, "--days", "nan"],
        ["borrow", "cad", *srv, "--days", "inf"],
        ["borrow", "cad", *srv, "--days", "1e308"],
        ["borrow", "cad", *srv, "--days", "31"],
        ["borrow", "cad", *srv, "--until", PAST],
        ["borrow", "cad", *srv, "--until", "soon"],
        ["borrow", "cad", *srv, "--until", "2030-01-01", "--days", "2"],
        ["borrow", "nosuch", *srv, "--days", "1"],
        ["borrow", "cad", *srv, "--days", "1", "--portable-key", "/proc/key"],
        ["return", "cad", *srv],  # nothing borrowed
        ["return", "cad", "--server", ":7766"],
        ["info", "--server", ":7766"],
        ["info", "--discover-timeout", "-1"],
        # admin
        ["admin", "backup", "/missing/dir/x.db"],
        ["admin", "backup", f"{tmp}/b.db", "--data", "/missing"],
        ["admin", "backup", "/proc/x.db"],
        ["admin", "history", "--since", "yesterday"],
        ["admin", "history", "--data", "/missing"],
        ["admin", "history", "--csv", "--json"],
        ["admin", "retention", "--days", "-1"],
        ["admin", "policy", "cad", "--borrowable", "5"],  # the key allows 4
        ["admin", "policy", "cad", "--borrowable", "-1"],
        ["admin", "policy", "cad", "--max-days", "31"],
        ["admin", "policy", "cad", "--borrowable", "two"],
        ["admin", "policy", "nosuch", "--borrowable", "1"],
        ["admin", "policy", "cad", "--data", "/missing"],
        ["admin", "password"],  # no terminal to ask on
        ["admin", "password", "--password-stdin", "--data", "/proc/x"],
        ["admin", "enroll", "--accept", "/missing.json", "--out", f"{tmp}/resp.json"],
        ["admin", "enroll", "--accept", garbage, "--out", f"{tmp}/resp.json"],
        ["admin", "enroll", "--accept", garbage, "--out", f"{tmp}/r.json", "--data", "/missing"],
        # service (refused while the command line is read: nothing is installed or removed)
        ["service", "print-unit", "--system", "nope"],
        ["service", "install"],  # no network key given
        ["service", "install", "--system", "nope", "--license", lic, "--vendor-pub", lic],
        ["service", "remove", "--system", "nope"],
        # gui (its window needs a display; the test gives it none)
        ["gui", "--nope"],
        ["gui", "--server", s["server"]],
        # bench (each refused before any load starts)
        ["bench", "--scenario", "nope"],
        ["bench", "--targets", "nope"],
        ["bench", "--server", "10.1.2.3:7766"],
        ["bench", "--server", ":7766"],
        ["bench", "--loop", "nope"],
    ]
    # fmt: on


def _run(args: list[str], site: dict[str, Any], json: bool) -> subprocess.CompletedProcess[str]:
    """``lanlic ARGS`` (with ``--json`` when ``json`` and the command has it), to its end."""
    json = json and bool(args) and args[0] not in ("bench", "--nope")  # bench's --json is a file
    argv = [*CLI, *args, *(["--json"] if json else [])]
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=site["env"],
            cwd=site["home"],
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # killed by subprocess.run; a problem to report
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return subprocess.CompletedProcess(argv, -9, out, f"<no exit within {RUN_TIMEOUT} s>")


def _problems(result: subprocess.CompletedProcess[str], json: bool) -> str | None:
    err = result.stderr
    if result.returncode == 0:
        return f"exit 0, stdout {result.stdout!r}"
    if "Traceback" in err or "Traceback" in result.stdout:
        return f"a traceback: {err[-800:]!r}"
    if not err.endswith("\n") or err.count("\n") != 1:
        return f"not one line on stderr: {err!r}"
    if not err.startswith("lanlic: ") or err.count(": ") < 2:
        return f"not 'lanlic: CODE: reason': {err!r}"
    if json:
        try:
            body = jsonlib.loads(result.stdout.splitlines()[-1])
        except (IndexError, ValueError):
            return f"--json, but no JSON error on stdout: {result.stdout!r}"
        if f"lanlic: {body.get('error')}: {body.get('message')}\n" != err:
            return f"--json: {body} is not what stderr says: {err!r}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)  # some 140 processes on a shared machine, four at a time
def test_every_subcommand_fails_bad_arguments_in_one_line(site: dict[str, Any]) -> None:
    """Every other row with ``--json`` (the error then also goes to stdout as JSON)."""
    table = bad_arguments(site)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: _run(table[i], site, i % 2 == 1), range(len(table))))
    bad = [
        f"lanlic {' '.join(args)}: {problem}"
        for args, result in zip(table, results, strict=True)
        if (problem := _problems(result, "--json" in result.args)) is not None
    ]
    assert bad == [], "\n".join(bad)


def test_the_table_covers_every_subcommand(site: dict[str, Any]) -> None:
    """A subcommand added later gets its bad arguments here too."""
    from lanlic.cli.app import build_parser

    parser = build_parser()
    names = set()
    assert parser._subparsers is not None
    for action in parser._subparsers._group_actions:
        for name, sub in getattr(action, "choices", {}).items():
            nested = [a for a in sub._actions if getattr(a, "choices", None) and a.dest.endswith(
                "_command")]  # fmt: skip
            if nested:
                names |= {f"{name} {n}" for n in nested[0].choices}
            else:
                names.add(name)
    covered = set()
    for args in bad_arguments(site):
        if args and args[0] in ("vendor", "admin", "service") and len(args) > 1:
            covered.add(f"{args[0]} {args[1]}")
        elif args:
            covered.add(args[0])
    assert names - covered == set()


def test_output_into_a_closed_pipe_ends_quietly(site: dict[str, Any]) -> None:
    """``lanlic status | head -3``: the reader has gone before the output is written."""
    commands = [
        ["status", "--server", site["server"]],
        ["admin", "history"],
        ["admin", "history", "--csv"],
        ["admin", "history", "--json"],
        ["trust", "--list"],
    ]

    # As the ``lanlic`` script runs it (pyproject: lanlic.cli:main), output buffered as usual.
    script = [sys.executable, "-c", "import sys; from lanlic.cli import main; sys.exit(main())"]
    env = {k: v for k, v in site["env"].items() if k != "PYTHONUNBUFFERED"}

    def piped(args: list[str]) -> tuple[list[str], int, str]:
        proc = subprocess.Popen(
            [*script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            cwd=site["home"],
        )  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.close()  # as head does once it has its lines
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        return args, proc.returncode, err.decode(errors="replace")

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(piped, commands))
    for args, code, err in results:
        assert "Traceback" not in err and "Exception ignored" not in err, (args, err)
        assert err == "", (args, err)
        assert code in (0, 1), (args, code)


def test_a_port_in_use_is_its_own_error(tmp_path: Path) -> None:
    """``serve`` on a port another process holds says so under the code ``listen`` (not
    ``usage``: nothing was typed wrongly), in one line and in its JSON."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = subprocess.run(
            [*CLI, "serve", "--demo", "--host", "127.0.0.1", "--port", str(port), "--no-admin",
             "--no-mdns", "--data", str(tmp_path / "data"), "--json"],
            capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip
    finally:
        taken.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"lanlic: listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert jsonlib.loads(done.stdout.strip().splitlines()[-1])["error"] == "listen"
