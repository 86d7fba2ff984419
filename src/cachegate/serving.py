"""How cachegate's HTTP services (the gateway, the tokenizer service) are served: uvicorn, tuned once.

uvicorn with httptools on the caller's event loop (``loop="none"``: the CLI runs uvloop itself);
no access log, no proxy-headers middleware (client addresses are never used), no server header.
"""

from __future__ import annotations

import uvicorn

from cachegate.asgi import ASGIApp


def server(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "info") -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http="httptools",
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            log_level=log_level,
        )
    )
