"""``/admin/v1/budgets``: spend caps per key or principal over a UTC day, month, or in total
(SPEC §13). A budget is addressed as ``/{subject}/{who}/{period}``: ``key/{key id}`` or
``principal/{name or id}``."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from cachegate import operations
from cachegate.admin_api.context import Context
from cachegate.admin_api.fields import Body, DecimalText, as_text, path_name, query_text
from cachegate.asgi import Refusal
from cachegate.store.base import BudgetPeriod, BudgetSubject

router = APIRouter(prefix="/admin/v1/budgets", tags=["budgets"])


class BudgetPut(Body):
    limit: DecimalText = Field(description="The most the subject may be billed in the period (SPEC §10's cost)")


class BudgetOut(BaseModel):
    subject: BudgetSubject
    subject_id: str = Field(description="The key's id, or the principal's id")
    principal: str | None = Field(description="The principal's name, for a principal's budget")
    period: BudgetPeriod
    limit: DecimalText

    @classmethod
    def of(cls, view: operations.BudgetView) -> BudgetOut:
        budget = view.budget
        return cls(
            subject=budget.subject,
            subject_id=budget.subject_id,
            principal=view.principal_name,
            period=budget.period,
            limit=as_text(budget.limit),
        )


class BudgetList(BaseModel):
    data: list[BudgetOut]


Subject = Annotated[BudgetSubject, Path(description="Whose budget: a key's or a principal's")]
Who = Annotated[str, path_name("The key's id, or the principal's name or id")]
Period = Annotated[BudgetPeriod, Path(description="A UTC calendar day or month, or all time")]


@router.get("", summary="List the budgets: every one, or those of a key, a principal, or both")
async def list_budgets(
    context: Context,
    key: Annotated[str | None, query_text("This key's budgets (by id)")] = None,
    principal: Annotated[str | None, query_text("This principal's own budgets (by name or id)")] = None,
) -> BudgetList:
    views = await operations.list_budgets(context.store, key=key, principal=principal)
    return BudgetList(data=[BudgetOut.of(view) for view in views])


@router.put("/{subject}/{who}/{period}", summary="Set or replace a budget")
async def set_budget(subject: Subject, who: Who, period: Period, body: BudgetPut, context: Context) -> BudgetOut:
    view = await operations.set_budget(context.store, subject, who, period, Decimal(body.limit))
    await context.changed()
    return BudgetOut.of(view)


@router.delete(
    "/{subject}/{who}/{period}",
    status_code=204,
    response_class=Response,
    summary="Delete a budget (404 when there is none)",
)
async def delete_budget(subject: Subject, who: Who, period: Period, context: Context) -> Response:
    if not await operations.delete_budget(context.store, subject, who, period):
        raise Refusal(404, f"{subject} {who} has no {period} budget", "not_found", type_="not_found_error")
    await context.changed()
    return Response(status_code=204)
