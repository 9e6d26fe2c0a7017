"""With ``CI`` set, a skipped test fails the run unless it is on the allow-list (ci_skips.py)."""

from __future__ import annotations

import pytest
from ci_skips import SKIPS_ALLOWED_IN_CI, skip_fails_in_ci


def skipped(nodeid: str) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid, ("x.py", 1, "test"), {}, "skipped", ("x.py", 1, "Skipped: no widget"), "call"
    )


def test_a_skip_fails_with_ci_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    report = skipped("tests/x.py::test_needs_a_widget")
    skip_fails_in_ci(report)
    assert report.failed
    assert "skipped with CI set: Skipped: no widget" in str(report.longrepr)


def test_a_skip_is_a_skip_without_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    report = skipped("tests/x.py::test_needs_a_widget")
    skip_fails_in_ci(report)
    assert report.skipped


def test_the_allow_list_is_short_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    assert len(SKIPS_ALLOWED_IN_CI) <= 3
    for nodeid, why in SKIPS_ALLOWED_IN_CI.items():
        assert len(why) > 40, nodeid
        report = skipped(nodeid)
        skip_fails_in_ci(report)
        assert report.skipped


def test_an_expected_failure_is_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    report = skipped("tests/x.py::test_xfail")
    report.wasxfail = "known"  # type: ignore[attr-defined]
    skip_fails_in_ci(report)
    assert report.skipped
