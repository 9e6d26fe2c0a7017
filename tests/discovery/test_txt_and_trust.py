"""Discovery's pure parts, with no network: the TXT record, where a server announces itself, the
handshake verification and the pins kept on disk."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from lanlic.core import signing
from lanlic.core.service import handshake_payload
from lanlic.discovery import (
    MAX_TXT_STRING,
    SERVICE_TYPE,
    announce_addresses,
    announce_interfaces,
    build_txt,
    instance_name,
    parse_txt,
    service_type,
)
from lanlic.errors import ServerKeyChanged, ServerUnavailable, ServerUntrusted
from lanlic.laptop.trust import (
    ServerIdentity,
    TrustStore,
    TrustStoreError,
    config_dir,
    fingerprint_of,
    verify_welcome,
)
from lanlic.net.client import Client
from lanlic.proto import messages as m

FP_A = "sha256:" + "a" * 32
FP_B = "sha256:" + "b" * 32
FP_V = "sha256:" + "c" * 32
TXT_KEYS = {b"txtvers", b"proto", b"products", b"site", b"id", b"sfp", b"vfp", b"pmore"}
"""The TXT keys this version reads (lanlic.discovery.parse_txt)."""


def txt(**over: str) -> dict[bytes, bytes | None]:
    base = build_txt(
        protocol=[1],
        server_id=FP_A,
        server_fp=FP_A,
        vendor_fp=FP_V,
        site="ACME Engineering",
        products=["cad", "render"],
    )
    base.update(over)
    return {k.encode(): v.encode() for k, v in base.items()}


# ------------------------------------------------------------------------------------ TXT


def test_txt_round_trip() -> None:
    ann = parse_txt("ACME Engineering._lanlic._tcp.local.", ["10.0.0.5"], 7766, txt())
    assert ann.name == "ACME Engineering"
    assert (ann.server_id, ann.server_fp, ann.vendor_fp) == (FP_A, FP_A, FP_V)
    assert ann.site == "ACME Engineering" and ann.protocol == (1,)
    assert ann.products == ("cad", "render") and ann.products_complete
    assert ann.serves("cad") is True and ann.serves("cam") is False
    # Keys a later version adds are ignored.
    assert parse_txt("x", ["10.0.0.5"], 1, {**txt(), b"future": b"1"}) == parse_txt(
        "x", ["10.0.0.5"], 1, txt()
    )


def test_long_product_list_and_site_are_truncated_within_255_bytes() -> None:
    products = [f"product-{i:03d}-with-a-long-name" for i in range(40)]
    site = "Ünïcödé Engineering " * 30
    out = build_txt(
        protocol=[1], server_id=FP_A, server_fp=FP_A, vendor_fp=FP_V, site=site, products=products
    )
    for key, value in out.items():
        assert len(f"{key}={value}".encode()) <= MAX_TXT_STRING, key
    assert out["pmore"] == "1"
    listed = out["products"].split(",")
    assert 0 < len(listed) < len(products) and listed == products[: len(listed)]
    assert site.startswith(out["site"])  # cut on a character boundary, still valid UTF-8
    ann = parse_txt("x", ["10.0.0.5"], 1, {k.encode(): v.encode() for k, v in out.items()})
    assert not ann.products_complete
    assert ann.serves(products[-1]) is None  # the TXT cannot say: ask the server


@pytest.mark.parametrize(
    "bad",
    [
        {b"txtvers": b"2"},
        {b"txtvers": None},
        {b"vfp": b"sha256:zz"},
        {b"sfp": b"not a fingerprint"},
        {b"id": None},
        {b"proto": b"one"},
        {b"proto": b""},
        {b"proto": b"0"},
        {b"products": b"CAD,../etc"},
        {b"site": b"\xff\xfe"},
        {b"site": b"line\nbreak"},
    ],
)
def test_malformed_txt_is_a_value_error(bad: dict[bytes, bytes | None]) -> None:
    props = {**txt(), **bad}
    with pytest.raises(ValueError):
        parse_txt("x", ["10.0.0.5"], 7766, props)


def test_announcement_needs_an_address_and_a_port() -> None:
    with pytest.raises(ValueError):
        parse_txt("x", [], 7766, txt())
    with pytest.raises(ValueError):
        parse_txt("x", ["10.0.0.5"], 0, txt())


@given(
    st.dictionaries(st.binary(max_size=12), st.none() | st.binary(max_size=80), max_size=10).map(
        lambda d: {**txt(), **d}
    )
)
def test_any_txt_record_parses_or_is_a_value_error(props: dict[bytes, bytes | None]) -> None:
    known = {k: v for k, v in props.items() if k in TXT_KEYS}
    try:
        ann = parse_txt("x", ["10.0.0.5"], 7766, props)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        with pytest.raises(ValueError):  # what refuses it is a key this version reads
            parse_txt("x", ["10.0.0.5"], 7766, known)
        return
    assert ann == parse_txt("x", ["10.0.0.5"], 7766, known)  # unknown keys are ignored
    assert (ann.addresses, ann.port) == (("10.0.0.5",), 7766)
    assert ann.protocol and all(0 < v < 2**31 for v in ann.protocol)
    assert ann.site.isprintable()
    assert ann.products_complete == (props.get(b"pmore") != b"1")


def test_instance_name_is_one_short_line() -> None:
    assert instance_name("  ACME\n Engineering \t") == "ACME Engineering"
    long = instance_name("Ä" * 100)
    assert len(long.encode()) <= 58 and set(long) == {"Ä"}
    assert instance_name("   ") == "lanlic"


def test_a_server_announces_only_where_it_listens() -> None:
    assert announce_interfaces("127.0.0.1") == ["127.0.0.1"]
    assert announce_addresses("127.0.0.1") == ["127.0.0.1"]
    assert announce_interfaces("10.1.2.3") == ["10.1.2.3"]
    assert announce_interfaces("0.0.0.0") is None  # every interface
    assert announce_interfaces("0.0.0.0", ["127.0.0.1"]) == ["127.0.0.1"]
    assert announce_addresses("0.0.0.0", ["127.0.0.1"]) == ["127.0.0.1"]
    everywhere = announce_addresses("0.0.0.0")  # the host's own addresses, loopback only if alone
    assert everywhere == ["127.0.0.1"] or not any(a.startswith("127.") for a in everywhere)


# -------------------------------------------------------------------- handshake verification


def welcome_for(
    key: Ed25519PrivateKey, nonce: bytes, client_id: bytes, vendor_fp: str = FP_V
) -> m.Welcome:
    pub = signing.public_bytes(key.public_key())
    sid = signing.fingerprint(pub)
    sig = signing.sign(
        key, signing.DOMAIN_HANDSHAKE, handshake_payload(nonce, client_id, sid, vendor_fp)
    )
    return m.Welcome(
        id=1,
        version=1,
        server_id=sid,
        lease_s=60,
        heartbeat_s=20,
        server_key=pub,
        signature=sig,
        vendor_fp=vendor_fp,
        customer="ACME Engineering",
    )


def test_verify_welcome() -> None:
    key = Ed25519PrivateKey.generate()
    nonce, cid = os.urandom(32), os.urandom(16)
    w = welcome_for(key, nonce, cid)
    ident = verify_welcome(w, nonce, cid)
    assert ident.server_fp == w.server_id and ident.site == "ACME Engineering"
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(w, os.urandom(32), cid)  # a replayed welcome: another nonce
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(w, nonce, os.urandom(16))
    # Another key's valid signature over the same handshake, presented with this key.
    forged = welcome_for(Ed25519PrivateKey.generate(), nonce, cid).signature
    for field, value, words in [
        ("signature", forged, "did not sign"),
        ("signature", b"", "did not sign"),
        ("signature", b"\x00" * 64, "did not sign"),
        ("server_key", b"", "no valid server key"),
        ("server_key", b"\x00" * 31, "no valid server key"),
        ("server_id", FP_A, "presents the key"),
        ("vendor_fp", "acme", "vendor"),
    ]:
        wire = m.to_wire(w)
        wire[field] = value
        wire.pop("t")
        with pytest.raises(ServerUntrusted, match=words):
            verify_welcome(m.Welcome(**wire), nonce, cid)


# -------------------------------------------------------------------------------- the pins


def ident(key: Ed25519PrivateKey, site: str = "ACME Engineering") -> ServerIdentity:
    return ServerIdentity(signing.public_bytes(key.public_key()), FP_V, site)


def test_trust_on_first_use_then_a_changed_key_is_refused() -> None:
    store = TrustStore.default()
    assert store.path == config_dir() / "known_servers.json"
    real, rogue = ident(Ed25519PrivateKey.generate()), ident(Ed25519PrivateKey.generate())
    assert store.check(real, "10.0.0.5:7766") is False  # first use: pinned now
    assert store.check(real) is True
    with pytest.raises(ServerKeyChanged) as info:
        store.check(rogue, "10.0.0.66:7766")
    msg = str(info.value)
    assert info.value.code == "server_key_changed"
    assert real.server_fp in msg and rogue.server_fp in msg
    assert "lanlic trust --server 10.0.0.66:7766" in msg
    # Another site of the same vendor is a first use of its own.
    assert store.check(ident(Ed25519PrivateKey.generate(), "Other Site")) is False
    # A deliberate re-pin replaces the old key.
    store.pin(rogue, "10.0.0.66:7766")
    assert store.check(rogue) is True
    with pytest.raises(ServerKeyChanged):
        store.check(real)
    assert [p.site for p in store.forget("ACME Engineering")] == ["ACME Engineering"]
    assert store.check(real) is False


def test_pins_file_is_private_json_and_a_corrupt_one_is_refused() -> None:
    store = TrustStore.default()
    store.check(ident(Ed25519PrivateKey.generate()))
    assert store.path is not None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    doc = json.loads(store.path.read_text())
    assert doc["format"] == "lanlic-known-servers" and len(doc["servers"]) == 1
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]
    store.path.write_text('{"format": "lanlic-known-servers", "version": 1, "servers": [{}]}')
    before = store.path.read_bytes()
    with pytest.raises(TrustStoreError, match="unreadable"):
        store.check(ident(Ed25519PrivateKey.generate()))
    assert store.path.read_bytes() == before  # nothing pinned over a file it cannot read


def test_memory_store_touches_no_file() -> None:
    store = TrustStore(None)
    store.check(ident(Ed25519PrivateKey.generate()))
    assert len(store.pins()) == 1
    assert not config_dir().exists()


def test_vendor_key_forms() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    fp = signing.fingerprint(key)
    assert fingerprint_of(key) == fingerprint_of(signing.public_bytes(key)) == fp
    assert fingerprint_of(fp.upper().replace("SHA256", "sha256")) == fp
    with pytest.raises(ValueError):
        fingerprint_of("sha256:1234")


async def test_client_config_file_gives_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServerUnavailable, match="discover"):
        Client()
    config_dir().mkdir(parents=True)
    (config_dir() / "client.toml").write_text('server = "licserver.example:7800"\n')
    assert Client().address == ("licserver.example", 7800)
    monkeypatch.setenv("LANLIC_SERVER", "10.0.0.9")
    assert Client().address == ("10.0.0.9", 7766)  # the environment wins over the file
    (config_dir() / "client.toml").write_text("server = [1]\n")
    monkeypatch.delenv("LANLIC_SERVER")
    with pytest.raises(TrustStoreError):
        Client()


def test_the_service_type_can_be_set_and_a_bad_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LANLIC_MDNS_SERVICE")
    assert service_type() == SERVICE_TYPE == "_lanlic._tcp.local."
    for text, want in [
        ("_lanlic-0a1b2c3d._tcp", "_lanlic-0a1b2c3d._tcp.local."),
        ("_Staging._tcp.local.", "_staging._tcp.local."),
        ("  _lanlic._tcp.local  ", "_lanlic._tcp.local."),
    ]:
        monkeypatch.setenv("LANLIC_MDNS_SERVICE", text)
        assert service_type() == want
    for bad in ["lanlic", "_lanlic._udp", "_a--b._tcp", "_-ab._tcp", "_123._tcp",
                "_sixteen-chars-xx._tcp", "_lan lic._tcp"]:  # fmt: skip
        monkeypatch.setenv("LANLIC_MDNS_SERVICE", bad)
        with pytest.raises(ServerUnavailable, match=r"LANLIC_MDNS_SERVICE=.* is not a DNS-SD"):
            service_type()
