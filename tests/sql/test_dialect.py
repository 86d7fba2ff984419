"""The dialect layer: statements written once render for SQLite and PostgreSQL, and every store
statement, so rendered, is valid SQL against the migrated schema of each database."""

from __future__ import annotations

import re
from contextlib import closing
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from cachegate.sql.dialect import Dialect
from cachegate.sql.migrations import migrate_postgres, migrate_sqlite
from cachegate.sql.sqlite import connect
from cachegate.store.base import UsageQuery
from cachegate.store.sqlite import _functions
from cachegate.store.statements import POSTGRES, SCHEMA, SQLITE, Statements, usage_statement

from pg import PgServer, pg_server  # noqa: F401  (fixture)


def test_postgres_numbers_the_parameters_in_order_and_sqlite_keeps_them() -> None:
    statement = "SELECT a FROM t WHERE b = ? AND c IN (?, ?) ORDER BY d = ?"

    assert Dialect.POSTGRES.render(statement) == "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3) ORDER BY d = $4"
    assert Dialect.SQLITE.render(statement) == statement


def test_a_question_mark_in_a_string_a_quoted_name_or_a_comment_is_no_parameter() -> None:
    statement = "SELECT '?', \"odd?name\" FROM t -- why?\nWHERE a = ?"

    assert Dialect.POSTGRES.render(statement) == "SELECT '?', \"odd?name\" FROM t -- why?\nWHERE a = $1"


def test_slots_are_filled_per_dialect_and_an_unknown_one_is_an_error() -> None:
    statement = "SELECT x FROM t ORDER BY x COLLATE ${bytewise}"

    assert Dialect.SQLITE.render(statement) == "SELECT x FROM t ORDER BY x COLLATE BINARY"
    assert Dialect.POSTGRES.render(statement) == 'SELECT x FROM t ORDER BY x COLLATE "C"'
    with pytest.raises(KeyError, match="no_such_slot"):
        Dialect.SQLITE.render("SELECT ${no_such_slot}")


def test_values_are_encoded_per_dialect() -> None:
    at = datetime(2026, 12, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))

    assert Dialect.SQLITE.timestamp(at) == "2026-12-03T02:05:06.000000+00:00"
    assert Dialect.SQLITE.read_timestamp(Dialect.SQLITE.timestamp(at)) == at
    assert Dialect.POSTGRES.timestamp(at) == at and Dialect.POSTGRES.timestamp(at).tzinfo is UTC  # type: ignore[union-attr]
    assert Dialect.SQLITE.decimal(Decimal("1E-7")) == "0.0000001"
    assert Dialect.SQLITE.decimal("0.25") == "0.25"
    assert Dialect.POSTGRES.decimal("0.25") == Decimal("0.25")
    with pytest.raises(ValueError, match="timezone-aware"):
        Dialect.POSTGRES.timestamp(datetime(2026, 1, 1))


def test_both_renderings_of_every_statement_take_the_same_parameters() -> None:
    for field in fields(Statements):
        sqlite, postgres = getattr(SQLITE, field.name), getattr(POSTGRES, field.name)
        numbers = [int(number) for number in re.findall(r"\$([0-9]+)", postgres)]
        assert numbers == list(range(1, sqlite.count("?") + 1)), field.name
        assert "${" not in sqlite and "${" not in postgres, field.name


def _usage_queries() -> list[UsageQuery]:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    return [UsageQuery(), UsageQuery(since=at), UsageQuery(since=at, until=at, principal_id="p")]


def test_every_statement_is_valid_sqlite_against_the_migrated_schema(tmp_path: Path) -> None:
    with closing(connect(tmp_path / "control.db", timeout=1.0, setup=_functions)) as connection:
        migrate_sqlite(connection, SCHEMA)
        statements = [(getattr(SQLITE, field.name),) for field in fields(Statements)]
        for statement, *parameters in [*statements, *(usage_statement(Dialect.SQLITE, q) for q in _usage_queries())]:
            count = statement.count("?")
            connection.execute(f"EXPLAIN {statement}", parameters[0] if parameters else (None,) * count)


@pytest.mark.postgres
async def test_every_statement_is_valid_postgres_against_the_migrated_schema(pg_server: PgServer) -> None:  # noqa: F811
    connection = await asyncpg.connect(pg_server.create_database())
    try:
        await migrate_postgres(connection, SCHEMA)
        for field in fields(Statements):
            await connection.prepare(getattr(POSTGRES, field.name))
        for query in _usage_queries():
            statement, parameters = usage_statement(Dialect.POSTGRES, query)
            await connection.fetch(statement, *parameters)
    finally:
        await connection.close()
