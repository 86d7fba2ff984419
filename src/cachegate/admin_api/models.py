"""``/admin/v1/models``: the model aliases clients ask for. A model's tokenizer and automatic-caching
TTL must be ones the configuration has (400 otherwise), or every request to it would fail later."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from cachegate import operations
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, DecimalText, Name, Text, as_text, path_alias
from cachegate.core.types import TtlTier
from cachegate.store.base import Model

router = APIRouter(prefix="/admin/v1/models", tags=["models"])

MAX_ENDPOINTS = 64


class ModelPut(Body):
    endpoints: list[Name] = Field(
        min_length=1,
        max_length=MAX_ENDPOINTS,
        json_schema_extra={"uniqueItems": True},
        description="The endpoints serving the model, the first one first: requests are spread by prefix affinity",
    )
    upstream_model: Text = Field(description="The model name the upstream is sent")
    tokenizer: Text = Field("qwen3", description="A token counter the configuration defines")
    input_price: DecimalText = Field("0", description="Per prompt token")
    output_price: DecimalText = Field("0", description="Per completion token")
    automatic_caching: TtlTier | None = Field(
        None, description="Cache requests that carry no marker with this TTL, as OpenAI caches automatically"
    )

    @field_validator("endpoints")
    @classmethod
    def _each_once(cls, endpoints: list[str]) -> list[str]:
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("names an endpoint twice")
        return endpoints


class ModelOut(BaseModel):
    alias: str
    endpoints: list[str]
    upstream_model: str
    tokenizer: str
    input_price: DecimalText
    output_price: DecimalText
    automatic_caching: TtlTier | None
    caching: bool = Field(description="Whether a cache tariff is in force now")

    @classmethod
    def of(cls, view: operations.ModelView) -> ModelOut:
        model = view.model
        return cls(
            alias=model.alias,
            endpoints=list(model.endpoints),
            upstream_model=model.upstream_model,
            tokenizer=model.tokenizer,
            input_price=as_text(model.input_price),
            output_price=as_text(model.output_price),
            automatic_caching=model.automatic_cache_ttl,
            caching=view.caching,
        )


class ModelList(BaseModel):
    data: list[ModelOut]


Alias = Annotated[str, path_alias("The model's alias (it may hold slashes)")]


@router.get("", summary="List the models")
async def list_models(context: Context) -> ModelList:
    return ModelList(data=[ModelOut.of(view) for view in await operations.list_models(context.store)])


@router.get("/{alias:path}", summary="One model")
async def get_model(alias: Alias, context: Context) -> ModelOut:
    return ModelOut.of(await operations.get_model(context.store, alias))


@router.put("/{alias:path}", summary="Add a model, or replace the one of that alias")
async def put_model(alias: Alias, body: ModelPut, context: Context) -> ModelOut:
    model = Model(
        alias=alias,
        endpoint=body.endpoints[0],
        upstream_model=body.upstream_model,
        tokenizer=body.tokenizer,
        input_price=Decimal(body.input_price),
        output_price=Decimal(body.output_price),
        automatic_cache_ttl=body.automatic_caching,
    ).with_endpoints(body.endpoints)
    await operations.put_model(context.store, context.config, model)
    await context.changed()
    return ModelOut.of(await operations.get_model(context.store, alias))
