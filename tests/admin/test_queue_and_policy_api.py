"""The admin API's queue (list, Remove) and seat policy (show, load live), on a real server."""

from __future__ import annotations

import asyncio

import pytest
from conftest import MakeSite

from lanlic.core.netkey import ProductEntitlement
from lanlic.errors import NoSeat, NotAllowed
from lanlic.net.client import Client

pytestmark = pytest.mark.asyncio

ONE_SEAT = (ProductEntitlement("cad", seats=1),)


async def test_the_admin_removes_a_waiter_who_is_told_at_once(make_site: MakeSite) -> None:
    site = await make_site(products=ONE_SEAT)
    async with (
        Client(site.server.address, user="ann", host="ws-ann") as a,
        Client(site.server.address, user="ben", host="ws-ben") as b,
    ):
        await a.acquire("cad")
        places: list[int] = []
        waiting = asyncio.ensure_future(b.acquire("cad", wait=True, on_position=places.append))
        http, csrf = await site.login(name="Dana")
        for _ in range(100):
            async with http.get("/api/queue") as r:
                items = (await r.json())["items"]
            if items:
                break
            await asyncio.sleep(0.02)
        [item] = items
        assert (item["user"], item["host"], item["position"]) == ("ben", "ws-ben", 1)
        async with http.delete(f"/api/queue/{item['ticket']}", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200 and (await r.json())["user"] == "ben"
        with pytest.raises(NoSeat, match="administrator"):
            await asyncio.wait_for(waiting, 5)
        assert places == [1]
        async with http.get("/api/queue") as r:
            assert (await r.json())["items"] == []
        async with http.delete(f"/api/queue/{item['ticket']}", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 404
    (row,) = await site.history(event="admin_unqueue")
    assert row["user"] == "Dana" and "ben@ws-ben" in row["detail"]


async def test_the_admin_loads_a_policy_live(make_site: MakeSite) -> None:
    site = await make_site()
    http, csrf = await site.login(name="Dana")
    h = {"X-CSRF-Token": csrf}
    async with Client(site.server.address, user="mallory", host="ws-m") as c:
        seat = await c.acquire("render")
        text = '[products.render]\nexclude = [{ user = "mallory" }]\n'
        async with http.put("/api/seat-policy", json={"text": text}, headers=h) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["changes"] == ["+ render: exclude user mallory"]
        with pytest.raises(NotAllowed):
            await c.acquire("render")
        assert seat.lease_id in c.seats  # the seat she held stays hers
        bad = "[products.render]\n\nmax = [{ seats = 1 }]\n"
        async with http.put("/api/seat-policy", json={"text": bad}, headers=h) as r:
            body = await r.json()
            assert r.status == 400 and body["error"] == "bad_policy"
            assert body["message"].startswith("line 3: ")
        async with http.get("/api/seat-policy") as r:
            assert (await r.json())["lines"] == ["render: exclude user mallory"]
    (row,) = await site.history(event="policy")
    assert row["user"] == "Dana"
