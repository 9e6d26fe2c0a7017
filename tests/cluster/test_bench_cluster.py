"""The benchmark's cluster target keeps working (issue 16): a tiny run of three members on a
3-member etcd reports throughput for each scenario asked and a failover figure in which every
client of the killed member moved, with no seat lost. Behaviour, never a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_cluster_run_reports_throughput_and_a_failover(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "LANLIC_CONFIG": str(tmp_path / "config")}  # never the user's pins
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--procs", "1",
         "--targets", "cluster", "--scenario", "saturate,failover", "--conns", "6",
         "--depth", "2", "--duration", "0.6", "--failover-clients", "9", "--no-progress",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    sc = data["scenarios"]
    renew = sc["saturate-renew"]["cluster"]
    assert renew["ops"] > 0 and renew["lost"] == renew["errors"] == 0, renew["counts"]
    # Checkouts race for the last free seats across members: a few may be answered
    # server_busy (the store's bounded retries), never a lost lease.
    checkout = sc["saturate-checkout"]["cluster"]
    assert checkout["ops"] > 0 and checkout["lost"] == 0, checkout["counts"]
    f = sc["failover"]["cluster"]
    assert (f["clients"], f["members"], f["on_killed_member"]) == (9, 3, 3), f
    assert f["moved"] == 3 and f["all_moved_s"] is not None, f
    assert f["lost"] == 0 and f["held_after"] == 9, f
    assert "failover" in proc.stdout and "cluster (3 on etcd)" in proc.stdout
