from __future__ import annotations

from collections.abc import Iterator

import pytest

from cachegate.tokens.base import TokenCounter
from cachegate.tokens.registry import load_qwen3

from harness import GatewayHarness
from pg import pg_server  # noqa: F401 - a fixture
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

# Models of the test catalog. "cached" has a low floor so short test prompts cache; "floored"
# has a floor no test prompt reaches; "automatic" caches requests without markers (5m); "plain"
# has no cache tariff; "keyed" sends the endpoint's own key upstream; "unreachable" points nowhere;
# "salted" goes to an endpoint that takes a per-principal cache_salt.
TEST_CONFIG = {
    "deadlines": {"classify_seconds": 1.0},
    "ledger": {"flush_interval_seconds": 0.05},  # rows reach the store soon after their request
    "models": [
        {
            "alias": "cached",
            "endpoint": "fake",
            "upstream_model": "qwen3-fake",
            "cache": {"min_prefix_tokens": 64},
            "input_price": "0.000001",
            "output_price": "0.000002",
        },
        {
            "alias": "floored",
            "endpoint": "fake",
            "upstream_model": "qwen3-fake",
            "cache": {"min_prefix_tokens": 100000},
        },
        {
            "alias": "automatic",
            "endpoint": "fake",
            "upstream_model": "qwen3-fake",
            "cache": {"min_prefix_tokens": 64},
            "automatic_caching": "5m",
        },
        {"alias": "plain", "endpoint": "fake", "upstream_model": "qwen3-fake"},
        {"alias": "keyed", "endpoint": "fake-with-key", "upstream_model": "qwen3-fake"},
        {"alias": "unreachable", "endpoint": "dead", "upstream_model": "qwen3-fake", "cache": {}},
        {
            "alias": "salted",
            "endpoint": "fake-salted",
            "upstream_model": "qwen3-fake",
            "cache": {"min_prefix_tokens": 64},
        },
    ],
}


@pytest.fixture(scope="session")
def qwen3() -> TokenCounter:
    return load_qwen3()


@pytest.fixture(scope="module", params=["sqlite", "postgres", pytest.param("redis", marks=pytest.mark.redis)])
def gateway(
    request: pytest.FixtureRequest, qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayHarness]:
    """The gateway of a test module, once per cache index backend: SQLite (its store too), PostgreSQL
    (its store too), and Redis (its store on SQLite: there is no Redis control store)."""
    folder = tmp_path_factory.mktemp("gateway")
    redis_prefix = None
    if request.param == "sqlite":
        store_url, index_url = f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db"
    elif request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        store_url, index_url = server.create_database(), server.create_database()
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis_prefix = redis.fresh_prefix()
        store_url, index_url = f"sqlite:///{folder}/control.db", redis.index_url(redis_prefix)
    harness = GatewayHarness(qwen3, store_url, index_url, TEST_CONFIG).start()
    yield harness
    harness.stop()
    if redis_prefix is not None:
        request.getfixturevalue("redis_server").drop(redis_prefix)


@pytest.fixture(autouse=True)
def _healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with the faults switched off, whatever the previous one did."""
    yield
    if "gateway" in request.fixturenames:
        request.getfixturevalue("gateway").reset_faults()
