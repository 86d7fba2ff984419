"""The usage operation (SPEC §13): its parameters, the report, and its renderings as JSON, CSV and
a table.

One implementation for the three surfaces that show usage: ``cachegate usage`` (the CLI),
``GET /v1/usage`` (a tenant's own usage, on the gateway) and ``GET /admin/v1/usage`` (any
principal's, for an admin key). Each reads its parameters (``parse_parameters`` from a query
string), runs ``usage`` (``ControlStore.usage``, the principal resolved by name or id) and renders
the report with ``usage_json``, ``usage_csv`` or ``table_rows``, so the three cannot drift.

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

from cachegate.operations.checks import InvalidArgument
from cachegate.store.base import MISS_REASONS, ControlStore, UsageGroup, UsageQuery
from cachegate.store.values import decimal_text


class UsageFormat(enum.StrEnum):
    JSON = "json"
    CSV = "csv"
    TABLE = "table"  # the CLI's


@dataclass(frozen=True, slots=True)
class UsageParameters:
    """What a caller asked for: the time bounds, a principal (name or id, as given) and the format."""

    since: datetime | None = None
    until: datetime | None = None
    principal: str | None = None
    format: UsageFormat = UsageFormat.JSON

    def query(self, principal_id: str | None) -> UsageQuery:
        return UsageQuery(since=self.since, until=self.until, principal_id=principal_id)


@dataclass(frozen=True, slots=True)
class UsageReport:
    parameters: UsageParameters
    groups: list[UsageGroup]
    principal_names: dict[str, str]  # id -> name, of every principal in the groups


async def usage(store: ControlStore, parameters: UsageParameters) -> UsageReport:
    """The usage the parameters select; ``parameters.principal`` is a name or an id (NotFound if
    neither). A window that ends before it starts selects nothing."""
    principal_id = None
    if parameters.principal is not None:
        principal_id = (await store.get_principal(parameters.principal)).id
    groups = await store.usage(parameters.query(principal_id))
    names = {p.id: p.name for p in await store.list_principals()}
    return UsageReport(parameters, groups, {pid: names.get(pid, pid) for pid in {g.principal_id for g in groups}})


PARAMETERS: Final = ("since", "until", "principal", "format")


def parse_time(text: str, parameter: str, *, until: bool = False) -> datetime:
    """A day (``YYYY-MM-DD``, UTC) or an ISO-8601 timestamp with an offset; for ``until`` a day
    means the end of that day."""
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(parameter, f"{parameter}: expected a day as YYYY-MM-DD, not {text!r}") from None
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if until:
            return _LAST if day == date.max else start + timedelta(days=1)
        return start
    try:
        at = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lower-case "t" and "z"
    except ValueError:
        raise InvalidArgument(
            parameter, f"{parameter}: expected YYYY-MM-DD or an ISO-8601 timestamp with its offset, not {text!r}"
        ) from None
    if at.tzinfo is None:
        raise InvalidArgument(parameter, f"{parameter}: the timestamp {text!r} needs an offset, such as Z or +00:00")
    try:
        return at.astimezone(UTC)
    except OverflowError:  # an offset past the first or the last day a datetime holds
        return _FIRST if at.year == 1 else _LAST


_FIRST: Final = datetime.min.replace(tzinfo=UTC)
_LAST: Final = datetime.max.replace(tzinfo=UTC)


def parse_parameters(pairs: Sequence[tuple[str, str]], formats: Sequence[UsageFormat]) -> UsageParameters:
    """The parameters of a query string (as ``urllib.parse.parse_qsl`` gives them): each at most
    once, none unknown, the format one of ``formats``."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            raise InvalidArgument(name, f"{name}: unknown parameter; the parameters are {', '.join(PARAMETERS)}")
        if name in values:
            raise InvalidArgument(name, f"{name}: given more than once")
        values[name] = value
    return UsageParameters(
        since=None if "since" not in values else parse_time(values["since"], "since"),
        until=None if "until" not in values else parse_time(values["until"], "until", until=True),
        principal=values.get("principal") or None,
        format=_format(values.get("format", UsageFormat.JSON.value), formats),
    )


def _format(text: str, formats: Sequence[UsageFormat]) -> UsageFormat:
    if text not in {f.value for f in formats}:
        raise InvalidArgument("format", f"format: expected one of {', '.join(f.value for f in formats)}, not {text!r}")
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


def usage_json(report: UsageReport) -> bytes:
    parameters = report.parameters
    return orjson.dumps(
        {
            "object": "usage",
            "since": None if parameters.since is None else parameters.since.isoformat(),
            "until": None if parameters.until is None else parameters.until.isoformat(),
            "data": [record(group, report.principal_names) for group in report.groups],
        }
    )


def usage_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")  # RFC 4180's line ends
    writer.writeheader()
    for group in report.groups:
        writer.writerow(flat_record(group, report.principal_names))
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


def table_rows(report: UsageReport) -> list[list[object]]:
    """The table's cells; money as Decimal, so the table right-aligns it as a number."""
    rows = []
    for group in report.groups:
        fields = flat_record(group, report.principal_names)
        fields.update(cost=group.cost, list_cost=group.list_cost, saving=group.saving)
        rows.append([fields[field] for _, field in TABLE_COLUMNS])
    return rows
