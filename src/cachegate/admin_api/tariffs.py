"""``/admin/v1/tariffs/{alias}``: a model's cache tariff versions (SPEC §10). Setting a tariff
closes the one in force and opens a new version from now: caching is on for the model; closing
it turns caching off. Versions are never edited, so past bills stay explained.

Tariffs are a resource of their own rather than ``/models/{alias}/tariffs``: an alias may hold
slashes, so the whole rest of the path is the alias, with nothing after it to misread."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from cachegate import operations
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, DecimalText, count, path_alias
from cachegate.asgi import Refusal
from cachegate.core.types import CacheTariff
from cachegate.store.base import TariffVersion
from cachegate.store.values import utcnow

router = APIRouter(prefix="/admin/v1/tariffs", tags=["tariffs"])

_DEFAULT = CacheTariff()


class TariffSet(Body):
    write_5m: DecimalText = Field(_DEFAULT.write_multiplier_5m, description="Input price multiplier, 5-minute writes")
    write_1h: DecimalText = Field(_DEFAULT.write_multiplier_1h, description="Input price multiplier, 1-hour writes")
    write_24h: DecimalText = Field(_DEFAULT.write_multiplier_24h, description="Input price multiplier, 24-hour writes")
    read: DecimalText = Field(_DEFAULT.read_multiplier, description="Input price multiplier, cache reads")
    min_prefix_tokens: count(minimum=0) = Field(  # type: ignore[valid-type]
        _DEFAULT.min_prefix_tokens, description="Shorter prompts are not cached"
    )


class TariffOut(BaseModel):
    model: str
    state: Literal["in force", "scheduled", "ended"]
    valid_from: datetime
    valid_until: datetime | None
    write_5m: DecimalText
    write_1h: DecimalText
    write_24h: DecimalText
    read: DecimalText
    min_prefix_tokens: int

    @classmethod
    def of(cls, version: TariffVersion, now: datetime) -> TariffOut:
        tariff = version.tariff
        state = operations.tariff_state(version, now)
        assert state in ("in force", "scheduled", "ended")
        return cls(
            model=version.model,
            state=state,
            valid_from=version.valid_from,
            valid_until=version.valid_until,
            write_5m=tariff.write_multiplier_5m,
            write_1h=tariff.write_multiplier_1h,
            write_24h=tariff.write_multiplier_24h,
            read=tariff.read_multiplier,
            min_prefix_tokens=tariff.min_prefix_tokens,
        )


class TariffList(BaseModel):
    data: list[TariffOut]


Alias = Annotated[str, path_alias("The model's alias (it may hold slashes)")]


def _listed(versions: list[TariffVersion]) -> TariffList:
    now = utcnow()
    return TariffList(data=[TariffOut.of(version, now) for version in versions])


@router.get("", summary="Every model's tariff versions, by model, oldest first")
async def list_all_tariffs(context: Context) -> TariffList:
    return _listed(await operations.list_tariffs(context.store))


@router.get("/{alias:path}", summary="A model's tariff versions, oldest first")
async def list_tariffs(alias: Alias, context: Context) -> TariffList:
    return _listed(await operations.list_tariffs(context.store, alias))


@router.post("/{alias:path}", status_code=201, summary="Open a new tariff version from now: caching is on")
async def set_tariff(alias: Alias, body: TariffSet, context: Context) -> TariffOut:
    version = await operations.set_tariff(
        context.store,
        alias,
        write_5m=Decimal(body.write_5m),
        write_1h=Decimal(body.write_1h),
        write_24h=Decimal(body.write_24h),
        read=Decimal(body.read),
        min_prefix_tokens=body.min_prefix_tokens,
    )
    await context.changed()
    return TariffOut.of(version, utcnow())


@router.delete(
    "/{alias:path}",
    status_code=204,
    response_class=Response,
    summary="Close the tariff in force: caching stops for the model (404 when none is in force)",
)
async def disable_tariff(alias: Alias, context: Context) -> Response:
    if not await operations.disable_tariff(context.store, alias):
        raise Refusal(404, f"{alias} has no cache tariff in force", "not_found", type_="not_found_error")
    await context.changed()
    return Response(status_code=204)
