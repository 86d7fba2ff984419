"""The dashboard's figures and charts from usage groups: pure functions, checked by example."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

from cachegate.dashboard import figures
from cachegate.dashboard.charts import Series, line_chart
from cachegate.store.base import MISS_REASONS, Budget, BudgetPeriod, BudgetSubject, UsageGroup

NOW = datetime(2025, 3, 15, 18, 0, tzinfo=UTC)


def group(
    day: str = "2025-03-15", principal: str = "prn_a", key: str = "key_a", model: str = "m", **fields: object
) -> UsageGroup:
    base = UsageGroup(
        day=day, principal_id=principal, key_id=key, model=model, requests=4, prompt_tokens=1000,
        uncached_tokens=300, cache_read_tokens=500, cache_write_5m_tokens=100, cache_write_1h_tokens=60,
        cache_write_24h_tokens=40, completion_tokens=50, cost=Decimal("0.10"), list_cost=Decimal("0.25"),
        degraded=1, misses=tuple((reason, 0) for reason in MISS_REASONS), drift_sum=6, drift_count=3,
    )  # fmt: skip
    return replace(base, **fields)


def test_totals_add_up_and_derive_their_rates() -> None:
    other = group(
        day="2025-03-14",
        prompt_tokens=3000,
        cache_read_tokens=0,
        cost=Decimal("0.0000001"),
        degraded=0,
        misses=(("first_write", 2), ("expired", 1), ("prefix_changed", 0), ("below_floor", 3), ("degraded", 0)),
        drift_sum=-4,
        drift_count=1,
    )

    totals = figures.total([group(), other])

    assert (totals.requests, totals.prompt_tokens, totals.cache_read_tokens) == (8, 4000, 500)
    assert totals.cache_write_tokens == 400 and totals.uncached_tokens == 600
    assert totals.cost == Decimal("0.1000001") and totals.saving == Decimal("0.3999999")
    assert totals.hit_rate == 500 / 4000 and totals.degraded_rate == 1 / 8
    assert totals.mean_drift == 2 / 4
    assert totals.top_misses() == [("below_floor", 3), ("first_write", 2), ("expired", 1)]
    assert totals.top_misses(1) == [("below_floor", 3)]


def test_empty_totals_have_no_rates_to_divide_by_zero() -> None:
    totals = figures.total([])

    assert (totals.hit_rate, totals.degraded_rate, totals.mean_drift, totals.top_misses()) == (0.0, 0.0, None, [])


def test_every_day_of_the_window_is_a_point_and_other_days_are_left_out() -> None:
    days = figures.days_between(date(2025, 2, 27), date(2025, 3, 2))
    groups = [group(day="2025-02-28"), group(day="2025-02-28", model="n"), group(day="2025-03-05")]

    per_day = figures.per_day(groups, days)

    assert days == ["2025-02-27", "2025-02-28", "2025-03-01", "2025-03-02"]
    assert [(day, totals.requests) for day, totals in per_day] == [
        ("2025-02-27", 0),
        ("2025-02-28", 8),
        ("2025-03-01", 0),
        ("2025-03-02", 0),
    ]


def test_totals_by_principal_and_model() -> None:
    groups = [group(principal="prn_b"), group(model="z"), group()]

    by_principal = figures.by(groups, lambda g: g.principal_id)
    by_model = figures.by(groups, lambda g: g.model)

    assert [(name, t.requests) for name, t in by_principal.items()] == [("prn_a", 8), ("prn_b", 4)]
    assert [(name, t.requests) for name, t in by_model.items()] == [("m", 8), ("z", 4)]


def test_a_budget_counts_the_spend_of_its_subject_in_its_current_window() -> None:
    groups = [
        group(day="2025-03-15", cost=Decimal("1.5")),
        group(day="2025-03-01", cost=Decimal("2")),
        group(day="2025-02-28", cost=Decimal("4")),
        group(day="2025-03-15", key="key_other", cost=Decimal("8")),
        group(day="2025-03-15", principal="prn_b", key="key_b", cost=Decimal("16")),
    ]
    budgets = [
        Budget(BudgetSubject.PRINCIPAL, "prn_a", BudgetPeriod.DAY, Decimal("10")),
        Budget(BudgetSubject.PRINCIPAL, "prn_a", BudgetPeriod.MONTH, Decimal("10")),
        Budget(BudgetSubject.KEY, "key_a", BudgetPeriod.TOTAL, Decimal("0")),
    ]

    uses = figures.budgets_in_use(budgets, groups, NOW, {"prn_a": "acme"})

    assert [(u.subject_name, u.window_start, u.spent) for u in uses] == [
        ("acme", "2025-03-15", Decimal("9.5")),
        ("acme", "2025-03-01", Decimal("11.5")),
        ("key_a", None, Decimal("7.5")),
    ]
    assert [u.share for u in uses] == [0.95, 1.15, 1.0]  # a zero limit spent on is used up
    assert figures.earliest_window_start(budgets[:2], NOW) == "2025-03-01"
    assert figures.earliest_window_start(budgets, NOW) is None


def test_a_line_chart_has_a_point_per_day_with_its_value_as_tooltip() -> None:
    days = ["2025-03-01", "2025-03-02", "2025-03-03"]

    svg = str(line_chart("c", days, [Series("read", [0, 50, 100]), Series("<b>", [1, 2, 3])], lambda v: f"{v:g}"))

    assert svg.startswith('<svg id="c" class="chart"') and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 6
    assert "<title>2025-03-02 read: 50</title>" in svg
    assert "&lt;b&gt;" in svg and "<b>" not in svg  # labels are escaped
    ys = [float(y) for y in re.findall(r'<circle class="series-0" cx="[0-9.]+" cy="([0-9.]+)"', svg)]
    assert ys[0] > ys[1] > ys[2]  # higher values are drawn higher
    assert re.findall(r'text-anchor="(\w+)">2025-03-0[13]', svg) == ["start", "end"]  # labels inside the frame


def test_a_chart_of_one_day_or_all_zeros_draws_without_dividing_by_zero() -> None:
    svg = str(line_chart("c", ["2025-03-01"], [Series("x", [0])], str))

    assert svg.count("<circle") == 1 and "nan" not in svg
