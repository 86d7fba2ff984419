"""Fixtures of the CLI suites: the shared PostgreSQL and Redis servers, for gateways whose cache index is on them."""

from pg import pg_server  # noqa: F401  (fixture)
from redis_server import redis_server  # noqa: F401  (fixture)
