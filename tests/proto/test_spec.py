"""protocol/SPEC.md, read as an outside implementer would, against lanlic: each rule the SPEC
writes down (issue 13) is implemented here from the SPEC's words alone and compared with what
lanlic does, or the SPEC's own tables and examples are checked against lanlic's behaviour."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from helpers import make_key

from lanlic.conformance.runner import Failed, check_welcome
from lanlic.core import borrowing, netkey, signing, welcomebatch
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import (
    LicenseService,
    Session,
    handshake_payload,
    handshake_v2_payload,
)
from lanlic.errors import BadFrame, BadMessage
from lanlic.laptop import machine
from lanlic.osdeps import _linux
from lanlic.proto import messages as m
from lanlic.proto.framing import decode_body

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "protocol" / "SPEC.md").read_text("utf-8")
VECTORS = ROOT / "protocol" / "vectors"
DOCS: dict[str, Any] = json.loads((VECTORS / "documents.json").read_text("utf-8"))
FRAMES = {v["name"]: v for v in json.loads((VECTORS / "frames.json").read_text("utf-8"))}


def section(title: str) -> str:
    """The text of the SPEC section (##, ### or ####) whose heading starts with ``title``."""
    match = re.search(rf"^(#+) {re.escape(title)}[^\n]*\n", SPEC, re.M)
    assert match, title
    level = len(match.group(1))
    rest = SPEC[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def table_after(text: str, marker: str) -> list[list[str]]:
    """The rows (cells, stripped, backticks removed) of the first table after ``marker``."""
    lines = text[text.index(marker) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("`", "") for c in line.strip("|").split("|")])
    return rows


def first_column(text: str, marker: str) -> set[str]:
    names: set[str] = set()
    for row in table_after(text, marker):
        names.update(n.strip() for n in row[0].split(","))
    return names


def b64(text: str) -> bytes:
    raw = base64.b64decode(text, validate=True)
    assert base64.b64encode(raw).decode() == text
    return raw


# ------------------------------------------------------------------------- 4: status_reply


def test_every_status_reply_key_is_in_the_spec_tables(vendor_key: Ed25519PrivateKey) -> None:
    """Point 4: the product map and status_reply tables list exactly what a server sends."""
    products = (
        ProductEntitlement("cad", seats=3, borrowable=2, max_borrow_days=14, versions=("10", "16")),
        ProductEntitlement("render", seats=1, addon=True),
    )
    service = LicenseService(make_key(vendor_key, products), Ed25519PrivateKey.generate())
    session = Session()
    service.handle(session, m.Hello(1, [1], bytes(16), "u", "h"), 0.0, 1.8e9)
    service.handle(session, m.Checkout(2, "cad", "16"), 0.0, 1.8e9)
    wire = m.to_wire(service.status(3, 1.0, 1.8e9))
    ref = section("7. Message reference")
    assert set(wire) - {"t"} == first_column(ref, "**`status_reply`**")
    for product in wire["products"]:
        assert set(product) == first_column(ref, "A product map"), product["name"]
        for holder in product["holders"]:
            assert set(holder) == {"user", "host", "app", "version", "since", "last_heartbeat"}
    vector = FRAMES["status_reply"]["message"]
    assert {k for p in vector["products"] for k in p} == first_column(ref, "A product map")
    assert vector["borrows"]


# ------------------------------------------------------------------------- 5: fingerprints


def spec_fingerprint(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).digest()[:16].hex()


def test_fingerprints_are_computed_as_the_spec_says() -> None:
    """Point 5: sha256: and the first 16 bytes of SHA-256 of the raw 32-byte key, lowercase."""
    keys = DOCS["keys"]
    for name in ("vendor", "server", "container"):
        raw = bytes.fromhex(keys[f"{name}_public"])
        assert signing.fingerprint(raw) == spec_fingerprint(raw)
        assert re.fullmatch(r"sha256:[0-9a-f]{32}", spec_fingerprint(raw))
    server = spec_fingerprint(bytes.fromhex(keys["server_public"]))
    vendor = spec_fingerprint(bytes.fromhex(keys["vendor_public"]))
    assert f"`server_public` has fingerprint `{server}`" in SPEC
    assert f"`vendor_public` `{vendor}`" in SPEC
    assert json.loads(DOCS["network_keys"][0]["document"])["key_id"] == vendor


# ------------------------------------------------------------------ 6: the network key


def test_network_key_verified_from_section_15_alone() -> None:
    """Point 6: a verifier written from section 15 accepts the valid key, refuses the edited
    one, and finds exactly the fields the SPEC's tables list (which are exactly lanlic's)."""
    text = section("15. The network key")
    assert first_column(text, "The file is") == {
        "format",
        "version",
        "key_id",
        "payload",
        "signature",
    }
    payload_fields = first_column(text, "Payload:")
    product_fields = first_column(text, "Product map:")
    assert payload_fields == netkey._PAYLOAD_FIELDS
    assert product_fields == netkey._PRODUCT_FIELDS
    vendor = Ed25519PublicKey.from_public_bytes(bytes.fromhex(DOCS["keys"]["vendor_public"]))

    def verify(document: str) -> dict[str, Any]:
        doc = json.loads(document)
        assert doc["format"] == "lanlic-network-key" and doc["version"] == 1
        assert doc["key_id"] == spec_fingerprint(bytes.fromhex(DOCS["keys"]["vendor_public"]))
        vendor.verify(b64(doc["signature"]), b"lanlic/v1/network-key\x00" + doc["payload"].encode())
        body: dict[str, Any] = json.loads(doc["payload"])
        assert set(body) == payload_fields and body["key_id"] == doc["key_id"]
        for product in body["products"]:
            assert set(product) == product_fields
            assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", product["name"])
            assert all(type(product[k]) is int for k in ("seats", "borrowable", "max_borrow_days"))
        return body

    for v in DOCS["network_keys"]:
        if v["valid"] or v["error"] == "key_expired":
            body = verify(v["document"])
            assert {p["name"]: p["seats"] for p in body["products"]} == {"cad": 10, "cad-render": 3}
        else:
            with pytest.raises(InvalidSignature):
                verify(v["document"])


# ---------------------------------------------------------------- 8: canonical JSON


def canonical(obj: Any) -> str:
    """Canonical JSON as section 14 words it, written without the json module."""
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if obj is None:
        return "null"
    if type(obj) is int:
        return str(obj)
    if type(obj) is float:
        assert math.isfinite(obj)
        return repr(obj)  # shortest round-trip; ".0" when integral; e+16 / e-05 exponents
    if type(obj) is str:
        named = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
                 "\f": "\\f"}  # fmt: skip
        out = []
        for ch in obj:
            if ch in named:
                out.append(named[ch])
            elif 0x20 <= ord(ch) <= 0x7E:
                out.append(ch)
            else:
                for unit in struct.unpack(f">{len(ch.encode('utf-16-be')) // 2}H",
                                          ch.encode("utf-16-be")):  # fmt: skip
                    out.append(f"\\u{unit:04x}")
        return '"' + "".join(out) + '"'
    if type(obj) is list:
        return "[" + ", ".join(canonical(x) for x in obj) + "]"
    assert type(obj) is dict
    return "{" + ", ".join(f"{canonical(k)}: {canonical(obj[k])}" for k in sorted(obj)) + "}"


def test_canonical_json_as_the_spec_words_it() -> None:
    """Point 8: every payload lanlic signed in documents.json is exactly the SPEC's canonical
    JSON of its own contents; and the rules hold on the awkward cases too."""
    payloads = [json.loads(v["document"])["payload"] for group in
                ("network_keys", "enrollment", "borrowed_files") for v in DOCS[group]]  # fmt: skip
    for payload in payloads:
        assert canonical(json.loads(payload)) == payload
    awkward = {"z": [1e16, 1.5e-05, 1800000000.0, -3, 0.1], "a": '\x7f/é😀"\\\n\x01', "m": None}
    assert canonical(awkward) == json.dumps(awkward, sort_keys=True, ensure_ascii=True)
    body = json.loads(json.loads(DOCS["enrollment"][0]["document"])["payload"])
    assert type(body["created"]) is float  # a time is a number (section 12's field table)
    fields = first_column(section("Documents"), "Payload fields")
    borrowed = json.loads(json.loads(DOCS["borrowed_files"][0]["document"])["payload"])
    response = json.loads(json.loads(DOCS["enrollment"][2]["document"])["payload"])
    assert set(borrowed) | set(response) == fields


# --------------------------------------------------------------- 7: machine fingerprint


def spec_mfp(machine_id: str, net: Path) -> str:
    """Section 12, "The machine fingerprint", Linux, from its words."""

    def read(p: Path) -> str:
        try:
            return p.read_text().strip()
        except OSError:
            return ""

    def mac_of(text: str) -> str:
        text = text.strip().lower()
        return "" if not text or set(text) <= {"0", ":"} else text

    ranked = []
    for name in sorted(p.name for p in net.iterdir()):
        iface = net / name
        mac = mac_of(read(iface / "phy80211" / "macaddress")) or mac_of(read(iface / "address"))
        if not mac:
            continue
        if (iface / "device").exists():
            rank = 1 if (iface / "device" / "subsystem").resolve().name == "usb" else 0
        elif name == "lo" or read(iface / "type") == "772":
            continue
        else:
            rank = 2
        ranked.append((rank, name, mac))
    mac = min(ranked)[2] if ranked else ""
    return "mfp:" + hashlib.sha256(f"{machine_id}\n{mac}".encode()).hexdigest()[:32]


def iface(net: Path, name: str, mac: str, bus: str | None = None, **files: str) -> None:
    d = net / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    for rel, text in files.items():
        (d / rel.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (d / rel.replace("__", "/")).write_text(text + "\n")
    if bus is not None:
        (net.parent / "bus" / bus).mkdir(parents=True, exist_ok=True)
        (d / "device").mkdir()
        (d / "device" / "subsystem").symlink_to(net.parent / "bus" / bus)


@pytest.mark.parametrize(
    "layout",
    ["builtin_and_usb", "usb_only", "wifi_permanent", "virtual_only", "loopback_only", "zeros"],
)
def test_machine_fingerprint_is_the_spec_algorithm(tmp_path: Path, layout: str) -> None:
    """Point 7: lanlic/laptop/machine.py computes what section 12's Linux subsection says."""
    net = tmp_path / "sys" / "net"
    net.mkdir(parents=True)
    iface(net, "lo", "00:00:00:00:00:00", type="772")
    if layout == "builtin_and_usb":
        iface(net, "enx0a", "0a:00:00:00:00:01", bus="usb")
        iface(net, "eth1", "52:54:00:12:34:57", bus="pci")
        iface(net, "eth0", "52:54:00:12:34:56", bus="pci")
        iface(net, "br0", "02:00:00:00:00:01")
    elif layout == "usb_only":
        iface(net, "enx0a", "0A:00:00:00:00:01", bus="usb")
        iface(net, "docker0", "02:42:00:00:00:01")
    elif layout == "wifi_permanent":
        iface(
            net, "wlan0", "12:34:56:78:9a:bc", bus="pci", phy80211__macaddress="f0:de:f1:00:00:01"
        )
    elif layout == "virtual_only":
        iface(net, "veth1", "02:00:00:00:00:02")
        iface(net, "tun0", "00:00:00:00:00:00")
    elif layout == "zeros":
        iface(net, "eth0", "00:00:00:00:00:00", bus="pci")
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    got = machine.machine_fingerprint(
        _linux.machine_sources(mid, net, fallback_machine_id_path=tmp_path / "none")
    )
    assert got == spec_mfp("0123456789abcdef0123456789abcdef", net)


def test_machine_fingerprint_example_in_the_spec(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    iface(net, "eth0", "52:54:00:12:34:56", bus="pci")
    (tmp_path / "mid").write_text("0123456789abcdef0123456789abcdef\n")
    fp = machine.machine_fingerprint(
        _linux.machine_sources(tmp_path / "mid", net, fallback_machine_id_path=tmp_path / "x")
    )
    assert f"`{fp}` (SHA-256 of the 50 bytes" in section("The machine fingerprint")
    # The fallback file, when the first is missing or empty.
    (tmp_path / "mid").write_text("\n")
    (tmp_path / "dbus").write_text("0123456789abcdef0123456789abcdef\n")
    assert (
        machine.machine_fingerprint(
            _linux.machine_sources(
                tmp_path / "mid", net, fallback_machine_id_path=tmp_path / "dbus"
            )
        )
        == fp
    )


# ------------------------------------------------------- 9: the borrow proof, 14: nonce


def test_borrow_proof_bytes_example_in_the_spec() -> None:
    """Point 9: the example's bytes are the server's, for days sent as float64, float32 or an
    integer (days is always signed as float64), and version "" when left out."""
    hex_bytes = re.search(r"signs these bytes after the domain:\n`([0-9a-f]+)`", SPEC)
    assert hex_bytes
    borrow = FRAMES["borrow"]["message"]
    request_id = bytes.fromhex(borrow["request_id"]["$bin"])
    for days in (14.0, 14, struct.unpack(">f", struct.pack(">f", 14.0))[0]):
        msg = m.parse({**decode_vector("borrow"), "days": days})
        assert isinstance(msg, m.Borrow)
        payload = borrowing.container_proof_payload(
            "borrow", "sha256:" + "5e" * 16, [msg.request_id, msg.product, msg.version, msg.days]
        )
        assert payload.hex() == hex_bytes.group(1)
        assert msg.request_id == request_id
    no_version = {k: v for k, v in decode_vector("borrow").items() if k != "version"}
    assert m.parse(no_version).version == ""  # type: ignore[attr-defined]


def decode_vector(name: str) -> dict[str, Any]:
    out: dict[str, Any] = decode_body(bytes.fromhex(FRAMES[name]["hex"])[4:])
    return out


async def test_the_server_checks_a_proof_over_float64_days(vendor_key: Ed25519PrivateKey) -> None:
    """Point 9 at the server: days sent as an int or as float32 is accepted with a proof over
    float64; a proof over the float32 or int encoding is bad_proof."""
    products = (ProductEntitlement("cad", seats=5, borrowable=5, max_borrow_days=14),)
    service = LicenseService(make_key(vendor_key, products), Ed25519PrivateKey.generate())
    session = Session()
    service.handle(session, m.Hello(1, [1], bytes(16), "u", "h"), 0.0, 1.8e9)
    container = Ed25519PrivateKey.generate()
    request = borrowing.make_enrollment_request(
        container, "act", "mfp:" + "a" * 32, "u", "h", 1.8e9
    )
    enrolled = service.handle(session, m.Enroll(2, request), 0.0, 1.8e9).durable
    assert enrolled is not None and isinstance(enrolled.commit(None), m.Enrolled)
    pub = signing.public_bytes(container.public_key())
    cases = (
        (14, 14.0, False, True),  # an int on the wire, proof over float64: accepted
        (14.0, 14.0, True, True),  # float32 on the wire, proof over float64: accepted
        (14.0, 14.0, False, True),  # float64 on both: accepted
        (14.0, 14.0, "proof", False),  # proof over the float32 encoding: bad_proof
        (14, 14, False, False),  # proof over the integer encoding: bad_proof
    )
    for n, (days_wire, days_signed, single, accepted) in enumerate(cases):
        rid = bytes([n + 1]) * 16
        signed = msgpack.packb(
            ["borrow", service.server_id, rid, "cad", "", days_signed],
            use_bin_type=True,
            use_single_float=single == "proof",
        )
        proof = signing.sign(container, signing.DOMAIN_CONTAINER_REQUEST, signed)
        wire = {"t": "borrow", "id": 3, "request_id": rid, "product": "cad", "days": days_wire,
                "container_key": pub, "proof": proof}  # fmt: skip
        body = msgpack.packb(wire, use_bin_type=True, use_single_float=single is True)
        assert (b"\xa4days\xca" in body) == (single is True)  # float32 on the wire
        reply = service.handle(session, m.parse(decode_body(body)), 0.0, 1.8e9)
        if accepted:
            assert reply.message is None and reply.durable is not None, reply
        else:
            assert isinstance(reply.message, m.Error) and reply.message.code == "bad_proof"


def test_handshake_without_a_nonce_example_in_the_spec() -> None:
    """Point 14: a missing nonce is signed as an empty bin; a str nonce is bad_message."""
    vector = FRAMES["welcome"]["message"]
    signed = signing.DOMAIN_HANDSHAKE + handshake_payload(
        b"", bytes(range(16)), vector["server_id"], vector["vendor_fp"]
    )
    assert f"`{signed.hex()}`" in section("msgpack in signed bytes")
    hello = decode_vector("hello")
    del hello["nonce"]
    assert m.parse(hello).nonce == b""  # type: ignore[attr-defined]
    for bad in ("", "00" * 32):
        with pytest.raises(BadMessage):
            m.parse({**hello, "nonce": bad})


def test_handshake_examples_of_section_4_for_each_version() -> None:
    """The signed bytes section 4 gives for the hello and welcome vectors: version 1's, and
    version 2's, which add the welcome's time (a float64) under a domain of their own."""
    text = section("4. Handshake")
    hello, hello_v2 = decode_vector("hello"), decode_vector("hello_v2")
    welcome, welcome_v2 = FRAMES["welcome"]["message"], decode_vector("welcome_v2")
    assert (hello["versions"], hello_v2["versions"]) == ([1], [1, 2])
    assert (welcome["version"], welcome_v2["version"]) == (1, 2)
    assert welcome_v2["time_signature"] == b""
    v1 = signing.DOMAIN_HANDSHAKE + handshake_payload(
        hello["nonce"], hello["client_id"], welcome["server_id"], welcome["vendor_fp"]
    )
    v2 = signing.DOMAIN_HANDSHAKE_V2 + handshake_v2_payload(
        hello_v2["nonce"],
        hello_v2["client_id"],
        welcome_v2["server_id"],
        welcome_v2["vendor_fp"],
        welcome_v2["time"],
    )
    assert f"`{v1.hex()}`" in text and f"`{v2.hex()}`" in text
    # Version 3 signs the root its handshake's leaf and path fold into.
    hello_v3, welcome_v3 = decode_vector("hello_v3"), decode_vector("welcome_v3")
    assert (hello_v3["versions"], welcome_v3["version"]) == ([1, 2, 3], 3)
    leaf = welcomebatch.leaf(
        handshake_v2_payload(
            hello_v3["nonce"],
            hello_v3["client_id"],
            welcome_v3["server_id"],
            welcome_v3["vendor_fp"],
            welcome_v3["time"],
        )
    )
    root = welcomebatch.root_of(leaf, welcome_v3["batch_path"])
    assert root is not None and len(welcome_v3["batch_path"]) == welcomebatch.STEP
    assert f"`{leaf.hex()}`" in text and f"`{root.hex()}`" in text
    assert f"`{(signing.DOMAIN_HANDSHAKE_V3 + root).hex()}`" in text
    assert v2.endswith(b"\xcb" + struct.pack(">d", welcome_v2["time"]))
    domains = {row[0] for row in table_after(section("Signatures and domains"), "| domain")}
    assert {d.decode().replace("\x00", "\\x00") for d in signing.DOMAINS} == domains


# ------------------------------------------------------------------ 12: map entries


def test_the_element_limit_counts_map_entries() -> None:
    """Point 12: 16384 entries (key-value pairs) in a map are allowed, 16385 are not."""
    ok = msgpack.packb({"t": "status", "id": 7, **{f"k{i:05}": 0 for i in range(16382)}})
    assert len(decode_body(ok)) == 16384
    over = msgpack.packb({"t": "status", "id": 7, **{f"k{i:05}": 0 for i in range(16383)}})
    with pytest.raises(BadFrame):
        decode_body(over)
    assert over.hex() == FRAMES["map_16385_entries"]["hex"][8:]


# -------------------------------------------------------------- 16: via, 17: vendor_fp


async def test_via_is_recorded_and_proves_nothing(vendor_key: Ed25519PrivateKey) -> None:
    """Point 16: any via is accepted, recorded as offline or online, and changes nothing else."""
    service = LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())
    events: list[Any] = []
    service.set_event_sink(events.append)
    session = Session()
    service.handle(session, m.Hello(1, [1], bytes(16), "u", "h"), 0.0, 1.8e9)
    for via, recorded in (("offline", "offline"), ("online", "online"), ("anything", "online")):
        container = Ed25519PrivateKey.generate()
        request = borrowing.make_enrollment_request(
            container, "act", "mfp:" + "b" * 32, "u", "h", 1.0
        )
        durable = service.handle(session, m.Enroll(2, request, via), 0.0, 1.8e9).durable
        assert durable is not None and isinstance(durable.commit(None), m.Enrolled)
        assert events[-1] == ("enroll", "", "u", "h", recorded)
    assert "**proves nothing**: any client may say `offline`" in section("Containers and")


@pytest.mark.parametrize("versions", [[1], [1, 2]])
def test_vendor_fp_is_signed_into_the_handshake_not_proven(
    vendor_key: Ed25519PrivateKey, versions: list[int]
) -> None:
    """Point 17: the welcome's vendor_fp is covered by the server's signature (changing it breaks
    the welcome), but it is only the server's statement: a server serving a key of vendor A
    signs whatever vendor_fp it states, and a client cannot tell without its pins."""
    service = LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())
    hello = m.Hello(1, versions, bytes(range(16)), "u", "h", nonce=bytes(32))
    welcome = m.to_wire(service.handle(Session(), hello, 0.0, 1.8e9).message)  # type: ignore[arg-type]
    check_welcome(welcome, m.to_wire(hello))
    with pytest.raises(Failed, match="signature"):
        check_welcome({**welcome, "vendor_fp": "sha256:" + "00" * 16}, m.to_wire(hello))
    assert "trusted on first use, never a proof" in section("4. Handshake")


# ---------------------------------------------------------------- 3: notice shutdown


def test_shutdown_tells_the_same_story_as_section_13() -> None:
    """Point 3: after a shutdown notice the client reconnects and presents its leases; after a
    restart (a new epoch) it reclaims them, and a renew is taken as their reclaim (section 13;
    tests/core/test_restart_reclaim.py holds the server to it)."""
    shutdown = section("7. Message reference").split("- `shutdown`:")[1]
    assert "`reclaim`" in shutdown and "section 13" in shutdown and "epoch" in shutdown
    assert "takes as the leases' reclaim" in shutdown
    restarts = section("13. Restarts")
    assert "sends `reclaim`" in restarts and "is treated as its reclaim" in restarts


# ------------------------------------------------------- 10: versions, 11: products


def test_version_examples_of_the_spec(vendor_key: Ed25519PrivateKey) -> None:
    """Point 10: the grammar's examples, at parse (bad_message) and at checkout (the range)."""
    types = section("7. Message reference").split("Fields marked *opt*")[0]
    products = (ProductEntitlement("cad", seats=20, versions=("10", "16")),)
    service = LicenseService(make_key(vendor_key, products), Ed25519PrivateKey.generate())
    session = Session()
    service.handle(session, m.Hello(1, [1], bytes(16), "u", "h"), 0.0, 1.8e9)
    outcomes = {}
    for version in ("10", "10.0.1", "16", "16.2", "016", "", "9.9", "17"):
        assert f"`{version}`" in types or version == ""
        reply = service.handle(session, m.Checkout(2, "cad", version), 0.0, 1.8e9).message
        outcomes[version] = reply.TYPE if isinstance(reply, m.Granted) else reply.code  # type: ignore[union-attr]
    assert outcomes == {
        "10": "granted", "10.0.1": "granted", "16": "granted", "16.2": "granted",
        "016": "granted", "": "granted", "9.9": "version_not_licensed",
        "17": "version_not_licensed",
    }  # fmt: skip
    for bad in ("abc", "16.", ".5", "2024.1-beta", "1.2.3.4.5.6.7.8.9", "1234567890", "١٦"):
        with pytest.raises(BadMessage, match="version"):
            m.parse({"t": "checkout", "id": 2, "product": "cad", "version": bad})
    for shown in ("abc", "16.", ".5", "2024.1-beta"):
        assert f"`{shown}`" in types


def test_product_names_are_exact_and_addons_need_no_base(vendor_key: Ed25519PrivateKey) -> None:
    """Point 11: CAD is not cad; an add-on is granted like any product (nothing enforces a
    base product, and the SPEC no longer says it is taken alongside one)."""
    service = LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())
    session = Session()
    service.handle(session, m.Hello(1, [1], bytes(16), "u", "h"), 0.0, 1.8e9)
    upper = service.handle(session, m.Checkout(2, "CAD", ""), 0.0, 1.8e9).message
    assert isinstance(upper, m.Error) and upper.code == "unknown_product"
    addon = service.handle(session, m.Checkout(3, "render", ""), 0.0, 1.8e9).message
    assert isinstance(addon, m.Granted)
    assert "alongside" not in SPEC
    assert "does not check that the client holds a seat of anything else" in SPEC
    assert "Names are case-sensitive, so `CADPRO` is not\n  `cadpro`" in SPEC


# ---------------------------------------------------------------- 15: duplicates


@pytest.mark.parametrize("fast", [False, True], ids=["general", "fast_path"])
def test_a_lease_listed_twice_counts_once(vendor_key: Ed25519PrivateKey, fast: bool) -> None:
    """Point 15: renewed once, released once, listed once, in the order of first mention; a
    release never reports the lease it has just freed as lost."""
    service = LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())
    session = Session()
    service.handle(session, m.Hello(1, [1], bytes(16), "u", "h"), 0.0, 1.8e9)
    lease = service.handle(session, m.Checkout(2, "cad", ""), 0.0, 1.8e9).message
    assert isinstance(lease, m.Granted)
    a, other = lease.lease, b"\xee" * 16

    def call(t: str, leases: list[bytes]) -> dict[str, Any]:
        wire = {"t": t, "id": 3, "leases": leases}
        if fast:
            frame = getattr(service, f"{t}_frame")(session, wire, 1.0, 1.8e9)
            out = None if frame is None else decode_body(frame[4:])
        else:
            out = m.to_wire(service.handle(session, m.parse(wire), 1.0, 1.8e9).message)  # type: ignore[arg-type]
        assert out is not None
        return dict(out)

    renewed = call("renew", [a, other, a, other])
    assert renewed["leases"] == [a]
    assert [x["lease"] for x in renewed["lost"]] == [other]
    released = call("release", [a, a])
    assert (released["leases"], released["lost"]) == ([a], [])
    assert "counts once, at\n  its first mention" in SPEC
