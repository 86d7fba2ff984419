"""open_store: which URL opens which store, and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachegate.store.factory import open_store
from cachegate.store.postgres import PostgresStore
from cachegate.store.sqlite import SqliteStore


async def test_a_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = await open_store("sqlite:///data/control.db")
    await store.aclose()

    assert isinstance(store, SqliteStore)
    assert (tmp_path / "data" / "control.db").is_file()


async def test_an_absolute_sqlite_url_creates_the_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "control.db"

    store = await open_store(f"sqlite:///{path}")  # sqlite:////tmp/... : four slashes
    await store.migrate()
    await store.aclose()

    assert path.is_file()


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_both_postgres_schemes_open_a_postgres_store(pg_database: str, scheme: str) -> None:
    store = await open_store(scheme + pg_database.removeprefix("postgresql"))
    await store.aclose()

    assert isinstance(store, PostgresStore)


@pytest.mark.parametrize(
    "url", ["mysql://admin:hunter2@db/cachegate", "sqlite:///", "sqlite://control.db", "control.db"]
)
async def test_an_unsupported_url_is_a_clear_error_that_does_not_echo_it(url: str) -> None:
    with pytest.raises(ValueError, match="expected sqlite:///relative/path") as raised:
        await open_store(url)

    assert "hunter2" not in str(raised.value)
