"""Budgets and rate limits (SPEC §13): set, replaced, deleted and listed.

A budget caps what one key or one principal is billed over a UTC day, a UTC month or all time;
its subject is named by key id, or by principal name or id (resolved here, stored by id). A rate
limit caps one key's requests and input tokens per minute. The gateway reads both from its
catalog, so a change applies wherever the catalog is reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from cachegate.operations.access import get_key
from cachegate.operations.checks import InvalidArgument, check_count, check_decimal
from cachegate.store.base import Budget, BudgetPeriod, BudgetSubject, ControlStore, NotFound, RateLimit


@dataclass(frozen=True, slots=True)
class BudgetView:
    budget: Budget
    principal_name: str | None  # the principal's name, for a principal's budget


async def _subject_id(store: ControlStore, subject: BudgetSubject, who: str) -> tuple[str, str | None]:
    """The stored id of the subject, and the principal's name for a principal."""
    if subject is BudgetSubject.PRINCIPAL:
        principal = await store.get_principal(who)
        return principal.id, principal.name
    return who, None


async def set_budget(
    store: ControlStore, subject: BudgetSubject, who: str, period: BudgetPeriod, limit: Decimal
) -> BudgetView:
    """Set, or replace, the budget of ``who`` (a key id, or a principal's name or id) for ``period``."""
    check_decimal(limit, "limit")
    subject_id, name = await _subject_id(store, subject, who)
    budget = Budget(subject, subject_id, period, limit)
    await store.put_budget(budget)
    return BudgetView(budget, name)


async def delete_budget(store: ControlStore, subject: BudgetSubject, who: str, period: BudgetPeriod) -> bool:
    """Remove the budget; returns whether there was one."""
    subject_id, _ = await _subject_id(store, subject, who)
    return await store.delete_budget(subject, subject_id, period)


async def list_budgets(
    store: ControlStore, *, key: str | None = None, principal: str | None = None
) -> list[BudgetView]:
    """Every budget, or those of one key (by id), of one principal (by name or id: its own, not its
    keys'), or of both."""
    principal_id = None if principal is None else (await store.get_principal(principal)).id
    catalog = await store.load_catalog()
    names = {p.id: p.name for p in await store.list_principals()}
    return [
        BudgetView(b, names.get(b.subject_id) if b.subject is BudgetSubject.PRINCIPAL else None)
        for b in catalog.budgets
        if (key is None and principal_id is None)
        or (b.subject is BudgetSubject.KEY and b.subject_id == key)
        or (b.subject is BudgetSubject.PRINCIPAL and b.subject_id == principal_id)
    ]


async def set_rate_limit(
    store: ControlStore, key_id: str, *, requests_per_minute: int | None, input_tokens_per_minute: int | None
) -> RateLimit:
    """Set, or replace, the key's rate limits; a limit left None is off. At least one must be given."""
    if requests_per_minute is None and input_tokens_per_minute is None:
        raise InvalidArgument(
            "requests_per_minute",
            "give requests_per_minute, input_tokens_per_minute or both (to lift a key's limits, delete them)",
        )
    for argument, value in (
        ("requests_per_minute", requests_per_minute),
        ("input_tokens_per_minute", input_tokens_per_minute),
    ):
        if value is not None:
            check_count(value, argument, minimum=1)
    limit = RateLimit(key_id, requests_per_minute, input_tokens_per_minute)
    await store.put_rate_limit(limit)
    return limit


async def delete_rate_limit(store: ControlStore, key_id: str) -> bool:
    """Remove the key's rate limits; returns whether it had any."""
    return await store.delete_rate_limit(key_id)


async def list_rate_limits(store: ControlStore) -> list[RateLimit]:
    catalog = await store.load_catalog()
    return sorted(catalog.rate_limits.values(), key=lambda limit: limit.key_id)


async def get_rate_limit(store: ControlStore, key_id: str) -> RateLimit:
    """The key's rate limits; NotFound when the key does not exist or has none."""
    limit = (await store.load_catalog()).rate_limits.get(key_id)
    if limit is None:
        await get_key(store, key_id)  # says which: no such key
        raise NotFound(f"API key {key_id!r} has no rate limits")
    return limit
