"""The conformance runner (``python -m lanlic.conformance``) against a real ``lanlic serve``, and
against servers that break one rule each, to show it fails them with the reason.

The runner is written from protocol/SPEC.md and protocol/vectors alone (it imports nothing else
of lanlic: ``test_the_runner_uses_no_server_internals``), so passing it is what a server written in
another language must do too. The server it judges serves the product the sessions ask for
(protocol/README.md, "Conformance runner").
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cliproc import RUN_TIMEOUT, Procs, base_env, run
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import lanlic.conformance.runner as runner_module
from lanlic.conformance import CaseResult, find_vectors
from lanlic.conformance import run as run_cases
from lanlic.core import service as service_module
from lanlic.core import welcomebatch as welcomebatch_module
from lanlic.core.netkey import ProductEntitlement
from lanlic.proto import messages as messages_module

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
#: What the sessions need of a server (protocol/README.md): cadpro, 2024.1 licensed, seats free.
CADPRO = "cadpro:4:borrowable=1:max-days=14:versions=2024-2025.2"


@pytest.fixture(scope="module")
def served_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(network key, vendor folder) for a server of cadpro."""
    out = tmp_path_factory.mktemp("conformance")
    assert run(["vendor", "keygen", "--out", str(out / "vendor")]).returncode == 0
    issued = run(
        ["vendor", "issue", "--vendor-key", str(out / "vendor" / "vendor.key"),
         "--customer", "ACME Engineering", "--expires", "2099-12-31", "--borrow-kind", "act",
         "--product", CADPRO, "--out", str(out / "net.lic")]
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return out / "net.lic", out / "vendor"


def conformance(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lanlic.conformance", f"127.0.0.1:{port}", *extra],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT * 3,
        env=base_env(),
        check=False,
    )


def test_lanlic_serve_passes_every_case(
    procs: Procs, served_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key, vendor = served_key
    _, port, _ = procs.serve(key, vendor, tmp_path / "data")
    result = conformance(port, "--vectors", str(VECTORS))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    cases = lines[:-1]
    sessions = [x for x in cases if x.startswith("PASS session ")]
    invalid = [x for x in cases if x.startswith("PASS invalid ")]
    vectors = json.loads((VECTORS / "frames.json").read_text("utf-8"))
    n_sessions = len(json.loads((VECTORS / "sessions.json").read_text("utf-8")))
    assert len(sessions) == n_sessions >= 13, lines
    assert len(invalid) == len([v for v in vectors if not v["valid"]]) == len(cases) - n_sessions
    assert lines[-1] == f"{len(cases)} passed, 0 failed"
    # Played twice against the same server: each session has its own client id and nonce and
    # ends holding nothing, so no hello of the second round is a replay of the first's.
    again = conformance(port)  # and the vectors are found without --vectors in a source tree
    assert again.returncode == 0, again.stdout


def test_versions_judges_a_server_by_the_versions_it_implements(
    procs: Procs, served_key: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--versions 1``: the runner's own hello offers 1 only, each welcome must be in 1, and
    the sessions that need version 2 or 3 are N/A (counted apart), so a server of 1.0 can pass."""
    key, vendor = served_key
    _, port, _ = procs.serve(key, vendor, tmp_path / "data")
    result = conformance(port, "--versions", "1")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    na = [x for x in lines if x.startswith("N/A ")]
    assert na == [
        f"N/A session version_{v}: needs protocol version {v}, which the server does not implement"
        for v in (2, 3)
    ], lines
    assert lines[-1] == f"{len(lines) - 3} passed, 0 failed, 2 not applicable"
    for bad in ("4", "1,x", ""):
        refused = conformance(port, "--versions", bad)
        assert refused.returncode == 2 and "--versions" in refused.stderr, refused.stderr


def test_the_runner_reports_a_server_that_is_not_there(tmp_path: Path) -> None:
    free = runner_module.socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    result = conformance(port, "--timeout", "2")
    assert result.returncode == 1
    cases = result.stdout.splitlines()[:-1]
    assert cases and all(x.startswith("FAIL ") and "connection failed" in x for x in cases)
    missing = conformance(port, "--vectors", str(tmp_path))
    assert missing.returncode == 2 and "pass --vectors DIR" in missing.stderr


def test_the_runner_uses_no_server_internals() -> None:
    """Only the SPEC and the vectors: the runner imports no lanlic module but its own."""
    folder = Path(runner_module.__file__).parent
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("lanlic.") or name.startswith("lanlic.conformance")


async def _play(
    port: int, versions: tuple[int, ...] = runner_module.VERSIONS
) -> dict[str, CaseResult]:
    out: list[CaseResult] = []
    thread = threading.Thread(
        target=lambda: out.extend(run_cases("127.0.0.1", port, VECTORS, 3, versions))
    )
    thread.start()
    for _ in range(1200):  # bounded: at most 60 s
        if not thread.is_alive():
            break
        await asyncio.sleep(0.05)
    thread.join(5)
    assert not thread.is_alive()
    return {r.name: r for r in out}


PRODUCTS = (ProductEntitlement("cadpro", seats=4, versions=("2024", "2025.2")),)


async def test_a_server_that_reports_a_lease_twice_fails_that_case(
    start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undo one 1.0 rule in a real server (duplicates in a renew count once): the runner fails
    exactly the case that checks it, and says what it got."""
    monkeypatch.setattr(service_module, "_once", lambda leases: leases)
    server = await start_server(products=PRODUCTS)  # type: ignore[operator]
    results = await _play(server.port)
    failed = {name: r.reason for name, r in results.items() if not r.passed}
    assert set(failed) == {"duplicate_leases"}, failed
    assert "step 1 (renew_duplicate_lease): renewed.lost is" in failed["duplicate_leases"]


async def test_a_server_whose_handshake_signature_is_wrong_fails_every_case(
    start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version-1 welcome signed over other bytes than SPEC 4's: every case whose hello is
    answered in version 1 stops at it (the sessions' ``hello`` offers only 1), and no other."""
    real = service_module.handshake_payload
    monkeypatch.setattr(
        service_module,
        "handshake_payload",
        lambda nonce, client_id, server_id, vendor_fp: real(client_id, nonce, server_id, vendor_fp),
    )
    server = await start_server(products=PRODUCTS)  # type: ignore[operator]
    results = await _play(server.port)
    failed = {name for name, r in results.items() if not r.passed}
    assert "happy_path" in failed and not {"version_2", "version_3"} & failed
    assert not any(results[name].kind == "invalid" for name in failed)  # their hello is [1, 2, 3]
    assert all("version-1 handshake" in results[name].reason for name in failed)


async def test_a_server_whose_v2_signature_leaves_out_the_time_fails_every_v2_case(
    start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version-2 welcome whose signature does not cover its time: judged as a server of
    versions 1 and 2, the version-2 session and every invalid frame (played after the runner's
    own hello of versions 1 and 2) fail at the hello; the version-1 sessions pass."""
    real = service_module.handshake_v2_payload
    monkeypatch.setattr(
        service_module,
        "handshake_v2_payload",
        lambda nonce, client_id, server_id, vendor_fp, time: real(
            nonce, client_id, server_id, vendor_fp, 0.0
        ),
    )
    server = await start_server(products=PRODUCTS)  # type: ignore[operator]
    results = await _play(server.port, (1, 2))
    invalid = [r for r in results.values() if r.kind == "invalid"]
    assert invalid and not any(r.passed for r in invalid)
    assert all("version-2 handshake" in r.reason for r in invalid)
    assert "version-2 handshake" in results["version_2"].reason
    assert results["happy_path"].passed


def test_find_vectors_default_is_the_source_tree() -> None:
    assert find_vectors() == VECTORS


async def test_a_server_of_version_1_only_passes_with_versions_1(
    start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server made to speak version 1 only (as a server of SPEC 1.0 would): judged as
    implementing 1, it passes every case but the version-2 session, which is not applicable;
    judged as implementing 1 and 2, every invalid frame fails at its hello's welcome."""
    monkeypatch.setattr(messages_module, "PROTOCOL_VERSIONS", (1,))
    server = await start_server(products=PRODUCTS)  # type: ignore[operator]
    results = await _play(server.port, (1,))
    not_played = {name for name, r in results.items() if not r.applicable}
    assert not_played == {"version_2", "version_3"}
    assert all(r.passed for name, r in results.items() if name not in not_played), results
    assert not results["version_2"].passed
    assert results["version_2"].line().startswith("N/A session version_2: needs protocol version 2")
    both = await _play(server.port, (1, 2))
    invalid = [r for r in both.values() if r.kind == "invalid"]
    assert invalid and all("welcome.version is 1, not 2" in r.reason for r in invalid)
    assert both["happy_path"].passed  # its hello offers 1 only


async def test_a_server_whose_batch_paths_are_wrong_fails_every_v3_case(
    start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version-3 welcomes whose paths lead elsewhere (each step's side flipped): the version-3
    session and every invalid frame (played after the runner's own hello of versions 1 to 3)
    fail at the hello; the sessions of versions 1 and 2 pass."""
    real = welcomebatch_module.build

    def flipped(leaves: list[bytes]) -> tuple[bytes, list[bytes]]:
        root, paths = real([*leaves, bytes(32)])  # never a batch of one: every path has a step
        return root, [
            bytes(1 - b if i % welcomebatch_module.STEP == 0 else b for i, b in enumerate(path))
            for path in paths[:-1]
        ]

    monkeypatch.setattr(welcomebatch_module, "build", flipped)
    server = await start_server(products=PRODUCTS)  # type: ignore[operator]
    results = await _play(server.port)
    invalid = [r for r in results.values() if r.kind == "invalid"]
    assert invalid and not any(r.passed for r in invalid)
    assert all("version-3 handshake" in r.reason for r in invalid)
    assert "version-3 handshake" in results["version_3"].reason
    assert results["happy_path"].passed and results["version_2"].passed


def test_the_runner_folds_a_batch_path_the_way_the_server_builds_it(
    vendor_key: Ed25519PrivateKey,
) -> None:
    """The runner's own fold of a version-3 path (it imports nothing of the server) accepts
    each welcome of a real batch for its own hello, and no other hello's."""
    from helpers import make_key

    service = service_module.LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())
    hellos = [
        {"t": "hello", "id": 1, "versions": [1, 2, 3], "client_id": os.urandom(16),
         "user": "u", "host": "h", "nonce": os.urandom(32)}
        for _ in range(5)
    ]  # fmt: skip
    replies = [
        service.handle(service_module.Session(), messages_module.parse(h), 0.0, 1.8e9)
        for h in hellos
    ]
    welcomes = service.sign_welcomes([r.welcome for r in replies if r.welcome is not None])
    wires = [messages_module.to_wire(w) for w in welcomes]
    assert all(len(w["batch_path"]) >= runner_module.BATCH_STEP for w in wires)
    for hello, wire in zip(hellos, wires, strict=True):
        runner_module.check_welcome(wire, hello)
    with pytest.raises(runner_module.Failed, match="version-3 handshake"):
        runner_module.check_welcome(wires[0], hellos[1])
