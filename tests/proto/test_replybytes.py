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


names = st.text(max_size=300)


@given(
    rids,
    st.tuples(names, st.floats(0.001, 1e6), st.floats(0.001, 1e6),
              st.binary(max_size=40), names, names, st.integers(0, 2**63 - 1)),
    st.binary(max_size=100),
    st.floats(0, 1e12) | st.just(0.0),
    st.binary(max_size=600),
)  # fmt: skip
def test_welcome_v3(
    rid: int,
    server: tuple[str, float, float, bytes, str, str, int],
    signature: bytes,
    time: float,
    path: bytes,
) -> None:
    server_id, lease_s, heartbeat_s, server_key, vendor_fp, customer, epoch = server
    wire = {"t": "welcome", "id": rid, "version": 3, "server_id": server_id, "lease_s": lease_s,
            "heartbeat_s": heartbeat_s, "server_key": server_key, "signature": signature,
            "vendor_fp": vendor_fp, "customer": customer, "epoch": epoch, "time": time,
            "time_signature": b""}  # fmt: skip
    if path:  # left out when empty (a batch of one), as ``to_wire`` leaves it out
        wire["batch_path"] = path
    parts = replybytes.welcome_v3_parts(*server)
    assert replybytes.welcome_v3(rid, parts, signature, time, path) == encode_frame(wire)
