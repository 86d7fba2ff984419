"""The dashboard's figures, from usage groups (``ControlStore.usage``): pure functions, no I/O.

Everything a page shows is computed here, so it is tested without a server or a browser: totals
of any set of groups, the same per day (every day of the window, empty days as zeros, so a chart's
time axis is true), per principal and per model, the miss reasons most seen, and the budgets with
their spend in the current window (SPEC §13).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from cachegate.store.base import MISS_REASONS, Budget, BudgetPeriod, BudgetSubject, UsageFigures, UsageGroup


@dataclass(slots=True)
class Totals(UsageFigures):
    """Usage groups added up; the rates are derived, never summed."""

    requests: int = 0
    prompt_tokens: int = 0
    uncached_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_write_24h_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    list_cost: Decimal = Decimal(0)
    degraded: int = 0
    misses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MISS_REASONS, 0))
    drift_sum: int = 0
    drift_count: int = 0

    def add(self, group: UsageGroup) -> None:
        self.requests += group.requests
        self.prompt_tokens += group.prompt_tokens
        self.uncached_tokens += group.uncached_tokens
        self.cache_read_tokens += group.cache_read_tokens
        self.cache_write_5m_tokens += group.cache_write_5m_tokens
        self.cache_write_1h_tokens += group.cache_write_1h_tokens
        self.cache_write_24h_tokens += group.cache_write_24h_tokens
        self.completion_tokens += group.completion_tokens
        self.cost += group.cost
        self.list_cost += group.list_cost
        self.degraded += group.degraded
        for reason, count in group.misses:
            self.misses[reason] = self.misses.get(reason, 0) + count
        self.drift_sum += group.drift_sum
        self.drift_count += group.drift_count

    @property
    def degraded_rate(self) -> float:
        """Requests served uncached because of an outage, over all requests."""
        return self.degraded / self.requests if self.requests else 0.0

    @property
    def mean_drift(self) -> float | None:
        """Our count minus the upstream's, per counted request; None when nothing was counted."""
        return self.drift_sum / self.drift_count if self.drift_count else None

    def top_misses(self, limit: int = len(MISS_REASONS)) -> list[tuple[str, int]]:
        """The miss reasons seen, most frequent first (ties in MISS_REASONS order)."""
        seen = [(reason, count) for reason, count in self.misses.items() if count]
        return sorted(seen, key=lambda item: -item[1])[:limit]


def total(groups: Iterable[UsageGroup]) -> Totals:
    totals = Totals()
    for group in groups:
        totals.add(group)
    return totals


def by(groups: Iterable[UsageGroup], key: Callable[[UsageGroup], str]) -> dict[str, Totals]:
    """Totals per value of ``key`` (a principal id, a model), in the order of the key."""
    grouped: dict[str, Totals] = {}
    for group in groups:
        grouped.setdefault(key(group), Totals()).add(group)
    return dict(sorted(grouped.items()))


def days_between(first: date, last: date) -> list[str]:
    """Every day from ``first`` through ``last``, as YYYY-MM-DD."""
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def per_day(groups: Iterable[UsageGroup], days: Sequence[str]) -> list[tuple[str, Totals]]:
    """Totals for each of ``days``, zeros where nothing was used; groups of other days are left out."""
    grouped = {day: Totals() for day in days}
    for group in groups:
        if group.day in grouped:
            grouped[group.day].add(group)
    return list(grouped.items())


@dataclass(frozen=True, slots=True)
class BudgetUse:
    budget: Budget
    subject_name: str  # the principal's name, or the key's id
    window_start: str | None  # YYYY-MM-DD, None for a total budget
    spent: Decimal

    @property
    def share(self) -> float:
        """Spent over the limit (above 1 past the budget; 1 for a zero limit once anything is spent)."""
        if self.budget.limit:
            return float(self.spent / self.budget.limit)
        return 1.0 if self.spent else 0.0


def window_start(period: BudgetPeriod, now: datetime) -> str | None:
    """The first day of the budget window holding ``now`` (UTC), or None for all time."""
    if period is BudgetPeriod.DAY:
        return now.date().isoformat()
    if period is BudgetPeriod.MONTH:
        return now.date().replace(day=1).isoformat()
    return None


def budgets_in_use(
    budgets: Iterable[Budget], groups: Sequence[UsageGroup], now: datetime, principal_names: Mapping[str, str]
) -> list[BudgetUse]:
    """Each budget with what its subject was billed (``cost``) in its current window; ``groups`` must
    cover the widest window asked for (all time if there is a total budget)."""
    uses = []
    for budget in budgets:
        start = window_start(budget.period, now)
        mine: Callable[[UsageGroup], bool] = (
            (lambda g, b=budget: g.key_id == b.subject_id)
            if budget.subject is BudgetSubject.KEY
            else (lambda g, b=budget: g.principal_id == b.subject_id)
        )
        spent = sum((g.cost for g in groups if mine(g) and (start is None or g.day >= start)), Decimal(0))
        name = (
            principal_names.get(budget.subject_id, budget.subject_id)
            if budget.subject is BudgetSubject.PRINCIPAL
            else budget.subject_id
        )
        uses.append(BudgetUse(budget, name, start, spent))
    return uses


def earliest_window_start(budgets: Iterable[Budget], now: datetime) -> str | None:
    """The first day the budgets' windows need usage from; None if one needs all time."""
    starts = [window_start(budget.period, now) for budget in budgets]
    if any(start is None for start in starts):
        return None
    return min((start for start in starts if start is not None), default=now.date().isoformat())
