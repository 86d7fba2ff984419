"""The dashboard's login cookie: its attributes, over http and https, and who gets one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from cachegate.dashboard.pages import Dashboard
from cachegate.gateway.auth import KeyResolver
from cachegate.store.base import ControlStore
from cachegate.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ControlStore]:
    opened = await SqliteStore.open(tmp_path / "control.db")
    await opened.migrate()
    yield opened
    await opened.aclose()


async def login(store: ControlStore, secret: str, base_url: str) -> httpx.Response:
    app = Starlette(routes=Dashboard(store, KeyResolver(store)).routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
        return await client.post("/admin/login", data={"key": secret})


@pytest.mark.parametrize(("base_url", "secure"), [("http://gateway", False), ("https://gateway", True)])
async def test_an_admin_key_is_kept_in_a_strict_http_only_cookie(
    store: ControlStore, base_url: str, secure: bool
) -> None:
    operator = await store.create_principal("operator")
    _, secret = await store.create_api_key(operator.id, admin=True)

    response = await login(store, secret, base_url)

    assert response.status_code == 303 and response.headers["location"] == "/admin/"
    attributes = [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
    assert attributes[0] == f"cachegate_admin={secret}".lower()
    assert {"httponly", "samesite=strict", "path=/admin"} <= set(attributes)
    assert ("secure" in attributes) is secure


async def test_a_tenant_key_gets_no_cookie(store: ControlStore) -> None:
    tenant = await store.create_principal("tenant")
    _, secret = await store.create_api_key(tenant.id)

    refused = await login(store, secret, "https://gateway")
    unknown = await login(store, "cg-not-a-key", "https://gateway")

    assert refused.status_code == 403 and "not an admin key" in refused.text
    assert unknown.status_code == 401 and "not a valid API key" in unknown.text
    assert "set-cookie" not in refused.headers and "set-cookie" not in unknown.headers


async def test_an_empty_form_asks_for_a_key_and_a_stale_cookie_is_cleared(store: ControlStore) -> None:
    empty = await login(store, "", "https://gateway")
    app = Starlette(routes=Dashboard(store, KeyResolver(store)).routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://gateway") as client:
        client.cookies.set("cachegate_admin", "cg-revoked-or-never-a-key", path="/admin")
        stale = await client.get("/admin")

    assert empty.status_code == 401 and "Log in with an admin key." in empty.text
    assert stale.status_code == 401 and "not a valid API key" in stale.text
    assert stale.headers["set-cookie"].startswith('cachegate_admin="";')  # cleared
