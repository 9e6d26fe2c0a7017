"""The layers hold: ``lanlic.proto`` and ``lanlic.core`` do no I/O, so importing every module of
theirs brings in no event loop, socket, database, mDNS, or module of ours that writes files or
talks to the OS."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

#: What a pure module must not pull in (a name here also bars its submodules).
FORBIDDEN = (
    "asyncio",
    "socket",
    "sqlite3",
    "zeroconf",
    "aiohttp",
    "lanlic.osdeps",
    "lanlic.store",
    "lanlic.net",
    "lanlic.laptop",
    "lanlic.server",
    "lanlic.vendorkeys",
    "lanlic.admin",
    "lanlic.discovery",
    "lanlic.cli",
)

PROBE = """
import importlib, json, pkgutil, sys
import lanlic.core, lanlic.proto
names = []
for pkg in (lanlic.proto, lanlic.core):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def test_proto_and_core_import_no_io() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert "lanlic.core.netkey" in seen["imported"] and "lanlic.proto.framing" in seen["imported"]
    bad = [m for m in seen["modules"] if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"lanlic.proto / lanlic.core brought in {bad}"


#: Calls that write files (or touch the OS's file system) in a module's source.
FILE_WRITING = re.compile(
    r"\bos\.(open|write|replace|rename|fsync|fchmod|chmod|unlink|mkdir|makedirs)\b"
    r"|\bopen\(|\.write_(bytes|text)\(|\.mkdir\(|\.unlink\(|\bshutil\.|\btempfile\."
)


def test_proto_and_core_sources_write_no_files() -> None:
    """Not even through the standard library: file writing lives outside the pure layers
    (the vendor's key files in lanlic.vendorkeys, durable writes in lanlic.osdeps)."""
    root = Path(__file__).resolve().parents[1] / "lanlic"
    found = []
    for layer in ("proto", "core"):
        paths = sorted((root / layer).glob("*.py"))
        assert paths, root / layer
        for path in paths:
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if FILE_WRITING.search(code):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert found == []
