"""open_index: one URL names the backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachegate.index.base import IndexUnavailable
from cachegate.index.factory import open_index
from cachegate.index.memory import MemoryIndex
from cachegate.index.postgres import PostgresIndex
from cachegate.index.redis import RedisIndex
from cachegate.index.sqlite import SqliteIndex


async def test_memory_url_opens_a_memory_index() -> None:
    index = await open_index("memory://")

    assert isinstance(index, MemoryIndex)
    await index.aclose()


async def test_sqlite_url_opens_that_file_with_the_options_given(tmp_path: Path) -> None:
    path = tmp_path / "index.db"

    index = await open_index(f"sqlite:///{path}", busy_timeout=1.0)

    assert isinstance(index, SqliteIndex)
    assert path.exists()
    await index.aclose()


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_postgres_urls_open_a_postgres_index(pg_url: str, scheme: str) -> None:
    url = f"{scheme}:{pg_url.split(':', 1)[1]}"

    index = await open_index(url, min_size=1, max_size=2)

    assert isinstance(index, PostgresIndex)
    await index.aclose()


@pytest.mark.redis
async def test_a_redis_url_opens_a_redis_index_with_the_options_given(redis_url: str) -> None:
    index = await open_index(redis_url, socket_timeout=0.25, expiry_grace=5.0)

    assert isinstance(index, RedisIndex)
    await index.aclose()


async def test_a_redis_server_that_does_not_answer_is_unavailable_without_echoing_the_password() -> None:
    with pytest.raises(IndexUnavailable) as refused:
        await open_index("redis://:hunter2@127.0.0.1:1/0", connect_timeout=0.2)

    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("prefix", ["", "{tenant}", "cache*"])
async def test_a_redis_key_prefix_that_would_break_the_hash_tag_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        await open_index(f"redis://127.0.0.1:1/0?key_prefix={prefix}")


async def test_an_unknown_scheme_is_refused_without_echoing_the_url() -> None:
    with pytest.raises(ValueError, match="'mysql'") as refused:
        await open_index("mysql://root:hunter2@db.internal:3306/cache")

    assert "hunter2" not in str(refused.value)


async def test_the_memory_index_takes_no_options() -> None:
    with pytest.raises(TypeError):
        await open_index("memory://", busy_timeout=1.0)
