"""The control store on SQLite: the embedded default, one file, nothing to install.

Every call runs on one SqliteWorker (``cachegate.sql.sqlite``): one thread that owns the
connection, so calls are serialised there and never block the event loop. The usage query, which
reads much of the ledger, runs on a second worker with a read connection of its own, so it never
holds up the calls behind it. WAL lets another process, such as the admin CLI next to a running
gateway, read while this one writes; writers wait for each other through the busy timeout.

The SQL is ``cachegate.store.statements``'s, shared with PostgreSQL; what is SQLite's own here is
the transactions (BEGIN IMMEDIATE, the write lock up front), the error mapping, and the ledger's
append. Decimals are stored as positional TEXT and timestamps as fixed-width ISO-8601 UTC TEXT,
whose text order is time order, so range filters and the day grouping stay in plain SQL; decimal
sums go through a Python aggregate so they are never added as floats.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

from cachegate.core.budgets import KeyTotals, Windows
from cachegate.core.types import CacheTariff
from cachegate.sql.dialect import Dialect, encode_timestamp
from cachegate.sql.migrations import migrate_sqlite
from cachegate.sql.sqlite import SqliteWorker, connect, transaction
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
from cachegate.store.statements import SQLITE as SQL
from cachegate.store.values import (
    check_amount,
    check_budget,
    check_model_endpoints,
    check_rate_limit,
    checked_tariff,
    decimal_text,
    key_totals,
    model_ttl_text,
    spend_increments,
    usage_group_from_row,
    utc,
    utcnow,
)

T = TypeVar("T")

_SQLITE = Dialect.SQLITE
_BUSY_TIMEOUT_SECONDS = 30.0

# Primary result codes that mean "the database cannot be used right now", as opposed to a
# bug in a statement; they become StoreUnavailable.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_CORRUPT,
    }
)

_INSERT_LEDGER = (
    f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) VALUES ({', '.join('?' for _ in LEDGER_COLUMNS)})"
    " ON CONFLICT (row_id) DO NOTHING"  # a replayed row (the journal's) is billed once
)
_ADD_SPEND = (
    "INSERT INTO spend (key_id, principal_id, period, label, amount) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (key_id, period, label) DO UPDATE SET amount = decimal_add(amount, excluded.amount)"
)


class SqliteStore:
    """ControlStore on one SQLite file; create it with ``await SqliteStore.open(path)``."""

    def __init__(self, path: Path, worker: SqliteWorker) -> None:
        self._path = path
        self._worker = worker
        # A second connection, on a thread of its own, for the reports that read much of the ledger
        # (``usage``): WAL lets it read while the main connection writes, so a dashboard's or a
        # tenant's usage query never holds up key lookups or the ledger's writes behind it. Opened
        # on first use.
        self._reports = _worker(path, "cachegate-sqlite-reports")

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating it and its directory if needed) the database file at ``path``."""
        path = Path(path)
        worker = _worker(path, "cachegate-sqlite")
        await worker.open()
        return cls(path, worker)

    async def aclose(self) -> None:
        await self._reports.aclose()
        await self._worker.aclose()

    async def migrate(self) -> None:
        await self._worker.run(migrate_sqlite, SCHEMA)

    # principals and keys

    async def create_principal(self, name: str) -> Principal:
        principal = Principal(id=new_principal_id(), name=name, created_at=utcnow())

        def insert(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(
                    SQL.insert_principal, (principal.id, principal.name, encode_timestamp(principal.created_at))
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"principal {name!r} already exists") from exc

        await self._worker.run(insert)
        return principal

    async def get_principal(self, name_or_id: str) -> Principal:
        row = await self._worker.run(
            lambda connection: connection.execute(SQL.get_principal, (name_or_id,) * 3).fetchone()
        )
        if row is None:
            raise NotFound(f"principal {name_or_id!r} does not exist")
        return principal_from_row(_SQLITE, row)

    async def list_principals(self) -> list[Principal]:
        rows = await self._worker.run(lambda connection: connection.execute(SQL.list_principals).fetchall())
        return [principal_from_row(_SQLITE, row) for row in rows]

    async def create_api_key(self, principal_id: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        key, secret = new_api_key(principal_id, admin)

        def insert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                _require(connection, SQL.principal_exists, principal_id, "principal")
                connection.execute(
                    SQL.insert_key,
                    (key.id, key.principal_id, key.secret_hash, key.is_admin, encode_timestamp(key.created_at)),
                )

        await self._worker.run(insert)
        return key, secret

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke the key; revoking it again keeps the first revocation time."""
        revoked_at = encode_timestamp(utcnow())
        cursor = await self._worker.run(lambda connection: connection.execute(SQL.revoke_key, (revoked_at, key_id)))
        if cursor.rowcount == 0:
            raise NotFound(f"API key {key_id!r} does not exist")

    async def list_api_keys(self, principal_id: str | None = None) -> list[ApiKey]:
        def select(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            if principal_id is None:
                return connection.execute(SQL.list_keys).fetchall()
            return connection.execute(SQL.list_keys_of, (principal_id,)).fetchall()

        return [api_key_from_row(_SQLITE, row) for row in await self._worker.run(select)]

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        row = await self._worker.run(lambda connection: connection.execute(SQL.find_key, (secret_hash,)).fetchone())
        return None if row is None else api_key_from_row(_SQLITE, row)

    # endpoints, models, tariffs

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        await self._worker.run(
            lambda connection: connection.execute(
                SQL.put_endpoint, (endpoint.name, endpoint.base_url, endpoint.api_key)
            )
        )

    async def put_model(self, model: Model) -> None:
        input_price = decimal_text(check_amount(model.input_price, "input_price"))
        output_price = decimal_text(check_amount(model.output_price, "output_price"))
        more_endpoints = check_model_endpoints(model)
        row = (model.alias, model.endpoint, model.upstream_model, model.tokenizer, input_price, output_price)

        def upsert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                for name in model.endpoints:
                    _require(connection, SQL.endpoint_exists, name, "endpoint")
                connection.execute(SQL.put_model, (*row, model_ttl_text(model)))
                connection.execute(SQL.delete_model_endpoints, (model.alias,))
                connection.executemany(SQL.insert_model_endpoint, more_endpoints)

        await self._worker.run(upsert)

    async def set_cache_tariff(self, model: str, tariff: CacheTariff, at: datetime | None = None) -> TariffVersion:
        tariff = checked_tariff(tariff)
        requested_start = None if at is None else utc(at)

        def replace(connection: sqlite3.Connection) -> datetime:
            with transaction(connection):
                _require(connection, SQL.lock_model, model, "model")
                start = requested_start or utcnow()  # taken under the write lock
                _close_open_tariff(connection, model, start)
                connection.execute(SQL.insert_tariff, tariff_parameters(_SQLITE, model, tariff, start))
                return start

        start = await self._worker.run(replace)
        return TariffVersion(model=model, tariff=tariff, valid_from=start, valid_until=None)

    async def disable_cache_tariff(self, model: str, at: datetime | None = None) -> bool:
        requested_end = None if at is None else utc(at)

        def close(connection: sqlite3.Connection) -> bool:
            with transaction(connection):
                _require(connection, SQL.lock_model, model, "model")
                return _close_open_tariff(connection, model, requested_end or utcnow())

        return await self._worker.run(close)

    async def load_catalog(self) -> Catalog:
        def select(connection: sqlite3.Connection) -> Catalog:
            with transaction(connection, "DEFERRED"):  # one snapshot for the reads
                return catalog_from_rows(
                    _SQLITE,
                    endpoints=connection.execute(SQL.list_endpoints).fetchall(),
                    models=connection.execute(SQL.list_models).fetchall(),
                    model_endpoints=connection.execute(SQL.model_endpoints).fetchall(),
                    tariffs=connection.execute(SQL.list_tariffs).fetchall(),
                    revocations=connection.execute(SQL.revocations).fetchone()[0],
                    budgets=connection.execute(SQL.list_budgets).fetchall(),
                    rate_limits=connection.execute(SQL.list_rate_limits).fetchall(),
                )

        return await self._worker.run(select)

    # budgets and rate limits

    async def put_budget(self, budget: Budget) -> None:
        check_budget(budget)
        exists = SQL.key_exists if budget.subject is BudgetSubject.KEY else SQL.principal_exists
        row = (budget.subject.value, budget.subject_id, budget.period.value, decimal_text(budget.limit))

        def upsert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                _require(connection, exists, budget.subject_id, budget.subject.value)
                connection.execute(SQL.put_budget, row)

        await self._worker.run(upsert)

    async def delete_budget(self, subject: BudgetSubject, subject_id: str, period: BudgetPeriod) -> bool:
        row = (subject.value, subject_id, period.value)
        cursor = await self._worker.run(lambda connection: connection.execute(SQL.delete_budget, row))
        return cursor.rowcount > 0

    async def put_rate_limit(self, limit: RateLimit) -> None:
        check_rate_limit(limit)
        row = (limit.key_id, limit.requests_per_minute, limit.input_tokens_per_minute)

        def upsert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                _require(connection, SQL.key_exists, limit.key_id, "API key")
                connection.execute(SQL.put_rate_limit, row)

        await self._worker.run(upsert)

    async def delete_rate_limit(self, key_id: str) -> bool:
        cursor = await self._worker.run(lambda connection: connection.execute(SQL.delete_rate_limit, (key_id,)))
        return cursor.rowcount > 0

    # usage ledger

    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        if rows:
            await self._worker.run(_append_ledger, rows, [_ledger_record(row) for row in rows])

    async def spend_totals(self, at: datetime) -> list[KeyTotals]:
        windows = Windows.at(at)
        found = await self._worker.run(
            lambda connection: connection.execute(SQL.spend_totals, (windows.day, windows.month)).fetchall()
        )
        return key_totals((row["key_id"], row["principal_id"], row["period"], Decimal(row["amount"])) for row in found)

    async def usage(self, query: UsageQuery) -> list[UsageGroup]:
        statement, parameters = usage_statement(_SQLITE, query)
        rows = await self._reports.run(lambda connection: connection.execute(statement, parameters).fetchall())
        return [usage_group_from_row(row) for row in rows]


def _append_ledger(
    connection: sqlite3.Connection, rows: Sequence[LedgerRow], records: list[tuple[object, ...]]
) -> None:
    """The new rows, and their costs added to the spend totals, in one transaction: BEGIN IMMEDIATE
    holds the write lock, so no other writer comes between the check and the insert."""
    with transaction(connection):
        new = _not_stored(connection, rows)
        connection.executemany(_INSERT_LEDGER, [record for record, keep in zip(records, new, strict=True) if keep])
        _add_spend(connection, [row for row, keep in zip(rows, new, strict=True) if keep])


_ID_CHUNK = 500  # row ids per lookup: well under SQLite's limit on a statement's parameters


def _not_stored(connection: sqlite3.Connection, rows: Sequence[LedgerRow]) -> list[bool]:
    """Per row, whether it is new: its row id is neither stored already nor earlier in the batch
    (a row without an id always is). Asked once per chunk of ids, under the write lock."""
    ids = [row.row_id for row in rows if row.row_id is not None]
    seen: set[str] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        query = f"SELECT row_id FROM ledger WHERE row_id IN ({', '.join('?' for _ in chunk)})"
        seen.update(found for (found,) in connection.execute(query, chunk))
    new = []
    for row in rows:
        fresh = row.row_id is None or row.row_id not in seen
        if row.row_id is not None:
            seen.add(row.row_id)
        new.append(fresh)
    return new


def _add_spend(connection: sqlite3.Connection, rows: Sequence[LedgerRow]) -> None:
    """Add the rows' costs to the running totals of their keys' windows, exactly (decimal_add)."""
    connection.executemany(
        _ADD_SPEND,
        [
            (key_id, principal_id, period, label, decimal_text(amount))
            for (key_id, period, label), (principal_id, amount) in sorted(spend_increments(rows).items())
        ],
    )


def _decimal_add(left: str, right: str) -> str:
    """SQLite function ``decimal_add(text, text)``: the exact sum of two decimal TEXT values."""
    return decimal_text(Decimal(left) + Decimal(right))


class _DecimalSum:
    """SQLite aggregate ``decimal_sum(text)``: an exact sum of decimal TEXT values, NULLs skipped."""

    def __init__(self) -> None:
        self._total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self._total += Decimal(value)

    def finalize(self) -> str:
        return decimal_text(self._total)


def _functions(connection: sqlite3.Connection) -> None:
    connection.row_factory = sqlite3.Row
    connection.create_aggregate("decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]  # typeshed: ints only
    connection.create_function("decimal_add", 2, _decimal_add, deterministic=True)


def _worker(path: Path, thread_name: str) -> SqliteWorker:
    def unavailable(exc: sqlite3.Error) -> StoreUnavailable | None:
        """ "Cannot use the database" becomes StoreUnavailable; a bug in a statement stays itself."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"SQLite database {path} is unavailable: {exc}")
        return None

    return SqliteWorker(
        lambda: connect(
            path, timeout=_BUSY_TIMEOUT_SECONDS, pragmas=("journal_mode = WAL", "foreign_keys = ON"), setup=_functions
        ),
        thread_name=thread_name,
        errors=unavailable,
    )


def _require(connection: sqlite3.Connection, query: str, name: str, kind: str) -> None:
    if connection.execute(query, (name,)).fetchone() is None:
        raise NotFound(f"{kind} {name!r} does not exist")


def _close_open_tariff(connection: sqlite3.Connection, model: str, end: datetime) -> bool:
    """End the model's open tariff version at ``end``; returns whether there was one."""
    row = connection.execute(SQL.open_tariff, (model,)).fetchone()
    if row is None:
        return False
    check_tariff_end(model, _SQLITE.read_timestamp(row["valid_from"]), end)
    connection.execute(SQL.close_tariff, (encode_timestamp(end), row["id"]))
    return True


_LEDGER_VALUES = attrgetter(*LEDGER_COLUMNS)
_AT, _COST, _LIST_COST = (LEDGER_COLUMNS.index(name) for name in ("at", "cost", "list_cost"))


def _ledger_record(row: LedgerRow) -> tuple[object, ...]:
    """The row's values in LEDGER_COLUMNS order, as SQLite stores them (one per request: kept cheap)."""
    values = list(_LEDGER_VALUES(row))
    values[_AT] = encode_timestamp(row.at)
    values[_COST] = None if row.cost is None else decimal_text(check_amount(row.cost, "cost"))
    values[_LIST_COST] = None if row.list_cost is None else decimal_text(check_amount(row.list_cost, "list_cost"))
    return tuple(values)
