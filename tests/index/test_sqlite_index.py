"""What is particular to the SQLite backend: its URL, its file, and how it fails."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from cachegate.core.types import CacheScope, IndexEntry, TtlTier
from cachegate.index.base import IndexUnavailable
from cachegate.index.schema import SCHEMA
from cachegate.index.sqlite import SqliteIndex, sqlite_path_from_url

NOW = 1_750_000_000.0
SCOPE = CacheScope(principal="alice", model="qwen", tokenizer_version="sha256:v1")
PREFIX = hashlib.sha256(b"prefix").digest()
ENTRY = IndexEntry(SCOPE, PREFIX, cumulative_tokens=1024, ttl=TtlTier.ONE_HOUR, expires_at=NOW + 3600)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///index.db", "index.db"),
        ("sqlite:///data/index.db", "data/index.db"),
        ("sqlite:////var/lib/cachegate/index.db", "/var/lib/cachegate/index.db"),
        ("sqlite:///my%20data/index.db", "my data/index.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_url_names_the_file(url: str, path: str) -> None:
    assert sqlite_path_from_url(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/index.db", "sqlite:///index.db?mode=ro", "memory://"]
)
def test_malformed_url_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite"):
        sqlite_path_from_url(url)


async def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    index = await SqliteIndex.open(str(tmp_path / "new" / "folder" / "index.db"))
    await index.aclose()
    assert (tmp_path / "new" / "folder" / "index.db").is_file()


async def test_a_directory_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the folder should be")
    with pytest.raises(IndexUnavailable, match="cannot create the directory"):
        await SqliteIndex.open(str(tmp_path / "blocked" / "index.db"))


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    path.write_bytes(b"this is not an SQLite database, not even close" * 100)

    with pytest.raises(IndexUnavailable):
        await SqliteIndex.open(str(path))


async def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA.latest + 1}")

    with pytest.raises(IndexUnavailable, match="newer"):
        await SqliteIndex.open(str(path))


async def test_opening_sets_wal_and_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    index = await SqliteIndex.open(str(path))
    await index.aclose()

    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA.latest,)


async def test_entries_outlive_the_process_and_are_shared_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "index.db")
    writer = await SqliteIndex.open(path)
    reader = await SqliteIndex.open(path)
    try:
        await writer.write([ENTRY], NOW)
        assert len(await reader.lookup(SCOPE, [PREFIX], NOW)) == 1
    finally:
        await writer.aclose()
        await reader.aclose()

    reopened = await SqliteIndex.open(path)
    try:
        assert len(await reopened.lookup(SCOPE, [PREFIX], NOW)) == 1
    finally:
        await reopened.aclose()


@contextmanager
def write_lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process's writer, holding the file's write lock."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")


async def test_a_write_lock_held_too_long_is_unavailable_and_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    index = await SqliteIndex.open(str(path), busy_timeout=0.05)
    try:
        with write_lock_held_elsewhere(path), pytest.raises(IndexUnavailable, match="locked"):
            await index.write([ENTRY], NOW)

        await index.write([ENTRY], NOW)
        assert len(await index.lookup(SCOPE, [PREFIX], NOW)) == 1
    finally:
        await index.aclose()


async def test_a_closed_index_is_unavailable(tmp_path: Path) -> None:
    index = await SqliteIndex.open(str(tmp_path / "index.db"))
    await index.aclose()
    await index.aclose()  # closing twice is harmless

    with pytest.raises(IndexUnavailable):
        await index.lookup(SCOPE, [PREFIX], NOW)


async def test_a_lookup_larger_than_one_statement_finds_everything(tmp_path: Path) -> None:
    index = await SqliteIndex.open(str(tmp_path / "index.db"))
    hashes = [hashlib.sha256(str(n).encode()).digest() for n in range(1200)]
    try:
        await index.write([IndexEntry(SCOPE, h, n, TtlTier.FIVE_MINUTES, NOW + 300) for n, h in enumerate(hashes)], NOW)
        matches = await index.lookup(SCOPE, hashes, NOW)
    finally:
        await index.aclose()

    assert sorted(m.cumulative_tokens for m in matches) == list(range(1200))
