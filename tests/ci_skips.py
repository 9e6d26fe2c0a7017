"""No skip that hides in CI: with ``CI`` set, a skipped test fails the run unless it is on
``SKIPS_ALLOWED_IN_CI`` (the hooks in tests/conftest.py call ``skip_fails_in_ci`` on every report,
of a test and of a module that skips itself at import)."""

from __future__ import annotations

import pytest
from helpers import in_ci

SKIPS_ALLOWED_IN_CI: dict[str, str] = {
    "tests/core/test_machine.py::test_real_machine_smoke": (
        "a CI container may have neither /etc/machine-id nor a NIC with a MAC; the fingerprint's "
        "every source is tested with fakes in the same file"
    ),
}
"""Tests that may skip when ``CI`` is set, each with the reason. Keep it short: anything else a
test needs (root, iproute2, redis-server, matplotlib, chromium) CI installs (see README)."""


def skip_fails_in_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if any(report.nodeid.startswith(allowed) for allowed in SKIPS_ALLOWED_IN_CI):
        return
    longrepr = report.longrepr
    why = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped with CI set: {why}\n"
        "CI must provide what this test needs, or the test goes on SKIPS_ALLOWED_IN_CI in "
        "tests/ci_skips.py with the reason"
    )
