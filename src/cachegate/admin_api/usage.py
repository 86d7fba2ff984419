"""``/admin/v1/usage``: any principal's usage, or everyone's (SPEC §13), as JSON or CSV.

The usage operation's (``operations/usage.py``), as ``cachegate usage`` and ``GET /v1/usage`` run
it: the same parameters, read by the same parser (an unknown or repeated parameter is 400, as
everywhere in this API), the same renderings.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cachegate.admin_api.context import Context
from cachegate.operations.checks import MAX_NAME_LENGTH, NAME_PATTERN
from cachegate.operations.usage import UsageFormat, parse_parameters, usage, usage_csv, usage_json

router = APIRouter(prefix="/admin/v1/usage", tags=["usage"])

_FORMATS: Final = (UsageFormat.JSON, UsageFormat.CSV)
_TIME = "A UTC day (YYYY-MM-DD) or an ISO-8601 timestamp with its offset"
_UNTIL = f"{_TIME}; a day includes that day, a timestamp is exclusive"
_DAY_OR_TIME: Final[dict[str, Any]] = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}
_EXAMPLE_JSON = {
    "object": "usage",
    "since": "2026-11-01T00:00:00+00:00",
    "until": None,
    "data": [
        {
            "day": "2026-11-01",
            "principal_id": "prn_…",
            "principal": "acme",
            "key_id": "key_…",
            "model": "qwen3-32b",
            "requests": 3,
            "prompt_tokens": 3000,
            "uncached_tokens": 600,
            "cache_read_tokens": 1800,
            "cache_write_5m_tokens": 600,
            "cache_write_1h_tokens": 0,
            "cache_write_24h_tokens": 0,
            "completion_tokens": 300,
            "cost": "0.3",
            "list_cost": "0.75",
            "saving": "0.45",
            "hit_rate": "0.6000",
            "degraded": 0,
            "misses": {"first_write": 1, "expired": 0, "prefix_changed": 0, "below_floor": 0, "degraded": 0},
            "drift_sum": 6,
            "drift_count": 3,
        }
    ],
}


@router.get(
    "",
    summary="Usage by UTC day, key and model",
    response_class=Response,
    responses={
        200: {
            "description": "The usage groups, by day, key and model",
            "content": {"application/json": {"example": _EXAMPLE_JSON}, "text/csv": {}},
        }
    },
)
async def get_usage(
    request: Request,
    context: Context,
    since: Annotated[str | None, Query(description=f"{_TIME}; inclusive", json_schema_extra=_DAY_OR_TIME)] = None,
    until: Annotated[str | None, Query(description=_UNTIL, json_schema_extra=_DAY_OR_TIME)] = None,
    principal: Annotated[
        str | None,
        Query(
            description="Only this principal's usage (name or id)",
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=NAME_PATTERN,
        ),
    ] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response:
    # The declared parameters give the schema; the shared parser reads and checks them, as the CLI's
    # and /v1/usage's, so a bound means the same everywhere (a day as until: that whole day).
    parameters = parse_parameters(request.query_params.multi_items(), _FORMATS)
    report = await usage(context.store, parameters)
    if parameters.format is UsageFormat.CSV:
        return Response(usage_csv(report), media_type="text/csv; charset=utf-8")
    return Response(usage_json(report), media_type="application/json")
