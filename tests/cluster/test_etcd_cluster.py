"""The harness itself: a real 3-member etcd elects a leader, survives losing it, keeps writes."""

from __future__ import annotations

import base64
import json
import urllib.request

from etcd_cluster import EtcdCluster, Member


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def call(m: Member, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(f"{m.client_url}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        out: dict[str, object] = json.loads(r.read())
        return out


def test_cluster_elects_a_leader_and_survives_losing_it(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    assert leader.running()
    assert all(m.running() for m in etcd_cluster.members)

    follower = next(m for m in etcd_cluster.members if m is not leader)
    call(follower, "/v3/kv/put", {"key": b64("before"), "value": b64("1")})

    etcd_cluster.kill(leader)
    assert not leader.running()
    new_leader = etcd_cluster.wait_healthy()
    assert new_leader is not leader and new_leader.running()

    survivor = next(m for m in etcd_cluster.members if m.running() and m is not new_leader)
    call(new_leader, "/v3/kv/put", {"key": b64("after"), "value": b64("2")})
    for key, value in (("before", "1"), ("after", "2")):
        got = call(survivor, "/v3/kv/range", {"key": b64(key)})
        kvs = got["kvs"]
        assert isinstance(kvs, list) and base64.b64decode(kvs[0]["value"]).decode() == value

    # The killed member rejoins on its own data folder and catches up.
    etcd_cluster.restart(leader)
    etcd_cluster.wait_healthy()
    got = call(leader, "/v3/kv/range", {"key": b64("after"), "serializable": False})
    kvs = got["kvs"]
    assert isinstance(kvs, list) and base64.b64decode(kvs[0]["value"]).decode() == "2"
