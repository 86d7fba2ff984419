"""SQLite plumbing shared by the control store and the cache index: the connection's settings, the
worker thread that owns a connection, the explicit transaction, and a script's statements.

sqlite3 blocks, so a ``SqliteWorker`` is one dedicated thread that owns one connection and runs every
call on it, in call order: calls are serialised there (SQLite has one writer at a time anyway) and
never block the event loop. A process's writers then only contend for the file's write lock with
other processes, through the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ErrorMap = Callable[[sqlite3.Error], BaseException | None]
"""What an adapter raises for an sqlite3 error (None: the error itself, unchanged)."""


def connect(
    path: str | Path,
    *,
    timeout: float,
    pragmas: Iterable[str] = ("journal_mode = WAL",),
    setup: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """A connection to the file at ``path`` (its directory created if missing), the ``pragmas`` set.

    ``isolation_level=None``: no implicit transactions; every transaction is explicit
    (``transaction``). ``timeout`` is the busy timeout, in seconds. ``setup`` runs last (functions,
    the schema), and the connection is closed if anything fails.
    """
    if str(path) != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = sqlite3.OperationalError(f"cannot create the directory of SQLite database {path}: {exc}")
            error.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN  # what opening would have said
            raise error from exc
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        for pragma in pragmas:
            connection.execute(f"PRAGMA {pragma}")
        if setup is not None:
            setup(connection)
    except BaseException:
        connection.close()
        raise
    return connection


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
    read-then-write cannot be raced, nor fail halfway when a read lock cannot be upgraded."""
    connection.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        if connection.in_transaction:  # some errors (SQLITE_FULL, ...) have rolled back already
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def split_statements(script: str) -> list[str]:
    """The statements of a script, one by one.

    ``executescript`` would commit the open transaction before running the script, so a
    migration's statements are executed one at a time inside it.
    """
    statements: list[str] = []
    pending: list[str] = []
    for line in script.splitlines():
        pending.append(line)
        text = "\n".join(pending)
        if sqlite3.complete_statement(text):
            statements.append(text.strip())
            pending = []
    if any(line.strip() and not line.strip().startswith("--") for line in pending):
        raise ValueError(f"unterminated statement at the end of a script: {' '.join(pending)[:80]!r}")
    return statements


class SqliteWorker:
    """One thread that owns one connection, opened by ``connect`` on that thread on first use.

    ``errors`` maps an sqlite3 error to what the adapter raises (the store: StoreUnavailable when the
    file cannot be used; the index: IndexUnavailable for any error).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, thread_name: str, errors: ErrorMap) -> None:
        self._connect = connect
        self._errors = errors
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._connection: sqlite3.Connection | None = None
        self._started = False

    async def open(self, errors: ErrorMap | None = None) -> None:
        """Connect now rather than on the first call, so a bad file is reported at start-up;
        on failure the thread is let go. ``errors`` replaces the worker's map for this once."""
        try:
            await self._submit(_nothing, (), errors or self._errors)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` on the thread."""
        return await self._submit(work, args, self._errors)

    async def aclose(self, *, wait: bool = True) -> None:
        """Close the connection on its thread, then let the thread go (``wait``: join it)."""
        try:
            if self._started:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=wait)

    async def _submit(self, work: Callable[..., T], args: tuple[Any, ...], errors: ErrorMap) -> T:
        self._started = True
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, work, args)
        except sqlite3.Error as exc:
            mapped = errors(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _call(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:  # on the thread
        connection = self._connection
        if connection is None:
            connection = self._connection = self._connect()
        return work(connection, *args)

    def _close(self) -> None:  # on the thread
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _nothing(connection: sqlite3.Connection) -> None:
    pass
