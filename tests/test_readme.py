"""The README's commands work as written (issue 11): its walk-through, borrowing and backup
blocks run verbatim against the package under test (``tests/readme_run.py`` says how; the install
blocks are run by CI with ``python tests/readme_run.py --install``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import readme_run


def test_the_marked_blocks_are_the_ones_a_user_runs_first() -> None:
    text = readme_run.README.read_text()
    install = readme_run.blocks(text, "install")
    assert len(install) == 1
    first = [c.split("#")[0].strip() for c in install[0]]
    assert first[0].startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert first[1:] == ["pip install -e . && lanlic serve --demo",
                         "pip install -e '.[test]' && python -m pytest"]  # fmt: skip
    run = [c for b in readme_run.blocks(text, "run") for c in b]
    assert any(c.startswith("lanlic serve --license acme.lic") for c in run)
    assert any(c.startswith("lanlic borrow cad") for c in run)
    assert any(c.startswith("lanlic admin backup") for c in run)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_readme_commands_run_verbatim(tmp_path: Path) -> None:
    result = readme_run.run("run", tmp_path, timeout=360)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "readme-run: every command worked" in result.stdout
