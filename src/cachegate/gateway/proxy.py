"""Every other ``/v1/*`` path: authenticated, then proxied untouched (SPEC §2, last paragraph).

A JSON body naming a model is routed to that model's endpoint, with ``model`` rewritten to the
upstream name when the two differ (the upstream does not know our aliases); anything else goes
to the only endpoint when there is exactly one. Response bytes stream through as they arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from cachegate.gateway.asgi import BodyTooLarge, ClientGone, Receive, Send, read_body, send_error
from cachegate.store.base import Endpoint
from cachegate.upstream.base import UpstreamBroken, UpstreamRequest, UpstreamUnavailable

if TYPE_CHECKING:
    from cachegate.gateway.app import Gateway


async def proxy(gateway: Gateway, scope: dict[str, Any], receive: Receive, send: Send) -> int:
    try:
        body = await read_body(receive, gateway.config.body_limit_bytes)
    except BodyTooLarge:
        limit = gateway.config.body_limit_bytes
        await send_error(
            send, 413, f"request body is larger than {limit} bytes", "invalid_request_error", "body_too_large"
        )
        return 413
    except ClientGone:
        return 499
    catalog = gateway.catalog.current
    endpoint: Endpoint | None = None
    payload = _json_object(body)
    alias = payload.get("model") if payload is not None else None
    if isinstance(alias, str):
        model = catalog.models.get(alias)
        if model is None or (endpoint := catalog.endpoints.get(model.endpoint)) is None:
            await send_error(
                send, 404, f"The model '{alias}' does not exist", "invalid_request_error", "model_not_found", "model"
            )
            return 404
        if model.upstream_model != alias:
            assert payload is not None
            payload["model"] = model.upstream_model
            body = orjson.dumps(payload)
    elif len(catalog.endpoints) == 1:
        endpoint = next(iter(catalog.endpoints.values()))
    else:
        await send_error(
            send,
            404,
            "no model named in the request, and no single endpoint to send it to",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
        return 404

    path = scope["path"][len("/v1") :]
    query = scope.get("query_string", b"")
    url = f"{endpoint.base_url}{path}" + (f"?{query.decode('latin-1')}" if query else "")
    request = UpstreamRequest(scope["method"], url, gateway.upstream_headers(scope, endpoint, keep_encoding=True), body)
    try:
        response = await gateway.upstream.send(request)
    except UpstreamUnavailable:
        await send_error(send, 502, "the upstream is unreachable", "upstream_error", "upstream_unreachable")
        return 502
    try:
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        try:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBroken:
            return response.status  # incomplete response: the server drops the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        response.release()
    return response.status


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object when it names a model; None for anything else (sent as is)."""
    if not body or b'"model"' not in body:
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
