"""``/admin/v1/rate-limits``: per-key requests and input tokens per minute (SPEC §13); input tokens
are uncached input and cache writes, cache reads do not count. A limit left out is off."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cachegate import operations
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, count, path_name
from cachegate.asgi import Refusal
from cachegate.store.base import RateLimit

router = APIRouter(prefix="/admin/v1/rate-limits", tags=["rate limits"])


def _left_out_not_null(schema: dict[str, Any]) -> None:
    """The field's schema as an integer that may be left out, not sent as null."""
    integer = next(branch for branch in schema.pop("anyOf") if branch.get("type") != "null")
    schema.update(integer)
    schema.pop("default", None)


PerMinute = count(minimum=1)


class RateLimitPut(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    requests_per_minute: PerMinute | None = Field(
        None, description="Off when left out", json_schema_extra=_left_out_not_null
    )
    input_tokens_per_minute: PerMinute | None = Field(
        None,
        description="Uncached input and cache writes; off when left out",
        json_schema_extra=_left_out_not_null,
    )

    @field_validator("requests_per_minute", "input_tokens_per_minute", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("leave a limit out to have it off; null is not a limit")
        return value


class RateLimitOut(BaseModel):
    key_id: str
    requests_per_minute: int | None
    input_tokens_per_minute: int | None

    @classmethod
    def of(cls, limit: RateLimit) -> RateLimitOut:
        return cls(
            key_id=limit.key_id,
            requests_per_minute=limit.requests_per_minute,
            input_tokens_per_minute=limit.input_tokens_per_minute,
        )


class RateLimitList(BaseModel):
    data: list[RateLimitOut]


KeyId = Annotated[str, path_name("The key's id (key_…)")]


@router.get("", summary="Every key's rate limits")
async def list_rate_limits(context: Context) -> RateLimitList:
    return RateLimitList(data=[RateLimitOut.of(limit) for limit in await operations.list_rate_limits(context.store)])


@router.get("/{key_id}", summary="One key's rate limits (404 when it has none)")
async def get_rate_limit(key_id: KeyId, context: Context) -> RateLimitOut:
    return RateLimitOut.of(await operations.get_rate_limit(context.store, key_id))


@router.put("/{key_id}", summary="Set or replace a key's rate limits; at least one must be given")
async def set_rate_limit(key_id: KeyId, body: RateLimitPut, context: Context) -> RateLimitOut:
    limit = await operations.set_rate_limit(
        context.store,
        key_id,
        requests_per_minute=body.requests_per_minute,
        input_tokens_per_minute=body.input_tokens_per_minute,
    )
    await context.changed()
    return RateLimitOut.of(limit)


@router.delete(
    "/{key_id}", status_code=204, response_class=Response, summary="Lift a key's rate limits (404 when it has none)"
)
async def delete_rate_limit(key_id: KeyId, context: Context) -> Response:
    if not await operations.delete_rate_limit(context.store, key_id):
        raise Refusal(404, f"{key_id} has no rate limits", "not_found", type_="not_found_error")
    await context.changed()
    return Response(status_code=204)
