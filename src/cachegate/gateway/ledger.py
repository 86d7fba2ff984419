"""The usage ledger writer: one row per request, durable before its response ends (SPEC §2.6, §10, §11).

``await record(row)`` appends the row to the local journal (gateway/journal.py) and returns once
its group commit is on disk; a background round drains the journal to the control store in
batches and deletes what the store has. Every row carries a unique ``row_id`` and the store skips
an id it has already, so a segment sent twice (a crash between the store's commit and the
segment's deletion, or a retry after a half-failed round) is billed once.

At start, the segments a dead process left behind are replayed before the gateway serves. While
the control store is down, rows simply stay in the journal. The memory buffer is what is left
of the old design: it holds the rows the journal could not take (no journal configured, or a
failing disk); it is bounded, and past the bound the oldest rows are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from cachegate.background import Periodic
from cachegate.config import Config
from cachegate.gateway import metrics
from cachegate.gateway.journal import Journal, Segment
from cachegate.store.base import ControlStore, LedgerRow, StoreError

log = logging.getLogger(__name__)


class LedgerObserver(Protocol):
    """Told of every row this process bills, and of when each is no longer waiting for the store.

    Budgets count a row's cost from ``billed`` until the store's totals include it (``settled``:
    stored, or refused or dropped and so never to be stored); rate limits debit its input tokens.
    Both are called on the event loop and must neither wait nor raise.
    """

    def billed(self, row: LedgerRow) -> None: ...
    def settled(self, rows: Sequence[LedgerRow]) -> None: ...


def row_ids() -> Callable[[], str]:
    """Unique ledger row ids: a random 64-bit prefix per process, then a counter (in index order)."""
    prefix = secrets.token_hex(8)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):012x}"


class LedgerWriter:
    def __init__(
        self,
        store: ControlStore,
        interval: float = 1.0,
        batch_size: int = 1000,
        max_buffered: int = 100_000,
        *,
        journal_dir: Path | None = None,
        fsync: bool = True,
        commit_delay: float = 0.0,
        commit_siblings: int = 0,
        in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._rows: deque[LedgerRow] = deque()
        self._max_buffered = max_buffered
        self._periodic = Periodic("ledger flush", interval, self.flush)
        # One round at a time: a round reads, sends and discards journal segments, and a second
        # round over the same segments (an operator's or a test's flush beside the background one)
        # would send them twice and discard them twice.
        self._flushing = asyncio.Lock()
        self.new_row_id = row_ids()  # the id a route gives its row when it builds it
        self._observers: list[LedgerObserver] = []
        self.replayed = 0  # rows recovered from segments a dead process left
        self.journal = (
            None
            if journal_dir is None
            else Journal(
                journal_dir,
                self._keep_in_memory,
                fsync=fsync,
                commit_delay=commit_delay,
                commit_siblings=commit_siblings,
                in_flight=in_flight,
                max_copied_rows=max_buffered,
            )
        )

    @classmethod
    def from_config(cls, store: ControlStore, config: Config, in_flight: Callable[[], int]) -> LedgerWriter:
        """``in_flight``: how many requests are in flight, for the journal's group commit."""
        ledger = config.ledger
        return cls(
            store,
            ledger.flush_interval_seconds,
            ledger.batch_size,
            ledger.max_buffered_rows,
            journal_dir=config.journal_dir,
            fsync=ledger.journal.fsync,
            commit_delay=ledger.journal.commit_delay_ms / 1000.0,
            commit_siblings=ledger.journal.commit_siblings,
            in_flight=in_flight,
        )

    def observe(self, observer: LedgerObserver) -> None:
        self._observers.append(observer)

    @contextlib.asynccontextmanager
    async def between_rounds(self) -> AsyncIterator[None]:
        """Hold off the store rounds: while inside, no row of this process reaches the store, so
        what the store holds and what is still pending here do not change under a reader."""
        async with self._flushing:
            yield

    def _settled(self, rows: Sequence[LedgerRow]) -> None:
        for observer in self._observers:
            try:
                observer.settled(rows)
            except Exception:
                log.exception("a ledger observer failed on %d settled rows", len(rows))

    @property
    def buffered(self) -> int:
        """Rows not in the store yet: in memory, or journaled by this process and not drained."""
        return len(self._rows) + (self.journal.unstored if self.journal is not None else 0)

    async def record(self, row: LedgerRow) -> None:
        """Append one request's row; once this returns, the row survives a crash of this process.

        Awaitable because of ordering: the chat routes await it before the response's last byte
        is released (a JSON body before it is sent, a stream before its ``[DONE]``), so a client
        that received a whole answer has been billed for it, whenever the process dies after.
        The wait is the group commit (one write and one fsync shared by concurrent requests).
        Never raises: without a journal, or if the disk fails, the row goes to the memory buffer
        and this returns at once.
        """
        if row.row_id is None:  # the routes build rows with their id: replace() costs ~10 µs a row
            row = replace(row, row_id=self.new_row_id())
        for observer in self._observers:
            try:
                observer.billed(row)
            except Exception:
                log.exception("a ledger observer failed on a billed row")
        if self.journal is None:
            self.append(row)
            return
        await self.journal.append(row)

    def append(self, row: LedgerRow) -> None:
        """Put a row in the memory buffer (no journal, or the disk failed); the oldest go when it is full."""
        if len(self._rows) >= self._max_buffered:
            self._settled([self._rows.popleft()])  # lost: it will never reach the store
            metrics.LEDGER_DROPPED.inc()
        self._rows.append(row)

    def _keep_in_memory(self, rows: list[LedgerRow]) -> None:
        for row in rows:
            self.append(row)

    async def start(self) -> None:
        """Open the journal and replay what a dead process left in it, then start the background rounds."""
        if self.journal is not None:
            try:
                await self.journal.open()
            except OSError:
                metrics.LEDGER_JOURNAL_FAILURES.inc()
                log.exception("cannot open the ledger journal in %s; rows wait in memory", self.journal.directory)
            if await self._drain_journal():
                if self.replayed:
                    log.warning("ledger journal: replayed %d rows left by an earlier process", self.replayed)
            else:
                log.warning("ledger journal: the store is unavailable; leftover rows are replayed in the background")
        self._periodic.start()

    async def stop(self, store_seconds: float | None = None) -> None:
        """Drain what the store will take; rows it cannot take now stay in the journal for the next start.

        Every queued row is on local disk first; only the store's part is bounded by
        ``store_seconds`` (None: unbounded), so a hung store cannot hold a shutdown, nor lose a row
        that reached the journal. A round cut off by the bound may still land: the store skips the
        row ids it has when the journal is replayed.
        """
        if self.journal is not None:
            await self.journal.settle()
        try:
            async with asyncio.timeout(store_seconds):
                await self._periodic.stop()
                if self.journal is not None:
                    await self.journal.maintain(seal=True)
                await self.flush()
        except TimeoutError:
            log.error(
                "ledger: the store took no more rows within %s s; %d rows wait for the next start",
                store_seconds,
                self.buffered,
            )
        if self.journal is not None:
            await self.journal.close()
        if self._rows:
            metrics.LEDGER_DROPPED.inc(len(self._rows))
            log.error("ledger: %d rows held in memory (no journal) are lost at exit", len(self._rows))

    async def flush(self) -> bool:
        """One round: drain the journal, then the memory buffer; False if the store is unavailable.

        Safe to call while a background round runs: it waits for that round, then runs its own.
        """
        async with self._flushing:
            drained = True
            if self.journal is not None:
                await self.journal.maintain()
                drained = await self._drain_journal()
            return await self._flush_memory() and drained

    async def _drain_journal(self) -> bool:
        assert self.journal is not None
        for segment in list(self.journal.sealed):
            if not await self._drain_segment(segment):
                return False
        return True

    async def _drain_segment(self, segment: Segment) -> bool:
        assert self.journal is not None
        while True:
            try:
                rows, offset, finished = await self.journal.read(segment, self._batch_size)
            except Exception:
                where = await self.journal.quarantine(segment)
                log.exception("ledger journal segment cannot be read; set aside as %s", where)
                return True
            if rows and not await self._store_batch(rows):
                return False
            if segment.own:
                self._settled(rows)
                self.journal.unstored = max(0, self.journal.unstored - len(rows))
            elif rows:
                self.replayed += len(rows)
                metrics.LEDGER_REPLAYED.inc(len(rows))
            segment.offset = offset
            if finished:
                await self.journal.discard(segment)
                return True

    async def _store_batch(self, batch: list[LedgerRow]) -> bool:
        """Write one batch; False if the store cannot take it now (the caller keeps it), True once done.

        No error drops a row. A failure that is not a mapped outage may still be one (a closed
        pool, a driver error of another class), or a row the store refuses: the batch is tried
        again row by row. If every row fails, the store is down and the batch is kept; rows that
        fail while their neighbours are written are refused for what they are and set aside in
        the journal's folder for an operator (never retried forever, never blocking later rows).
        """
        try:
            await self._store.append_ledger(batch)
        except StoreError as exc:
            log.warning("ledger write failed, %d rows kept for later: %s", len(batch), exc)
            return False
        except Exception:
            log.exception("ledger write of %d rows failed unexpectedly; trying them one by one", len(batch))
            return await self._store_one_by_one(batch)
        metrics.LEDGER_STORED.inc(len(batch))
        return True

    async def _store_one_by_one(self, batch: list[LedgerRow]) -> bool:
        refused: list[LedgerRow] = []
        for row in batch:
            try:
                await self._store.append_ledger([row])
            except Exception:
                refused.append(row)
            else:
                metrics.LEDGER_STORED.inc()
        if len(refused) == len(batch):
            log.warning("ledger: the store takes none of %d rows; kept for later", len(batch))
            return False
        if refused:
            await self._set_aside(refused)
        return True

    async def _set_aside(self, rows: list[LedgerRow]) -> None:
        """Keep rows the store refuses, for an operator: in the journal's folder, or else in memory."""
        metrics.LEDGER_REFUSED.inc(len(rows))
        if self.journal is not None:
            try:
                where = await self.journal.set_aside(rows)
            except OSError:
                log.exception("cannot set aside %d refused ledger rows; kept in memory", len(rows))
            else:
                log.error("the store refused %d ledger rows; set aside in %s", len(rows), where)
                return
        for row in rows:
            self.append(row)

    async def _flush_memory(self) -> bool:
        """Write everything buffered in memory; returns False (keeping the rows) if the store is unavailable."""
        while self._rows:
            batch = [self._rows.popleft() for _ in range(min(self._batch_size, len(self._rows)))]
            if not await self._store_batch(batch):
                room = self._max_buffered - len(self._rows)
                kept = batch[len(batch) - room :] if room < len(batch) else batch
                self._rows.extendleft(reversed(kept))
                metrics.LEDGER_DROPPED.inc(len(batch) - len(kept))
                self._settled(batch[: len(batch) - len(kept)])
                return False
            self._settled(batch)
        return True
