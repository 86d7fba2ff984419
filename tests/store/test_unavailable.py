"""A store that cannot be reached raises StoreUnavailable, which the gateway answers from memory
(SPEC §11), and works again once the database is back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cachegate.store.base import StoreUnavailable
from cachegate.store.factory import open_store
from cachegate.store.postgres import PostgresStore
from cachegate.store.sqlite import SqliteStore


class TcpProxy:
    """Forwards a local port to a server and can drop everything, like a server going away."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks)
        await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_writer)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
            self._writers.add(server_writer)
            await asyncio.gather(
                _pipe(client_reader, server_writer), _pipe(server_reader, client_writer), return_exceptions=True
            )
            self._writers.discard(server_writer)
        finally:
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; when it ends, end the other side too, as a real server would."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_a_sqlite_path_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="unable to open"):
        await SqliteStore.open(tmp_path)  # a directory


async def test_a_sqlite_directory_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(StoreUnavailable, match="directory"):
        await open_store(f"sqlite:///{tmp_path / 'file' / 'control.db'}")


@pytest.mark.postgres
async def test_a_postgres_server_that_is_down_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await open_store("postgresql://postgres@127.0.0.1:1/cachegate")


@pytest.mark.postgres
async def test_a_postgres_server_that_goes_away_is_unavailable_until_it_returns(pg_database: str) -> None:
    database = urlsplit(pg_database)
    proxy = TcpProxy(database.hostname or "127.0.0.1", database.port or 5432)
    await proxy.start()
    via_proxy = database._replace(netloc=f"{database.username}@127.0.0.1:{proxy.port}").geturl()
    store = await PostgresStore.open(via_proxy, connect_timeout=2.0)
    try:
        await store.migrate()
        acme = await store.create_principal("acme")

        await proxy.stop()
        with pytest.raises(StoreUnavailable):
            await store.list_principals()
        with pytest.raises(StoreUnavailable):
            await store.find_api_key(b"\x00" * 32)

        await proxy.start()
        assert await store.list_principals() == [acme]
    finally:
        await store.aclose()
        await proxy.stop()
