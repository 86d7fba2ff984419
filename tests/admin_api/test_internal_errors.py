"""The admin app's last resort: an error no handler knows is a JSON 500 naming a request id, logged
under it — never Starlette's plain-text page, never an exception out of the app."""

from __future__ import annotations

import logging

import httpx
import pytest

from cachegate.admin_api.errors import InternalErrors
from cachegate.asgi import Receive, Scope, Send


async def broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug in a route")


async def half_sent(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("a bug after the answer began")


async def test_an_unexpected_error_is_a_json_500_logged_under_its_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = httpx.ASGITransport(app=InternalErrors(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        response = await client.get("/admin/v1/principals")

    error = response.json()["error"]
    assert (response.status_code, error["code"], error["type"]) == (500, "internal_error", "server_error")
    request_id = error["message"].split("request id ")[1].split(")")[0]
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)


async def test_an_error_after_the_answer_began_sends_nothing_more(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await InternalErrors(half_sent)({"type": "http", "method": "GET", "path": "/admin"}, receive, send)

    assert [message["type"] for message in sent] == ["http.response.start"]
    assert any(record.levelno == logging.ERROR for record in caplog.records)
