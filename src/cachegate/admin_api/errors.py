"""Every admin API error as cachegate answers errors: ``{"error": {"message", "type", "param", "code"}}``.

FastAPI's own shapes (``{"detail": …}``, 422 for a body that does not validate) never reach a
client: a body or parameter that does not validate is a 400 naming the field in ``param``; the
store's NotFound is 404, Conflict 409, StoreUnavailable 503; a route or method that does not
exist is 404 or 405; anything unexpected is a 500 naming a request id under which it is logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from cachegate.asgi import ASGIApp, Message, Receive, Refusal, Scope, Send, send_error
from cachegate.core.errors import openai_error
from cachegate.operations import InvalidArgument
from cachegate.store.base import Conflict, NotFound, StoreError, StoreUnavailable

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid input: `param` names the field",
    401: "No API key, or one that is unknown or revoked",
    403: "A tenant's key: admin operations need an admin key",
    404: "No such object",
    409: "The object exists already, or the change conflicts with what is stored",
    413: "The body is larger than 1 MiB",
    429: "Too many failed authentications from this address",
    503: "The control store is unavailable",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in _DESCRIPTIONS.items()
}
"""The error answers every admin route may give, for the OpenAPI schema."""


def _answer(refusal: Refusal, headers: dict[str, str] | None = None) -> Response:
    body = openai_error(refusal.message, refusal.type, refusal.code, refusal.param)
    return Response(body, refusal.status, headers=headers, media_type="application/json")


def _refusal_of(exc: Exception) -> Refusal:
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, InvalidArgument):
        return Refusal(400, exc.message, "invalid_value", exc.argument)
    if isinstance(exc, NotFound):
        return Refusal(404, str(exc), "not_found", type_="not_found_error")
    if isinstance(exc, Conflict):
        return Refusal(409, str(exc), "conflict", type_="conflict_error")
    if isinstance(exc, StoreUnavailable):
        return Refusal(503, str(exc), "control_store_unavailable", type_="service_unavailable")
    return Refusal(500, str(exc), "store_error", type_="server_error")  # a StoreError of no known kind


def _validation_refusal(exc: RequestValidationError) -> Refusal:
    """The first problem, naming its field (``limit``, ``rate.requests_per_minute``, ``alias``)."""
    errors = exc.errors()
    if not errors:
        return Refusal(400, "the request is not valid", "invalid_request")
    first = errors[0]
    location = [str(part) for part in first.get("loc", ())]
    if first.get("type") == "json_invalid":
        return Refusal(400, f"the body is not valid JSON: {first.get('msg', '')}", "invalid_json", "body")
    field = ".".join(location[1:]) or (location[0] if location else "body")
    others = len(errors) - 1
    more = "" if not others else f" (and {others} more problem{'s' if others > 1 else ''})"
    return Refusal(400, f"{field}: {first.get('msg', 'invalid')}{more}", "invalid_value", field)


async def _on_refusal(request: Request, exc: Exception) -> Response:
    return _answer(_refusal_of(exc))


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    not_json = media_type and not (media_type == "application/json" or media_type.endswith("+json"))
    if not_json and any(tuple(error.get("loc", ())) == ("body",) for error in exc.errors()):
        message = f"the body must be JSON sent as content-type: application/json, not {media_type}"
        return _answer(Refusal(400, message, "invalid_json", "body"))
    return _answer(_validation_refusal(exc))


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        refusal = Refusal(404, f"no route for {request.method} {request.url.path}", "not_found")
    elif exc.status_code == 405:
        refusal = Refusal(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")
        return _answer(refusal, {"allow": ", ".join(_allowed_methods(request))})
    elif exc.status_code == 413:
        refusal = Refusal(413, str(exc.detail), "body_too_large")
    else:
        refusal = Refusal(exc.status_code, str(exc.detail), "invalid_request")
    return _answer(refusal, exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names the first route's only."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI keeps an included router whole, as one entry."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


def install_error_handlers(app: FastAPI) -> None:
    for kind in (Refusal, InvalidArgument, StoreError):
        app.add_exception_handler(kind, _on_refusal)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_middleware(InternalErrors)


class InternalErrors:
    """An unexpected error: logged with its traceback under a request id and answered 500 in our
    shape (if nothing was sent yet). Starlette's own last resort answers in plain text and raises
    again; this sits inside it and ends the matter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            request_id = f"req_{uuid.uuid4().hex}"
            log.exception("internal error in the admin API, request id %s", request_id)
            if not started:
                message = f"cachegate failed to serve this request (request id {request_id}); the error is logged"
                await send_error(send, 500, message, "server_error", "internal_error")
