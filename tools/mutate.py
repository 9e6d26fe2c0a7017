"""Mutation testing of one core module against its own fast tests (mutmut 3), for developers.

    python tools/mutate.py lanlic/core/pool.py            # the module's own tests (see TESTS)
    python tools/mutate.py lanlic/proto/framing.py --tests tests/proto/test_framing.py
    python tools/mutate.py lanlic/core/pool.py --survivors  # list the survivors, and the diffs
    python tools/mutate.py lanlic/core/pool.py --rerun-survivors  # after strengthening tests
    python tools/mutate.py lanlic/core/lending.py --only '*present*'  # part of a module

It copies the working tree (lanlic/, tests/, protocol/, pyproject.toml) into a scratch folder
(``--workdir``, default ``$TMPDIR/lanlic-mutate/<module>``), adds a ``[tool.mutmut]`` section that
mutates that one module and runs only the tests named, and runs ``mutmut run`` there under
``nice -n 10``. The repository itself is never touched and needs no mutmut configuration.

Hypothesis runs with the ``mutation`` profile of tests/conftest.py (``LANLIC_HYPOTHESIS_PROFILE``):
derandomized, no example database, no shrinking, so that a mutant's verdict is the same on every run
and a kill costs one failing example, not a shrink.

The score printed is (killed + timeout) / all mutants, where "all" counts survivors, mutants no
test reaches and suspicious ones as not killed. Equivalent survivors and the scores measured per
release are listed in tests/MUTATION.md. Not part of CI: a module takes minutes to an hour.

Needs ``pip install mutmut`` (measured with 3.8.1); a re-run in the same workdir reuses mutmut's
cache for mutants whose code and tests did not change, unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS: dict[str, list[str]] = {
    "lanlic/core/pool.py": [
        "tests/core/test_pool.py",
        "tests/core/test_pool_state_machine.py",
        "tests/core/test_promises.py",  # lease ids (the CSPRNG, a forked child)
    ],
    "lanlic/proto/framing.py": ["tests/proto/test_framing.py"],
    "lanlic/core/lending.py": ["tests/core/test_lending.py"],
    "lanlic/core/gate.py": [
        "tests/core/test_gate.py",  # one rule at a time
        "tests/core/test_policy.py",  # the gate's checkout, queue and sweep, one case each
        "tests/core/test_policy_state_machine.py",  # against an oracle of who may take a seat
        "tests/core/test_lending.py",  # the borrow check, through the service
    ],
    "lanlic/core/restart.py": [
        "tests/core/test_restart_rules.py",  # each rule alone, sans-IO (milliseconds)
        "tests/core/test_restart_guard.py",
        "tests/core/test_restart_reservation.py",
        "tests/core/test_restart_reclaim.py",
        "tests/core/test_restart_state_machine.py",
    ],
}
"""Each module's own fast tests: the tests that hold its promises, not the whole suite."""

COPIED = ("lanlic", "tests", "protocol")
KILLED = ("killed", "timeout")


def mutmut_section(module: str, tests: list[str]) -> str:
    args = ", ".join(f'"{t}"' for t in tests)
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["lanlic"]\n'
        f'only_mutate = ["{module}"]\n'
        'also_copy = ["protocol"]\n'
        f"pytest_add_cli_args_test_selection = [{args}]\n"
        # -p no:cacheprovider: no .pytest_cache in the copy; -x: the first failure kills.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
        "timeout_multiplier = 10.0\n"
        "timeout_constant = 5.0\n"
    )


def prepare(workdir: Path, module: str, tests: list[str], fresh: bool) -> None:
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in COPIED:
        target = workdir / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / name, target, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    pyproject = re.sub(r"\n\[tool\.mutmut\]\n(?:[^\[].*\n|\n)*", "\n", pyproject)
    (workdir / "pyproject.toml").write_text(pyproject + mutmut_section(module, tests), "utf-8")


def results(workdir: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            found[name] = status
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="e.g. lanlic/core/pool.py")
    parser.add_argument("--tests", nargs="+", help="test files (default: the module's own)")
    parser.add_argument("--workdir", type=Path, help="scratch folder for the copy and mutants/")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (2)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 below this score")
    parser.add_argument(
        "--only", nargs="+", metavar="PATTERN", help="mutant names to run (fnmatch, e.g. *expire*)"
    )
    parser.add_argument(
        "--rerun-survivors", action="store_true", help="run again only what was not killed"
    )
    args = parser.parse_args(argv)

    module = Path(args.module).as_posix()
    if not (ROOT / module).is_file():
        parser.error(f"no such module: {module}")
    tests = args.tests or TESTS.get(module)
    if not tests:
        parser.error(f"no default tests for {module}: name them with --tests")
    workdir = args.workdir or Path(tempfile.gettempdir()) / "lanlic-mutate" / Path(module).stem
    names: list[str] = []
    if args.rerun_survivors:
        names = [n for n, status in results(workdir).items() if status not in KILLED]
        if not names:
            print("nothing to run again: every mutant was killed")
    names += args.only or []
    prepare(workdir, module, tests, args.fresh)

    env = dict(os.environ, LANLIC_HYPOTHESIS_PROFILE="mutation")
    env.pop("PYTHONPATH", None)  # the copy in mutants/ must win over any checkout
    run = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run"]
    run += ["--max-children", str(args.max_children), *names]
    print(f"mutating {module} against {' '.join(tests)} in {workdir}", flush=True)
    subprocess.run(run, cwd=workdir, env=env, check=False)

    found = results(workdir)
    if args.only:  # the score of the part that was run
        found = {n: s for n, s in found.items() if any(fnmatch(n, p) for p in args.only)}
    counts = Counter(found.values())
    total = len(found)
    killed = sum(counts[s] for s in KILLED)
    score = killed / total if total else 0.0
    for status, n in sorted(counts.items()):
        print(f"  {status:>20}: {n}")
    print(f"{module}: {killed}/{total} killed or timed out, score {score:.2f}")
    not_killed = sorted(name for name, status in found.items() if status not in KILLED)
    for name in not_killed:
        print(f"    {found[name]:>12}  {name}")
        if args.survivors:
            show = [sys.executable, "-m", "mutmut", "show", name]
            subprocess.run(show, cwd=workdir, check=False)
    return 1 if score < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
