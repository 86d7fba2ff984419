"""Fixtures of the control-store suites: a fresh, migrated store of each backend.

(This folder is a package so that pytest puts tests/ on sys.path, where the shared ``pg`` lives.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachegate.store.base import ControlStore
from cachegate.store.factory import open_store

from pg import PgServer, pg_server  # noqa: F401  (fixture)

POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


@pytest.fixture
def pg_database(pg_server: PgServer) -> str:  # noqa: F811  (the fixture imported above)
    """The URL of a new, empty PostgreSQL database for this test alone."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", POSTGRES])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty control store of each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ControlStore]:
    """A migrated, empty store at ``store_url``."""
    opened = await open_store(store_url)
    await opened.migrate()
    yield opened
    await opened.aclose()
