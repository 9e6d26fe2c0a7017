"""The ``lanlic`` command: parses arguments, then calls the library.

One module per family of commands, each adding its own to the parser: ``vendor`` (keys),
``serve`` (the server), ``seats`` (checkout, enable, status, servers, trust), ``borrow`` (enroll,
borrow, return, info), ``admin`` (the server's machine) and ``bench``. What they share is in
``common``, and none imports another; ``app`` puts them together and runs one.

Every command takes ``--json`` for machine-readable output, and fails with a non-zero exit and
one line on stderr, ``lanlic: CODE: reason``.

``main`` and ``build_parser`` are imported lazily, so ``import lanlic.cli.serve`` loads that
family and ``common`` only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lanlic ARGV`` (default: the process's arguments); the exit code."""
    from lanlic.cli.app import main as run

    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``lanlic`` command's parser, every subcommand added."""
    from lanlic.cli.app import build_parser as build

    return build()
