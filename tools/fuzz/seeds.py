"""Seed corpora for the harnesses, taken from protocol/vectors (valid and invalid frames and
signed documents), so libFuzzer starts from real inputs instead of from nothing."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def frames() -> list[bytes]:
    return [bytes.fromhex(v["hex"]) for v in json.loads((VECTORS / "frames.json").read_text())]


def documents() -> dict[str, Any]:
    return dict(json.loads((VECTORS / "documents.json").read_text()))


@contextlib.contextmanager
def corpus_argv(argv: list[str], seeds: Iterable[bytes]) -> Iterator[list[str]]:
    """``argv`` with a temporary corpus folder of ``seeds`` added, unless it names a folder of
    its own (libFuzzer takes corpus folders as its positional arguments)."""
    if any(not a.startswith("-") for a in argv[1:]):
        yield argv
        return
    with tempfile.TemporaryDirectory(prefix="lanlic-fuzz-") as folder:
        for i, seed in enumerate(seeds):
            (Path(folder) / f"seed-{i:03d}").write_bytes(seed)
        yield [*argv, folder]
