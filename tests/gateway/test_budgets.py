"""Budgets on the request path (gateway/budgets.py), on a clock the test moves: a day's budget renews at
UTC midnight, a month's on the first, and the spend a check sees is the store's plus this process's."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import cast

import pytest

from cachegate.core.budgets import KeyTotals
from cachegate.gateway.budgets import BudgetExceeded, Budgets
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.ledger import LedgerWriter
from cachegate.store.base import (
    ApiKey,
    Budget,
    BudgetPeriod,
    BudgetSubject,
    Catalog,
    ControlStore,
    StoreUnavailable,
)

from .doubles import ledger_row

KEY = ApiKey("key_a", "prn_a", b"h" * 32, False, datetime(2026, 1, 1, tzinfo=UTC), None)
LATE = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


class SpendStore:
    """``spend_totals`` from an attribute (or the outage it is told to raise)."""

    def __init__(self) -> None:
        self.totals: list[KeyTotals] = []
        self.down = False

    async def spend_totals(self, at: datetime) -> list[KeyTotals]:
        if self.down:
            raise StoreUnavailable("down")
        return self.totals


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


def budgets_with(store: SpendStore, clock: Clock, *budgets: Budget) -> Budgets:
    catalog = CatalogCache(cast(ControlStore, store), 60.0)
    catalog.current = Catalog({}, {}, {}, budgets=budgets)
    ledger = LedgerWriter(cast(ControlStore, store), 60.0)
    return Budgets(cast(ControlStore, store), catalog, ledger, 60.0, clock)


async def test_a_daily_budget_renews_at_utc_midnight_and_a_monthly_one_on_the_first() -> None:
    store, clock = SpendStore(), Clock(LATE)
    store.totals = [KeyTotals("prn_a", "key_a", Decimal("2"), Decimal("2"), Decimal("2"))]
    daily = Budget(BudgetSubject.KEY, "key_a", BudgetPeriod.DAY, Decimal("2"))
    budgets = budgets_with(store, clock, daily)
    await budgets.reload()

    with pytest.raises(BudgetExceeded, match=r"daily budget \(UTC day 2026-12-31\) of this API key, 2, is spent"):
        budgets.check(KEY)
    clock.at = LATE + timedelta(seconds=1)  # midnight, and the first of a month and a year
    budgets.check(KEY)  # the new day starts with nothing spent, before any reload

    monthly = replace(daily, period=BudgetPeriod.MONTH, limit=Decimal("1"))
    budgets._catalog.current = Catalog({}, {}, {}, budgets=(monthly,))
    clock.at = LATE
    with pytest.raises(BudgetExceeded, match="renews at 2027-01-01T00:00:00Z"):
        budgets.check(KEY)


async def test_a_principals_budget_counts_this_processs_rows_of_all_its_keys_until_the_store_has_them() -> None:
    store, clock = SpendStore(), Clock(LATE)
    budget = Budget(BudgetSubject.PRINCIPAL, "prn_a", BudgetPeriod.TOTAL, Decimal("1"))
    budgets = budgets_with(store, clock, budget)
    await budgets.reload()
    other_key = replace(ledger_row(0), key_id="key_b", at=LATE, cost=Decimal("0.6"))

    budgets.billed(other_key)
    budgets.check(KEY)
    budgets.billed(replace(other_key, key_id="key_a", cost=Decimal("0.4")))
    with pytest.raises(BudgetExceeded, match=r"total budget of this API key's principal, 1, is spent$"):
        budgets.check(KEY)

    store.down = True
    await budgets.reload()  # a failed reload keeps what is known
    with pytest.raises(BudgetExceeded):
        budgets.check(KEY)


async def test_another_tenants_spend_never_counts() -> None:
    store, clock = SpendStore(), Clock(LATE)
    store.totals = [KeyTotals("prn_b", "key_b", *(Decimal("100"),) * 3)]
    budgets = budgets_with(store, clock, Budget(BudgetSubject.PRINCIPAL, "prn_a", BudgetPeriod.DAY, Decimal("1")))
    await budgets.reload()

    budgets.check(KEY)
