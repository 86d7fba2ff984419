"""The control store on SQLite: the embedded default, one file, nothing to install.

sqlite3 blocks, so one dedicated thread owns the connection and runs every call: calls are
serialised there (SQLite has one writer at a time anyway) and never block the event loop. The
usage query, which reads much of the ledger, runs on a second read connection and thread of its
own, so it never holds up the calls behind it.
WAL lets another process, such as the admin CLI next to a running gateway, read while this
one writes; writers wait for each other through the busy timeout.

Decimals are stored as positional TEXT and timestamps as fixed-width ISO-8601 UTC TEXT, whose
text order is time order, so range filters and the day grouping stay in plain SQL; decimal
sums go through a Python aggregate so they are never added as floats.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

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
    spend_increments,
    usage_group_from_row,
    usage_sums,
    utc,
    utcnow,
)

T = TypeVar("T")

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

_USAGE_SUMS = usage_sums("decimal_sum({column})")
_KEY_COLUMNS = "id, principal_id, secret_hash, is_admin, created_at, revoked_at"
_REVOCATIONS = "SELECT count(revoked_at) FROM api_keys"  # keys are never un-revoked: it only grows
_TARIFF_COLUMNS = (
    "model, write_multiplier_5m, write_multiplier_1h, write_multiplier_24h, read_multiplier,"
    " min_prefix_tokens, valid_from, valid_until"
)


def encode_timestamp(at: datetime) -> str:
    """Fixed-width ISO-8601 in UTC (``2025-01-02T03:04:05.000006+00:00``): text order is time order."""
    return utc(at).isoformat(timespec="microseconds")


def decode_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def split_statements(script: str) -> list[str]:
    """The statements of a migration script, one by one.

    ``executescript`` would commit the migration's transaction before running the script,
    so each statement is executed on its own inside it.
    """
    statements: list[str] = []
    pending: list[str] = []
    for line in script.splitlines():
        pending.append(line)
        text = "\n".join(pending)
        if sqlite3.complete_statement(text):
            statements.append(text.strip())
            pending = []
    if any(line.strip() and not line.strip().startswith("--") for line in pending):
        raise ValueError(f"unterminated statement at the end of a migration: {' '.join(pending)[:80]!r}")
    return statements


class SqliteStore:
    """ControlStore on one SQLite file; create it with ``await SqliteStore.open(path)``."""

    def __init__(self, path: Path, connection: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._path = path
        self._connection = connection
        self._executor = executor
        self._reports = _ReportReader(path)

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating it and its directory if needed) the database file at ``path``."""
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachegate-sqlite")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(
                executor, _guarded, path, lambda: _connect(path)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, connection, executor)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _guarded, self._path, lambda: work(connection)
        )

    async def aclose(self) -> None:
        await self._reports.aclose()
        await self._run(lambda connection: connection.close())
        self._executor.shutdown(wait=True)

    async def migrate(self) -> None:
        """Apply the missing steps under BEGIN IMMEDIATE, which also serialises concurrent callers."""

        def apply(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.execute(schema_migrations_ddl(Dialect.SQLITE))
                applied = {row["version"] for row in connection.execute("SELECT version FROM schema_migrations")}
                for step in migrations():
                    if step.version in applied:
                        continue
                    for statement in split_statements(step.render(Dialect.SQLITE)):
                        connection.execute(statement)
                    connection.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (step.version, step.name, encode_timestamp(utcnow())),
                    )

        await self._run(apply)

    # principals and keys

    async def create_principal(self, name: str) -> Principal:
        principal = Principal(id=new_principal_id(), name=name, created_at=utcnow())

        def insert(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(
                    "INSERT INTO principals (id, name, created_at) VALUES (?, ?, ?)",
                    (principal.id, principal.name, encode_timestamp(principal.created_at)),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"principal {name!r} already exists") from exc

        await self._run(insert)
        return principal

    async def get_principal(self, name_or_id: str) -> Principal:
        row = await self._run(
            lambda connection: connection.execute(
                "SELECT id, name, created_at FROM principals WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
                (name_or_id, name_or_id, name_or_id),
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"principal {name_or_id!r} does not exist")
        return _principal(row)

    async def list_principals(self) -> list[Principal]:
        rows = await self._run(
            lambda connection: connection.execute(
                "SELECT id, name, created_at FROM principals ORDER BY name"
            ).fetchall()
        )
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

        def insert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                _require(connection, "SELECT 1 FROM principals WHERE id = ?", principal_id, "principal")
                connection.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)",
                    (key.id, key.principal_id, key.secret_hash, key.is_admin, encode_timestamp(key.created_at)),
                )

        await self._run(insert)
        return key, secret

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke the key; revoking it again keeps the first revocation time."""
        revoked_at = encode_timestamp(utcnow())
        cursor = await self._run(
            lambda connection: connection.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (revoked_at, key_id)
            )
        )
        if cursor.rowcount == 0:
            raise NotFound(f"API key {key_id!r} does not exist")

    async def list_api_keys(self, principal_id: str | None = None) -> list[ApiKey]:
        def select(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            if principal_id is None:
                return connection.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id").fetchall()
            return connection.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE principal_id = ? ORDER BY created_at, id",
                (principal_id,),
            ).fetchall()

        return [_api_key(row) for row in await self._run(select)]

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        row = await self._run(
            lambda connection: connection.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (secret_hash,)
            ).fetchone()
        )
        return None if row is None else _api_key(row)

    # endpoints, models, tariffs

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        await self._run(
            lambda connection: connection.execute(
                "INSERT INTO endpoints (name, base_url, api_key) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET base_url = excluded.base_url, api_key = excluded.api_key",
                (endpoint.name, endpoint.base_url, endpoint.api_key),
            )
        )

    async def put_model(self, model: Model) -> None:
        input_price = decimal_text(check_amount(model.input_price, "input_price"))
        output_price = decimal_text(check_amount(model.output_price, "output_price"))

        more_endpoints = check_model_endpoints(model)

        def upsert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                for name in model.endpoints:
                    _require(connection, "SELECT 1 FROM endpoints WHERE name = ?", name, "endpoint")
                connection.execute(
                    f"INSERT INTO models ({MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (alias) DO UPDATE SET endpoint = excluded.endpoint,"
                    " upstream_model = excluded.upstream_model, tokenizer = excluded.tokenizer,"
                    " input_price = excluded.input_price, output_price = excluded.output_price,"
                    " automatic_cache_ttl = excluded.automatic_cache_ttl",
                    (
                        model.alias,
                        model.endpoint,
                        model.upstream_model,
                        model.tokenizer,
                        input_price,
                        output_price,
                        model_ttl_text(model),
                    ),
                )
                connection.execute("DELETE FROM model_endpoints WHERE model = ?", (model.alias,))
                connection.executemany(
                    "INSERT INTO model_endpoints (model, endpoint, position) VALUES (?, ?, ?)", more_endpoints
                )

        await self._run(upsert)

    async def set_cache_tariff(self, model: str, tariff: CacheTariff, at: datetime | None = None) -> TariffVersion:
        tariff = checked_tariff(tariff)
        requested_start = None if at is None else utc(at)

        def replace(connection: sqlite3.Connection) -> datetime:
            with _transaction(connection):
                _require(connection, "SELECT 1 FROM models WHERE alias = ?", model, "model")
                start = requested_start or utcnow()  # taken under the write lock
                _close_open_tariff(connection, model, start)
                connection.execute(
                    f"INSERT INTO cache_tariffs ({_TARIFF_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        model,
                        tariff.write_multiplier_5m,
                        tariff.write_multiplier_1h,
                        tariff.write_multiplier_24h,
                        tariff.read_multiplier,
                        tariff.min_prefix_tokens,
                        encode_timestamp(start),
                    ),
                )
                return start

        start = await self._run(replace)
        return TariffVersion(model=model, tariff=tariff, valid_from=start, valid_until=None)

    async def disable_cache_tariff(self, model: str, at: datetime | None = None) -> bool:
        requested_end = None if at is None else utc(at)

        def close(connection: sqlite3.Connection) -> bool:
            with _transaction(connection):
                _require(connection, "SELECT 1 FROM models WHERE alias = ?", model, "model")
                return _close_open_tariff(connection, model, requested_end or utcnow())

        return await self._run(close)

    async def load_catalog(self) -> Catalog:
        def select(connection: sqlite3.Connection) -> Catalog:
            with _transaction(connection, "DEFERRED"):  # one snapshot for the three reads
                endpoints = connection.execute("SELECT name, base_url, api_key FROM endpoints").fetchall()
                models = connection.execute(f"SELECT {MODEL_COLUMNS} FROM models").fetchall()
                more_endpoints = grouped_endpoints(connection.execute(MODEL_ENDPOINTS_QUERY).fetchall())
                tariffs = connection.execute(
                    f"SELECT {_TARIFF_COLUMNS} FROM cache_tariffs ORDER BY model, valid_from, id"
                ).fetchall()
                revocations = connection.execute(_REVOCATIONS).fetchone()[0]
                budgets = connection.execute(
                    f"SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY subject_kind, subject_id, period"
                ).fetchall()
                rate_limits = connection.execute(f"SELECT {RATE_LIMIT_COLUMNS} FROM rate_limits").fetchall()
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

        return await self._run(select)

    # budgets and rate limits

    async def put_budget(self, budget: Budget) -> None:
        check_budget(budget)
        table = "api_keys" if budget.subject is BudgetSubject.KEY else "principals"

        def upsert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                _require(connection, f"SELECT 1 FROM {table} WHERE id = ?", budget.subject_id, budget.subject.value)
                connection.execute(
                    f"INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES (?, ?, ?, ?)" + BUDGET_REPLACES,
                    (budget.subject.value, budget.subject_id, budget.period.value, decimal_text(budget.limit)),
                )

        await self._run(upsert)

    async def delete_budget(self, subject: BudgetSubject, subject_id: str, period: BudgetPeriod) -> bool:
        cursor = await self._run(
            lambda connection: connection.execute(
                "DELETE FROM budgets WHERE subject_kind = ? AND subject_id = ? AND period = ?",
                (subject.value, subject_id, period.value),
            )
        )
        return cursor.rowcount > 0

    async def put_rate_limit(self, limit: RateLimit) -> None:
        check_rate_limit(limit)

        def upsert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                _require(connection, "SELECT 1 FROM api_keys WHERE id = ?", limit.key_id, "API key")
                connection.execute(
                    f"INSERT INTO rate_limits ({RATE_LIMIT_COLUMNS}) VALUES (?, ?, ?)" + RATE_LIMIT_REPLACES,
                    (limit.key_id, limit.requests_per_minute, limit.input_tokens_per_minute),
                )

        await self._run(upsert)

    async def delete_rate_limit(self, key_id: str) -> bool:
        cursor = await self._run(
            lambda connection: connection.execute("DELETE FROM rate_limits WHERE key_id = ?", (key_id,))
        )
        return cursor.rowcount > 0

    # usage ledger

    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        records = [_ledger_record(row) for row in rows]
        statement = (
            f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) VALUES ({', '.join('?' for _ in LEDGER_COLUMNS)})"
            " ON CONFLICT (row_id) DO NOTHING"  # a replayed row (the journal's) is billed once
        )

        def insert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):  # the write lock: no other writer between the check and the insert
                new = _not_stored(connection, rows)
                connection.executemany(statement, [record for record, keep in zip(records, new, strict=True) if keep])
                _add_spend(connection, [row for row, keep in zip(rows, new, strict=True) if keep])

        await self._run(insert)

    async def spend_totals(self, at: datetime) -> list[KeyTotals]:
        windows = Windows.at(at)
        found = await self._run(
            lambda connection: connection.execute(
                "SELECT key_id, principal_id, period, amount FROM spend"
                " WHERE (period = 'day' AND label = ?) OR (period = 'month' AND label = ?) OR period = 'total'",
                (windows.day, windows.month),
            ).fetchall()
        )
        return key_totals((row["key_id"], row["principal_id"], row["period"], Decimal(row["amount"])) for row in found)

    async def usage(self, query: UsageQuery) -> list[UsageGroup]:
        conditions: list[str] = []
        parameters: list[str] = []
        for condition, value in (
            ("at >= ?", None if query.since is None else encode_timestamp(query.since)),
            ("at < ?", None if query.until is None else encode_timestamp(query.until)),
            ("principal_id = ?", query.principal_id),
        ):
            if value is not None:
                conditions.append(condition)
                parameters.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._reports.run(
            lambda connection: connection.execute(
                f"SELECT substr(at, 1, 10) AS day, principal_id, key_id, model, {_USAGE_SUMS}"
                f" FROM ledger {where} GROUP BY day, principal_id, key_id, model"
                " ORDER BY day, key_id, model, principal_id",
                parameters,
            ).fetchall()
        )
        return [usage_group_from_row(row) for row in rows]


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
        "INSERT INTO spend (key_id, principal_id, period, label, amount) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (key_id, period, label) DO UPDATE SET amount = decimal_add(amount, excluded.amount)",
        [
            (key_id, principal_id, period, label, decimal_text(amount))
            for (key_id, period, label), (principal_id, amount) in sorted(spend_increments(rows).items())
        ],
    )


def _decimal_add(left: str, right: str) -> str:
    """SQLite function ``decimal_add(text, text)``: the exact sum of two decimal TEXT values."""
    return decimal_text(Decimal(left) + Decimal(right))


class _ReportReader:
    """A second connection, on a thread of its own, for the reports that read much of the ledger
    (``usage``): WAL lets it read while the main connection writes, so a dashboard's or a tenant's
    usage query never holds up key lookups or the ledger's writes behind it. Opened on first use."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachegate-sqlite-reports")

        def call() -> T:  # on the reports' one thread, so the connection is opened once
            if self._connection is None:
                self._connection = _connect(self._path)
            return work(self._connection)

        return await asyncio.get_running_loop().run_in_executor(self._executor, _guarded, self._path, call)

    async def aclose(self) -> None:
        if self._executor is None:
            return

        def close() -> None:
            if self._connection is not None:
                self._connection.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


class _DecimalSum:
    """SQLite aggregate ``decimal_sum(text)``: an exact sum of decimal TEXT values, NULLs skipped."""

    def __init__(self) -> None:
        self._total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self._total += Decimal(value)

    def finalize(self) -> str:
        return decimal_text(self._total)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(f"cannot create the directory of SQLite database {path}: {exc}") from exc
    # isolation_level=None: no implicit transactions; every transaction here is explicit.
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.create_aggregate("decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]  # typeshed: ints only
        connection.create_function("decimal_add", 2, _decimal_add, deterministic=True)
    except BaseException:
        connection.close()
        raise
    return connection


def _guarded(path: Path, work: Callable[[], T]) -> T:
    """Run ``work`` on the store's thread, turning "cannot use the database" into StoreUnavailable."""
    try:
        return work()
    except sqlite3.Error as exc:
        if exc.sqlite_errorcode is not None and exc.sqlite_errorcode & 0xFF in _UNAVAILABLE_CODES:
            raise StoreUnavailable(f"SQLite database {path} is unavailable: {exc}") from exc
        raise


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock up front, so a read-then-write cannot be raced."""
    connection.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _require(connection: sqlite3.Connection, query: str, name: str, kind: str) -> None:
    if connection.execute(query, (name,)).fetchone() is None:
        raise NotFound(f"{kind} {name!r} does not exist")


def _close_open_tariff(connection: sqlite3.Connection, model: str, end: datetime) -> bool:
    """End the model's open tariff version at ``end``; returns whether there was one."""
    row = connection.execute(
        "SELECT id, valid_from FROM cache_tariffs WHERE model = ? AND valid_until IS NULL", (model,)
    ).fetchone()
    if row is None:
        return False
    if encode_timestamp(end) < row["valid_from"]:
        raise Conflict(
            f"the open cache tariff of {model!r} starts at {row['valid_from']}, after {encode_timestamp(end)}"
        )
    connection.execute("UPDATE cache_tariffs SET valid_until = ? WHERE id = ?", (encode_timestamp(end), row["id"]))
    return True


def _principal(row: sqlite3.Row) -> Principal:
    return Principal(id=row["id"], name=row["name"], created_at=decode_timestamp(row["created_at"]))


def _api_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        principal_id=row["principal_id"],
        secret_hash=bytes(row["secret_hash"]),
        is_admin=bool(row["is_admin"]),
        created_at=decode_timestamp(row["created_at"]),
        revoked_at=None if row["revoked_at"] is None else decode_timestamp(row["revoked_at"]),
    )


def _tariff_version(row: sqlite3.Row) -> TariffVersion:
    return TariffVersion(
        model=row["model"],
        tariff=CacheTariff(
            write_multiplier_5m=row["write_multiplier_5m"],
            write_multiplier_1h=row["write_multiplier_1h"],
            write_multiplier_24h=row["write_multiplier_24h"],
            read_multiplier=row["read_multiplier"],
            min_prefix_tokens=row["min_prefix_tokens"],
        ),
        valid_from=decode_timestamp(row["valid_from"]),
        valid_until=None if row["valid_until"] is None else decode_timestamp(row["valid_until"]),
    )


_LEDGER_VALUES = attrgetter(*LEDGER_COLUMNS)
_AT, _COST, _LIST_COST = (LEDGER_COLUMNS.index(name) for name in ("at", "cost", "list_cost"))


def _ledger_record(row: LedgerRow) -> tuple[object, ...]:
    """The row's values in LEDGER_COLUMNS order, as SQLite stores them (one per request: kept cheap)."""
    values = list(_LEDGER_VALUES(row))
    values[_AT] = encode_timestamp(row.at)
    values[_COST] = None if row.cost is None else decimal_text(check_amount(row.cost, "cost"))
    values[_LIST_COST] = None if row.list_cost is None else decimal_text(check_amount(row.list_cost, "list_cost"))
    return tuple(values)
