"""Every other ``/v1/*`` path: authenticated, then proxied untouched (SPEC §2, last paragraph).

A JSON body naming a model is routed to that model's endpoint, with ``model`` rewritten to the
upstream name when the two differ (the upstream does not know our aliases); anything else goes
to the only endpoint when there is exactly one. Response bytes stream through as they arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from cachegate.asgi import Receive, Refusal, Send, read_body
from cachegate.upstream.base import UpstreamBroken, UpstreamRequest, UpstreamUnavailable

if TYPE_CHECKING:
    from cachegate.gateway.app import Gateway


async def proxy(gateway: Gateway, scope: dict[str, Any], receive: Receive, send: Send) -> int:
    body = await read_body(receive, gateway.config.body_limit_bytes)
    payload = _json_object(body)
    alias = payload.get("model") if payload is not None else None
    if isinstance(alias, str):
        model, endpoint = gateway.catalog.route(alias)
        if payload is not None and model.upstream_model != alias:
            payload["model"] = model.upstream_model
            body = orjson.dumps(payload)
    elif len(gateway.catalog.current.endpoints) == 1:
        endpoint = next(iter(gateway.catalog.current.endpoints.values()))
    else:
        raise Refusal(
            404, "no model named in the request, and no single endpoint to send it to", "model_not_found", "model"
        )

    path = scope["path"][len("/v1") :]
    query = scope.get("query_string", b"")
    url = f"{endpoint.base_url}{path}" + (f"?{query.decode('latin-1')}" if query else "")
    request = UpstreamRequest(scope["method"], url, gateway.upstream_headers(scope, endpoint, keep_encoding=True), body)
    try:
        response = await gateway.upstream.send(request)
    except UpstreamUnavailable as exc:
        raise Refusal(502, "the upstream is unreachable", "upstream_unreachable", type_="upstream_error") from exc
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
