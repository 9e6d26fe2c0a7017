"""The admin page's pure parts: password hashes, sessions, and the discovery state it shows."""

from __future__ import annotations

import asyncio

from lanlic.admin.passwords import hash_password, verify_password
from lanlic.admin.security import Sessions
from lanlic.cli.serve import _discovery_state


def test_password_hashes_are_salted_and_checked_in_constant_form() -> None:
    a, b = hash_password("s3cret password"), hash_password("s3cret password")
    assert a != b and a.startswith("scrypt$14$8$1$")
    assert verify_password("s3cret password", a) and verify_password("s3cret password", b)
    assert not verify_password("s3cret passworD", a)
    # The same password typed in another Unicode form still matches (NFKC).
    assert verify_password("ﬁsh and chips!", hash_password("fish and chips!"))
    for damaged in ("", "scrypt$14$8$1$AA==", "bcrypt$1$2$3$AA==$AA==", "scrypt$99$8$1$AA==$AA==",
                    a.replace("$14$", "$x$"), a[:-4] + "!!!!"):  # fmt: skip
        assert not verify_password("s3cret password", damaged)


def test_sessions_end_when_idle_or_old_or_dropped() -> None:
    s = Sessions(idle=10.0, lifetime=30.0, max_sessions=2)
    token, session = s.create("ann", "127.0.0.1", 0.0)
    assert s.get(token, 5.0) is session and s.get("nope", 5.0) is None
    assert s.get(token, 14.0) is session  # seen at 5: still within 10 s
    assert s.get(token, 25.0) is None  # idle for 11 s
    t1, _ = s.create("ann", "a", 100.0)
    t2, _ = s.create("bob", "b", 101.0)
    t3, _ = s.create("eve", "c", 102.0)  # over the cap: the oldest goes
    assert s.get(t1, 103.0) is None and s.get(t2, 103.0) is not None
    for t in (110.0, 119.0, 128.0):  # kept busy...
        assert s.get(t3, t) is not None
    assert s.get(t3, 133.0) is None  # ...but 30 s is its whole life
    s.drop(t2)
    assert len(s) == 0


class FakeAnnouncer:
    name = "ACME Engineering"
    interfaces = ("127.0.0.1",)


async def test_the_discovery_state_the_page_shows() -> None:
    assert _discovery_state(None, None) == {"enabled": False}
    ann = FakeAnnouncer()
    assert _discovery_state(ann, None)["state"] == "probing"
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    done.set_result(True)
    assert _discovery_state(ann, done) == {
        "enabled": True, "state": "announced", "name": "ACME Engineering",
        "interfaces": "127.0.0.1",
    }  # fmt: skip
    failed: asyncio.Future[bool] = loop.create_future()
    failed.set_result(False)
    assert _discovery_state(ann, failed)["state"] == "failed"
    cancelled: asyncio.Future[bool] = loop.create_future()
    cancelled.cancel()
    assert _discovery_state(ann, cancelled)["state"] == "stopped"
