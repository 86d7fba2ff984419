"""A control store that is no start-up dependency: the gateway starts while it is down (SPEC §11).

Until the store answers, every operation raises ``StoreUnavailable`` at once: keys cannot be
resolved and the catalog cannot load, so the gateway answers 503 (never an unauthenticated pass)
and ``/readyz`` says it is not ready. ``prepare`` runs on each freshly opened store before it is
used (``cachegate serve`` migrates the schema and seeds the configured endpoints and models); a
store that opens but cannot be prepared yet is closed and tried again. The retrying is
``cachegate.background.Reconnecting``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from cachegate.background import Reconnecting
from cachegate.core.budgets import KeyTotals
from cachegate.core.types import CacheTariff
from cachegate.store.base import (
    ApiKey,
    Budget,
    BudgetPeriod,
    BudgetSubject,
    Catalog,
    ControlStore,
    Endpoint,
    LedgerRow,
    Model,
    Principal,
    RateLimit,
    StoreUnavailable,
    TariffVersion,
    UsageGroup,
    UsageQuery,
)

Opener = Callable[[], Awaitable[ControlStore]]
Preparer = Callable[[ControlStore], Awaitable[None]]


class ReconnectingStore:
    """A ``ControlStore`` over whatever ``opener`` returns, prepared, once it has returned."""

    def __init__(self, opener: Opener, prepare: Preparer, *, min_backoff: float = 0.25, max_backoff: float = 5.0):
        """Use ``await ReconnectingStore.open(opener, prepare)``."""
        self._opener = opener
        self._prepare = prepare
        self._backend = Reconnecting(
            "control store",
            self._open_prepared,
            StoreUnavailable,
            while_down="answering 503",
            resumes="serving",
            min_backoff=min_backoff,
            max_backoff=max_backoff,
        )

    @classmethod
    async def open(cls, opener: Opener, prepare: Preparer, **options: float) -> ReconnectingStore:
        """Try once now; on ``StoreUnavailable`` keep trying in the background (any other exception,
        such as an unsupported URL, is a configuration error and is raised)."""
        store = cls(opener, prepare, **options)
        await store._backend.open()
        return store

    async def _open_prepared(self) -> ControlStore:
        store = await self._opener()
        try:
            await self._prepare(store)
        except BaseException:
            await store.aclose()
            raise
        return store

    @property
    def connected(self) -> bool:
        return self._backend.connected

    @property
    def last_error(self) -> str | None:
        return self._backend.last_error

    async def migrate(self) -> None:
        await self._backend.get().migrate()

    async def create_principal(self, name: str) -> Principal:
        return await self._backend.get().create_principal(name)

    async def get_principal(self, name_or_id: str) -> Principal:
        return await self._backend.get().get_principal(name_or_id)

    async def list_principals(self) -> list[Principal]:
        return await self._backend.get().list_principals()

    async def create_api_key(self, principal_id: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        return await self._backend.get().create_api_key(principal_id, admin=admin)

    async def revoke_api_key(self, key_id: str) -> None:
        await self._backend.get().revoke_api_key(key_id)

    async def list_api_keys(self, principal_id: str | None = None) -> list[ApiKey]:
        return await self._backend.get().list_api_keys(principal_id)

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        return await self._backend.get().find_api_key(secret_hash)

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        await self._backend.get().put_endpoint(endpoint)

    async def put_model(self, model: Model) -> None:
        await self._backend.get().put_model(model)

    async def set_cache_tariff(self, model: str, tariff: CacheTariff, at: datetime | None = None) -> TariffVersion:
        return await self._backend.get().set_cache_tariff(model, tariff, at)

    async def disable_cache_tariff(self, model: str, at: datetime | None = None) -> bool:
        return await self._backend.get().disable_cache_tariff(model, at)

    async def load_catalog(self) -> Catalog:
        return await self._backend.get().load_catalog()

    async def put_budget(self, budget: Budget) -> None:
        await self._backend.get().put_budget(budget)

    async def delete_budget(self, subject: BudgetSubject, subject_id: str, period: BudgetPeriod) -> bool:
        return await self._backend.get().delete_budget(subject, subject_id, period)

    async def put_rate_limit(self, limit: RateLimit) -> None:
        await self._backend.get().put_rate_limit(limit)

    async def delete_rate_limit(self, key_id: str) -> bool:
        return await self._backend.get().delete_rate_limit(key_id)

    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        await self._backend.get().append_ledger(rows)

    async def usage(self, query: UsageQuery) -> list[UsageGroup]:
        return await self._backend.get().usage(query)

    async def spend_totals(self, at: datetime) -> list[KeyTotals]:
        return await self._backend.get().spend_totals(at)

    async def aclose(self) -> None:
        await self._backend.aclose()
