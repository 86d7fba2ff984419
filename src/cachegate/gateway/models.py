"""GET /v1/models and GET /v1/models/{id}: the models a client may name — the catalog's aliases,
not the upstreams' names. Answered locally: nothing goes upstream, so nothing is billed."""

from __future__ import annotations

from typing import Any, Final

import orjson

from cachegate.asgi import JSON_HEADERS, Refusal, send_bytes
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.routing import Request

MODEL_PREFIX: Final = "/v1/models/"


def _model_object(alias: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": "cachegate"}


class ModelList:
    def __init__(self, catalog: CatalogCache) -> None:
        self._catalog = catalog

    async def __call__(self, request: Request) -> int:
        data = [_model_object(alias) for alias in sorted(self._catalog.current.models)]
        await send_bytes(request.send, 200, JSON_HEADERS, orjson.dumps({"object": "list", "data": data}))
        return 200


class ModelDetail:
    """One model by its alias; the alias may hold slashes (``Qwen/Qwen3-8B``): the rest of the path is it."""

    def __init__(self, catalog: CatalogCache) -> None:
        self._catalog = catalog

    async def __call__(self, request: Request) -> int:
        alias = request.scope["path"][len(MODEL_PREFIX) :]
        if alias not in self._catalog.current.models:
            raise Refusal(404, f"The model '{alias}' does not exist", "model_not_found", "model")
        await send_bytes(request.send, 200, JSON_HEADERS, orjson.dumps(_model_object(alias)))
        return 200
