"""What a person sees of the queue for a seat: the waiting client's place in line, and the queue
in ``lanlic status`` (the CLI calls these; the logic lives here, not in the command)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["position_printer", "queue_lines"]


def position_printer(product: str, as_json: bool) -> Callable[[int], None]:
    """``on_position`` for ``Client.acquire(wait=True)``: one line each time the place changes."""

    def show(position: int) -> None:
        if as_json:
            line = json.dumps({"event": "queued", "product": product, "position": position})
        else:
            ahead = position - 1
            line = f"waiting for {product}: number {position} in line" + (
                f" ({ahead} ahead)" if ahead else " (next)"
            )
        print(line, file=sys.stdout, flush=True)

    return show


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def queue_lines(status: dict[str, Any]) -> list[str]:
    """The queue of every product in a status reply, one line per waiter, in order."""
    out: list[str] = []
    for p in status.get("products", []):
        for w in p.get("queue", []):
            out.append(
                f"  {p['name']}: #{w['position']} {w['user']}@{w['host']} waiting since "
                f"{_when(w['since'])}"
            )
    return (["waiting:", *out]) if out else []
