"""The operator's dashboard under ``/admin`` (SPEC §13): usage, cache and spend, as HTML pages."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount

from cachegate.dashboard.pages import PREFIX, Dashboard
from cachegate.gateway.auth import KeyResolver
from cachegate.store.base import ControlStore


def dashboard_app(store: ControlStore, keys: KeyResolver) -> Starlette:
    """The pages as an ASGI application serving ``/admin/…`` (mounted by the gateway's route table)."""
    return Starlette(routes=[Mount(PREFIX, routes=Dashboard(store, keys).routes)])
