"""The ledger journal (issue 15): rows are on disk before ``record`` returns, concurrent rows share one
write and one fsync, a torn tail is skipped, leftovers are replayed at start, and a row sent twice is
stored once."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest

from cachegate.gateway import journal as journal_module
from cachegate.gateway.journal import MAGIC, ZEROED_AHEAD, Journal, decode_records, decode_row, encode_row, records
from cachegate.gateway.ledger import LedgerWriter
from cachegate.store.base import ControlStore, LedgerRow, UsageQuery
from cachegate.store.sqlite import SqliteStore

from .doubles import LedgerStore, ledger_row, metric

FAILURES = "cachegate_ledger_journal_failures_total"
REPLAYED = "cachegate_ledger_rows_replayed_total"
TORN = "cachegate_ledger_journal_torn_total"


def writer_for(store: object, folder: Path, **options: object) -> LedgerWriter:
    return LedgerWriter(cast(ControlStore, store), 60.0, journal_dir=folder, **options)  # type: ignore[arg-type]


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.journal"))


def journaled(folder: Path) -> list[int]:
    return [row.prompt_tokens for path in segments(folder) for row in records(path.read_bytes())]


def test_a_row_comes_back_from_its_record_exactly() -> None:
    row = replace(
        ledger_row(7),
        at=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        cost=Decimal("0.0000001"),
        list_cost=None,
        upstream_cached_tokens=3,
        latency_ms=0.1 + 0.2,
        counted_prompt_tokens=9,
        row_id="abc",
    )
    record = encode_row(row)

    assert decode_row(record[8:]) == row


async def test_a_recorded_row_is_on_disk_when_record_returns(tmp_path: Path) -> None:
    writer = writer_for(LedgerStore(), tmp_path)
    await writer.start()
    try:
        await writer.record(ledger_row(1))

        assert journaled(tmp_path) == [1]
        assert writer.buffered == 1
    finally:
        await writer.journal.close()  # type: ignore[union-attr]  # a "crash": nothing drained


async def test_concurrent_rows_share_one_write_and_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []  # the records' writes; the segment's header and zero-fill are not counted
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: bytes, offset: int) -> int:
        if any(data):
            writes.append(len(data))
            if len(writes) == 1:  # the first row's commit: slow enough for the others to queue behind it
                time.sleep(0.05)
        return real_pwrite(fd, data, offset)

    writer = writer_for(LedgerStore(), tmp_path)
    await writer.start()
    monkeypatch.setattr(journal_module.os, "pwrite", slow_pwrite)
    try:
        first = asyncio.create_task(writer.record(ledger_row(0)))
        await asyncio.sleep(0.01)  # its write is in flight
        await asyncio.gather(first, *(writer.record(ledger_row(n)) for n in range(1, 50)))

        assert len(writes) == 2  # the first row, then the 49 that waited: one group
        assert sorted(journaled(tmp_path)) == list(range(50))
        fd = writer.journal._fd  # type: ignore[union-attr]
        assert fd is not None and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DSYNC  # each write is synced
    finally:
        await writer.journal.close()  # type: ignore[union-attr]


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the journal's record writes from now on (a segment's header and zero-fill are not counted)."""
    writes: list[int] = []
    real_pwrite = os.pwrite

    def counting_pwrite(fd: int, data: bytes, offset: int) -> int:
        if any(data):
            writes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(journal_module.os, "pwrite", counting_pwrite)
    return writes


async def waiting_writer(folder: Path, commit_delay: float, in_flight: int) -> LedgerWriter:
    """A started writer whose groups wait ``commit_delay`` with five others in flight, and ``in_flight`` requests."""
    writer = writer_for(
        LedgerStore(), folder, commit_delay=commit_delay, commit_siblings=5, in_flight=lambda: in_flight
    )
    await writer.start()
    return writer


async def test_under_load_a_group_waits_for_the_rows_of_the_requests_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Six requests in flight: the first row finds five others to come (commit_siblings), so its
    # group waits; it is written as soon as the sixth row is queued, long before commit_delay.
    writer = await waiting_writer(tmp_path, commit_delay=60.0, in_flight=6)
    writes = record_writes(monkeypatch)
    try:
        first_five = [asyncio.create_task(writer.record(ledger_row(n))) for n in range(5)]
        await asyncio.sleep(0.05)
        assert writes == [] and not any(task.done() for task in first_five)  # waiting for the sixth

        await asyncio.wait_for(asyncio.gather(*first_five, writer.record(ledger_row(5))), 10)

        assert len(writes) == 1  # six rows, one synced write
        assert sorted(journaled(tmp_path)) == list(range(6))
    finally:
        await writer.journal.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("in_flight", [1, 5])
async def test_without_enough_requests_in_flight_a_row_is_written_at_once(tmp_path: Path, in_flight: int) -> None:
    # Alone, or with four others (fewer than commit_siblings): no wait, whatever commit_delay says.
    writer = await waiting_writer(tmp_path, commit_delay=60.0, in_flight=in_flight)
    try:
        await asyncio.wait_for(writer.record(ledger_row(1)), 10)

        assert journaled(tmp_path) == [1]
    finally:
        await writer.journal.close()  # type: ignore[union-attr]


async def test_a_waiting_group_is_written_after_commit_delay_if_the_rows_never_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests in flight that never append a row (they failed, or bill nothing) hold a group for
    # commit_delay at most; a row queued meanwhile joins it.
    writer = await waiting_writer(tmp_path, commit_delay=0.2, in_flight=100)
    writes = record_writes(monkeypatch)
    try:
        first = asyncio.create_task(writer.record(ledger_row(0)))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(first, writer.record(ledger_row(1))), 10)

        assert len(writes) == 1
        assert sorted(journaled(tmp_path)) == [0, 1]
    finally:
        await writer.journal.close()  # type: ignore[union-attr]


async def test_without_fsync_rows_are_written_but_never_synced(tmp_path: Path) -> None:
    writer = writer_for(LedgerStore(), tmp_path, fsync=False)
    await writer.start()
    await asyncio.gather(*(writer.record(ledger_row(n)) for n in range(5)))

    fd = writer.journal._fd  # type: ignore[union-attr]
    assert fd is not None and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DSYNC
    assert sorted(journaled(tmp_path)) == [0, 1, 2, 3, 4]
    await writer.journal.close()  # type: ignore[union-attr]


async def test_a_round_drains_the_journal_to_the_store_and_deletes_it(tmp_path: Path) -> None:
    store = LedgerStore()
    writer = writer_for(store, tmp_path, batch_size=2)
    await writer.start()
    for n in range(5):
        await writer.record(ledger_row(n))
    written = segments(tmp_path)

    assert await writer.flush() is True

    assert store.written == [0, 1, 2, 3, 4]
    assert [len(batch) for batch in store.batches] == [2, 2, 1]
    assert len({row.row_id for batch in store.batches for row in batch}) == 5
    assert not any(path.exists() for path in written) and writer.buffered == 0
    assert journaled(tmp_path) == []  # the next segment is made (and zero-filled) already, and holds no row
    await writer.stop()


async def test_rounds_called_side_by_side_send_each_row_once(tmp_path: Path) -> None:
    """An operator's or a test's flush beside the background round waits for it instead of racing it."""
    store = LedgerStore()
    store.gate = asyncio.Event()  # the first round's write waits, so the second comes while it runs
    writer = writer_for(store, tmp_path, batch_size=2)
    await writer.start()
    for n in range(5):
        await writer.record(ledger_row(n))

    rounds = [asyncio.create_task(writer.flush()) for _ in range(3)]
    await store.writing.wait()
    store.gate.set()

    assert await asyncio.gather(*rounds) == [True, True, True]
    assert store.written == [0, 1, 2, 3, 4]
    assert segments(tmp_path) == []
    await writer.stop()


async def test_rows_beyond_the_memory_bound_are_drained_from_the_file(tmp_path: Path) -> None:
    """Own rows are drained from their copy in memory; past ``max_buffered`` rows, from the segment file."""
    store = LedgerStore()
    store.down = True
    writer = writer_for(store, tmp_path, batch_size=2, max_buffered=3)
    await writer.start()
    for n in range(3):
        await writer.record(ledger_row(n))
    assert await writer.flush() is False  # sealed with its copy; the store is down
    for n in range(3, 8):
        await writer.record(ledger_row(n))  # the next segment outgrows the bound: no copy of it

    store.down = False
    assert await writer.flush() is True  # the first segment; the second is sealed by the next round
    assert await writer.flush() is True

    assert store.written == [0, 1, 2, 3, 4, 5, 6, 7]
    assert journaled(tmp_path) == [] and writer.buffered == 0
    await writer.stop()


async def test_rows_stay_in_the_journal_through_an_outage_and_a_restart(tmp_path: Path) -> None:
    store = LedgerStore()
    store.down = True
    writer = writer_for(store, tmp_path)
    await writer.start()
    for n in range(3):
        await writer.record(ledger_row(n))
    assert await writer.flush() is False
    await writer.record(ledger_row(3))  # after the seal: the next segment
    await writer.stop()  # the store is still down: nothing is lost, the files stay
    assert sorted(journaled(tmp_path)) == [0, 1, 2, 3]

    store.down = False
    replayed_before = metric(REPLAYED)
    again = writer_for(store, tmp_path)
    await again.start()

    assert store.written == [0, 1, 2, 3]  # before start() returned, so before the gateway serves
    assert metric(REPLAYED) - replayed_before == 4 and again.replayed == 4
    assert segments(tmp_path) == []
    await again.stop()


async def test_a_live_neighbours_segments_are_left_alone(tmp_path: Path) -> None:
    neighbour_store, store = LedgerStore(), LedgerStore()
    neighbour = writer_for(neighbour_store, tmp_path)
    await neighbour.start()
    await neighbour.record(ledger_row(1))

    writer = writer_for(store, tmp_path)
    await writer.start()
    await writer.flush()

    assert store.written == [] and journaled(tmp_path) == [1]
    await neighbour.stop()
    assert neighbour_store.written == [1]
    await writer.stop()


async def test_a_neighbour_looking_for_orphans_never_takes_a_segment_being_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers share the folder, and each looks for the segments of dead processes every round. One
    that looked while its neighbour was making a segment, after the file was created and before it
    was locked, took it for a dead process's: the neighbour's write failed and its row went to
    memory (seen under ``serve --workers 2``). Here the look is made at that very moment."""
    neighbour = journal_module.Journal(tmp_path, lambda rows: None, fsync=False)
    adopted: list[journal_module.Segment] = []
    real_open = os.open

    def open_then_look(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT:
            adopted.extend(neighbour._adopt_orphans(set()))
        return fd

    store = LedgerStore()
    writer = writer_for(store, tmp_path)
    await writer.start()
    failures_before = metric(FAILURES)
    monkeypatch.setattr(journal_module.os, "open", open_then_look)
    try:
        await writer.record(ledger_row(1))
    finally:
        monkeypatch.undo()
        for segment in adopted:
            os.close(segment.fd)

    assert adopted == [] and metric(FAILURES) == failures_before
    assert journaled(tmp_path) == [1]
    await writer.stop()
    assert store.written == [1]


async def test_a_failing_disk_never_fails_a_request_and_keeps_the_rows_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LedgerStore()
    writer = writer_for(store, tmp_path)
    await writer.start()
    await writer.record(ledger_row(0))
    failures_before = metric(FAILURES)

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "pwrite", full)
    await writer.record(ledger_row(1))
    await writer.record(ledger_row(2))  # the journal is off now: straight to memory

    assert metric(FAILURES) - failures_before == 1
    assert writer.buffered == 3  # one journaled, two in memory
    monkeypatch.undo()
    await writer.flush()  # the disk is back: a new segment, and everything reaches the store
    await writer.record(ledger_row(3))
    await writer.stop()
    assert sorted(store.written) == [0, 1, 2, 3]
    assert writer.journal is not None and metric(FAILURES) - failures_before == 1


@pytest.fixture
def sqlite_store_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "control.db"


async def test_a_segment_replayed_twice_is_billed_once(tmp_path: Path, sqlite_store_path: Path) -> None:
    """A crash after the store committed a segment's rows and before the segment was deleted."""
    folder = tmp_path / "journal"
    store = await SqliteStore.open(sqlite_store_path)
    await store.migrate()
    first = writer_for(store, folder)
    await first.start()
    for n in range(3):
        await first.record(ledger_row(n))
    await first.journal.close()  # type: ignore[union-attr]  # "killed": the segment is left
    [segment] = segments(folder)
    copy = tmp_path / "copy"
    shutil.copy(segment, copy)

    second = writer_for(store, folder)
    await second.start()  # replays the segment and deletes it
    await second.stop()
    shutil.copy(copy, folder / segment.name)  # as if the deletion had never happened
    third = writer_for(store, folder)
    await third.start()
    await third.stop()

    [group] = await store.usage(UsageQuery())
    assert group.requests == 3 and group.prompt_tokens == 0 + 1 + 2 and third.replayed == 3
    await store.aclose()


def last_record_cuts() -> Iterator[tuple[bytes, bytes]]:
    """Each cut of a segment's last record: the segment, and what is left of the record."""
    rows = [replace(ledger_row(n), row_id=f"r{n}") for n in range(3)]
    head = MAGIC + encode_row(rows[0]) + encode_row(rows[1])
    last = encode_row(rows[2])
    for cut in range(len(last)):
        yield head + last[:cut], last[:cut]


async def test_a_torn_last_record_is_skipped_at_every_byte_offset(tmp_path: Path) -> None:
    torn_before = metric(TORN)
    torn = 0
    for cut, (data, left) in enumerate(last_record_cuts()):
        folder = tmp_path / f"cut-{cut}"
        folder.mkdir()
        (folder / "ledger-0-1-0.journal").write_bytes(data)
        store = LedgerStore()
        writer = writer_for(store, folder)

        await writer.start()  # never raises

        assert store.written == [0, 1], cut
        assert segments(folder) == []
        await writer.stop()
        torn += any(left)
    # Counted as torn unless only zeros are left (none, or the leading zero bytes of the length):
    # those cannot be told from a segment's zero-filled room, and hold no row either way.
    assert metric(TORN) - torn_before == torn > 400


async def test_a_segment_s_zero_filled_room_is_neither_a_row_nor_a_torn_record(tmp_path: Path) -> None:
    rows = [replace(ledger_row(n), row_id=f"r{n}") for n in range(2)]
    (tmp_path / "ledger-0-1-0.journal").write_bytes(MAGIC + b"".join(map(encode_row, rows)) + bytes(300_000))
    torn_before = metric(TORN)
    store = LedgerStore()
    writer = writer_for(store, tmp_path)

    await writer.start()

    assert store.written == [0, 1] and metric(TORN) == torn_before
    assert segments(tmp_path) == []
    await writer.stop()


@pytest.mark.parametrize("fsync", [True, False])
async def test_synced_segments_are_zero_filled_ahead_of_their_records(tmp_path: Path, fsync: bool) -> None:
    """Synced writes overwrite zeros already on disk (no size or extent change to sync); unsynced ones append."""
    writer = writer_for(LedgerStore(), tmp_path, fsync=fsync)
    await writer.start()
    try:
        for n in range(3):
            await writer.record(ledger_row(n))
        await writer.journal.settle()  # type: ignore[union-attr]
        [segment] = segments(tmp_path)
        data = segment.read_bytes()
        _, used = decode_records(data, len(MAGIC))  # where the records end

        assert journaled(tmp_path) == [0, 1, 2]
        assert len(data) == (len(MAGIC) + ZEROED_AHEAD if fsync else used)  # the first fill, from the header on
        assert used < len(MAGIC) + ZEROED_AHEAD // 2 and not any(data[used:])
    finally:
        await writer.journal.close()  # type: ignore[union-attr]


async def test_a_segment_cut_inside_its_header_holds_no_rows(tmp_path: Path) -> None:
    for cut in range(len(MAGIC)):
        (tmp_path / f"ledger-0-1-{cut}.journal").write_bytes(MAGIC[:cut])
    store = LedgerStore()
    writer = writer_for(store, tmp_path)

    await writer.start()

    assert store.written == [] and segments(tmp_path) == []
    await writer.stop()


async def test_a_corrupt_record_in_the_middle_ends_the_segment_without_error(tmp_path: Path) -> None:
    rows = [replace(ledger_row(n), row_id=f"r{n}") for n in range(3)]
    middle = bytearray(encode_row(rows[1]))
    middle[-1] ^= 0xFF
    (tmp_path / "ledger-0-1-0.journal").write_bytes(MAGIC + encode_row(rows[0]) + middle + encode_row(rows[2]))
    store = LedgerStore()
    writer = writer_for(store, tmp_path)

    await writer.start()

    assert store.written == [0]
    await writer.stop()


def test_records_of_a_whole_segment() -> None:
    rows = [replace(ledger_row(n), row_id=f"r{n}") for n in range(3)]
    data = MAGIC + b"".join(encode_row(row) for row in rows)

    assert list(records(data)) == rows
    assert list(records(data[:-1])) == rows[:2]
    assert isinstance(rows[0], LedgerRow)


async def test_the_zero_filled_room_is_renewed_as_records_use_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path, lambda rows: None, zeroed_ahead=4096)
    await journal.open()
    for n in range(40):  # about 19 KB of records: several renewals of 4 KB of room
        await journal.append(ledger_row(n))
    await journal.close()  # after the thread's last renewal; the segment stays, undrained
    [segment] = segments(tmp_path)
    data = segment.read_bytes()
    _, used = decode_records(data, len(MAGIC))

    assert journaled(tmp_path) == list(range(40))
    assert used > 4 * 4096 and len(data) - used >= 4096 // 2 and not any(data[used:])
