from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from workers_harness import WorkersHarness

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


IN_PROCESS = ["sqlite", "postgres", pytest.param("redis", marks=pytest.mark.redis)]
WORKERS = ["workers2", "workers2-postgres"]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``serve --workers 2`` parameters of ``gateway`` are kept for the tests of modules marked
    ``over_http`` (they reach the gateway only over HTTP; ``over_http(postgres=True)``: on PostgreSQL
    too, not only the embedded SQLite), except those marked ``in_process_only`` (they switch faults or
    look inside the gateway); a test marked ``workers_only`` runs on the
    embedded one alone. The others are
    deselected, not skipped: they were never meant to run there."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("gateway")
        if backend is None or HERE not in item.path.parents:
            kept.append(item)
            continue
        over_http = item.get_closest_marker("over_http")
        if item.get_closest_marker("workers_only"):
            wanted = backend == "workers2"
        elif backend == "workers2-postgres":  # a minute more for every module: only where it is asked for
            wanted = over_http is not None and over_http.kwargs.get("postgres", False)
        elif backend == "workers2":
            wanted = over_http is not None
        else:
            wanted = True
        wanted = wanted and not (backend in WORKERS and item.get_closest_marker("in_process_only"))
        (kept if wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="module", params=IN_PROCESS + WORKERS)
def gateway(
    request: pytest.FixtureRequest, qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayHarness | WorkersHarness]:
    """The gateway of a test module, once per cache index backend: SQLite (its store too), PostgreSQL
    (its store too), and Redis (its store on SQLite: there is no Redis control store); and for modules
    marked ``over_http``, ``cachegate serve --workers 2`` on the embedded default (SQLite files under its
    data folder) and on PostgreSQL (see ``pytest_collection_modifyitems``)."""
    folder = tmp_path_factory.mktemp("gateway")
    if request.param.startswith("workers2"):
        databases: tuple[str | None, str | None] = (None, None)
        if request.param == "workers2-postgres":
            server = request.getfixturevalue("pg_server")
            databases = (server.create_database(), server.create_database())
        workers = WorkersHarness(qwen3, folder, TEST_CONFIG, *databases).start()
        yield workers
        workers.stop()
        return
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
    if "gateway" in request.fixturenames and isinstance(gateway := request.getfixturevalue("gateway"), GatewayHarness):
        gateway.reset_faults()
