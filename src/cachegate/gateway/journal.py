"""The ledger journal: every billed row on local disk before its response's last byte (SPEC §10, §11).

One journal per process, a folder of segment files. A row is appended to the active segment by
group commit: the rows of concurrent requests that arrive while one write is in flight share
the next ``write``, synced by ``O_DSYNC``. The blocking file work runs on one thread of the
journal's own, so it never blocks the event loop, and a request waits for nothing but its own
group's commit.

Under load a group also waits a little for the rows about to come, as PostgreSQL's
``commit_delay`` does: when at least ``commit_siblings`` other requests are in flight that have
not appended their row yet, a group waits up to ``commit_delay`` (less, once they all have).
Every synced write costs the process CPU on top of its wait (the kernel's work, and the main
thread losing its core each time the journal thread wakes), so fewer, larger groups leave more
of the core to the requests; a request alone is written at once and waits for nothing.

A group is handed to the thread from the event loop's own callbacks (the first row's ``append``,
then the previous group's completion), never from a task of its own: such a task would be queued
behind every request the last commit woke, so under load all requests ended up waiting for one
commit together while the loop sat idle (a convoy). The thread wakes the loop once per group.

The ledger writer seals the active segment (the next row starts a new one), drains sealed
segments to the control store and deletes each once the store has all its rows. A process holds
an exclusive ``flock`` on every segment it owns, so the segments of a process that died (the
lock goes with it) are told apart from a live neighbour's and adopted: at start, before the
gateway serves, and on every later round. The rows a process wrote are also kept in memory (up
to ``max_copied_rows``), so draining its own segments costs no reading back and decoding; a file
is read only when it was adopted, or when a long store outage has outgrown that bound.

A record is framed as ``length (u32, big-endian) · crc32 (u32) · payload`` (payload: the row as
JSON). A crash can tear only the last record of a segment; reading stops at the first record that
is short or fails its checksum, and what follows is counted and skipped, never an error.

With ``fsync`` on, the active segment is kept zero-filled (and synced) ``zeroed_ahead`` bytes past
its last record: a synced write that overwrites blocks already allocated leaves the file's size
and extents alone, so the disk syncs the data only, not the file system's metadata too (on ext4,
a synced 2.5 KB write took 20 to 60% less time and kernel CPU than an append). A zero length marks
the end of the records (a row is never empty), so the zeros are not a torn record.

A failing disk never fails a request: the batch that failed is handed to ``on_failure`` (the
ledger's memory buffer) and the journal stays off until a later ``maintain()`` opens a new segment.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import itertools
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from cachegate.gateway import metrics
from cachegate.store.base import LedgerRow

log = logging.getLogger(__name__)

MAGIC = b"CGLEDG1\n"  # the first bytes of every segment: the format's name and version
SUFFIX = ".journal"
_CREATING = ".creating"  # a segment being made: not yet locked, so no neighbour may look at it
_FRAME = struct.Struct(">II")  # payload length, crc32 of the payload
MAX_RECORD_BYTES = 1 << 20  # a length beyond this is a torn or corrupt frame, not a row
ZEROED_AHEAD = 256 * 1024  # kept zero-filled past the active segment's last record, when synced
_READ_CHUNK = 1 << 20


# -- the format: pure functions, tested byte by byte ------------------------------------------


def encode_row(row: LedgerRow) -> bytes:
    """One framed record: length, checksum, the row as JSON."""
    payload = orjson.dumps(row, default=_json_default)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_row(payload: bytes) -> LedgerRow:
    values: dict[str, Any] = orjson.loads(payload)
    values["at"] = datetime.fromisoformat(values["at"])
    for name in ("cost", "list_cost"):
        if values[name] is not None:
            values[name] = Decimal(values[name])
    return LedgerRow(**{name: values[name] for name in _ROW_FIELDS if name in values})


def decode_records(data: bytes | memoryview, start: int = 0) -> tuple[list[bytes], int]:
    """The whole, intact payloads in ``data[start:]`` and the offset just after the last of them.

    Stops at the first frame that is incomplete (more data may follow), absurdly long, or fails
    its checksum; the caller tells a torn tail (end of file) from a chunk boundary.
    """
    payloads: list[bytes] = []
    view = memoryview(data)
    offset = start
    end = len(view)
    while end - offset >= _FRAME.size:
        length, checksum = _FRAME.unpack_from(view, offset)
        if length == 0 or length > MAX_RECORD_BYTES:  # 0: the zero-filled rest of a segment
            break
        body_end = offset + _FRAME.size + length
        if body_end > end:
            break
        payload = bytes(view[offset + _FRAME.size : body_end])
        if zlib.crc32(payload) != checksum:
            break
        payloads.append(payload)
        offset = body_end
    return payloads, offset


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)  # exact; Decimal(str(d)) == d
    raise TypeError(f"cannot journal a {type(value).__name__}")


_ROW_FIELDS = tuple(f.name for f in fields(LedgerRow))


# -- segments ---------------------------------------------------------------------------------


_Copy = list[tuple[LedgerRow, int]]  # rows in the order they were written, each with the file offset after it


@dataclass(eq=False)
class _Group:
    """The rows of one group commit: their records, the rows themselves, and the requests waiting for them."""

    records: list[bytes] = field(default_factory=list)
    rows: list[LedgerRow] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def release(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():  # a request cancelled while it waited
                waiter.set_result(None)


@dataclass(eq=False)
class Segment:
    """A sealed segment file this process holds the lock of, and how far it has been drained."""

    path: Path
    fd: int
    own: bool  # written by this process (False: adopted from a process that died)
    offset: int = len(MAGIC)  # the next record to send to the store
    copy: _Copy | None = None  # its rows not yet sent, if kept in memory


class Journal:
    """The segment folder of one process; ``await open()`` first, ``await close()`` last."""

    def __init__(
        self,
        directory: Path,
        on_failure: Callable[[list[LedgerRow]], None],
        *,
        fsync: bool = True,
        commit_delay: float = 0.0,
        commit_siblings: int = 0,
        in_flight: Callable[[], int] = lambda: 0,
        max_copied_rows: int = 100_000,
        zeroed_ahead: int = ZEROED_AHEAD,
    ) -> None:
        """``in_flight``: how many requests may append a row soon; ``commit_siblings`` 0: always wait."""
        self.directory = directory
        self._max_copied = max_copied_rows
        self._on_failure = on_failure
        self._fsync = fsync
        # Zeros pay off for synced writes only; at most a frame's length, so that a reader never takes
        # a zero tail for a rest too long to be a record (``_read_records``).
        self._zeros = bytes(min(zeroed_ahead, MAX_RECORD_BYTES) if fsync else 0)
        self._delay = commit_delay
        self._siblings = commit_siblings
        self._in_flight = in_flight
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachegate-journal")
        self._names = itertools.count()
        # Touched on the journal thread only:
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._zeroed_to = 0  # the active segment is zeros (synced) from _size up to here
        self._failed: list[Segment] = []  # segments sealed by a failed write, for the loop to drain
        # Touched on the event loop only:
        self.sealed: list[Segment] = []
        self.healthy = False
        self.unstored = 0  # rows this process journaled that the store has not acknowledged yet
        self._queued = _Group()  # rows waiting for the next commit
        self._committing = False  # a group is being written, or waits for its siblings' rows
        self._delayed: asyncio.TimerHandle | None = None  # the commit of a group that waits for more rows
        self._appending = 0  # requests in append(), from queuing their row until they resume
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._copies: dict[Path, _Copy | None] = {}  # per segment written to; None: over the bound, read the file
        self._copied = 0

    async def open(self) -> None:
        """Create the folder and adopt the segments of dead processes (``sealed``), ready to replay."""
        self._loop = asyncio.get_running_loop()
        await self._on_thread(lambda: self.directory.mkdir(parents=True, exist_ok=True))
        self.healthy = True
        await self.adopt()

    async def append(self, row: LedgerRow) -> None:
        """Return once ``row`` is written (and synced, if ``fsync``) with its group; never raises.

        The row is queued before the first ``await``: a caller cancelled while it waits does
        not take its row back. If the disk fails, the row goes to ``on_failure`` instead.
        """
        if not self.healthy:
            self._on_failure([row])
            return
        record = encode_row(row)
        waiter = asyncio.get_running_loop().create_future()
        self._queued.records.append(record)
        self._queued.rows.append(row)
        self._queued.waiters.append(waiter)
        self._appending += 1
        try:
            if not self._committing:
                self._schedule_commit()
            elif self._delayed is not None and self._coming() <= 0:  # every row it waited for is here
                self._delayed.cancel()
                self._commit()
            await waiter
        finally:
            self._appending -= 1

    def _coming(self) -> int:
        """Requests in flight that have not appended their row yet: what a waiting group may gain."""
        return self._in_flight() - self._appending

    def _schedule_commit(self) -> None:
        """Commit the queued group now, or after ``commit_delay`` under load; from the loop's own callback."""
        self._committing = True
        self._idle.clear()
        if self._delay and self._coming() >= self._siblings:
            assert self._loop is not None
            self._delayed = self._loop.call_later(self._delay, self._commit)
        else:
            self._commit()

    def _commit(self) -> None:
        """Hand the queued group to the journal thread; ``_committed`` runs on the loop once it is written."""
        self._delayed = None
        group, self._queued = self._queued, _Group()
        if not self.healthy:  # an earlier group failed: the journal is off until maintain() reopens it
            self._on_failure(group.rows)
            self._committed(group, None)
            return
        loop = self._loop
        assert loop is not None
        written = self._thread.submit(self._write, b"".join(group.records))
        # One wake-up of the loop per group, straight from the journal thread.
        written.add_done_callback(lambda done: loop.call_soon_threadsafe(self._committed, group, done))

    def _committed(self, group: _Group, written: Future[tuple[Path, int]] | None) -> None:
        """A group's write is over: account for it, start the next group, then release the requests."""
        error = written.exception() if written is not None else None
        if error is not None:
            self.healthy = False
            metrics.LEDGER_JOURNAL_FAILURES.inc()
            log.error("ledger journal write failed; %d rows kept in memory instead", len(group.rows), exc_info=error)
            self._on_failure(group.rows)
        elif written is not None:
            self._keep_copy(*written.result(), group)
            self.unstored += len(group.rows)
            metrics.LEDGER_JOURNALED.inc(len(group.rows))
            metrics.LEDGER_GROUP_ROWS.observe(len(group.rows))
        if self._queued.rows:
            self._schedule_commit()  # before the released requests run: the thread writes while they do
        else:
            self._committing = False
            self._idle.set()
        group.release()

    def _keep_copy(self, path: Path, start: int, group: _Group) -> None:
        copy = self._copies.setdefault(path, [])
        if copy is None:
            return
        if self._copied + len(group.rows) > self._max_copied:  # a long outage: this segment is read back instead
            self._copies[path] = None
            self._copied -= len(copy)
            return
        ends = itertools.accumulate(map(len, group.records), initial=start)
        copy.extend(zip(group.rows, itertools.islice(ends, 1, None), strict=True))
        self._copied += len(group.rows)

    def _sealed(self, segments: list[Segment]) -> None:
        """Take in segments the journal thread sealed, each with the copy of its rows if one was kept."""
        for segment in segments:
            segment.copy = self._copies.pop(segment.path, None)
        self.sealed.extend(segments)

    def _forget(self, segment: Segment) -> None:
        self.sealed.remove(segment)
        if segment.copy is not None:
            self._copied -= len(segment.copy)
            segment.copy = None

    async def maintain(self, *, seal: bool = False) -> None:
        """One round of housekeeping: retry a failed disk, seal the active segment, adopt orphans.

        The active segment is sealed only when every sealed one has been drained (or ``seal``), so
        a store outage grows one segment instead of leaving a file (and a lock) per round.
        """
        self._sealed(await self._on_thread(self._take_failed))
        if not self.healthy:
            try:
                await self._on_thread(self._ensure_segment)
                self.healthy = True
                log.warning("ledger journal is writable again")
            except OSError as exc:
                log.warning("ledger journal still unavailable: %s", exc)
                return
        if seal or not any(segment.own for segment in self.sealed):
            segment = await self._on_thread(self._seal)
            if segment is not None:
                self._sealed([segment])
            if segment is not None and not seal:
                # Rows are coming (a forced seal is the shutdown's: none are): make and zero-fill the
                # next segment now, not in a request's commit. A disk that refuses is met again by
                # the next write, which takes the failure path.
                with contextlib.suppress(OSError):
                    await self._on_thread(self._ensure_segment)
        await self.adopt()

    async def adopt(self) -> None:
        """Lock and take over the segments of processes that have died (their locks died with them)."""
        try:
            found = await self._on_thread(self._adopt_orphans, {s.path for s in self.sealed})
        except OSError as exc:
            log.warning("cannot look for ledger journal segments to replay in %s: %s", self.directory, exc)
            return
        self.sealed.extend(found)
        self.sealed.sort(key=lambda segment: segment.path.name)

    async def read(self, segment: Segment, max_rows: int) -> tuple[list[LedgerRow], int, bool]:
        """Up to ``max_rows`` rows from ``segment.offset`` on, the offset after them, and whether that is all.

        Taken from the segment's copy if it has one; else read on a worker thread of its own (a long
        segment left by an outage does not hold up commits) and decoded.
        """
        if segment.copy is not None:
            stored = bisect.bisect_right(segment.copy, segment.offset, key=lambda item: item[1])
            del segment.copy[:stored]  # the store has them: the caller moved the offset past them
            self._copied -= stored
            taken = segment.copy[:max_rows]
            offset = taken[-1][1] if taken else segment.offset
            return [row for row, _ in taken], offset, len(taken) == len(segment.copy)
        payloads, offset, finished = await asyncio.to_thread(_read_records, segment, max_rows)
        return [decode_row(payload) for payload in payloads], offset, finished

    async def discard(self, segment: Segment) -> None:
        """The store has every row of ``segment``: delete it."""
        self._forget(segment)
        await self._on_thread(_unlink, segment)

    async def quarantine(self, segment: Segment) -> Path:
        """Set aside a segment that cannot be read, for an operator to look at; returns its new name."""
        self._forget(segment)
        return Path(await self._on_thread(_set_aside, segment))

    async def set_aside(self, rows: list[LedgerRow]) -> Path:
        """Write rows the store refuses to a file of their own (``*.refused``, the segment format),
        never replayed by itself: for an operator to look at, mend and replay. Returns its path."""
        name = f"ledger-{time.time_ns():020d}-{os.getpid()}-{next(self._names)}.refused"
        path = self.directory / name
        data = MAGIC + b"".join(encode_row(row) for row in rows)
        await self._on_thread(_write_new_file, path, data, self._fsync)
        return path

    async def settle(self) -> None:
        """Wait until every queued row has been written (or handed to ``on_failure``)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Wait for queued rows and let go of every segment and lock; undrained files stay for the next start."""
        await self.settle()
        self.healthy = False
        active = await self._on_thread(self._seal)
        for segment in [*self.sealed, *([active] if active else [])]:
            await self._on_thread(os.close, segment.fd)
        self.sealed.clear()
        self._copies.clear()
        self._copied = 0
        self._thread.shutdown(wait=True)

    async def _on_thread(self, work: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    # -- on the journal thread ------------------------------------------------------------------

    def _write(self, data: bytes) -> tuple[Path, int]:
        """Append ``data`` to the active segment (opening one if need be); returns where: its path and offset."""
        self._ensure_segment()
        assert self._fd is not None
        try:
            view, offset = memoryview(data), self._size
            while view:  # with fsync on, the file is O_DSYNC: a write returns once it is on disk
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError:
            # Never append after a partial record: cut it off if we can, and start a new segment.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            segment = self._seal()
            if segment is not None:
                self._failed.append(segment)  # its earlier rows are good: drained like any other
            raise
        start, self._size = self._size, self._size + len(data)
        if self._zeros and self._zeroed_to - self._size < len(self._zeros) // 2:
            self._thread.submit(self._zero_ahead)  # after this group is released, before the next is written
        assert self._path is not None
        return self._path, start

    def _zero_ahead(self) -> None:
        """Zero-fill (synced) the ``zeroed_ahead`` bytes past the active segment's end of zeros, or of records."""
        if self._fd is None or not self._zeros:
            return  # sealed meanwhile, or nothing to fill (fsync off)
        start = max(self._zeroed_to, self._size)
        # A full or failing disk: records are written past the zeros, or fail as any write does.
        with contextlib.suppress(OSError):
            self._zeroed_to = start + os.pwrite(self._fd, self._zeros, start)

    def _ensure_segment(self) -> None:
        if self._fd is not None:
            return
        name = f"ledger-{time.time_ns():020d}-{os.getpid()}-{next(self._names)}"
        path = self.directory / f"{name}{SUFFIX}"
        # Made under a name no neighbour looks at, locked, and only then renamed into place: a
        # neighbour looking for orphans (``_adopt_orphans``, every round) that found the file between
        # its creation and its lock took it for a dead process's, and this process's write failed.
        # A crash before the rename leaves an empty ``.creating`` file, never a row.
        creating = self.directory / f"{name}{_CREATING}"
        # O_DSYNC rather than write + fdatasync: one system call per group, so the journal thread
        # takes the GIL back once per group, not twice (each time can wait for a busy event loop).
        synced = os.O_DSYNC if self._fsync else 0
        fd = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | synced, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, MAGIC)
            os.rename(creating, path)  # the lock goes with the open file, whatever its name
            if self._fsync:
                _sync_directory(self.directory)  # the new name must survive a crash too
        except BaseException:
            os.close(fd)
            creating.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._path, self._size = fd, path, len(MAGIC)
        self._zeroed_to = self._size
        self._zero_ahead()

    def _take_failed(self) -> list[Segment]:
        failed, self._failed = self._failed, []
        return failed

    def _seal(self) -> Segment | None:
        """Stop appending to the active segment; returns it if it holds any row (else deletes it)."""
        fd, path, size = self._fd, self._path, self._size
        self._fd, self._path, self._size = None, None, 0
        if fd is None or path is None:
            return None
        if size <= len(MAGIC):
            path.unlink(missing_ok=True)
            os.close(fd)
            return None
        return Segment(path, fd, own=True)

    def _adopt_orphans(self, known: set[Path]) -> list[Segment]:
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path in known or path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # drained and deleted by its owner meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != path.stat().st_ino:
                    raise FileNotFoundError(path)  # replaced after we opened it
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)  # a live process owns it, or it is gone
                continue
            found.append(Segment(path, fd, own=False))
        if found:
            log.warning("ledger journal: adopting %d segment(s) left by a process that ended", len(found))
        return found


def _read_records(segment: Segment, max_rows: int) -> tuple[list[bytes], int, bool]:
    """Up to ``max_rows`` records from ``segment.offset``, the offset after them, and whether that is the end.

    At the end of the file, bytes that are not a whole record (a torn write) are counted and skipped.
    """
    payloads: list[bytes] = []
    offset = segment.offset  # the file offset of data[0]
    data = b""
    while True:
        chunk = os.pread(segment.fd, _READ_CHUNK, offset + len(data))
        data += chunk
        found, used = decode_records(data)
        if len(payloads) + len(found) >= max_rows:
            taken = found[: max_rows - len(payloads)]
            payloads.extend(taken)
            offset += sum(_FRAME.size + len(payload) for payload in taken)
            return payloads, offset, False
        payloads.extend(found)
        offset, data = offset + used, data[used:]
        if not chunk:
            if data.strip(b"\0"):  # a zero tail is the segment's unused room, not a torn record
                _report_torn(segment, offset, len(data))
            return payloads, offset + len(data), True
        if len(data) > MAX_RECORD_BYTES + _FRAME.size:  # no frame can be this long: the rest is unreadable
            size = os.fstat(segment.fd).st_size
            _report_torn(segment, offset, size - offset)
            return payloads, size, True


def _report_torn(segment: Segment, offset: int, size: int) -> None:
    metrics.LEDGER_JOURNAL_TORN.inc()
    log.warning("ledger journal %s: %d bytes at offset %d are not a whole record; skipped", segment.path, size, offset)


def _unlink(segment: Segment) -> None:
    segment.path.unlink(missing_ok=True)
    os.close(segment.fd)


def _set_aside(segment: Segment) -> Path:
    target = segment.path.with_suffix(".unreadable")
    segment.path.rename(target)
    os.close(segment.fd)
    return target


def _write_new_file(path: Path, data: bytes, fsync: bool) -> None:
    with path.open("xb") as file:
        file.write(data)
        if fsync:
            file.flush()
            os.fsync(file.fileno())
    if fsync:
        _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def records(data: bytes) -> Iterator[LedgerRow]:
    """Every intact row of a whole segment's bytes (for tools and tests)."""
    start = len(MAGIC) if data.startswith(MAGIC) else len(data)
    payloads, _ = decode_records(data, start)
    return (decode_row(payload) for payload in payloads)
