"""Redis fixtures shared by the suites that need a real server (cache index, e2e).

Use them from a suite's conftest.py: ``from redis_server import redis_server, redis_url``.

The server is ``CACHEGATE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Every test works
under a key prefix of its own (``cachegate-test-<random hex>``, passed in the URL's ``key_prefix``
query option), so tests never see each other's keys, and its keys are deleted after it.
If the server cannot be reached the tests are skipped, except under CI (``CI=true``), where they
fail: a CI run must never pass by silently skipping its Redis tests.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

SERVER_URL = os.environ.get("CACHEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class RedisServer:
    """The test server: hands out fresh key prefixes and deletes what was written under them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def probe(self) -> None:
        """Raise if the server cannot be reached."""
        self._client.ping()

    def fresh_prefix(self) -> str:
        return f"cachegate-test-{secrets.token_hex(6)}"

    def index_url(self, prefix: str, url: str | None = None) -> str:
        """``url`` (default: the server's) with ``key_prefix=prefix`` in its query."""
        parts = urlsplit(url or self.url)
        query = f"{parts.query}&" if parts.query else ""
        return parts._replace(query=f"{query}key_prefix={prefix}").geturl()

    def keys(self, prefix: str) -> list[bytes]:
        return list(self._client.scan_iter(match=f"{prefix}:*", count=1000))

    def drop(self, prefix: str) -> None:
        keys = self.keys(prefix)
        for start in range(0, len(keys), 1000):
            self._client.delete(*keys[start : start + 1000])

    def close(self) -> None:
        self._client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The Redis test server; skips (fails under CI=true) when it is unreachable."""
    server = RedisServer(SERVER_URL)
    try:
        server.probe()
    except redis.RedisError as exc:
        host, port = server.address
        message = f"Redis is not reachable at {host}:{port}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis cache index URL under a key prefix of this test's own, emptied after the test."""
    prefix = redis_server.fresh_prefix()
    yield redis_server.index_url(prefix)
    redis_server.drop(prefix)
