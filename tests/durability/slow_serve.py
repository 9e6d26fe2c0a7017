"""``python slow_serve.py DELAY ARGS...``: ``lanlic ARGS`` with every durable store write
delayed by DELAY seconds before it happens, as a disk whose fsyncs are slow would (a SIGKILL
during the delay loses the write, as one during a slow fsync would). For tests/durability."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from lanlic.store import Store

WRITES = (
    "raise_reservations", "write_batch", "add_borrow", "end_borrow", "add_enrollment",
    "append_history_rows",
)  # fmt: skip


def _slowed(fn: Callable[..., Any], delay: float) -> Callable[..., Any]:
    @functools.wraps(fn)
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return fn(*args, **kwargs)

    return slow


def main() -> None:
    delay = float(sys.argv[1])
    for name in WRITES:
        setattr(Store, name, _slowed(getattr(Store, name), delay))
    from lanlic.cli import main as cli_main

    sys.argv = ["lanlic", *sys.argv[2:]]
    sys.exit(cli_main())


if __name__ == "__main__":
    main()
