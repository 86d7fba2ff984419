"""The control store on PostgreSQL: the production store, shared by every gateway replica.

asyncpg with a small pool. A call that cannot reach the server (refused, dropped, timed out,
server shutting down or out of connections) raises StoreUnavailable, which the gateway
answers by serving from memory (SPEC §11); the pool reconnects by itself once the server is
back. Decimals travel as NUMERIC and timestamps as TIMESTAMPTZ, so nothing is converted by
hand. Listings sort with the "C" collation, byte order, exactly as SQLite does.

The SQL is ``cachegate.store.statements``'s, shared with SQLite; what is PostgreSQL's own here is
the transactions and row locks, the error mapping (unreachable server, constraint violations), and
the ledger's append: one statement over arrays, one round trip per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cachegate.core.budgets import KeyTotals, Windows
from cachegate.core.types import CacheTariff
from cachegate.sql.dialect import Dialect
from cachegate.sql.migrations import migrate_postgres
from cachegate.store.base import (
    ApiKey,
    Budget,
    BudgetPeriod,
    BudgetSubject,
    Catalog,
    Conflict,
    Endpoint,
    LedgerRow,
    Model,
    NotFound,
    Principal,
    RateLimit,
    StoreUnavailable,
    TariffVersion,
    UsageGroup,
    UsageQuery,
)
from cachegate.store.keys import new_api_key, new_principal_id
from cachegate.store.statements import (
    LEDGER_COLUMNS,
    SCHEMA,
    api_key_from_row,
    catalog_from_rows,
    check_tariff_end,
    principal_from_row,
    tariff_parameters,
    usage_statement,
)
from cachegate.store.statements import POSTGRES as SQL
from cachegate.store.values import (
    check_amount,
    check_budget,
    check_model_endpoints,
    check_rate_limit,
    checked_tariff,
    key_totals,
    model_ttl_text,
    usage_group_from_row,
    utc,
    utcnow,
)

_POSTGRES = Dialect.POSTGRES

_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, server starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)

_Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # what pool.acquire() yields

# The ledger's column types, for the arrays one insert of a whole batch unnests.
_LEDGER_TYPES = {
    "at": "timestamptz",
    "principal_id": "text",
    "key_id": "text",
    "model": "text",
    "status": "int4",
    "streaming": "bool",
    "prompt_tokens": "int4",
    "completion_tokens": "int4",
    "cache_read_tokens": "int4",
    "cache_creation_5m_tokens": "int4",
    "cache_creation_1h_tokens": "int4",
    "cache_creation_24h_tokens": "int4",
    "upstream_cached_tokens": "int4",
    "cost": "numeric",
    "list_cost": "numeric",
    "latency_ms": "float8",
    "degraded": "bool",
    "counted_prompt_tokens": "int4",
    "row_id": "text",
    "route": "text",
    "disconnect": "text",
    "miss_reason": "text",
}
assert tuple(_LEDGER_TYPES) == LEDGER_COLUMNS, "every ledger column needs its type here"

# One statement, one round trip, one transaction: the batch is inserted (a row id stored already is
# skipped: a replayed row is billed once) and the rows actually inserted are added to the spend
# totals of their keys' UTC day, month and all time. The totals are upserted in key order, so two
# replicas' batches touching the same keys lock them in the same order and cannot deadlock.
_APPEND_LEDGER = f"""
WITH inserted AS (
    INSERT INTO ledger ({", ".join(LEDGER_COLUMNS)})
    SELECT * FROM unnest({", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_LEDGER_TYPES.values(), 1))})
    ON CONFLICT (row_id) DO NOTHING
    RETURNING key_id, principal_id, at, cost
), costs AS (
    SELECT key_id, principal_id, cost, at AT TIME ZONE 'UTC' AS utc FROM inserted WHERE cost IS NOT NULL
), windows AS (
    SELECT key_id, principal_id, 'day' AS period, to_char(utc, 'YYYY-MM-DD') AS label, cost FROM costs
    UNION ALL SELECT key_id, principal_id, 'month', to_char(utc, 'YYYY-MM'), cost FROM costs
    UNION ALL SELECT key_id, principal_id, 'total', '', cost FROM costs
)
INSERT INTO spend (key_id, principal_id, period, label, amount)
SELECT key_id, min(principal_id), period, label, sum(cost) FROM windows
GROUP BY key_id, period, label ORDER BY key_id, period, label
ON CONFLICT (key_id, period, label) DO UPDATE SET amount = spend.amount + excluded.amount
"""


class PostgresStore:
    """ControlStore on a PostgreSQL database; create it with ``await PostgresStore.open(dsn)``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> PostgresStore:
        """Connect eagerly, so a wrong or dead server is reported at start-up."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
            )
        except (*_UNREACHABLE, asyncpg.PostgresError) as exc:
            # A server that answers but refuses (a database not created yet, a role not granted
            # yet) is unavailable too: an operator can fix it while the gateway waits.
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc

    async def aclose(self) -> None:
        await self._pool.close()

    async def migrate(self) -> None:
        async with self._connection() as connection:
            await migrate_postgres(connection, SCHEMA)

    # principals and keys

    async def create_principal(self, name: str) -> Principal:
        principal = Principal(id=new_principal_id(), name=name, created_at=utcnow())
        async with self._connection() as connection:
            try:
                await connection.execute(SQL.insert_principal, principal.id, principal.name, principal.created_at)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"principal {name!r} already exists") from exc
        return principal

    async def get_principal(self, name_or_id: str) -> Principal:
        async with self._connection() as connection:
            row = await connection.fetchrow(SQL.get_principal, *(name_or_id,) * 3)
        if row is None:
            raise NotFound(f"principal {name_or_id!r} does not exist")
        return principal_from_row(_POSTGRES, row)

    async def list_principals(self) -> list[Principal]:
        async with self._connection() as connection:
            rows = await connection.fetch(SQL.list_principals)
        return [principal_from_row(_POSTGRES, row) for row in rows]

    async def create_api_key(self, principal_id: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        key, secret = new_api_key(principal_id, admin)
        async with self._connection() as connection:
            try:
                await connection.execute(
                    SQL.insert_key, key.id, key.principal_id, key.secret_hash, key.is_admin, key.created_at
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"principal {principal_id!r} does not exist") from exc
        return key, secret

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke the key; revoking it again keeps the first revocation time."""
        async with self._connection() as connection:
            status = await connection.execute(SQL.revoke_key, utcnow(), key_id)
        if _affected(status) == 0:
            raise NotFound(f"API key {key_id!r} does not exist")

    async def list_api_keys(self, principal_id: str | None = None) -> list[ApiKey]:
        async with self._connection() as connection:
            if principal_id is None:
                rows = await connection.fetch(SQL.list_keys)
            else:
                rows = await connection.fetch(SQL.list_keys_of, principal_id)
        return [api_key_from_row(_POSTGRES, row) for row in rows]

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(SQL.find_key, secret_hash)
        return None if row is None else api_key_from_row(_POSTGRES, row)

    # endpoints, models, tariffs

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        async with self._connection() as connection:
            await connection.execute(SQL.put_endpoint, endpoint.name, endpoint.base_url, endpoint.api_key)

    async def put_model(self, model: Model) -> None:
        check_amount(model.input_price, "input_price")
        check_amount(model.output_price, "output_price")
        more_endpoints = check_model_endpoints(model)
        async with self._connection() as connection, connection.transaction():
            for name in model.endpoints:
                if await connection.fetchval(SQL.endpoint_exists, name) is None:
                    raise NotFound(f"endpoint {name!r} does not exist")
            try:
                await connection.execute(
                    SQL.put_model,
                    model.alias,
                    model.endpoint,
                    model.upstream_model,
                    model.tokenizer,
                    model.input_price,
                    model.output_price,
                    model_ttl_text(model),
                )
                await connection.execute(SQL.delete_model_endpoints, model.alias)
                await connection.executemany(SQL.insert_model_endpoint, more_endpoints)
            except asyncpg.ForeignKeyViolationError as exc:  # an endpoint deleted meanwhile
                raise NotFound(f"an endpoint of model {model.alias!r} does not exist") from exc

    async def set_cache_tariff(self, model: str, tariff: CacheTariff, at: datetime | None = None) -> TariffVersion:
        tariff = checked_tariff(tariff)
        requested_start = None if at is None else utc(at)
        async with self._connection() as connection, connection.transaction():
            await _lock_model(connection, model)
            start = requested_start or utcnow()  # taken under the model's row lock
            await _close_open_tariff(connection, model, start)
            await connection.execute(SQL.insert_tariff, *tariff_parameters(_POSTGRES, model, tariff, start))
        return TariffVersion(model=model, tariff=tariff, valid_from=start, valid_until=None)

    async def disable_cache_tariff(self, model: str, at: datetime | None = None) -> bool:
        requested_end = None if at is None else utc(at)
        async with self._connection() as connection, connection.transaction():
            await _lock_model(connection, model)
            return await _close_open_tariff(connection, model, requested_end or utcnow())

    async def load_catalog(self) -> Catalog:
        # One snapshot for the reads.
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
            return catalog_from_rows(
                _POSTGRES,
                endpoints=await connection.fetch(SQL.list_endpoints),
                models=await connection.fetch(SQL.list_models),
                model_endpoints=await connection.fetch(SQL.model_endpoints),
                tariffs=await connection.fetch(SQL.list_tariffs),
                revocations=await connection.fetchval(SQL.revocations),
                budgets=await connection.fetch(SQL.list_budgets),
                rate_limits=await connection.fetch(SQL.list_rate_limits),
            )

    # budgets and rate limits

    async def put_budget(self, budget: Budget) -> None:
        check_budget(budget)
        exists = SQL.key_exists if budget.subject is BudgetSubject.KEY else SQL.principal_exists
        async with self._connection() as connection, connection.transaction():
            if await connection.fetchval(exists, budget.subject_id) is None:
                raise NotFound(f"{budget.subject.value} {budget.subject_id!r} does not exist")
            await connection.execute(
                SQL.put_budget, budget.subject.value, budget.subject_id, budget.period.value, budget.limit
            )

    async def delete_budget(self, subject: BudgetSubject, subject_id: str, period: BudgetPeriod) -> bool:
        async with self._connection() as connection:
            status = await connection.execute(SQL.delete_budget, subject.value, subject_id, period.value)
        return _affected(status) > 0

    async def put_rate_limit(self, limit: RateLimit) -> None:
        check_rate_limit(limit)
        async with self._connection() as connection:
            try:
                await connection.execute(
                    SQL.put_rate_limit, limit.key_id, limit.requests_per_minute, limit.input_tokens_per_minute
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"API key {limit.key_id!r} does not exist") from exc

    async def delete_rate_limit(self, key_id: str) -> bool:
        async with self._connection() as connection:
            status = await connection.execute(SQL.delete_rate_limit, key_id)
        return _affected(status) > 0

    # usage ledger

    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        records = [_ledger_record(row) for row in rows]
        columns = [list(values) for values in zip(*records, strict=True)]  # one array per column
        async with self._connection() as connection:
            await connection.execute(_APPEND_LEDGER, *columns)

    async def spend_totals(self, at: datetime) -> list[KeyTotals]:
        windows = Windows.at(at)
        async with self._connection() as connection:
            found = await connection.fetch(SQL.spend_totals, windows.day, windows.month)
        return key_totals((row["key_id"], row["principal_id"], row["period"], row["amount"]) for row in found)

    async def usage(self, query: UsageQuery) -> list[UsageGroup]:
        statement, parameters = usage_statement(_POSTGRES, query)
        async with self._connection() as connection:
            rows = await connection.fetch(statement, *parameters)
        return [usage_group_from_row(row) for row in rows]


def _affected(status: str) -> int:
    """The row count of a command's status, such as ``UPDATE 1`` or ``DELETE 0``."""
    return int(status.rsplit(" ", 1)[1])


async def _lock_model(connection: _Connection, model: str) -> None:
    """Lock the model's row: concurrent tariff changes of one model then run one after another,
    each seeing the version the previous one opened, instead of failing on the unique index."""
    if await connection.fetchval(SQL.lock_model, model) is None:
        raise NotFound(f"model {model!r} does not exist")


async def _close_open_tariff(connection: _Connection, model: str, end: datetime) -> bool:
    """End the model's open tariff version at ``end``; returns whether there was one."""
    row = await connection.fetchrow(SQL.open_tariff, model)
    if row is None:
        return False
    check_tariff_end(model, row["valid_from"], end)
    await connection.execute(SQL.close_tariff, end, row["id"])
    return True


def _ledger_record(row: LedgerRow) -> tuple[object, ...]:
    """The row's values in LEDGER_COLUMNS order, checked."""
    values: dict[str, object] = {name: getattr(row, name) for name in LEDGER_COLUMNS}
    values["at"] = utc(row.at)
    values["cost"] = None if row.cost is None else check_amount(row.cost, "cost")
    values["list_cost"] = None if row.list_cost is None else check_amount(row.list_cost, "list_cost")
    return tuple(values[name] for name in LEDGER_COLUMNS)
