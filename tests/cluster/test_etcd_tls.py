"""The store reaches an etcd that demands TLS client certificates (aetcd 1.0 alone cannot: it opens
only plaintext channels), and an etcd that demands them refuses a member without one."""

from __future__ import annotations

import pytest
from etcd_tls import started

from lanlic.cluster.etcd import EtcdSeats, EtcdTls, Unreachable
from lanlic.errors import NoSeat


async def test_the_store_works_over_tls_with_a_client_certificate(
    tls_etcd: tuple[str, EtcdTls],
) -> None:
    endpoint, tls = tls_etcd
    store = EtcdSeats([endpoint], prefix="/tls", products={"cad": 1}, member="a", tls=tls)
    try:
        await started(store)
        hold = await store.checkout("cad", "c", "l")
        with pytest.raises(NoSeat):
            await store.checkout("cad", "c2", "l2")
        await store.release(hold)
    finally:
        await store.close()


async def test_etcd_refuses_a_member_without_a_client_certificate(
    tls_etcd: tuple[str, EtcdTls],
) -> None:
    endpoint, tls = tls_etcd
    good = EtcdSeats([endpoint], prefix="/tls", products={"cad": 1}, member="a", tls=tls)
    try:
        await started(good)  # etcd is up
    finally:
        await good.close()
    plain = EtcdSeats([endpoint], prefix="/tls", products={"cad": 1}, member="b")
    try:
        with pytest.raises(Unreachable):
            await plain.start()
    finally:
        await plain.close()
