"""Fixtures of the CLI suites: the shared PostgreSQL server, for gateways whose cache index is on it."""

from pg import pg_server  # noqa: F401  (fixture)
