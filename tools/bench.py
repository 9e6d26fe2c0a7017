"""``python tools/bench.py [--quick] ...``: the same as ``lanlic bench`` (see lanlic/bench/)."""

from __future__ import annotations

import sys

from lanlic.bench import main

if __name__ == "__main__":
    sys.exit(main())
