"""``Filters.matches`` (the cluster's history filters its rows in Python) selects exactly the
rows that ``Filters.where`` selects in SQLite (the single server's history)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanlic.store import Store
from lanlic.store import history as hist

_TIMES = st.sampled_from([100.0, 150.5, 200.0, 250.0, 300.0])
_PRODUCTS = st.sampled_from(["cad", "render", "sim"])
_EVENTS = st.sampled_from(["checkout", "release", "expiry", "borrow"])

_ROWS = st.lists(
    st.tuples(_TIMES, _EVENTS, _PRODUCTS, st.just("ann"), st.just("pc1"), st.just(""), st.just(1)),
    min_size=1,
    max_size=30,
)
_FILTERS = st.builds(
    hist.Filters,
    since=st.none() | _TIMES,
    until=st.none() | _TIMES,
    product=st.none() | _PRODUCTS | st.just("other"),
    event=st.none() | _EVENTS,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=_ROWS, filters=_FILTERS)
def test_matches_selects_what_the_sql_where_selects(
    tmp_path: Path, rows: list[tuple[object, ...]], filters: hist.Filters
) -> None:
    db_path = tmp_path / "lanlic.db"
    db_path.unlink(missing_ok=True)
    store = Store(db_path)
    try:
        store.append_history_rows(rows)
        _, everything = store.history_page(limit=1000, newest_first=False)
        _, selected = store.history_page(
            since=filters.since, until=filters.until, product=filters.product,
            event=filters.event, limit=1000, newest_first=False,
        )  # fmt: skip
    finally:
        store.close()
    assert len(everything) == len(rows)
    assert [r for r in everything if filters.matches(r)] == selected
