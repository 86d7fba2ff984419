"""The control store's SQL, written once for SQLite and PostgreSQL, and its rows read back.

Each statement is a field of ``Statements`` written with ``?`` parameters and ``${slots}``
(``cachegate.sql.dialect``); ``SQLITE`` and ``POSTGRES`` are the set rendered for each database.
What the adapters still do their own way is what truly differs: transactions and locking
(BEGIN IMMEDIATE on one file; row locks and one-statement batches on a shared server), the
client calls (sqlite3 on a worker thread; asyncpg), error mapping, and the ledger's append
(one SQLite transaction of plain statements; one PostgreSQL statement over arrays).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from cachegate.core.types import CacheTariff
from cachegate.sql.dialect import Dialect, decimal_text
from cachegate.sql.migrations import Track
from cachegate.store.base import (
    MISS_REASONS,
    ApiKey,
    Catalog,
    Conflict,
    Endpoint,
    LedgerRow,
    Principal,
    TariffVersion,
    UsageQuery,
)
from cachegate.store.values import budget_from_row, grouped_endpoints, model_from_row, rate_limit_from_row

SCHEMA = Track(package="cachegate.store", table="schema_migrations")
"""The store's migration steps: ``cachegate/store/migrations``."""

# The ledger table's columns are LedgerRow's fields, by name and in order.
LEDGER_COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(LedgerRow))

KEY_COLUMNS = "id, principal_id, secret_hash, is_admin, created_at, revoked_at"
MODEL_COLUMNS = "alias, endpoint, upstream_model, tokenizer, input_price, output_price, automatic_cache_ttl"
TARIFF_COLUMNS = (
    "model, write_multiplier_5m, write_multiplier_1h, write_multiplier_24h, read_multiplier,"
    " min_prefix_tokens, valid_from, valid_until"
)
BUDGET_COLUMNS = "subject_kind, subject_id, period, limit_amount"
RATE_LIMIT_COLUMNS = "key_id, requests_per_minute, input_tokens_per_minute"


def _values(count: int) -> str:
    return ", ".join("?" * count)


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of the store; ``Statements.rendered(dialect)`` fills them in for one database."""

    insert_principal: str = "INSERT INTO principals (id, name, created_at) VALUES (?, ?, ?)"
    get_principal: str = (  # by id or by name, the id first: (x, x, x)
        "SELECT id, name, created_at FROM principals WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1"
    )
    list_principals: str = "SELECT id, name, created_at FROM principals ORDER BY name COLLATE ${bytewise}"
    principal_exists: str = "SELECT 1 FROM principals WHERE id = ?"

    insert_key: str = f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)"
    revoke_key: str = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"
    list_keys: str = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id COLLATE ${{bytewise}}"
    list_keys_of: str = (
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE principal_id = ? ORDER BY created_at, id COLLATE ${{bytewise}}"
    )
    find_key: str = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?"
    key_exists: str = "SELECT 1 FROM api_keys WHERE id = ?"
    revocations: str = "SELECT count(revoked_at) FROM api_keys"  # keys are never un-revoked: it only grows

    put_endpoint: str = (
        "INSERT INTO endpoints (name, base_url, api_key) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET base_url = excluded.base_url, api_key = excluded.api_key"
    )
    endpoint_exists: str = "SELECT 1 FROM endpoints WHERE name = ?"
    list_endpoints: str = "SELECT name, base_url, api_key FROM endpoints"

    put_model: str = (
        f"INSERT INTO models ({MODEL_COLUMNS}) VALUES ({_values(7)})"
        " ON CONFLICT (alias) DO UPDATE SET endpoint = excluded.endpoint,"
        " upstream_model = excluded.upstream_model, tokenizer = excluded.tokenizer,"
        " input_price = excluded.input_price, output_price = excluded.output_price,"
        " automatic_cache_ttl = excluded.automatic_cache_ttl"
    )
    # Under the transaction's write lock (SQLite) or the model's row lock (PostgreSQL), so concurrent
    # tariff changes of one model run one after another, each seeing the version the last one opened.
    lock_model: str = "SELECT 1 FROM models WHERE alias = ? ${for_update}"
    list_models: str = f"SELECT {MODEL_COLUMNS} FROM models"
    delete_model_endpoints: str = "DELETE FROM model_endpoints WHERE model = ?"
    insert_model_endpoint: str = "INSERT INTO model_endpoints (model, endpoint, position) VALUES (?, ?, ?)"
    model_endpoints: str = "SELECT model, endpoint FROM model_endpoints ORDER BY model, position"

    insert_tariff: str = f"INSERT INTO cache_tariffs ({TARIFF_COLUMNS}) VALUES ({_values(7)}, NULL)"
    open_tariff: str = "SELECT id, valid_from FROM cache_tariffs WHERE model = ? AND valid_until IS NULL"
    close_tariff: str = "UPDATE cache_tariffs SET valid_until = ? WHERE id = ?"
    list_tariffs: str = f"SELECT {TARIFF_COLUMNS} FROM cache_tariffs ORDER BY model, valid_from, id"

    put_budget: str = (
        f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (subject_kind, subject_id, period) DO UPDATE SET limit_amount = excluded.limit_amount"
    )
    delete_budget: str = "DELETE FROM budgets WHERE subject_kind = ? AND subject_id = ? AND period = ?"
    list_budgets: str = (
        f"SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY subject_kind, subject_id COLLATE ${{bytewise}}, period"
    )
    put_rate_limit: str = (
        f"INSERT INTO rate_limits ({RATE_LIMIT_COLUMNS}) VALUES (?, ?, ?)"
        " ON CONFLICT (key_id) DO UPDATE SET requests_per_minute = excluded.requests_per_minute,"
        " input_tokens_per_minute = excluded.input_tokens_per_minute"
    )
    delete_rate_limit: str = "DELETE FROM rate_limits WHERE key_id = ?"
    list_rate_limits: str = f"SELECT {RATE_LIMIT_COLUMNS} FROM rate_limits"

    spend_totals: str = (  # (day label, month label)
        "SELECT key_id, principal_id, period, amount FROM spend"
        " WHERE (period = 'day' AND label = ?) OR (period = 'month' AND label = ?) OR period = 'total'"
    )

    @classmethod
    def rendered(cls, dialect: Dialect) -> Statements:
        return cls(**{field.name: dialect.render(getattr(cls(), field.name)) for field in fields(cls)})


SQLITE = Statements.rendered(Dialect.SQLITE)
POSTGRES = Statements.rendered(Dialect.POSTGRES)


def _usage_sums() -> str:
    """The aggregates of one usage group (``UsageGroup``); decimals summed exactly (``${decimal_sum}``)."""
    misses = "".join(f" count(*) FILTER (WHERE miss_reason = '{reason}') AS miss_{reason}," for reason in MISS_REASONS)
    return (
        "count(*) AS requests, sum(prompt_tokens) AS prompt_tokens,"
        " sum(prompt_tokens - cache_read_tokens - cache_creation_5m_tokens - cache_creation_1h_tokens"
        " - cache_creation_24h_tokens) AS uncached_tokens,"
        " sum(cache_read_tokens) AS cache_read_tokens,"
        " sum(cache_creation_5m_tokens) AS cache_write_5m_tokens,"
        " sum(cache_creation_1h_tokens) AS cache_write_1h_tokens,"
        " sum(cache_creation_24h_tokens) AS cache_write_24h_tokens,"
        " sum(completion_tokens) AS completion_tokens,"
        " coalesce(${decimal_sum}(cost), 0) AS cost, coalesce(${decimal_sum}(list_cost), 0) AS list_cost,"
        " count(*) FILTER (WHERE degraded) AS degraded,"
        f"{misses}"
        " coalesce(sum(counted_prompt_tokens - prompt_tokens), 0) AS drift_sum,"
        " count(counted_prompt_tokens) AS drift_count"
    )


_USAGE = (
    "SELECT ${utc_day} AS day, principal_id, key_id, model, " + _usage_sums() + " FROM ledger {where}"
    " GROUP BY day, principal_id, key_id, model"
    " ORDER BY day, key_id COLLATE ${bytewise}, model COLLATE ${bytewise}, principal_id COLLATE ${bytewise}"
)


def usage_statement(dialect: Dialect, query: UsageQuery) -> tuple[str, list[object]]:
    """The usage query's statement and parameters: the day groups of the ledger rows it selects."""
    conditions: list[str] = []
    parameters: list[object] = []
    for condition, value in (
        ("at >= ?", None if query.since is None else dialect.timestamp(query.since)),
        ("at < ?", None if query.until is None else dialect.timestamp(query.until)),
        ("principal_id = ?", query.principal_id),
    ):
        if value is not None:
            conditions.append(condition)
            parameters.append(value)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return dialect.render(_USAGE.replace("{where}", where)), parameters


def check_tariff_end(model: str, valid_from: datetime, end: datetime) -> None:
    """A version cannot end before it starts."""
    if end < valid_from:
        raise Conflict(
            f"the open cache tariff of {model!r} starts at {valid_from.isoformat()}, after {end.isoformat()}"
        )


def principal_from_row(dialect: Dialect, row: Mapping[str, Any]) -> Principal:
    return Principal(id=row["id"], name=row["name"], created_at=dialect.read_timestamp(row["created_at"]))


def api_key_from_row(dialect: Dialect, row: Mapping[str, Any]) -> ApiKey:
    revoked_at = row["revoked_at"]
    return ApiKey(
        id=row["id"],
        principal_id=row["principal_id"],
        secret_hash=bytes(row["secret_hash"]),
        is_admin=bool(row["is_admin"]),
        created_at=dialect.read_timestamp(row["created_at"]),
        revoked_at=None if revoked_at is None else dialect.read_timestamp(revoked_at),
    )


def tariff_parameters(dialect: Dialect, model: str, tariff: CacheTariff, start: datetime) -> tuple[object, ...]:
    """``insert_tariff``'s parameters (the multipliers are checked, positional text already)."""
    return (
        model,
        dialect.decimal(tariff.write_multiplier_5m),
        dialect.decimal(tariff.write_multiplier_1h),
        dialect.decimal(tariff.write_multiplier_24h),
        dialect.decimal(tariff.read_multiplier),
        tariff.min_prefix_tokens,
        dialect.timestamp(start),
    )


def tariff_version_from_row(dialect: Dialect, row: Mapping[str, Any]) -> TariffVersion:
    valid_until = row["valid_until"]
    return TariffVersion(
        model=row["model"],
        tariff=CacheTariff(
            write_multiplier_5m=decimal_text(Decimal(row["write_multiplier_5m"])),
            write_multiplier_1h=decimal_text(Decimal(row["write_multiplier_1h"])),
            write_multiplier_24h=decimal_text(Decimal(row["write_multiplier_24h"])),
            read_multiplier=decimal_text(Decimal(row["read_multiplier"])),
            min_prefix_tokens=row["min_prefix_tokens"],
        ),
        valid_from=dialect.read_timestamp(row["valid_from"]),
        valid_until=None if valid_until is None else dialect.read_timestamp(valid_until),
    )


Rows = Iterable[Mapping[str, Any]]


def catalog_from_rows(
    dialect: Dialect,
    *,
    endpoints: Rows,
    models: Rows,
    model_endpoints: Rows,
    tariffs: Rows,
    revocations: int,
    budgets: Rows,
    rate_limits: Rows,
) -> Catalog:
    """The catalog from the rows of its ``list_*`` statements (and ``model_endpoints``), read in one snapshot."""
    more_endpoints = grouped_endpoints(model_endpoints)
    versions: defaultdict[str, list[TariffVersion]] = defaultdict(list)
    for row in tariffs:
        versions[row["model"]].append(tariff_version_from_row(dialect, row))
    return Catalog(
        endpoints={row["name"]: Endpoint(row["name"], row["base_url"], row["api_key"]) for row in endpoints},
        models={row["alias"]: model_from_row(row, more_endpoints.get(row["alias"], ())) for row in models},
        tariffs={model: tuple(rows) for model, rows in versions.items()},
        revocations=revocations,
        budgets=tuple(budget_from_row(row) for row in budgets),
        rate_limits={row["key_id"]: rate_limit_from_row(row) for row in rate_limits},
    )
