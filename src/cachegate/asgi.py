"""ASGI types and the few response helpers the gateway needs (no framework on the hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cachegate.core.errors import CachegateError, openai_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


class Refusal(CachegateError):
    """A request the gateway answers itself, before any upstream response, with an OpenAI-shaped error.

    Raised anywhere on a request's path; the application sends it and counts it in one place.
    """

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, type_: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_

    async def send(self, send: Send) -> None:
        await send_error(send, self.status, self.message, self.type, self.code, self.param)


class ClientGone(CachegateError):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused (413) as soon as it crosses ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"request body is larger than {limit} bytes", "body_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    extra_headers: Headers | None = None,
) -> None:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    await send_bytes(send, status, [*JSON_HEADERS, *(extra_headers or [])], openai_error(message, type_, code, param))


def media_type(headers: Headers) -> bytes | None:
    """The base media type of ``content-type``, lower-cased (``text/event-stream; charset=…`` gives
    ``text/event-stream``)."""
    for key, value in headers:
        if key == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return None
