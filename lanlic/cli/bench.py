"""``lanlic bench``: the benchmark (lanlic/bench), as a subcommand; ``python tools/bench.py`` is
the same tool."""

from __future__ import annotations

import argparse

from lanlic.cli.common import Commands

__all__ = ["register"]


def cmd_bench(args: argparse.Namespace) -> int:
    from lanlic.bench.run import run_from_args

    return run_from_args(args)


def register(commands: Commands) -> None:
    from lanlic.bench import add_arguments

    sp = commands.sub.add_parser(
        "bench",
        help="load a server on loopback beside the bare-asyncio ceiling and Redis",
        description="Load a lanlic server on loopback beside the bare-asyncio ceiling and Redis "
        "(python tools/bench.py is the same tool).",
    )
    add_arguments(sp)
    sp.set_defaults(func=cmd_bench)
