"""The control store on PostgreSQL: the production store, shared by every gateway replica.

asyncpg with a small pool. A call that cannot reach the server (refused, dropped, timed out,
server shutting down or out of connections) raises StoreUnavailable, which the gateway
answers by serving from memory (SPEC §11); the pool reconnects by itself once the server is
back. Decimals travel as NUMERIC and timestamps as TIMESTAMPTZ, so nothing is converted by
hand. Listings sort with the "C" collation, byte order, exactly as SQLite does.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cachegate.core.budgets import KeyTotals, Windows
from cachegate.core.types import CacheTariff
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
from cachegate.store.keys import generate_secret, hash_secret, new_key_id, new_principal_id
from cachegate.store.schema import LEDGER_COLUMNS, Dialect, migrations, schema_migrations_ddl
from cachegate.store.values import (
    BUDGET_COLUMNS,
    BUDGET_REPLACES,
    MODEL_COLUMNS,
    MODEL_ENDPOINTS_QUERY,
    RATE_LIMIT_COLUMNS,
    RATE_LIMIT_REPLACES,
    budget_from_row,
    check_amount,
    check_budget,
    check_model_endpoints,
    check_rate_limit,
    checked_tariff,
    decimal_text,
    grouped_endpoints,
    key_totals,
    model_from_row,
    model_ttl_text,
    rate_limit_from_row,
    usage_group_from_row,
    usage_sums,
    utc,
    utcnow,
)

# The advisory lock that serialises migrate() across processes ("cachegat" in ASCII).
_MIGRATION_LOCK = 0x6361636865676174

_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, server starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)

_Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # what pool.acquire() yields

_USAGE_SUMS = usage_sums("coalesce(sum({column}), 0)")
_KEY_COLUMNS = "id, principal_id, secret_hash, is_admin, created_at, revoked_at"
_REVOCATIONS = "SELECT count(revoked_at) FROM api_keys"  # keys are never un-revoked: it only grows
_TARIFF_COLUMNS = (
    "model, write_multiplier_5m, write_multiplier_1h, write_multiplier_24h, read_multiplier,"
    " min_prefix_tokens, valid_from, valid_until"
)

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
        """Apply the missing steps in one transaction, under an advisory lock held until commit."""
        async with self._connection() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await connection.execute(schema_migrations_ddl(Dialect.POSTGRES))
            applied = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
            for step in migrations():
                if step.version in applied:
                    continue
                await connection.execute(step.render(Dialect.POSTGRES))
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    step.version,
                    step.name,
                    utcnow(),
                )

    # principals and keys

    async def create_principal(self, name: str) -> Principal:
        principal = Principal(id=new_principal_id(), name=name, created_at=utcnow())
        async with self._connection() as connection:
            try:
                await connection.execute(
                    "INSERT INTO principals (id, name, created_at) VALUES ($1, $2, $3)",
                    principal.id,
                    principal.name,
                    principal.created_at,
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"principal {name!r} already exists") from exc
        return principal

    async def get_principal(self, name_or_id: str) -> Principal:
        async with self._connection() as connection:
            row = await connection.fetchrow(
                "SELECT id, name, created_at FROM principals WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1",
                name_or_id,
            )
        if row is None:
            raise NotFound(f"principal {name_or_id!r} does not exist")
        return _principal(row)

    async def list_principals(self) -> list[Principal]:
        async with self._connection() as connection:
            rows = await connection.fetch('SELECT id, name, created_at FROM principals ORDER BY name COLLATE "C"')
        return [_principal(row) for row in rows]

    async def create_api_key(self, principal_id: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        secret = generate_secret()
        key = ApiKey(
            id=new_key_id(),
            principal_id=principal_id,
            secret_hash=hash_secret(secret),
            is_admin=admin,
            created_at=utcnow(),
            revoked_at=None,
        )
        async with self._connection() as connection:
            try:
                await connection.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL)",
                    key.id,
                    key.principal_id,
                    key.secret_hash,
                    key.is_admin,
                    key.created_at,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"principal {principal_id!r} does not exist") from exc
        return key, secret

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke the key; revoking it again keeps the first revocation time."""
        async with self._connection() as connection:
            found = await connection.fetchval(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING true",
                utcnow(),
                key_id,
            )
        if found is None:
            raise NotFound(f"API key {key_id!r} does not exist")

    async def list_api_keys(self, principal_id: str | None = None) -> list[ApiKey]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR principal_id = $1"
                ' ORDER BY created_at, id COLLATE "C"',
                principal_id,
            )
        return [_api_key(row) for row in rows]

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1", secret_hash)
        return None if row is None else _api_key(row)

    # endpoints, models, tariffs

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        async with self._connection() as connection:
            await connection.execute(
                "INSERT INTO endpoints (name, base_url, api_key) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET base_url = excluded.base_url, api_key = excluded.api_key",
                endpoint.name,
                endpoint.base_url,
                endpoint.api_key,
            )

    async def put_model(self, model: Model) -> None:
        check_amount(model.input_price, "input_price")
        check_amount(model.output_price, "output_price")
        more_endpoints = check_model_endpoints(model)
        async with self._connection() as connection, connection.transaction():
            missing = await connection.fetchval(
                "SELECT name FROM unnest($1::text[]) AS named (name)"
                " WHERE NOT EXISTS (SELECT 1 FROM endpoints WHERE endpoints.name = named.name) LIMIT 1",
                list(model.endpoints),
            )
            if missing is not None:
                raise NotFound(f"endpoint {missing!r} does not exist")
            try:
                await connection.execute(
                    f"INSERT INTO models ({MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (alias) DO UPDATE SET endpoint = excluded.endpoint,"
                    " upstream_model = excluded.upstream_model, tokenizer = excluded.tokenizer,"
                    " input_price = excluded.input_price, output_price = excluded.output_price,"
                    " automatic_cache_ttl = excluded.automatic_cache_ttl",
                    model.alias,
                    model.endpoint,
                    model.upstream_model,
                    model.tokenizer,
                    model.input_price,
                    model.output_price,
                    model_ttl_text(model),
                )
                await connection.execute("DELETE FROM model_endpoints WHERE model = $1", model.alias)
                await connection.executemany(
                    "INSERT INTO model_endpoints (model, endpoint, position) VALUES ($1, $2, $3)", more_endpoints
                )
            except asyncpg.ForeignKeyViolationError as exc:  # an endpoint deleted meanwhile
                raise NotFound(f"an endpoint of model {model.alias!r} does not exist") from exc

    async def set_cache_tariff(self, model: str, tariff: CacheTariff, at: datetime | None = None) -> TariffVersion:
        tariff = checked_tariff(tariff)
        requested_start = None if at is None else utc(at)
        async with self._connection() as connection, connection.transaction():
            await _lock_model(connection, model)
            start = requested_start or utcnow()  # taken under the model's row lock
            await _close_open_tariff(connection, model, start)
            await connection.execute(
                f"INSERT INTO cache_tariffs ({_TARIFF_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
                model,
                *_multipliers(tariff),
                tariff.min_prefix_tokens,
                start,
            )
        return TariffVersion(model=model, tariff=tariff, valid_from=start, valid_until=None)

    async def disable_cache_tariff(self, model: str, at: datetime | None = None) -> bool:
        requested_end = None if at is None else utc(at)
        async with self._connection() as connection, connection.transaction():
            await _lock_model(connection, model)
            return await _close_open_tariff(connection, model, requested_end or utcnow())

    async def load_catalog(self) -> Catalog:
        # One snapshot for the three reads.
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
            endpoints = await connection.fetch("SELECT name, base_url, api_key FROM endpoints")
            models = await connection.fetch(f"SELECT {MODEL_COLUMNS} FROM models")
            more_endpoints = grouped_endpoints(await connection.fetch(MODEL_ENDPOINTS_QUERY))
            tariffs = await connection.fetch(
                f"SELECT {_TARIFF_COLUMNS} FROM cache_tariffs ORDER BY model, valid_from, id"
            )
            revocations = await connection.fetchval(_REVOCATIONS)
            budgets = await connection.fetch(
                f'SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY subject_kind, subject_id COLLATE "C", period'
            )
            rate_limits = await connection.fetch(f"SELECT {RATE_LIMIT_COLUMNS} FROM rate_limits")
        versions: defaultdict[str, list[TariffVersion]] = defaultdict(list)
        for row in tariffs:
            versions[row["model"]].append(_tariff_version(row))
        return Catalog(
            endpoints={row["name"]: Endpoint(row["name"], row["base_url"], row["api_key"]) for row in endpoints},
            models={row["alias"]: model_from_row(row, more_endpoints.get(row["alias"], ())) for row in models},
            tariffs={model: tuple(rows) for model, rows in versions.items()},
            revocations=revocations,
            budgets=tuple(budget_from_row(row) for row in budgets),
            rate_limits={row["key_id"]: rate_limit_from_row(row) for row in rate_limits},
        )

    # budgets and rate limits

    async def put_budget(self, budget: Budget) -> None:
        check_budget(budget)
        table = "api_keys" if budget.subject is BudgetSubject.KEY else "principals"
        async with self._connection() as connection, connection.transaction():
            if await connection.fetchval(f"SELECT true FROM {table} WHERE id = $1", budget.subject_id) is None:
                raise NotFound(f"{budget.subject.value} {budget.subject_id!r} does not exist")
            await connection.execute(
                f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ($1, $2, $3, $4)" + BUDGET_REPLACES,
                budget.subject.value,
                budget.subject_id,
                budget.period.value,
                budget.limit,
            )

    async def delete_budget(self, subject: BudgetSubject, subject_id: str, period: BudgetPeriod) -> bool:
        async with self._connection() as connection:
            deleted = await connection.fetchval(
                "DELETE FROM budgets WHERE subject_kind = $1 AND subject_id = $2 AND period = $3 RETURNING true",
                subject.value,
                subject_id,
                period.value,
            )
        return deleted is not None

    async def put_rate_limit(self, limit: RateLimit) -> None:
        check_rate_limit(limit)
        async with self._connection() as connection:
            try:
                await connection.execute(
                    f"INSERT INTO rate_limits ({RATE_LIMIT_COLUMNS}) VALUES ($1, $2, $3)" + RATE_LIMIT_REPLACES,
                    limit.key_id,
                    limit.requests_per_minute,
                    limit.input_tokens_per_minute,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"API key {limit.key_id!r} does not exist") from exc

    async def delete_rate_limit(self, key_id: str) -> bool:
        async with self._connection() as connection:
            deleted = await connection.fetchval("DELETE FROM rate_limits WHERE key_id = $1 RETURNING true", key_id)
        return deleted is not None

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
            found = await connection.fetch(
                "SELECT key_id, principal_id, period, amount FROM spend"
                " WHERE (period = 'day' AND label = $1) OR (period = 'month' AND label = $2) OR period = 'total'",
                windows.day,
                windows.month,
            )
        return key_totals((row["key_id"], row["principal_id"], row["period"], row["amount"]) for row in found)

    async def usage(self, query: UsageQuery) -> list[UsageGroup]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, principal_id, key_id, model,"
                f" {_USAGE_SUMS} FROM ledger"
                " WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)"
                " AND ($3::text IS NULL OR principal_id = $3)"
                " GROUP BY day, principal_id, key_id, model"
                ' ORDER BY day, key_id COLLATE "C", model COLLATE "C", principal_id COLLATE "C"',
                None if query.since is None else utc(query.since),
                None if query.until is None else utc(query.until),
                query.principal_id,
            )
        return [usage_group_from_row(row) for row in rows]


async def _lock_model(connection: _Connection, model: str) -> None:
    """Lock the model's row: concurrent tariff changes of one model then run one after another,
    each seeing the version the previous one opened, instead of failing on the unique index."""
    if await connection.fetchval("SELECT true FROM models WHERE alias = $1 FOR UPDATE", model) is None:
        raise NotFound(f"model {model!r} does not exist")


async def _close_open_tariff(connection: _Connection, model: str, end: datetime) -> bool:
    """End the model's open tariff version at ``end``; returns whether there was one."""
    row = await connection.fetchrow(
        "SELECT id, valid_from FROM cache_tariffs WHERE model = $1 AND valid_until IS NULL", model
    )
    if row is None:
        return False
    if end < row["valid_from"]:
        raise Conflict(
            f"the open cache tariff of {model!r} starts at {row['valid_from'].isoformat()}, after {end.isoformat()}"
        )
    await connection.execute("UPDATE cache_tariffs SET valid_until = $1 WHERE id = $2", end, row["id"])
    return True


def _multipliers(tariff: CacheTariff) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    return (
        Decimal(tariff.write_multiplier_5m),
        Decimal(tariff.write_multiplier_1h),
        Decimal(tariff.write_multiplier_24h),
        Decimal(tariff.read_multiplier),
    )


def _principal(row: asyncpg.Record) -> Principal:
    return Principal(id=row["id"], name=row["name"], created_at=row["created_at"])


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        principal_id=row["principal_id"],
        secret_hash=row["secret_hash"],
        is_admin=row["is_admin"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _tariff_version(row: asyncpg.Record) -> TariffVersion:
    return TariffVersion(
        model=row["model"],
        tariff=CacheTariff(
            write_multiplier_5m=decimal_text(row["write_multiplier_5m"]),
            write_multiplier_1h=decimal_text(row["write_multiplier_1h"]),
            write_multiplier_24h=decimal_text(row["write_multiplier_24h"]),
            read_multiplier=decimal_text(row["read_multiplier"]),
            min_prefix_tokens=row["min_prefix_tokens"],
        ),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
    )


def _ledger_record(row: LedgerRow) -> tuple[object, ...]:
    """The row's values in LEDGER_COLUMNS order, checked."""
    values: dict[str, object] = {name: getattr(row, name) for name in LEDGER_COLUMNS}
    values["at"] = utc(row.at)
    values["cost"] = None if row.cost is None else check_amount(row.cost, "cost")
    values["list_cost"] = None if row.list_cost is None else check_amount(row.list_cost, "list_cost")
    return tuple(values[name] for name in LEDGER_COLUMNS)
