"""The usage operation (SPEC §13): its parameters, and its renderings as JSON, CSV and a table.

One implementation for the three surfaces that show usage: ``cachegate usage`` (the CLI),
``GET /v1/usage`` (a tenant's own usage, on the gateway) and ``GET /admin/v1/usage`` (any
principal's, for an admin key). Each parses its parameters with ``parse_parameters``, asks the
store (``ControlStore.usage``) and renders the groups with ``render``, so the three cannot drift.

A time bound is a UTC day (``2025-03-01``) or an ISO-8601 timestamp with its offset. ``since`` is
inclusive; ``until`` is exclusive for a timestamp and, for a day, includes that whole day: the
usage ``--since 2025-03-01 --until 2025-03-31`` is March's.
"""

from __future__ import annotations

import csv
import enum
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson

from cachegate.core.errors import CachegateError
from cachegate.store.base import MISS_REASONS, UsageGroup, UsageQuery
from cachegate.store.values import decimal_text


class UsageFormat(enum.StrEnum):
    JSON = "json"
    CSV = "csv"
    TABLE = "table"  # the CLI's


class UsageParameterError(CachegateError, ValueError):
    """A usage parameter the caller got wrong (answered 400, or exit 2 on the CLI)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class UsageParameters:
    """What a caller asked for: the time bounds, a principal (name or id, as given) and the format."""

    since: datetime | None = None
    until: datetime | None = None
    principal: str | None = None
    format: UsageFormat = UsageFormat.JSON

    def query(self, principal_id: str | None) -> UsageQuery:
        return UsageQuery(since=self.since, until=self.until, principal_id=principal_id)


PARAMETERS: Final = ("since", "until", "principal", "format")


def parse_time(text: str, parameter: str, *, until: bool = False) -> datetime:
    """A day (``YYYY-MM-DD``, UTC) or an ISO-8601 timestamp with an offset; for ``until`` a day
    means the end of that day."""
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise UsageParameterError(parameter, f"expected a day as YYYY-MM-DD, not {text!r}") from None
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(days=1) if until else start
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageParameterError(
            parameter, f"expected YYYY-MM-DD or an ISO-8601 timestamp with its offset, not {text!r}"
        ) from None
    if at.tzinfo is None:
        raise UsageParameterError(parameter, f"the timestamp {text!r} needs an offset, such as Z or +00:00")
    return at.astimezone(UTC)


def parse_parameters(pairs: Sequence[tuple[str, str]], formats: Sequence[UsageFormat]) -> UsageParameters:
    """The parameters of a query string (as ``urllib.parse.parse_qsl`` gives them): each at most
    once, none unknown, the format one of ``formats``."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            raise UsageParameterError(name, f"unknown parameter; the parameters are {', '.join(PARAMETERS)}")
        if name in values:
            raise UsageParameterError(name, "given more than once")
        values[name] = value
    return checked(
        UsageParameters(
            since=None if "since" not in values else parse_time(values["since"], "since"),
            until=None if "until" not in values else parse_time(values["until"], "until", until=True),
            principal=values.get("principal") or None,
            format=_format(values.get("format", UsageFormat.JSON.value), formats),
        )
    )


def checked(parameters: UsageParameters) -> UsageParameters:
    if parameters.since is not None and parameters.until is not None and parameters.until <= parameters.since:
        raise UsageParameterError("until", "must come after since")
    return parameters


def _format(text: str, formats: Sequence[UsageFormat]) -> UsageFormat:
    if text not in {f.value for f in formats}:
        raise UsageParameterError("format", f"expected one of {', '.join(f.value for f in formats)}, not {text!r}")
    return UsageFormat(text)


# renderings

COLUMNS: Final = (
    "day",
    "principal_id",
    "principal",
    "key_id",
    "model",
    "requests",
    "prompt_tokens",
    "uncached_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_write_24h_tokens",
    "completion_tokens",
    "cost",
    "list_cost",
    "saving",
    "hit_rate",
    "degraded",
    *(f"miss_{reason}" for reason in MISS_REASONS),
    "drift_sum",
    "drift_count",
)
"""The CSV's columns; the JSON has the same names, with the miss counts under ``misses``."""


def hit_rate_text(rate: float) -> str:
    """A ratio with four decimals: what the renderings show (the exact figures are the tokens)."""
    return f"{rate:.4f}"


def record(group: UsageGroup, principal_names: Mapping[str, str]) -> dict[str, Any]:
    """One group as the JSON shows it: money as decimal strings (exact), counts as integers."""
    return {
        "day": group.day,
        "principal_id": group.principal_id,
        "principal": principal_names.get(group.principal_id, group.principal_id),
        "key_id": group.key_id,
        "model": group.model,
        "requests": group.requests,
        "prompt_tokens": group.prompt_tokens,
        "uncached_tokens": group.uncached_tokens,
        "cache_read_tokens": group.cache_read_tokens,
        "cache_write_5m_tokens": group.cache_write_5m_tokens,
        "cache_write_1h_tokens": group.cache_write_1h_tokens,
        "cache_write_24h_tokens": group.cache_write_24h_tokens,
        "completion_tokens": group.completion_tokens,
        "cost": decimal_text(group.cost),
        "list_cost": decimal_text(group.list_cost),
        "saving": decimal_text(group.saving),
        "hit_rate": hit_rate_text(group.hit_rate),
        "degraded": group.degraded,
        "misses": dict(group.misses),
        "drift_sum": group.drift_sum,
        "drift_count": group.drift_count,
    }


def flat_record(group: UsageGroup, principal_names: Mapping[str, str]) -> dict[str, Any]:
    """One group as a CSV row or a table line: ``misses`` spread into ``miss_<reason>`` columns."""
    fields = record(group, principal_names)
    for reason, count in fields.pop("misses").items():
        fields[f"miss_{reason}"] = count
    return fields


def usage_json(parameters: UsageParameters, groups: Sequence[UsageGroup], principal_names: Mapping[str, str]) -> bytes:
    return orjson.dumps(
        {
            "object": "usage",
            "since": None if parameters.since is None else parameters.since.isoformat(),
            "until": None if parameters.until is None else parameters.until.isoformat(),
            "data": [record(group, principal_names) for group in groups],
        }
    )


def usage_csv(groups: Sequence[UsageGroup], principal_names: Mapping[str, str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")  # RFC 4180's line ends
    writer.writeheader()
    for group in groups:
        writer.writerow(flat_record(group, principal_names))
    return out.getvalue()


TABLE_COLUMNS: Final = (
    ("DAY", "day"),
    ("PRINCIPAL", "principal"),
    ("KEY", "key_id"),
    ("MODEL", "model"),
    ("REQUESTS", "requests"),
    ("PROMPT", "prompt_tokens"),
    ("UNCACHED", "uncached_tokens"),
    ("READ", "cache_read_tokens"),
    ("WRITE 5M", "cache_write_5m_tokens"),
    ("WRITE 1H", "cache_write_1h_tokens"),
    ("WRITE 24H", "cache_write_24h_tokens"),
    ("COMPLETION", "completion_tokens"),
    ("COST", "cost"),
    ("LIST COST", "list_cost"),
    ("SAVING", "saving"),
    ("HIT RATE", "hit_rate"),
    ("DEGRADED", "degraded"),
    *((f"MISS {reason.upper().replace('_', ' ')}", f"miss_{reason}") for reason in MISS_REASONS),
    ("DRIFT SUM", "drift_sum"),
    ("DRIFT N", "drift_count"),
)
"""The CLI's table: its headers and the record field under each."""


def table_rows(groups: Sequence[UsageGroup], principal_names: Mapping[str, str]) -> list[list[object]]:
    """The table's cells; money as Decimal, so the table right-aligns it as a number."""
    rows = []
    for group in groups:
        fields = flat_record(group, principal_names)
        fields.update(cost=group.cost, list_cost=group.list_cost, saving=group.saving)
        rows.append([fields[field] for _, field in TABLE_COLUMNS])
    return rows
