"""``lanlic serve`` settles the garbage collector once it is up (``lanlic.cli.serve.settle_gc``):
what the startup made is frozen out of the collector's passes and the young generation is
collected less often. Looked at from inside a real ``lanlic serve`` process: a watcher thread
waits for the server's ``server.json`` (written once it listens), reads the collector's state,
prints it and stops the server as Ctrl-C would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from lanlic.cli.serve import GC_OLDER_THRESHOLDS, GC_YOUNG_THRESHOLD
from tests.cliproc import base_env

_CHILD = textwrap.dedent(
    """
    import gc, json, os, signal, sys, threading, time
    from pathlib import Path

    data = Path(sys.argv[1])

    def watch():
        end = time.monotonic() + 30
        while not (data / "server.json").exists() and time.monotonic() < end:
            time.sleep(0.05)
        state = {"listening": (data / "server.json").exists(),
                 "frozen": gc.get_freeze_count(), "threshold": list(gc.get_threshold())}
        print("GC " + json.dumps(state), flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()
    from lanlic.cli.app import main
    sys.exit(main(["serve", "--demo", "--data", str(data), "--port", "0",
                   "--no-mdns", "--no-admin", "--json"]))
    """
)


def test_serve_freezes_the_startup_and_raises_the_young_threshold(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(),
        check=False,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("GC ")]
    assert lines, (done.stdout, done.stderr)
    state = json.loads(lines[0][3:])
    assert state["listening"], state
    # The startup's objects (modules, the key, the store's state): tens of thousands.
    assert state["frozen"] > 10_000, state
    assert state["threshold"] == [GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS]
    assert done.returncode == 0, done.stderr
