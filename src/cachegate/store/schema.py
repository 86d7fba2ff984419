"""Versioned schema migrations, shared by the SQLite and PostgreSQL stores.

Each step is a file ``migrations/NNNN_name.sql``, applied once, in order, and recorded in
``schema_migrations``. A step is written once for both databases: the few column types that
differ, and the few expressions (a UTC day of a timestamp, an exact decimal sum), are
``${placeholders}`` filled in per dialect from the table below, so every dialect difference of
the schema is in one place.
"""

from __future__ import annotations

import enum
import functools
import re
import string
from dataclasses import dataclass, fields
from importlib import resources

from cachegate.store.base import LedgerRow


class Dialect(enum.Enum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


_COLUMN_TYPES: dict[Dialect, dict[str, str]] = {
    Dialect.SQLITE: {
        "decimal": "TEXT",  # NUMERIC affinity would turn prices into floats
        "timestamp": "TEXT",  # fixed-width ISO-8601 in UTC, so text order is time order
        "bytes": "BLOB",
        "identity": "INTEGER PRIMARY KEY",  # an alias of the rowid
        "utc_day": "substr(at, 1, 10)",  # timestamps are UTC ISO-8601 text
        "utc_month": "substr(at, 1, 7)",
        "decimal_sum": "decimal_sum",  # the store's exact aggregate over decimal TEXT
    },
    Dialect.POSTGRES: {
        "decimal": "NUMERIC",
        "timestamp": "TIMESTAMPTZ",
        "bytes": "BYTEA",
        "identity": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "utc_day": "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "utc_month": "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM')",
        "decimal_sum": "sum",
    },
}

_STEP_FILE = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    template: str

    def render(self, dialect: Dialect) -> str:
        return string.Template(self.template).substitute(_COLUMN_TYPES[dialect])


def schema_migrations_ddl(dialect: Dialect) -> str:
    """The bookkeeping table; created before anything else, so it cannot be a step itself."""
    return (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL,"
        f" applied_at {_COLUMN_TYPES[dialect]['timestamp']} NOT NULL)"
    )


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every step shipped with this package, in version order."""
    steps = []
    for entry in resources.files("cachegate.store").joinpath("migrations").iterdir():
        match = _STEP_FILE.fullmatch(entry.name)
        if match is None:
            continue
        steps.append(Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8")))
    steps.sort(key=lambda step: step.version)
    versions = [step.version for step in steps]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration steps share a version number: {versions}")
    return tuple(steps)


# The ledger table's columns are LedgerRow's fields, by name and in order.
LEDGER_COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(LedgerRow))
