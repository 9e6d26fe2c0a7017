"""What the window shows, worked out with no Tk: days left, the period's bounds, the rows."""

from __future__ import annotations

import pytest

from lanlic.laptop.borrower import NOT_AVAILABLE
from lanlic.ui.model import DAY, Row, build_rows, days_left, period_bounds

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("left", "text"),
    [
        (3 * DAY, "3 days left"),
        (3 * DAY - 60, "3 days left"),  # a fresh 3-day borrow, read a minute later
        (2 * DAY + 3600, "2 days left"),
        (DAY, "1 day left"),
        (5 * 3600, "5 hours left"),
        (60, "1 hour left"),
        (0, "ended"),
        (-DAY, "ended"),
    ],
)
def test_days_left(left: float, text: str) -> None:
    assert days_left(NOW + left, NOW) == text


def test_period_bounds_are_the_products_terms() -> None:
    row = Row("cad", "Network", ("borrow",), borrowable=2, max_days=14)
    assert period_bounds(row) == (1, 14)
    assert period_bounds(Row("cad", "Network", ("borrow",), borrowable=0, max_days=14)) is None
    assert period_bounds(Row("cad", "Network", ("borrow",), borrowable=2, max_days=0)) is None
    assert period_bounds(Row("cad", "Borrowed (license file)", ("return",), 2, 14)) is None


def test_rows_online_offline_and_enabled() -> None:
    status = {
        "products": [
            {"name": "cad", "seats": 3, "free": 2, "borrowable": 2, "max_borrow_days": 7,
             "versions": ["10", "16"], "addon": False},
            {"name": "render", "seats": 2, "free": 2, "borrowable": 0, "max_borrow_days": 0,
             "versions": None, "addon": True},
        ]
    }  # fmt: skip
    info = [
        {"product": "cad", "addon": False, "state": "Network", "actions": ["borrow"]},
        {"product": "render", "addon": True, "state": "Disabled", "actions": ["enable"]},
    ]
    rows = {r.product: r for r in build_rows(info, status, enabled=["render"])}
    assert rows["cad"].versions == ("10", "16") and rows["cad"].max_days == 7
    assert (rows["render"].state, rows["render"].actions) == ("Network", ())

    borrowed = [{"product": "cad", "addon": False, "state": "Borrowed (license file)",
                 "expires": "2027-01-02T03:04:05+00:00", "actions": ["return"]}]  # fmt: skip
    rows = {r.product: r for r in build_rows(borrowed, None, known=["cad", "render"])}
    assert rows["cad"].state == "Borrowed (license file)" and rows["cad"].end is not None
    assert rows["render"] == Row("render", NOT_AVAILABLE)


def test_work_for_a_closed_loop_comes_back_as_a_refusal() -> None:
    import asyncio

    from lanlic.ui.worker import Outcome, Worker

    loop = asyncio.new_event_loop()
    loop.close()
    worker = Worker(loop)
    seen: list[Outcome] = []

    async def nothing() -> None:
        return None

    worker.submit(nothing(), seen.append)
    assert worker.poll() == 1
    [outcome] = seen
    assert getattr(outcome.error, "code", "") == "server_unavailable"
