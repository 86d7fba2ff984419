"""Budgets (SPEC §13): calendar windows in UTC, and the spend a gateway holds in memory per window.

A budget caps what one key, or one principal, is billed (the ledger's ``cost``) in a UTC calendar
day, a UTC calendar month, or in total. A window is named by a label: ``2026-12-02`` for a day,
``2026-12`` for a month, ``""`` for all time; a request counts in the windows of its arrival
(``LedgerRow.at``), exactly as the store's totals count it, so a window rolls over at UTC midnight
and at the first of the month with nothing to reset.

``Spend`` is what the gateway knows of each subject's spend, kept in two parts:

- ``base``: the store's totals, loaded at start and every few seconds (every replica's billed rows
  that reached the store), plus this process's rows stored since the last load;
- ``pending``: this process's own billed rows the store has not taken yet (added as each request
  is billed, moved to the base once its row is stored).

Their sum is the spend a check compares with the limit. Reloading the base while no ledger batch
lands keeps the two disjoint: a row is counted in one or the other, never both, never neither.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

_ZERO = Decimal(0)


class BudgetSubject(enum.StrEnum):
    KEY = "key"
    PRINCIPAL = "principal"


class BudgetPeriod(enum.StrEnum):
    """The window a budget caps spend over: a calendar day or month in UTC, or all time."""

    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


def window(period: str, at: datetime) -> str:
    """The label of the window of ``period`` that holds ``at`` (in UTC)."""
    at = at.astimezone(UTC)
    if period == BudgetPeriod.DAY:
        return at.strftime("%Y-%m-%d")
    if period == BudgetPeriod.MONTH:
        return at.strftime("%Y-%m")
    return ""


def window_end(period: str, at: datetime) -> datetime | None:
    """When the window of ``period`` holding ``at`` ends (the next UTC midnight or month); None for all time."""
    at = at.astimezone(UTC)
    if period == BudgetPeriod.DAY:
        return datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)
    if period == BudgetPeriod.MONTH:
        return datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return None


@dataclass(frozen=True, slots=True)
class Windows:
    """The labels of the day and month holding one instant."""

    day: str
    month: str

    @classmethod
    def at(cls, at: datetime) -> Windows:
        utc = at.astimezone(UTC)
        return _windows_of(utc.year, utc.month, utc.day)

    def label(self, period: str) -> str:
        if period == BudgetPeriod.DAY:
            return self.day
        if period == BudgetPeriod.MONTH:
            return self.month
        return ""


@functools.lru_cache(maxsize=64)
def _windows_of(year: int, month: int, day: int) -> Windows:
    """Formatted once per day seen: every billed row asks for its windows."""
    return Windows(f"{year:04d}-{month:02d}-{day:02d}", f"{year:04d}-{month:02d}")


@dataclass(frozen=True, slots=True)
class KeyTotals:
    """One key's billed cost in the day, the month and all time of one instant (the store's totals)."""

    principal_id: str
    key_id: str
    day: Decimal
    month: Decimal
    total: Decimal


Slot = tuple[str, str, str, str]  # subject kind, subject id, period, window label


def _slots(principal_id: str, key_id: str, windows: Windows) -> tuple[Slot, ...]:
    """The six windows one billed row counts in: its key's and its principal's day, month and total.
    Written out rather than generated: every billed row asks for them twice."""
    day, month = windows.day, windows.month
    key, principal = BudgetSubject.KEY, BudgetSubject.PRINCIPAL
    daily, monthly, total = BudgetPeriod.DAY, BudgetPeriod.MONTH, BudgetPeriod.TOTAL
    return (
        (key, key_id, daily, day),
        (key, key_id, monthly, month),
        (key, key_id, total, ""),
        (principal, principal_id, daily, day),
        (principal, principal_id, monthly, month),
        (principal, principal_id, total, ""),
    )


class Spend:
    """Each subject's spend per window: the store's totals plus this process's rows not stored yet."""

    def __init__(self) -> None:
        self._base: dict[Slot, Decimal] = {}
        self._pending: dict[Slot, Decimal] = {}

    def spent(self, kind: str, subject_id: str, period: str, windows: Windows) -> Decimal:
        slot = (kind, subject_id, period, windows.label(period))
        return self._base.get(slot, _ZERO) + self._pending.get(slot, _ZERO)

    def billed(self, principal_id: str, key_id: str, at: datetime, cost: Decimal) -> None:
        """A row this process billed: counted at once, until the store has it."""
        self._add(self._pending, principal_id, key_id, Windows.at(at), cost)

    def settled(self, principal_id: str, key_id: str, at: datetime, cost: Decimal) -> None:
        """A row of this process the store took: it moves from the pending part to the store's part,
        where the next reload will find it (a row that will never reach the store moves too: it was
        served, and the spend stays counted until the next reload)."""
        pending, base = self._pending, self._base
        for slot in _slots(principal_id, key_id, Windows.at(at)):
            left = pending.get(slot, _ZERO) - cost
            if left > 0:
                pending[slot] = left
            else:
                pending.pop(slot, None)
            base[slot] = base.get(slot, _ZERO) + cost

    def load(self, totals: Iterable[KeyTotals], windows: Windows) -> None:
        """Replace the store's part with its totals, read at an instant whose windows are ``windows``."""
        base: dict[Slot, Decimal] = {}
        for key in totals:
            for slot, amount in zip(
                _slots(key.principal_id, key.key_id, windows),
                (key.day, key.month, key.total) * 2,
                strict=True,
            ):
                if amount:
                    base[slot] = base.get(slot, _ZERO) + amount
        self._base = base

    @staticmethod
    def _add(target: dict[Slot, Decimal], principal_id: str, key_id: str, windows: Windows, cost: Decimal) -> None:
        for slot in _slots(principal_id, key_id, windows):
            target[slot] = target.get(slot, _ZERO) + cost
