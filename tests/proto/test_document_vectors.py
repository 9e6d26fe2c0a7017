"""Every vector in protocol/vectors/documents.json: the signed documents (network key, enrollment
request and response, borrowed licence file), valid and tampered, against the implementation."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from lanlic.core import borrowing, netkey, signing
from lanlic.errors import BorrowedFileError, NetworkKeyError

VECTORS = Path(__file__).parents[2] / "protocol" / "vectors"
DOCS: dict[str, Any] = json.loads((VECTORS / "documents.json").read_text("utf-8"))
KEYS = DOCS["keys"]


def public(name: str) -> bytes:
    return bytes.fromhex(KEYS[f"{name}_public"])


def test_the_committed_file_is_what_the_script_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_documents", VECTORS / "make_documents.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (VECTORS / "documents.json").read_text("utf-8")


@pytest.mark.parametrize("v", DOCS["network_keys"], ids=lambda v: v["name"])
def test_network_key_vectors(v: dict[str, Any]) -> None:
    vendor = signing.public_from_bytes(public("vendor"))
    today = dt.date.fromisoformat(v["today"])
    data = v["document"].encode()
    if v["valid"]:
        key = netkey.verify_network_key(data, vendor, today)
        assert {p.name: p.seats for p in key.products} == v["seats"]
    else:
        with pytest.raises(NetworkKeyError) as info:
            netkey.verify_network_key(data, vendor, today)
        assert info.value.code == v["error"]


@pytest.mark.parametrize("v", DOCS["enrollment"], ids=lambda v: v["name"])
def test_enrollment_vectors(v: dict[str, Any]) -> None:
    data = v["document"].encode()
    if v["kind"] == "request":
        if v["valid"]:
            assert borrowing.read_enrollment_request(data).container_key == public("container")
        else:
            with pytest.raises(BorrowedFileError) as info:
                borrowing.read_enrollment_request(data)
            assert info.value.code == v["error"]
    else:
        resp = borrowing.read_enrollment_response(data, public("container"))
        assert resp.server_key == public("server")


def check_of(c: dict[str, Any]) -> borrowing.FileCheck:
    return borrowing.FileCheck(
        trusted_server_keys={bytes.fromhex(k) for k in c["trusted_server_keys"]},
        container_key=bytes.fromhex(c["container_key"]),
        machine_fp=c["machine_fp"],
        now=c["now"],
        last_seen=c["last_seen"],
        returned=set(c["returned"]),
    )


@pytest.mark.parametrize("v", DOCS["borrowed_files"], ids=lambda v: v["name"])
def test_borrowed_file_vectors(v: dict[str, Any]) -> None:
    data = v["document"].encode()
    if v["valid"]:
        lic = borrowing.verify_borrowed_file(data, check_of(v["check"]))
        assert (lic.product, lic.kind, lic.server_key) == ("cad", "act", public("server"))
    else:
        with pytest.raises(BorrowedFileError) as info:
            borrowing.verify_borrowed_file(data, check_of(v["check"]))
        assert info.value.code == v["error"]
