"""Checks and conversions both stores apply to values before they reach SQL.

Money and multipliers are Decimal end to end (SPEC §10): parsed from text, never from floats,
and always finite and non-negative. Timestamps must be timezone-aware: a naive datetime in a
billing ledger is ambiguous, so it is refused rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cachegate.core.budgets import KeyTotals, Windows
from cachegate.core.types import CacheTariff, TtlTier
from cachegate.sql.dialect import decimal_text
from cachegate.sql.dialect import utc as utc  # re-exported: the store's callers take it from here
from cachegate.store.base import (
    MISS_REASONS,
    Budget,
    BudgetPeriod,
    BudgetSubject,
    LedgerRow,
    Model,
    RateLimit,
    UsageGroup,
)

_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def parse_decimal(text: str, what: str) -> Decimal:
    """Parse a non-negative decimal written positionally, such as ``0.1``, ``2`` or ``0.0000025``.

    Stricter than ``Decimal()``: no sign, exponent, whitespace, underscores, NaN or Infinity,
    so a typo cannot quietly become a price.
    """
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise ValueError(f"{what} must be a non-negative decimal number such as 0.25, not {text!r}")
    return Decimal(text)


def check_amount(value: Decimal, what: str) -> Decimal:
    """Refuse a price that is negative, NaN or infinite."""
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative decimal, not {value}")
    return value


def checked_tariff(tariff: CacheTariff) -> CacheTariff:
    """The tariff with every multiplier validated and written positionally (``1E-7`` becomes
    ``0.0000001``), so both stores hold, and give back, the same text."""
    if tariff.min_prefix_tokens < 0:
        raise ValueError(f"min_prefix_tokens must be non-negative, not {tariff.min_prefix_tokens}")

    def multiplier(text: str, what: str) -> str:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"{what} must be a decimal number, not {text!r}") from None
        return decimal_text(check_amount(value, what))

    return CacheTariff(
        write_multiplier_5m=multiplier(tariff.write_multiplier_5m, "write_multiplier_5m"),
        write_multiplier_1h=multiplier(tariff.write_multiplier_1h, "write_multiplier_1h"),
        write_multiplier_24h=multiplier(tariff.write_multiplier_24h, "write_multiplier_24h"),
        read_multiplier=multiplier(tariff.read_multiplier, "read_multiplier"),
        min_prefix_tokens=tariff.min_prefix_tokens,
    )


def model_ttl_text(model: Model) -> str | None:
    return None if model.automatic_cache_ttl is None else model.automatic_cache_ttl.value


def model_from_row(row: Mapping[str, Any], more_endpoints: Sequence[str] = ()) -> Model:
    """A ``models`` row (SQLite's or PostgreSQL's) and its ``model_endpoints`` (in order) as a Model."""
    ttl = row["automatic_cache_ttl"]
    return Model(
        alias=row["alias"],
        endpoint=row["endpoint"],
        upstream_model=row["upstream_model"],
        tokenizer=row["tokenizer"],
        input_price=Decimal(row["input_price"]),
        output_price=Decimal(row["output_price"]),
        automatic_cache_ttl=None if ttl is None else TtlTier(ttl),
        more_endpoints=tuple(more_endpoints),
    )


def check_model_endpoints(model: Model) -> tuple[tuple[str, str, int], ...]:
    """The ``model_endpoints`` rows of ``model`` (model, endpoint, position); an endpoint named
    twice is refused, for it would only skew the spread."""
    named = model.endpoints
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise ValueError(f"model {model.alias!r} names endpoint {', '.join(repeated)} more than once")
    return tuple((model.alias, name, position) for position, name in enumerate(model.more_endpoints, start=1))


def grouped_endpoints(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``Statements.model_endpoints``' rows as model alias -> its further endpoints, in order."""
    grouped: dict[str, list[str]] = {}
    for row in rows:
        grouped.setdefault(row["model"], []).append(row["endpoint"])
    return grouped


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_budget(budget: Budget) -> Budget:
    check_amount(budget.limit, "the budget's limit")
    return budget


def check_rate_limit(limit: RateLimit) -> RateLimit:
    """Refuse a limit that is not a positive whole number (None is a limit left off)."""
    for what, value in (
        ("requests_per_minute", limit.requests_per_minute),
        ("input_tokens_per_minute", limit.input_tokens_per_minute),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{what} must be a positive whole number, not {value!r}")
    return limit


def budget_from_row(row: Mapping[str, Any]) -> Budget:
    return Budget(
        subject=BudgetSubject(row["subject_kind"]),
        subject_id=row["subject_id"],
        period=BudgetPeriod(row["period"]),
        limit=Decimal(row["limit_amount"]),
    )


def rate_limit_from_row(row: Mapping[str, Any]) -> RateLimit:
    return RateLimit(row["key_id"], row["requests_per_minute"], row["input_tokens_per_minute"])


def usage_group_from_row(row: Mapping[str, Any]) -> UsageGroup:
    """A row of the usage query (SQLite's, decimals as text, or PostgreSQL's) as a UsageGroup."""
    return UsageGroup(
        day=row["day"],
        principal_id=row["principal_id"],
        key_id=row["key_id"],
        model=row["model"],
        requests=row["requests"],
        prompt_tokens=row["prompt_tokens"],
        uncached_tokens=row["uncached_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_5m_tokens=row["cache_write_5m_tokens"],
        cache_write_1h_tokens=row["cache_write_1h_tokens"],
        cache_write_24h_tokens=row["cache_write_24h_tokens"],
        completion_tokens=row["completion_tokens"],
        cost=Decimal(row["cost"]),
        list_cost=Decimal(row["list_cost"]),
        degraded=row["degraded"],
        misses=tuple((reason, row[f"miss_{reason}"]) for reason in MISS_REASONS),
        drift_sum=row["drift_sum"],
        drift_count=row["drift_count"],
    )


SpendWindow = tuple[str, str, str]  # key id, period, window label


def spend_increments(rows: Sequence[LedgerRow]) -> dict[SpendWindow, tuple[str, Decimal]]:
    """What the rows add to the ``spend`` totals: per key and window, its principal and the cost."""
    increments: dict[SpendWindow, tuple[str, Decimal]] = {}
    for row in rows:
        if row.cost is None:
            continue
        windows = Windows.at(row.at)
        for period in (BudgetPeriod.DAY, BudgetPeriod.MONTH, BudgetPeriod.TOTAL):
            slot = (row.key_id, period.value, windows.label(period))
            _, amount = increments.get(slot, (row.principal_id, Decimal(0)))
            increments[slot] = (row.principal_id, amount + row.cost)
    return increments


def key_totals(rows: Iterable[tuple[str, str, str, Decimal]]) -> list[KeyTotals]:
    """``spend`` rows (key id, principal id, period, amount) of one instant's windows, per key."""
    by_key: dict[str, dict[str, Decimal]] = {}
    principals: dict[str, str] = {}
    for key_id, principal_id, period, amount in rows:
        principals[key_id] = principal_id
        by_key.setdefault(key_id, {})[period] = amount
    zero = Decimal(0)
    return [
        KeyTotals(
            principal_id=principals[key_id],
            key_id=key_id,
            day=amounts.get(BudgetPeriod.DAY, zero),
            month=amounts.get(BudgetPeriod.MONTH, zero),
            total=amounts.get(BudgetPeriod.TOTAL, zero),
        )
        for key_id, amounts in sorted(by_key.items())
    ]
