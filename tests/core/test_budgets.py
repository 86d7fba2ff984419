"""Budget windows and the spend held in memory (core/budgets.py), at fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from cachegate.core.budgets import BudgetPeriod, BudgetSubject, KeyTotals, Spend, Windows, window, window_end

NOON = datetime(2026, 12, 31, 12, tzinfo=UTC)
KEY, PRINCIPAL = BudgetSubject.KEY, BudgetSubject.PRINCIPAL
DAY, MONTH, TOTAL = BudgetPeriod.DAY, BudgetPeriod.MONTH, BudgetPeriod.TOTAL


def test_windows_are_utc_calendar_days_and_months() -> None:
    eastern = timezone(timedelta(hours=-5))
    assert Windows.at(NOON) == Windows("2026-12-31", "2026-12")
    assert Windows.at(datetime(2026, 12, 31, 20, tzinfo=eastern)) == Windows("2027-01-01", "2027-01")
    assert window(TOTAL, NOON) == ""


def test_windows_end_at_utc_midnight_and_the_first_of_the_month() -> None:
    assert window_end(DAY, NOON) == datetime(2027, 1, 1, tzinfo=UTC)
    assert window_end(MONTH, NOON) == datetime(2027, 1, 1, tzinfo=UTC)
    assert window_end(MONTH, datetime(2026, 2, 28, 23, 59, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    assert window_end(TOTAL, NOON) is None


def test_spend_is_the_stores_totals_plus_what_this_process_billed_since() -> None:
    spend = Spend()
    spend.load([KeyTotals("prn_a", "key_a", Decimal("1"), Decimal("5"), Decimal("9"))], Windows.at(NOON))
    windows = Windows.at(NOON)

    spend.billed("prn_a", "key_b", NOON, Decimal("0.25"))

    assert spend.spent(KEY, "key_a", DAY, windows) == Decimal("1")
    assert spend.spent(KEY, "key_b", DAY, windows) == Decimal("0.25")
    assert spend.spent(PRINCIPAL, "prn_a", DAY, windows) == Decimal("1.25")
    assert spend.spent(PRINCIPAL, "prn_a", MONTH, windows) == Decimal("5.25")
    assert spend.spent(PRINCIPAL, "prn_a", TOTAL, windows) == Decimal("9.25")


def test_a_stored_row_is_counted_once_before_and_after_the_reload_that_finds_it_in_the_store() -> None:
    spend = Spend()
    windows = Windows.at(NOON)
    spend.billed("prn_a", "key_a", NOON, Decimal("0.5"))

    spend.settled("prn_a", "key_a", NOON, Decimal("0.5"))  # the store took it ...
    assert spend.spent(KEY, "key_a", DAY, windows) == Decimal("0.5")
    spend.load([KeyTotals("prn_a", "key_a", *(Decimal("0.75"),) * 3)], windows)  # ... a reload finds it, and more
    assert spend.spent(KEY, "key_a", DAY, windows) == Decimal("0.75")
    assert spend.spent(PRINCIPAL, "prn_a", TOTAL, windows) == Decimal("0.75")


def test_a_new_day_starts_from_nothing_while_the_month_and_total_go_on() -> None:
    spend = Spend()
    spend.load([KeyTotals("prn_a", "key_a", Decimal("3"), Decimal("4"), Decimal("5"))], Windows.at(NOON))
    spend.billed("prn_a", "key_a", NOON, Decimal("1"))
    tomorrow = Windows.at(NOON + timedelta(days=1))  # 2027: a new day, month and year

    assert spend.spent(KEY, "key_a", DAY, tomorrow) == 0
    assert spend.spent(KEY, "key_a", MONTH, tomorrow) == 0
    assert spend.spent(KEY, "key_a", TOTAL, tomorrow) == Decimal("6")
    assert spend.spent(KEY, "key_a", DAY, Windows.at(NOON + timedelta(hours=11))) == Decimal("4")
