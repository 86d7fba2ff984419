"""Value checks shared by the stores: decimals, tariffs, timestamps, migration scripts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.types import CacheTariff
from cachegate.index.schema import SCHEMA as INDEX_SCHEMA
from cachegate.sql.dialect import Dialect, decode_timestamp, encode_timestamp
from cachegate.sql.migrations import Track
from cachegate.sql.sqlite import split_statements
from cachegate.store.statements import SCHEMA
from cachegate.store.values import checked_tariff, decimal_text, parse_decimal, utc

non_negative_decimals = st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False, places=12)
aware_datetimes = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones())


@given(non_negative_decimals)
def test_a_non_negative_decimal_survives_its_text(value: Decimal) -> None:
    assert parse_decimal(decimal_text(value), "price") == value


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", "1e-6", "1.", ".5", " 1", "1_000", "NaN", "Infinity", "0x10", "\u0661"]
)
def test_anything_but_a_plain_non_negative_decimal_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="price must be a non-negative decimal"):
        parse_decimal(text, "price")


def test_a_tariff_is_written_positionally() -> None:
    tariff = CacheTariff(write_multiplier_5m="1.250", write_multiplier_1h="2E+0", read_multiplier="1E-7")

    assert checked_tariff(tariff) == CacheTariff(
        write_multiplier_5m="1.250", write_multiplier_1h="2", read_multiplier="0.0000001"
    )


@pytest.mark.parametrize("multiplier", ["two", "-0.1", "NaN", "Infinity", ""])
def test_a_tariff_multiplier_must_be_a_finite_non_negative_decimal(multiplier: str) -> None:
    with pytest.raises(ValueError, match="read_multiplier"):
        checked_tariff(CacheTariff(read_multiplier=multiplier))


def test_naive_timestamps_are_refused_and_aware_ones_move_to_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        utc(datetime(2025, 1, 1))
    assert utc(datetime(2025, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))) == datetime(2024, 12, 31, 23, tzinfo=UTC)
    assert utc(datetime(2025, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))).tzinfo is UTC


@given(aware_datetimes, aware_datetimes)
def test_sqlite_timestamps_round_trip_and_sort_as_text(first: datetime, second: datetime) -> None:
    # Compared in UTC: a local time in a DST gap or fold never compares equal across zones (PEP 495).
    first_utc, second_utc = first.astimezone(UTC), second.astimezone(UTC)
    assert decode_timestamp(encode_timestamp(first)) == first_utc
    assert (encode_timestamp(first) < encode_timestamp(second)) == (first_utc < second_utc)


def test_a_migration_splits_into_its_statements() -> None:
    script = "-- a comment; not a statement\nCREATE TABLE a (x TEXT);\n\nCREATE INDEX a_x\n  ON a (x);\n-- trailing\n"

    assert split_statements(script) == [
        "-- a comment; not a statement\nCREATE TABLE a (x TEXT);",
        "CREATE INDEX a_x\n  ON a (x);",
    ]
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("CREATE TABLE a (x TEXT)")


@pytest.mark.parametrize("track", [SCHEMA, INDEX_SCHEMA], ids=["store", "index"])
def test_every_shipped_step_renders_for_both_dialects(track: Track) -> None:
    steps = track.steps

    assert [step.version for step in steps] == list(range(1, len(steps) + 1))
    for step in steps:
        for dialect in Dialect:
            assert split_statements(step.render(dialect))
