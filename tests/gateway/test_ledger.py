"""The ledger writer (SPEC §2.6, §10, §11): rows are written in batches off the request path, wait in a
bounded buffer while the control store is down, and are written in order when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from cachegate.gateway import journal
from cachegate.gateway.ledger import LedgerObserver, LedgerWriter
from cachegate.store.base import ControlStore, LedgerRow

from .doubles import GIVE_UP_AFTER, LedgerStore, eventually, ledger_row, metric

DROPPED = "cachegate_ledger_rows_dropped_total"


def writer_for(
    store: LedgerStore, *, interval: float = 60.0, batch_size: int = 1000, max_buffered: int = 100_000
) -> LedgerWriter:
    return LedgerWriter(cast(ControlStore, store), interval, batch_size, max_buffered)


def append(writer: LedgerWriter, *sequence: int) -> None:
    for number in sequence:
        writer.append(ledger_row(number))


async def test_flush_writes_every_row_in_order_in_batches_of_batch_size() -> None:
    store = LedgerStore()
    writer = writer_for(store, batch_size=2)
    append(writer, 0, 1, 2, 3, 4)

    assert await writer.flush() is True

    assert [len(batch) for batch in store.batches] == [2, 2, 1]
    assert store.written == [0, 1, 2, 3, 4]
    assert writer.buffered == 0


async def test_flush_of_an_empty_buffer_does_not_call_the_store() -> None:
    store = LedgerStore()

    assert await writer_for(store).flush() is True
    assert store.calls == 0


async def test_rows_wait_while_the_store_is_down_and_are_written_in_order_when_it_returns() -> None:
    store = LedgerStore()
    writer = writer_for(store, batch_size=2)
    append(writer, 0, 1, 2, 3, 4)
    store.down = True

    assert await writer.flush() is False
    assert writer.buffered == 5

    store.down = False
    assert await writer.flush() is True
    assert store.written == [0, 1, 2, 3, 4]


async def test_an_outage_in_the_middle_of_a_flush_keeps_the_unwritten_rows_in_order() -> None:
    store = LedgerStore()
    writer = writer_for(store, batch_size=2)
    append(writer, 0, 1, 2, 3, 4)

    def down_after_first_batch() -> None:
        store.down = bool(store.batches)

    store.before_write = down_after_first_batch
    assert await writer.flush() is False
    assert store.written == [0, 1]
    assert writer.buffered == 3

    store.before_write = None
    store.down = False
    append(writer, 5)
    assert await writer.flush() is True
    assert store.written == [0, 1, 2, 3, 4, 5]


async def test_a_full_buffer_drops_the_oldest_rows_and_counts_them() -> None:
    store = LedgerStore()
    writer = writer_for(store, max_buffered=3)
    dropped_before = metric(DROPPED)

    append(writer, 0, 1, 2, 3, 4)

    assert writer.buffered == 3
    assert metric(DROPPED) - dropped_before == 2
    await writer.flush()
    assert store.written == [2, 3, 4]


async def test_rows_arriving_during_a_failed_write_push_out_the_oldest_of_the_failed_batch() -> None:
    store = LedgerStore()
    writer = writer_for(store, batch_size=4, max_buffered=4)
    append(writer, 0, 1, 2, 3)
    dropped_before = metric(DROPPED)

    def requests_arrive_then_the_write_fails() -> None:
        append(writer, 4, 5)
        store.down = True

    store.before_write = requests_arrive_then_the_write_fails
    assert await writer.flush() is False

    assert writer.buffered == 4
    assert metric(DROPPED) - dropped_before == 2
    store.before_write = None
    store.down = False
    await writer.flush()
    assert store.written == [2, 3, 4, 5]


async def test_the_background_task_writes_appended_rows() -> None:
    store = LedgerStore()
    writer = writer_for(store, interval=0.005)
    await writer.start()
    try:
        append(writer, 0, 1)
        await eventually(lambda: store.written == [0, 1])
    finally:
        await writer.stop()


async def test_the_background_task_keeps_rows_through_an_outage() -> None:
    store = LedgerStore()
    store.down = True
    writer = writer_for(store, interval=0.005)
    await writer.start()
    try:
        append(writer, 0, 1)
        await eventually(lambda: store.calls >= 3)
        assert store.written == []
        store.down = False
        await eventually(lambda: store.written == [0, 1])
    finally:
        await writer.stop()


async def test_stop_flushes_what_is_buffered() -> None:
    store = LedgerStore()
    writer = writer_for(store)
    await writer.start()
    append(writer, 0, 1, 2)

    await writer.stop()

    assert store.written == [0, 1, 2]
    assert writer.buffered == 0


async def test_stop_with_the_store_down_keeps_the_rows_and_does_not_raise() -> None:
    store = LedgerStore()
    store.down = True
    writer = writer_for(store)
    await writer.start()
    append(writer, 0, 1, 2)

    await writer.stop()

    assert writer.buffered == 3


async def test_stop_during_a_write_in_flight_loses_no_row() -> None:
    store = LedgerStore()
    store.gate = asyncio.Event()
    writer = writer_for(store, interval=0.001)
    await writer.start()
    append(writer, 0, 1)
    await asyncio.wait_for(store.writing.wait(), GIVE_UP_AFTER)
    asyncio.get_running_loop().call_later(0.01, store.gate.set)  # the slow write would have finished

    await writer.stop()

    assert sorted(store.written) == [0, 1]


async def test_the_background_task_survives_an_unexpected_store_error() -> None:
    store = LedgerStore()
    store.failures = [ValueError("numeric field overflow")]
    writer = writer_for(store, interval=0.005)
    await writer.start()
    try:
        append(writer, 0)
        await eventually(lambda: store.calls >= 1)
        append(writer, 1)
        await eventually(lambda: 1 in store.written, timeout=0.5)
    finally:
        await writer.stop()


async def test_an_unmapped_error_of_every_row_keeps_the_whole_batch_in_the_journal(tmp_path: Path) -> None:
    store = LedgerStore()
    store.refuses = lambda row: True  # a driver error of a class no adapter maps, on every call
    writer = LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=tmp_path)
    await writer.start()
    for number in range(3):
        await writer.record(ledger_row(number))

    assert await writer.flush() is False
    assert writer.buffered == 3

    store.refuses = None
    await writer.stop()
    assert store.written == [0, 1, 2]


async def test_a_row_the_store_refuses_alone_is_set_aside_and_its_neighbours_written(tmp_path: Path) -> None:
    store = LedgerStore()
    store.refuses = lambda row: row.prompt_tokens == 1
    writer = LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=tmp_path)
    await writer.start()
    for number in range(3):
        await writer.record(ledger_row(number))

    await writer.stop()

    assert sorted(store.written) == [0, 2]
    (refused,) = tmp_path.glob("*.refused")
    assert [row.prompt_tokens for row in journal.records(refused.read_bytes())] == [1]


async def test_stop_is_bounded_when_the_store_hangs_and_the_rows_stay_in_the_journal(tmp_path: Path) -> None:
    store = LedgerStore()
    store.gate = asyncio.Event()  # every write hangs
    writer = LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=tmp_path)
    await writer.start()
    await writer.record(ledger_row(7))

    await asyncio.wait_for(writer.stop(store_seconds=0.05), GIVE_UP_AFTER)

    segments = list(tmp_path.glob("*.journal"))
    assert [row.prompt_tokens for path in segments for row in journal.records(path.read_bytes())] == [7]


class Observer:
    """Records what the writer tells its observers (the budgets and rate limits listen so)."""

    def __init__(self) -> None:
        self.billed: list[int] = []
        self.settled: list[int] = []

    def billed_row(self, row: LedgerRow) -> None:
        self.billed.append(row.prompt_tokens)

    def settled_rows(self, rows: Sequence[LedgerRow]) -> None:
        self.settled += [row.prompt_tokens for row in rows]


def observed(writer: LedgerWriter) -> Observer:
    observer = Observer()
    writer.observe(cast(LedgerObserver, SimpleNamespace(billed=observer.billed_row, settled=observer.settled_rows)))
    return observer


async def test_observers_hear_of_each_row_as_it_is_billed_and_again_once_the_store_has_it(tmp_path: Path) -> None:
    store = LedgerStore()
    writer = LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=tmp_path)
    observer = observed(writer)
    await writer.start()
    store.down = True
    for number in range(3):
        await writer.record(ledger_row(number))

    assert observer.billed == [0, 1, 2]
    assert await writer.flush() is False
    assert observer.settled == []  # still waiting for the store

    store.down = False
    async with writer.between_rounds():  # a reader between two rounds: no row lands meanwhile
        flushing = asyncio.create_task(writer.flush())
        await asyncio.sleep(0.01)
        assert observer.settled == [] and not flushing.done()
    assert await flushing is True
    assert observer.settled == [0, 1, 2]
    await writer.stop()
    assert observer.settled == [0, 1, 2]  # once each


async def test_rows_another_process_left_are_not_settled_as_this_ones(tmp_path: Path) -> None:
    store = LedgerStore()
    store.down = True
    dead = LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=tmp_path)
    await dead.start()
    await dead.record(ledger_row(5))
    await dead.stop(store_seconds=0.05)  # its row stays in the journal
    store.down = False

    writer = LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=tmp_path)
    observer = observed(writer)
    await writer.start()  # replays the dead process's row
    await writer.stop()

    assert store.written == [5] and observer.settled == [] and observer.billed == []


async def test_a_row_dropped_from_the_full_memory_buffer_is_settled_it_will_never_be_stored() -> None:
    store = LedgerStore()
    writer = writer_for(store, max_buffered=2)
    observer = observed(writer)

    append(writer, 0, 1, 2)

    assert observer.settled == [0]
