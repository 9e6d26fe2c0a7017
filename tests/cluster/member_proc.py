"""A lanlic member in its own process, for tests that SIGKILL it: claims seats, prints each hold as
a JSON line, then keeps its etcd lease alive until killed; says so if it finds its lease gone.

    python member_proc.py ENDPOINTS PREFIX PRODUCT SEATS COUNT ETCD_TTL
"""

from __future__ import annotations

import asyncio
import json
import sys

from lanlic.cluster.etcd import EtcdSeats
from lanlic.errors import LanlicError


async def main() -> None:
    endpoints, prefix, product, seats, count, ttl = sys.argv[1:7]
    store = EtcdSeats(
        endpoints.split(","),
        prefix=prefix,
        products={product: int(seats)},
        member="doomed",
        etcd_ttl=int(ttl),
        client_lease=1.0,
    )
    await store.start()
    print(json.dumps({"lease": store.lease_id}), flush=True)
    for i in range(int(count)):
        hold = await store.checkout(product, f"client-{i}", f"lease-{i}")
        print(
            json.dumps({"index": hold.index, "client": f"client-{i}", "lease": f"lease-{i}"}),
            flush=True,
        )
    print(json.dumps({"ready": True}), flush=True)
    # Until killed; if its etcd lease runs out meanwhile (SIGSTOP), it says so and what it answers.
    await asyncio.wait_for(store.lease_lost.wait(), 3600)
    try:
        await store.checkout(product, "after", "after")
        answer = "granted"
    except LanlicError as e:
        answer = e.code
    print(json.dumps({"lost": True, "checkout": answer}), flush=True)
    await store.recover()
    hold = await store.checkout(product, "after", "after")
    print(json.dumps({"recovered": True, "index": hold.index}), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
