"""The SQLite worker shared by the control store and the cache index."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from cachegate.sql.sqlite import SqliteWorker, connect


class Mapped(Exception):
    pass


def _worker(path: Path, opened: list[str]) -> SqliteWorker:
    def open_connection() -> sqlite3.Connection:
        opened.append(threading.current_thread().name)
        return connect(path, timeout=1.0)

    return SqliteWorker(open_connection, thread_name="test-worker", errors=lambda exc: Mapped(str(exc)))


async def test_calls_run_in_order_on_the_one_thread_that_opened_the_connection(tmp_path: Path) -> None:
    opened: list[str] = []
    worker = _worker(tmp_path / "db" / "a.db", opened)
    try:
        assert opened == []  # opened on first use
        await worker.run(lambda connection: connection.execute("CREATE TABLE t (n INTEGER)"))
        await asyncio.gather(
            *(worker.run(lambda c, n: c.execute("INSERT INTO t VALUES (?)", (n,)), n) for n in range(50))
        )
        names = await worker.run(lambda connection: threading.current_thread().name)
        rows = await worker.run(lambda connection: connection.execute("SELECT n FROM t ORDER BY rowid").fetchall())
    finally:
        await worker.aclose()

    assert rows == [(n,) for n in range(50)]
    assert opened == [names] and names.startswith("test-worker")


async def test_sqlite_errors_are_mapped_and_open_reports_a_bad_file(tmp_path: Path) -> None:
    worker = _worker(tmp_path / "a.db", [])
    try:
        with pytest.raises(Mapped, match="no such table"):
            await worker.run(lambda connection: connection.execute("SELECT * FROM missing"))
    finally:
        await worker.aclose()

    (tmp_path / "bad.db").write_bytes(b"not a database" * 200)
    bad = SqliteWorker(
        lambda: connect(tmp_path / "bad.db", timeout=1.0), thread_name="test-bad", errors=lambda exc: Mapped("run")
    )
    with pytest.raises(Mapped, match="open"):
        await bad.open(errors=lambda exc: Mapped("open"))
