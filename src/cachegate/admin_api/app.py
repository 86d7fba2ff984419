"""The admin application: one FastAPI app, built by ``build_admin_app`` from the gateway's parts.

Every route is behind ``require_admin``, the schema at ``/admin/openapi.json`` too. The schema is
FastAPI's, less the 422 answers FastAPI adds to every route: this API answers invalid input with
400 in cachegate's error shape (``errors.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from cachegate.admin_api import budgets, endpoints, keys, models, principals, rate_limits, tariffs, usage
from cachegate.admin_api.auth import require_admin
from cachegate.admin_api.body_limit import BodyLimit
from cachegate.admin_api.context import AdminContext
from cachegate.admin_api.errors import ERROR_RESPONSES, install_error_handlers
from cachegate.config import Config
from cachegate.dashboard.pages import Dashboard
from cachegate.gateway.auth import KeyResolver
from cachegate.gateway.catalog import CatalogCache
from cachegate.store.base import ControlStore

OPENAPI_PATH = "/admin/openapi.json"

ROUTERS: tuple[APIRouter, ...] = (
    principals.router,
    keys.router,
    endpoints.router,
    models.router,
    tariffs.router,
    budgets.router,
    rate_limits.router,
    usage.router,
)
"""Every resource group, in the order the schema lists them."""


def build_admin_app(store: ControlStore, config: Config, key_resolver: KeyResolver, catalog: CatalogCache) -> FastAPI:
    """The admin app over the gateway's own parts: its key resolver (so a revocation here applies
    here at once) and its catalog (reloaded after every change). Routers are included from
    ``ROUTERS``, each behind ``require_admin``."""
    app = FastAPI(
        title="cachegate admin API",
        version="1",
        description="Principals, keys, endpoints, models, tariffs, budgets and rate limits (SPEC §13).",
        openapi_url=None,  # served below, behind the admin key
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # the gateway has taken the trailing slash off already
    )
    app.state.admin = AdminContext(store, config, key_resolver, catalog)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    for router in ROUTERS:
        app.include_router(router, dependencies=[Depends(require_admin)], responses=ERROR_RESPONSES)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _fitted(_without_422(app.openapi()), config)
        return app.openapi_schema

    async def schema() -> JSONResponse:
        return JSONResponse(openapi())

    app.add_api_route(OPENAPI_PATH, schema, include_in_schema=False, dependencies=[Depends(require_admin)])
    app.router.routes.extend(Dashboard(store, key_resolver).routes)  # the pages, behind their own login cookie
    return app


def _without_422(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's schema without the 422 answers (and their schemas) this API never gives."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def _fitted(schema: dict[str, Any], config: Config) -> dict[str, Any]:
    """The schema told what this configuration has: the tokenizers a model may name and the TTLs
    its automatic caching may use (anything else is refused with 400)."""
    model_put = schema.get("components", {}).get("schemas", {}).get("ModelPut", {}).get("properties", {})
    if "tokenizer" in model_put:
        model_put["tokenizer"]["enum"] = sorted(config.tokenizers)
    if "automatic_caching" in model_put:
        accepted = {"type": "string", "enum": [str(tier) for tier in config.accepted_ttls]}
        model_put["automatic_caching"]["anyOf"] = [accepted, {"type": "null"}]
    return schema
