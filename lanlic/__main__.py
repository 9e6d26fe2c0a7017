"""``python -m lanlic``: the ``lanlic`` command, for machines where the script is not on PATH
(a Windows user's ``Scripts`` folder often is not)."""

from __future__ import annotations

import contextlib
import sys

from lanlic.cli import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
