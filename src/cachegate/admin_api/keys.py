"""``/admin/v1/keys``: API keys. A key's secret is in the response that creates it, and nowhere
else, ever; a revoked key stops working on this process at once, on every other replica within
``catalog_refresh_seconds``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from cachegate import operations
from cachegate.admin_api.auth import require_admin
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, Text, path_name, query_text
from cachegate.asgi import Refusal
from cachegate.store.base import ApiKey

router = APIRouter(prefix="/admin/v1/keys", tags=["keys"])


class KeyCreate(Body):
    principal: Text = Field(description="The principal's name or id")
    admin: bool = Field(False, strict=True, description="Whether the key may use the admin API")


class KeyOut(BaseModel):
    id: str
    principal_id: str
    principal: str = Field(description="The principal's name")
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, view: operations.KeyView) -> KeyOut:
        key = view.key
        return cls(
            id=key.id,
            principal_id=key.principal_id,
            principal=view.principal_name,
            admin=key.is_admin,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class CreatedKeyOut(KeyOut):
    secret: str = Field(description="The key's secret: in this response only, never again (only its hash is stored)")


class KeyList(BaseModel):
    data: list[KeyOut]


KeyId = Annotated[str, path_name("The key's id (key_…)")]


@router.post("", status_code=201, summary="Create an API key; its secret is in this response only")
async def create_key(body: KeyCreate, context: Context) -> CreatedKeyOut:
    created = await operations.create_key(context.store, body.principal, admin=body.admin)
    view = KeyOut.of(operations.KeyView(created.key, created.principal.name))
    return CreatedKeyOut(**view.model_dump(), secret=created.secret)


@router.get("", summary="List API keys (never their secrets)")
async def list_keys(
    context: Context,
    principal: Annotated[str | None, query_text("Only this principal's keys (name or id)")] = None,
) -> KeyList:
    return KeyList(data=[KeyOut.of(view) for view in await operations.list_keys(context.store, principal)])


@router.get("/{key_id}", summary="One API key (never its secret)")
async def get_key(key_id: KeyId, context: Context) -> KeyOut:
    return KeyOut.of(await operations.get_key(context.store, key_id))


@router.post(
    "/{key_id}/revoke",
    summary="Revoke an API key (revoking it again changes nothing; not the key of this request: 409)",
)
async def revoke_key(key_id: KeyId, context: Context, caller: Annotated[ApiKey, Depends(require_admin)]) -> KeyOut:
    if key_id == caller.id:
        # An operator locked out by a slip of the id is worse than one more step to revoke a leaked key.
        raise Refusal(
            409,
            "this is the key this request is made with: revoke it with another admin key, or with the CLI",
            "own_key",
            type_="conflict_error",
        )
    view = await operations.revoke_key(context.store, key_id)
    context.keys.forget_key(key_id)
    await context.changed()
    return KeyOut.of(view)
