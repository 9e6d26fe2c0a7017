"""The fast path's packed replies are byte for byte what ``encode_frame`` makes of the same map."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lanlic.proto import replybytes
from lanlic.proto.framing import encode_frame
from lanlic.proto.messages import LEASE_ID_SIZE, MAX_REQUEST_ID

rids = st.integers(1, MAX_REQUEST_ID) | st.sampled_from([1, 127, 128, 255, 256, 4095, 4096, 65535,
                                                         65536, 2**32 - 1, 2**32])  # fmt: skip
lease_ids = st.binary(min_size=LEASE_ID_SIZE, max_size=LEASE_ID_SIZE)


@given(rids, lease_ids, st.text(max_size=300), st.floats(0.001, 1e6), st.integers(0, 2**63 - 1))
def test_granted(rid: int, lease: bytes, product: str, lease_s: float, epoch: int) -> None:
    wire = {"t": "granted", "id": rid, "lease": lease, "product": product, "lease_s": lease_s,
            "epoch": epoch}  # fmt: skip
    tail = replybytes.granted_tail(product, lease_s, epoch)
    assert replybytes.granted(rid, lease, tail) == encode_frame(wire)


@given(rids, lease_ids)
def test_released_one(rid: int, lease: bytes) -> None:
    wire = {"t": "released", "id": rid, "leases": [lease], "lost": []}
    assert replybytes.released_one(rid, lease) == encode_frame(wire)


@given(rids, st.lists(lease_ids, max_size=40) | st.lists(lease_ids, min_size=15, max_size=17))
def test_renewed(rid: int, leases: list[bytes]) -> None:
    wire = {"t": "renewed", "id": rid, "leases": leases, "lost": []}
    assert replybytes.renewed(rid, leases) == encode_frame(wire)


def test_renewed_of_many_leases() -> None:
    leases = [i.to_bytes(LEASE_ID_SIZE, "big") for i in range(4096)]
    wire = {"t": "renewed", "id": 9, "leases": leases, "lost": []}
    assert replybytes.renewed(9, leases) == encode_frame(wire)


@given(st.integers(0, 2**64 - 1))
def test_uint(v: int) -> None:
    import msgpack

    assert replybytes.uint(v) == msgpack.packb(v)
