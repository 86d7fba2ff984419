"""What the application dispatches to: routes, the request a route's handler gets, the error dialect.

Each route is built with exactly the parts it needs (as Starlette's routes and middleware are) and
is called with a ``Request``; nothing below the application knows the application. The dialect
says in which shape the client expects errors: an OpenAI client's SDK reads ``{"error": {...}}``,
an Anthropic client's ``{"type": "error", "error": {...}}`` (SPEC §9).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachegate.asgi import JSON_HEADERS, Headers, Receive, Refusal, Scope, Send, send_bytes, send_error
from cachegate.core.anthropic.errors import anthropic_error, error_type_for_status
from cachegate.store.base import ApiKey


class Dialect(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"

    async def send_refusal(self, send: Send, refusal: Refusal, extra_headers: Headers | None = None) -> None:
        """Answer ``refusal`` in this dialect's error shape."""
        if self is Dialect.OPENAI:
            await send_error(
                send, refusal.status, refusal.message, refusal.type, refusal.code, refusal.param, extra_headers
            )
            return
        message = f"{refusal.param}: {refusal.message}" if refusal.param else refusal.message
        body = anthropic_error(error_type_for_status(refusal.status), message)
        await send_bytes(send, refusal.status, [*JSON_HEADERS, *(extra_headers or [])], body)


@dataclass(slots=True)
class Request:
    """An authenticated request on its way to a route's handler."""

    scope: Scope
    receive: Receive
    send: Send
    key: ApiKey


Handler = Callable[[Request], Awaitable[int]]
"""Serves one request; returns the status the client was sent (or raises ``Refusal`` before any byte)."""


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the metrics' route label: a fixed word, never a client string
    handler: Handler
    dialect: Dialect = Dialect.OPENAI
    billed: bool = False  # its requests are billed: budgets and rate limits apply (others only read the limits)
