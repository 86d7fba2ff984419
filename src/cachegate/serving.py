"""How cachegate's HTTP services (the gateway, the tokenizer service) are served: uvicorn, tuned once.

uvicorn with httptools on the caller's event loop (``loop="none"``: the CLI runs uvloop itself);
no access log, no proxy-headers middleware, no server header. The server's limits
(``config.ServerLimits``) map onto uvicorn's own options where it has them — the keep-alive
timeout, ``limit_concurrency`` (a 503 past it), ``timeout_graceful_shutdown`` (on SIGTERM: stop
accepting, let open requests and streams finish up to the deadline, cancel the rest, then the
application's shutdown) — and onto ``http_limits`` where it has none (header bytes, the time to
receive a request).
"""

from __future__ import annotations

import uvicorn

from cachegate.asgi import ASGIApp
from cachegate.config import ServerLimits
from cachegate.http_limits import limited_protocol


def server(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "info",
    limits: ServerLimits | None = None,
) -> uvicorn.Server:
    limits = limits or ServerLimits()
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http=limited_protocol(limits.max_header_bytes, limits.request_receive_seconds),
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            log_level=log_level,
            timeout_keep_alive=limits.keep_alive_seconds,  # int in its hints; a float works
            limit_concurrency=limits.max_concurrency,
            timeout_graceful_shutdown=limits.shutdown_drain_seconds,  # int in its hints; a float works
        )
    )
