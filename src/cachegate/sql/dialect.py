"""The two SQL dialects cachegate speaks, and every difference between them that SQL text shows.

Statements and migration steps are written once: ``?`` for each parameter, and ``${slot}`` for the
few words that differ (a column type, a collation, an expression), filled in from ``_SLOTS``. For
PostgreSQL each ``?`` becomes ``$1``, ``$2``, ... in order. Values differ too: SQLite keeps
timestamps as fixed-width ISO-8601 UTC TEXT (text order is time order) and decimals as positional
TEXT (NUMERIC affinity would turn prices into floats), where PostgreSQL has TIMESTAMPTZ and NUMERIC;
``Dialect.timestamp``/``read_timestamp`` and ``decimal``/``read_decimal`` convert both ways.
"""

from __future__ import annotations

import enum
import re
import string
from datetime import UTC, datetime
from decimal import Decimal


class Dialect(enum.Enum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"

    def fill(self, sql: str) -> str:
        """``sql`` with its ``${slots}`` filled in (a migration step's script)."""
        return string.Template(sql).substitute(_SLOTS[self])

    def render(self, sql: str) -> str:
        """A statement: its ``${slots}`` filled in and, for PostgreSQL, its ``?`` numbered."""
        text = self.fill(sql)
        if self is Dialect.SQLITE:
            return text
        counter = iter(range(1, 100_000))
        return _PARAMETER.sub(lambda match: f"${next(counter)}" if match[0] == "?" else match[0], text)

    def slot(self, name: str) -> str:
        return _SLOTS[self][name]

    def timestamp(self, at: datetime) -> str | datetime:
        """``at`` as a parameter: ISO-8601 UTC text for SQLite, an aware datetime for PostgreSQL."""
        return encode_timestamp(at) if self is Dialect.SQLITE else utc(at)

    def read_timestamp(self, value: str | datetime) -> datetime:
        return decode_timestamp(value) if isinstance(value, str) else value

    def decimal(self, value: Decimal | str) -> str | Decimal:
        """A decimal (or its positional text) as a parameter: TEXT for SQLite, NUMERIC for PostgreSQL."""
        if self is Dialect.POSTGRES:
            return Decimal(value)
        return value if isinstance(value, str) else decimal_text(value)

    @staticmethod
    def read_decimal(value: str | Decimal) -> Decimal:
        return Decimal(value)


_SLOTS: dict[Dialect, dict[str, str]] = {
    Dialect.SQLITE: {
        "decimal": "TEXT",  # NUMERIC affinity would turn prices into floats
        "timestamp": "TEXT",  # fixed-width ISO-8601 in UTC, so text order is time order
        "bytes": "BLOB",
        "float": "REAL",
        "bigint": "INTEGER",  # SQLite's INTEGER is 64-bit already
        "identity": "INTEGER PRIMARY KEY",  # an alias of the rowid
        "without_rowid": "WITHOUT ROWID",  # a table clustered on its primary key
        "utc_day": "substr(at, 1, 10)",  # timestamps are UTC ISO-8601 text
        "utc_month": "substr(at, 1, 7)",
        "decimal_sum": "decimal_sum",  # the store's exact aggregate over decimal TEXT
        "bytewise": "BINARY",  # the collation that sorts by bytes (SQLite's default)
        "for_update": "",  # a transaction holds the file's write lock from BEGIN IMMEDIATE
    },
    Dialect.POSTGRES: {
        "decimal": "NUMERIC",
        "timestamp": "TIMESTAMPTZ",
        "bytes": "BYTEA",
        "float": "DOUBLE PRECISION",
        "bigint": "BIGINT",
        "identity": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "without_rowid": "",
        "utc_day": "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "utc_month": "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM')",
        "decimal_sum": "sum",
        "bytewise": '"C"',
        "for_update": "FOR UPDATE",  # the row lock that serialises writers of one row
    },
}

# A parameter, or something in which a ``?`` is not one (a string, a quoted name, a comment).
_PARAMETER = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|\?")


def utc(at: datetime) -> datetime:
    """``at`` in UTC; naive datetimes are refused (a naive time in a billing ledger is ambiguous)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware, not {at.isoformat()}")
    return at.astimezone(UTC)


def encode_timestamp(at: datetime) -> str:
    """Fixed-width ISO-8601 in UTC (``2025-01-02T03:04:05.000006+00:00``): text order is time order."""
    return utc(at).isoformat(timespec="microseconds")


def decode_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def decimal_text(value: Decimal) -> str:
    """Positional notation, so SQLite's TEXT and PostgreSQL's NUMERIC read back alike."""
    return format(value, "f")
