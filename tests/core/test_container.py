"""Container homes: create and open, enrollment, borrowed files and every offline refusal.

The clock is a number passed in; machines are machine ids and MACs handed to the fingerprint.
"""

from __future__ import annotations

import json
import shutil
import stat
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import borrowing, signing
from lanlic.core.borrowing import CLOCK_TOLERANCE, DAY
from lanlic.errors import BorrowedFileError
from lanlic.laptop.container import ContainerError, ContainerHome, default_client_home
from lanlic.laptop.machine import machine_fingerprint
from lanlic.osdeps import MachineSources

T0 = 1_750_000_000.0
"""The clock when the borrow starts (UTC seconds); tests move it by adding numbers."""
END = T0 + 7 * DAY
SERVER = Ed25519PrivateKey.generate()
SERVER_ID = "srv-acme-1"


def fake_machine(root: Path, machine_id: str, mac: str) -> str:
    """A machine as the OS would show it (its id and primary MAC); returns its fingerprint."""
    return machine_fingerprint(MachineSources(machine_id, mac, f"the fake machine {root.name}"))


@pytest.fixture
def fp_a(tmp_path: Path) -> str:
    return fake_machine(tmp_path / "machine-a", "a" * 32, "8c:16:45:00:00:0a")


@pytest.fixture
def fp_b(tmp_path: Path) -> str:
    return fake_machine(tmp_path / "machine-b", "b" * 32, "8c:16:45:00:00:0b")


def enroll(home: ContainerHome, server: Ed25519PrivateKey = SERVER) -> None:
    req = borrowing.read_enrollment_request(home.enrollment_request("ann", "laptop", T0 - DAY))
    home.save_enrollment(
        borrowing.make_enrollment_response(server, req, SERVER_ID, "ACME", T0 - DAY)
    )


def issue(
    home: ContainerHome,
    *,
    product: str = "cad",
    borrow_id: str = "b-1",
    start: float = T0,
    end: float = END,
    server: Ed25519PrivateKey = SERVER,
) -> bytes:
    return borrowing.issue_borrowed_file(
        server,
        borrow_id=borrow_id,
        product=product,
        versions=("10", "16"),
        kind=home.kind,
        server_id=SERVER_ID,
        customer="ACME",
        container_key=home.public_key,
        machine_fp=home.machine_fp,
        user="ann",
        host="laptop",
        start=start,
        end=end,
    )


@pytest.fixture
def home(tmp_path: Path, fp_a: str) -> ContainerHome:
    """An enrolled ``act`` home on machine A."""
    h = ContainerHome.create(tmp_path / "home-a", "act", fp_a)
    enroll(h)
    return h


@pytest.fixture
def portable(tmp_path: Path) -> ContainerHome:
    """An enrolled portable key (a ``key`` home on a "USB stick")."""
    h = ContainerHome.create(tmp_path / "usb" / "lanlic-key", "key", "")
    enroll(h)
    return h


def refused(code: str) -> AbstractContextManager[pytest.ExceptionInfo[BorrowedFileError]]:
    return pytest.raises(BorrowedFileError, match=f"^{code}: ")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------ create and open


def test_create_then_open(tmp_path: Path, fp_a: str) -> None:
    made = ContainerHome.create(tmp_path / "h", "act", fp_a)
    assert (made.kind, made.machine_fp, made.foreign) == ("act", fp_a, False)
    assert len(made.public_key) == 32
    assert made.fingerprint == signing.fingerprint(made.public_key)
    assert signing.public_bytes(made.private_key.public_key()) == made.public_key
    opened = ContainerHome.open(tmp_path / "h", current_machine_fp=fp_a)
    assert opened is not None
    assert (opened.kind, opened.machine_fp, opened.public_key) == ("act", fp_a, made.public_key)
    assert opened.foreign is False
    assert opened.enrollment() is None
    assert opened.trusted_server_keys() == set()
    assert opened.state().last_seen is None


def test_open_where_there_is_none(tmp_path: Path) -> None:
    assert ContainerHome.open(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert ContainerHome.open(tmp_path / "empty") is None


def test_modes(tmp_path: Path, fp_a: str) -> None:
    h = ContainerHome.create(tmp_path / "h", "act", fp_a)
    assert mode(h.root) == 0o700
    for name in ("container.key", "container.json", "state.json"):
        assert mode(h.root / name) == 0o600, name
    enroll(h)
    path = h.save_borrowed(issue(h))
    assert mode(h.root / "enrollment.json") == 0o600
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert not [p for p in h.root.rglob("*.tmp")]


def test_refuses_a_second_create(tmp_path: Path, fp_a: str) -> None:
    first = ContainerHome.create(tmp_path / "h", "act", fp_a)
    with pytest.raises(FileExistsError):
        ContainerHome.create(tmp_path / "h", "act", fp_a)
    with pytest.raises(FileExistsError):
        ContainerHome.create(tmp_path / "h", "key", "")
    again = ContainerHome.open(tmp_path / "h")
    assert again is not None and again.public_key == first.public_key


def test_create_checks_kind_and_fingerprint(tmp_path: Path, fp_a: str) -> None:
    with pytest.raises(ValueError):
        ContainerHome.create(tmp_path / "a", "act", "")
    with pytest.raises(ValueError):
        ContainerHome.create(tmp_path / "b", "key", fp_a)
    with pytest.raises(ValueError):
        ContainerHome.create(tmp_path / "c", "dongle", "")  # type: ignore[arg-type]


def test_damaged_container(tmp_path: Path, fp_a: str) -> None:
    h = ContainerHome.create(tmp_path / "h", "act", fp_a)
    (h.root / "container.json").write_text("{not json")
    with pytest.raises(ContainerError, match="damaged"):
        ContainerHome.open(h.root)
    (h.root / "container.json").unlink()
    with pytest.raises(ContainerError, match="remove the folder"):
        ContainerHome.open(h.root)


def test_portable_key_home(portable: ContainerHome) -> None:
    opened = ContainerHome.open(portable.root, current_machine_fp="mfp:" + "0" * 32)
    assert opened is not None
    assert (opened.kind, opened.machine_fp, opened.foreign) == ("key", "", False)


def test_default_client_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LANLIC_CLIENT_DATA", str(tmp_path / "x"))
    assert default_client_home() == tmp_path / "x"
    monkeypatch.delenv("LANLIC_CLIENT_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_client_home() == tmp_path / "xdg" / "lanlic" / "client"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_client_home() == tmp_path / "user" / ".local" / "share" / "lanlic" / "client"


# ----------------------------------------------------------------------------- enrollment


def test_enrollment_round_trip(tmp_path: Path, fp_a: str) -> None:
    h = ContainerHome.create(tmp_path / "h", "act", fp_a)
    req = borrowing.read_enrollment_request(h.enrollment_request("ann", "laptop", T0))
    assert (req.container_key, req.kind, req.machine_fp) == (h.public_key, "act", fp_a)
    response = borrowing.make_enrollment_response(SERVER, req, SERVER_ID, "ACME", T0 + 1)
    saved = h.save_enrollment(response)
    assert saved.server_key == signing.public_bytes(SERVER.public_key())
    reopened = ContainerHome.open(h.root, current_machine_fp=fp_a)
    assert reopened is not None
    got = reopened.enrollment()
    assert got is not None and got.raw == response and got.server_id == SERVER_ID
    assert reopened.trusted_server_keys() == {signing.public_bytes(SERVER.public_key())}


def test_enrollment_for_another_container_is_refused(tmp_path: Path, fp_a: str, fp_b: str) -> None:
    a = ContainerHome.create(tmp_path / "a", "act", fp_a)
    b = ContainerHome.create(tmp_path / "b", "act", fp_b)
    req = borrowing.read_enrollment_request(b.enrollment_request("bob", "other", T0))
    response = borrowing.make_enrollment_response(SERVER, req, SERVER_ID, "ACME", T0)
    with refused("file_wrong_machine"):
        a.save_enrollment(response)
    assert a.enrollment() is None
    edited = response.replace(b"ACME", b"ACMF")
    with refused("file_tampered"):
        b.save_enrollment(edited)


def test_foreign_home_makes_no_enrollment_request(tmp_path: Path, fp_a: str, fp_b: str) -> None:
    ContainerHome.create(tmp_path / "h", "act", fp_a)
    foreign = ContainerHome.open(tmp_path / "h", current_machine_fp=fp_b)
    assert foreign is not None and foreign.foreign
    with pytest.raises(ContainerError, match="another machine"):
        foreign.enrollment_request("ann", "laptop", T0)


def test_proof(home: ContainerHome) -> None:
    fields = ["cad", 7.0, b"\x01" * 16]
    sig = home.proof("borrow", SERVER_ID, fields)
    payload = borrowing.container_proof_payload("borrow", SERVER_ID, fields)
    pub = signing.public_from_bytes(home.public_key)
    assert signing.verify(pub, signing.DOMAIN_CONTAINER_REQUEST, payload, sig)
    other = borrowing.container_proof_payload("return", SERVER_ID, fields)
    assert not signing.verify(pub, signing.DOMAIN_CONTAINER_REQUEST, other, sig)


# ------------------------------------------------------------------------- borrowed files


def test_save_and_list_borrowed(home: ContainerHome) -> None:
    assert home.borrowed_products() == []
    assert home.borrowed("cad") is None
    data = issue(home)
    path = home.save_borrowed(data)
    assert path == home.root / "borrows" / "cad.lic"
    home.save_borrowed(issue(home, product="render", borrow_id="b-2"))
    assert home.borrowed("cad") == data
    assert home.borrowed_products() == ["cad", "render"]
    assert home.borrowed("../container") is None


def test_save_refuses_a_file_for_another_container(
    home: ContainerHome, portable: ContainerHome
) -> None:
    with refused("file_wrong_machine"):
        home.save_borrowed(issue(portable))
    with refused("file_no_key"):
        portable.save_borrowed(issue(home))
    with refused("file_tampered"):
        home.save_borrowed(b"not a licence file")
    assert home.borrowed_products() == [] and portable.borrowed_products() == []


def test_check_ok_advances_last_seen(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    lic = home.check_borrowed("cad", T0 + DAY, fp_a)
    assert (lic.product, lic.borrow_id, lic.end) == ("cad", "b-1", END)
    assert home.state().last_seen == T0 + DAY
    home.check_borrowed("cad", T0 + 2 * DAY, fp_a)
    assert home.state().last_seen == T0 + 2 * DAY
    reopened = ContainerHome.open(home.root, current_machine_fp=fp_a)
    assert reopened is not None and reopened.state().last_seen == T0 + 2 * DAY


def test_check_without_a_file(home: ContainerHome, fp_a: str) -> None:
    with pytest.raises(FileNotFoundError):
        home.check_borrowed("cad", T0, fp_a)


# ----------------------------------------------------------------- the refusals, one by one


def test_edited_by_one_byte_is_tampered(home: ContainerHome, fp_a: str) -> None:
    data = issue(home)
    path = home.save_borrowed(data)
    end_text = repr(END).encode()
    at = data.index(end_text)
    longer = data[:at] + b"9" + data[at + 1 :]  # the end moved years later, one byte changed
    assert len(longer) == len(data) and sum(x != y for x, y in zip(longer, data, strict=True)) == 1
    path.write_bytes(longer)
    with refused("file_tampered"):
        home.check_borrowed("cad", T0 + DAY, fp_a)
    sig_at = data.index(b'"signature": "') + len(b'"signature": "') + 5
    flipped = data[:sig_at] + (b"A" if data[sig_at : sig_at + 1] != b"A" else b"B")
    path.write_bytes(flipped + data[sig_at + 1 :])
    with refused("file_tampered"):
        home.check_borrowed("cad", T0 + DAY, fp_a)
    assert home.state().last_seen is None  # a refusal moves nothing


def test_file_copied_into_another_machines_home(
    home: ContainerHome, tmp_path: Path, fp_b: str
) -> None:
    path = home.save_borrowed(issue(home))
    other = ContainerHome.create(tmp_path / "home-b", "act", fp_b)
    enroll(other)
    (other.root / "borrows").mkdir()
    shutil.copy(path, other.root / "borrows" / "cad.lic")
    with refused("file_wrong_machine"):
        other.check_borrowed("cad", T0 + DAY, fp_b)


def test_whole_home_copied_to_another_machine(
    home: ContainerHome, tmp_path: Path, fp_a: str, fp_b: str
) -> None:
    home.save_borrowed(issue(home))
    home.check_borrowed("cad", T0 + DAY, fp_a)
    copy = tmp_path / "copied-home"
    shutil.copytree(home.root, copy)
    foreign = ContainerHome.open(copy, current_machine_fp=fp_b)
    assert foreign is not None and foreign.foreign
    with refused("file_wrong_machine"):
        foreign.check_borrowed("cad", T0 + DAY, fp_b)
    # even with container.json rewritten to claim machine B, the file names machine A
    (copy / "container.json").write_text(json.dumps({"kind": "act", "machine_fp": fp_b}))
    relabelled = ContainerHome.open(copy, current_machine_fp=fp_b)
    assert relabelled is not None and not relabelled.foreign
    with refused("file_wrong_machine"):
        relabelled.check_borrowed("cad", T0 + DAY, fp_b)


def test_key_kind_without_its_portable_key(
    portable: ContainerHome, home: ContainerHome, fp_a: str, fp_b: str
) -> None:
    path = portable.save_borrowed(issue(portable, borrow_id="k-1"))
    # plugged in: works on any machine
    assert portable.check_borrowed("cad", T0 + DAY, fp_a).kind == "key"
    assert portable.check_borrowed("cad", T0 + DAY, fp_b).kind == "key"
    # the file copied off the stick, the stick unplugged
    (home.root / "borrows").mkdir()
    shutil.copy(path, home.root / "borrows" / "cad.lic")
    with refused("file_no_key"):
        home.check_borrowed("cad", T0 + DAY, fp_a)
    another = Ed25519PrivateKey.generate()
    with refused("file_no_key"):
        home.check_borrowed(
            "cad", T0 + DAY, fp_a, plugged_key=signing.public_bytes(another.public_key())
        )
    assert home.check_borrowed("cad", T0 + DAY, fp_a, plugged_key=portable.public_key).kind == "key"
    # the stick's folder gone: there is no container to open
    shutil.rmtree(portable.root)
    assert ContainerHome.open(portable.root) is None


def test_before_start(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    with refused("file_not_yet_valid"):
        home.check_borrowed("cad", T0 - CLOCK_TOLERANCE - 1, fp_a)
    # A laptop clock a little behind the server's still takes the file it was just given.
    home.check_borrowed("cad", T0 - CLOCK_TOLERANCE + 1, fp_a)
    home.check_borrowed("cad", T0, fp_a)


def test_after_end(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    home.check_borrowed("cad", END - 1, fp_a)
    with refused("file_expired"):
        home.check_borrowed("cad", END, fp_a)
    with refused("file_expired"):
        home.check_borrowed("cad", END + 30 * DAY, fp_a)


def test_clock_set_back(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    later = T0 + 3 * DAY
    home.check_borrowed("cad", later, fp_a)
    # within tolerance (an NTP step, a time-zone slip): fine, and last_seen does not go back
    home.check_borrowed("cad", later - CLOCK_TOLERANCE + 1, fp_a)
    assert home.state().last_seen == later
    with refused("clock_set_back"):
        home.check_borrowed("cad", later - CLOCK_TOLERANCE - 1, fp_a)
    with refused("clock_set_back"):
        home.check_borrowed("cad", T0 + DAY, fp_a)
    # the clock put right again
    home.check_borrowed("cad", later + 60, fp_a)


def test_already_returned(home: ContainerHome, fp_a: str) -> None:
    path = home.save_borrowed(issue(home))
    saved_copy = path.read_bytes()
    home.check_borrowed("cad", T0 + DAY, fp_a)
    home.deactivate("b-1", T0 + 2 * DAY)
    assert not path.exists() and home.borrowed_products() == []
    assert home.state().returned == ("b-1",)
    assert home.state().last_seen == T0 + 2 * DAY
    path.write_bytes(saved_copy)  # the saved copy put back
    with refused("file_returned"):
        home.check_borrowed("cad", T0 + 2 * DAY, fp_a)
    home.save_borrowed(saved_copy)  # saving it again changes nothing
    with refused("file_returned"):
        home.check_borrowed("cad", T0 + 2 * DAY, fp_a)


def test_deactivate_is_idempotent(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    home.save_borrowed(issue(home, product="render", borrow_id="b-2"))
    home.deactivate("b-1", T0 + DAY)
    home.deactivate("b-1", T0 + DAY)
    home.deactivate("never-borrowed", T0 + DAY)
    assert home.state().returned == ("b-1", "never-borrowed")
    assert home.borrowed_products() == ["render"]
    home.check_borrowed("render", T0 + DAY, fp_a)


def test_edited_state_is_refused(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    home.check_borrowed("cad", T0 + 3 * DAY, fp_a)
    state_path = home.root / "state.json"
    doc = json.loads(state_path.read_text())
    doc["payload"] = doc["payload"].replace(repr(T0 + 3 * DAY), repr(T0))  # wind last_seen back
    state_path.write_text(json.dumps(doc))
    with pytest.raises(BorrowedFileError, match=r"local licence state .* was edited") as info:
        home.check_borrowed("cad", T0 + DAY, fp_a)
    assert info.value.code == "clock_set_back"
    with refused("clock_set_back"):
        home.touch(T0 + 4 * DAY)  # touching does not launder an edited state


def test_removed_or_garbled_state_is_refused(home: ContainerHome, fp_a: str) -> None:
    home.save_borrowed(issue(home))
    state_path = home.root / "state.json"
    good = state_path.read_bytes()
    for bad in (b"", b"{}", b"not json", good.replace(b'"version": 1', b'"version": 2')[:-5]):
        state_path.write_bytes(bad)
        with refused("clock_set_back"):
            home.check_borrowed("cad", T0 + DAY, fp_a)
    state_path.unlink()
    with refused("clock_set_back"):
        home.check_borrowed("cad", T0 + DAY, fp_a)
    state_path.write_bytes(good)
    home.check_borrowed("cad", T0 + DAY, fp_a)


def test_state_from_another_container_is_refused(
    home: ContainerHome, tmp_path: Path, fp_a: str
) -> None:
    other = ContainerHome.create(tmp_path / "other", "act", fp_a)
    home.save_borrowed(issue(home))
    shutil.copy(other.root / "state.json", home.root / "state.json")
    with refused("clock_set_back"):
        home.check_borrowed("cad", T0 + DAY, fp_a)


def test_untrusted_server(home: ContainerHome, tmp_path: Path, fp_a: str) -> None:
    rogue = Ed25519PrivateKey.generate()
    home.save_borrowed(issue(home, server=rogue))
    with refused("file_untrusted_server"):
        home.check_borrowed("cad", T0 + DAY, fp_a)
    unenrolled = ContainerHome.create(tmp_path / "new", "act", fp_a)
    unenrolled.save_borrowed(issue(unenrolled))
    with refused("file_untrusted_server"):
        unenrolled.check_borrowed("cad", T0 + DAY, fp_a)


def test_file_renamed_to_another_product(home: ContainerHome, fp_a: str) -> None:
    path = home.save_borrowed(issue(home, product="cad"))
    path.rename(path.with_name("render.lic"))
    with refused("file_tampered"):
        home.check_borrowed("render", T0 + DAY, fp_a)


def test_touch_only_moves_forward(home: ContainerHome) -> None:
    home.touch(T0 + DAY)
    assert home.state().last_seen == T0 + DAY
    home.touch(T0)
    assert home.state().last_seen == T0 + DAY
    with pytest.raises(ValueError):
        home.touch(float("nan"))


def test_reanchor_pulls_a_latest_time_ahead_back_never_forward(tmp_path: Path, fp_a: str) -> None:
    h = ContainerHome.create(tmp_path / "h", "act", fp_a)
    h.touch(1_800_000_000.0 + DAY)  # a clock once a day ahead
    h.reanchor(1_800_000_000.0)  # a time the server signed over this connection's nonce
    assert h.state().last_seen == 1_800_000_000.0
    h.reanchor(1_800_000_000.0 + 2 * DAY)  # never pushed forward: only the local clock does
    assert h.state().last_seen == 1_800_000_000.0
