"""``lanlic bench``: load a lanlic server on loopback beside two baselines, and report.

The same load generator (``gen``) drives three targets in one run, so the ratios survive a noisy
machine: lanlic itself; the *ceiling*, a bare asyncio server in the same framing that decodes each
frame and answers with no logic (``serve``); and Redis running a TTL counting semaphore as a Lua
script (``wire``). ``run`` starts the servers and generators and measures; ``report`` prints the
table and draws the plot. Nothing here is imported by the server or the client, and this module
stays light: the ``lanlic`` command imports it to list the options.
"""

from __future__ import annotations

import argparse

__all__ = ["CLUSTER_SCENARIOS", "CLUSTER_TARGETS", "SCENARIOS", "TARGETS", "add_arguments", "main"]

SCENARIOS = ("burst", "steady", "saturate", "churn")
TARGETS = ("lanlic", "ceiling", "redis")
#: Asked for by name only (they need etcd-server): three members on etcd (``cluster``), and
#: the time its clients take to move when a member is killed (``failover``): ``bench.cluster``.
CLUSTER_TARGETS = ("cluster",)
CLUSTER_SCENARIOS = ("failover",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS + CLUSTER_SCENARIOS)} (default: all "
        "but failover, which the cluster target adds)",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated, from lanlic,ceiling,redis,cluster (default: lanlic,ceiling,redis; "
        "redis is skipped with a message when redis-server is not installed; cluster, three "
        "members on a 3-member etcd, needs etcd-server and the cluster extra)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, under a minute (the full run takes about 4 to 5 minutes)",
    )
    p.add_argument(
        "--policy",
        nargs="?",
        const="realistic",
        metavar="FILE",
        help="also run lanlic with a seat policy on the loaded product, reported beside the "
        "figures without one ('lanlic (policy on)'): FILE's policy.toml for product 'bench', "
        "or with no FILE a realistic one (user and host groups, RESERVE, MAX, INCLUDE, "
        "EXCLUDE; the bench's clients are let in, so it costs, never refuses)",
    )
    p.add_argument(
        "--server",
        help="an already running lanlic server, HOST:PORT on loopback (HOST:PORT,HOST:PORT...: "
        "the members of a running cluster, connections spread over them)",
    )
    p.add_argument("--product", help="with --server: the product to load (default: most seats)")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    p.add_argument("--procs", type=int, help="load generator processes (default 2)")
    p.add_argument("--n", type=int, help="burst and steady: clients (= seats = connections)")
    p.add_argument("--duration", type=float, help="seconds of steady, saturate and churn each")
    p.add_argument("--conns", type=int, help="saturate: connections")
    p.add_argument("--depth", type=int, help="saturate: requests in flight per connection")
    p.add_argument("--rounds", type=int, help="saturate: runs per target, median kept (3; quick 1)")
    p.add_argument("--clients", type=int, help="churn: clients at once")
    p.add_argument(
        "--borrowers", type=int, help="churn: laptops borrowing and returning, per generator"
    )
    p.add_argument(
        "--failover-clients", type=int, help="failover: clients holding a seat (default 150)"
    )
    p.add_argument("--lease", type=float, help="lease period, s (default 5; quick 3)")
    p.add_argument("--heartbeat", type=float, help="steady: renew period, s (default 1)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE", help="draw a PNG (needs matplotlib: '.[bench]')")
    p.add_argument("--markdown", metavar="FILE", help="write the headline figures as Markdown")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")


def main(argv: list[str] | None = None) -> int:
    from lanlic.bench.run import main as run_main

    return run_main(argv)
