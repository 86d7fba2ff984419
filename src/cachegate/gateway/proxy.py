"""Every other ``/v1/*`` path: authenticated, then proxied untouched (SPEC §2, last paragraph).

A JSON body naming a model is routed to that model's endpoint, with ``model`` rewritten to the
upstream name when the two differ (the upstream does not know our aliases); anything else goes
to the only endpoint when there is exactly one. Response bytes stream through as they arrive.
"""

from __future__ import annotations

from typing import Any

import orjson

from cachegate.asgi import JSON_HEADERS, Refusal, read_body, send_bytes
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.forwarding import upstream_headers
from cachegate.gateway.routing import Request
from cachegate.upstream.base import Upstream, UpstreamBroken, UpstreamRequest, UpstreamUnavailable


class Proxy:
    def __init__(self, catalog: CatalogCache, upstream: Upstream, body_limit: int) -> None:
        self._catalog = catalog
        self._upstream = upstream
        self._body_limit = body_limit

    async def __call__(self, request: Request) -> int:
        scope, send = request.scope, request.send
        body = await read_body(request.receive, self._body_limit)
        payload = _json_object(body)
        alias = payload.get("model") if payload is not None else None
        if isinstance(alias, str):
            model, endpoint = self._catalog.route(alias)
            if payload is not None and model.upstream_model != alias:
                payload["model"] = model.upstream_model
                body = orjson.dumps(payload)
        elif len(self._catalog.current.endpoints) == 1:
            endpoint = next(iter(self._catalog.current.endpoints.values()))
        else:
            raise Refusal(
                404, "no model named in the request, and no single endpoint to send it to", "model_not_found", "model"
            )

        path = scope["path"][len("/v1") :]
        query = scope.get("query_string", b"")
        url = f"{endpoint.base_url}{path}" + (f"?{query.decode('latin-1')}" if query else "")
        upstream_request = UpstreamRequest(
            scope["method"], url, upstream_headers(scope, endpoint, keep_encoding=True), body
        )
        try:
            response = await self._upstream.send(upstream_request)
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


class ModelList:
    """GET /v1/models: the models a client may name — the catalog's aliases, not the upstreams' names."""

    def __init__(self, catalog: CatalogCache) -> None:
        self._catalog = catalog

    async def __call__(self, request: Request) -> int:
        data: list[dict[str, Any]] = [
            {"id": alias, "object": "model", "owned_by": "cachegate"} for alias in sorted(self._catalog.current.models)
        ]
        await send_bytes(request.send, 200, JSON_HEADERS, orjson.dumps({"object": "list", "data": data}))
        return 200


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object when it names a model; None for anything else (sent as is)."""
    if not body or b'"model"' not in body:
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
