"""A bound on an admin request's body, checked before FastAPI reads it.

FastAPI reads a route's body before its dependencies run, so before the key is checked: without a
bound, anyone could make the gateway buffer a body of any size. An admin body is a few hundred
bytes. A declared ``content-length`` over the bound is refused at once; a body sent in chunks is
cut off where it crosses it. Either way: 413 ``body_too_large`` in cachegate's shape. (FastAPI's
own ``max_body_size`` answers in plain text and signals through exceptions of Starlette's that
are not public.)
"""

from __future__ import annotations

from typing import Final

from starlette.exceptions import HTTPException

from cachegate.asgi import ASGIApp, Message, Receive, Refusal, Scope, Send, header

MAX_BODY_BYTES: Final = 1 << 20


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await Refusal(413, f"request body is larger than {self.limit} bytes", "body_too_large").send(send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI lets an HTTPException raised while it reads the body through; errors.py answers it.
                raise HTTPException(413, f"request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, bounded, send)
