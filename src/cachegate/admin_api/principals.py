"""``/admin/v1/principals``: the tenants keys, cache scopes and bills belong to."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel

from cachegate import operations
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, Name, path_name
from cachegate.store.base import Principal

router = APIRouter(prefix="/admin/v1/principals", tags=["principals"])


class PrincipalCreate(Body):
    name: Name


class PrincipalOut(BaseModel):
    id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, principal: Principal) -> PrincipalOut:
        return cls(id=principal.id, name=principal.name, created_at=principal.created_at)


class PrincipalList(BaseModel):
    data: list[PrincipalOut]


PrincipalRef = Annotated[str, path_name("The principal's name or id")]


@router.post("", status_code=201, summary="Create a principal")
async def create_principal(body: PrincipalCreate, context: Context) -> PrincipalOut:
    return PrincipalOut.of(await operations.create_principal(context.store, body.name))


@router.get("", summary="List the principals")
async def list_principals(context: Context) -> PrincipalList:
    return PrincipalList(data=[PrincipalOut.of(p) for p in await operations.list_principals(context.store)])


@router.get("/{principal}", summary="One principal, by name or id")
async def get_principal(principal: PrincipalRef, context: Context) -> PrincipalOut:
    return PrincipalOut.of(await operations.get_principal(context.store, principal))
