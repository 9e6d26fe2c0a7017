"""``python -m lanlic.cli``: the ``lanlic`` command."""

from __future__ import annotations

import sys

from lanlic.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
