"""``/admin/v1/endpoints``: the upstream servers. An endpoint's upstream key is written, never read
back: responses say only whether one is set."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cachegate import operations
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, path_name
from cachegate.operations.checks import MAX_SECRET_LENGTH, MAX_URL_LENGTH, SECRET_PATTERN, URL_PATTERN
from cachegate.store.base import Endpoint

router = APIRouter(prefix="/admin/v1/endpoints", tags=["endpoints"])


class EndpointPut(Body):
    base_url: str = Field(
        min_length=8,
        max_length=MAX_URL_LENGTH,
        pattern=URL_PATTERN,
        description="e.g. http://127.0.0.1:8000/v1",
    )
    api_key: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_SECRET_LENGTH,
        pattern=SECRET_PATTERN,
        description="Sent upstream instead of the client's key; never returned",
    )


class EndpointOut(BaseModel):
    name: str
    base_url: str
    api_key: Literal["set", "none"] = Field(description="Whether an upstream key is set (the key is never shown)")

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointOut:
        state = "set" if operations.upstream_key_state(endpoint) == "set" else "none"
        return cls(name=endpoint.name, base_url=endpoint.base_url, api_key=state)


class EndpointList(BaseModel):
    data: list[EndpointOut]


EndpointName = Annotated[str, path_name("The endpoint's name")]


@router.get("", summary="List the endpoints")
async def list_endpoints(context: Context) -> EndpointList:
    return EndpointList(data=[EndpointOut.of(e) for e in await operations.list_endpoints(context.store)])


@router.get("/{name}", summary="One endpoint")
async def get_endpoint(name: EndpointName, context: Context) -> EndpointOut:
    return EndpointOut.of(await operations.get_endpoint(context.store, name))


@router.put("/{name}", summary="Add an endpoint, or replace the one of that name")
async def put_endpoint(name: EndpointName, body: EndpointPut, context: Context) -> EndpointOut:
    endpoint = await operations.put_endpoint(context.store, name, body.base_url, body.api_key)
    await context.changed()
    return EndpointOut.of(endpoint)
