"""The reference the benchmark compares the gateway with: the same server and upstream client
(uvicorn + httptools, aiohttp) doing only what any JSON proxy does — parse the request, forward
it, parse the response and add a usage field (streams: pass chunks through) — and no cache work.
Its numbers on the same machine, in the same run, separate what the machine costs from what
cachegate's cache layer costs.

    python bench/bare_proxy.py UPSTREAM_BASE_URL PORT
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import orjson
import uvicorn
import uvloop

_HEADERS = [(b"content-type", b"application/json")]
_UPSTREAM_HEADERS = {"content-type": "application/json"}


class BareProxy:
    def __init__(self, upstream: str) -> None:
        self._url = f"{upstream}/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                self._session = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
                await send({"type": "lifespan.startup.complete"})
            assert self._session is not None
            await self._session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self._session is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        request["model"] = "qwen3-fake"
        async with self._session.post(self._url, data=orjson.dumps(request), headers=_UPSTREAM_HEADERS) as response:
            if request.get("stream"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": [(b"content-type", b"text/event-stream")],
                    }
                )
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            payload = orjson.loads(await response.read())
        payload["usage"]["cache_read_input_tokens"] = 0
        data = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_HEADERS, (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})


def main() -> None:
    upstream, port = sys.argv[1], int(sys.argv[2])
    config = uvicorn.Config(
        BareProxy(upstream),
        port=port,
        loop="none",
        http="httptools",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
    )
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
