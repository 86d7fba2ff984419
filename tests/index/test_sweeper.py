"""The background sweeper: sweeps on schedule with the clock's time, survives failures, stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cachegate.index.base import IndexUnavailable
from cachegate.index.sweeper import Sweeper

INTERVAL = 0.01  # seconds; nothing asserts timing, waits are bounded only to fail instead of hanging
GIVE_UP_AFTER = 10.0


class RecordingIndex:
    """Records each sweep's ``now``; raises the scripted failures first, then removes 1 entry a sweep."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.sweeps: list[float] = []
        self._swept = asyncio.Condition()

    async def sweep(self, now: float) -> int:
        async with self._swept:
            self.sweeps.append(now)
            self._swept.notify_all()
        if self.failures:
            raise self.failures.pop(0)
        return 1

    async def swept(self, times: int) -> None:
        async with self._swept:
            await asyncio.wait_for(self._swept.wait_for(lambda: len(self.sweeps) >= times), GIVE_UP_AFTER)


async def test_sweeps_repeatedly_with_the_clocks_time() -> None:
    index = RecordingIndex()
    sweeper = Sweeper(index, INTERVAL, clock=lambda: 1234.5)  # type: ignore[arg-type]

    sweeper.start()
    await index.swept(3)
    await sweeper.stop()

    assert index.sweeps[:3] == [1234.5, 1234.5, 1234.5]


async def test_expired_entries_are_kept_for_the_retention(  # so a miss can be told expired (SPEC §14)
) -> None:
    index = RecordingIndex()
    sweeper = Sweeper(index, INTERVAL, retention=3600.0, clock=lambda: 10_000.0)  # type: ignore[arg-type]

    sweeper.start()
    await index.swept(1)
    await sweeper.stop()

    assert index.sweeps[0] == 10_000.0 - 3600.0


async def test_keeps_sweeping_after_failures_and_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    index = RecordingIndex(IndexUnavailable("database is down"), RuntimeError("a bug"))
    sweeper = Sweeper(index, INTERVAL)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="cachegate.index.sweeper"):
        sweeper.start()
        await index.swept(3)
        assert sweeper.running
        await sweeper.stop()

    messages = [record.getMessage() for record in caplog.records]
    assert any("database is down" in message for message in messages)
    assert any(record.exc_info and "a bug" in str(record.exc_info[1]) for record in caplog.records)


async def test_stop_ends_the_task_and_no_sweep_follows() -> None:
    index = RecordingIndex()
    sweeper = Sweeper(index, INTERVAL)  # type: ignore[arg-type]
    sweeper.start()
    await index.swept(1)

    await sweeper.stop()
    sweeps_at_stop = len(index.sweeps)
    await asyncio.sleep(INTERVAL * 5)

    assert not sweeper.running
    assert len(index.sweeps) == sweeps_at_stop
    await sweeper.stop()  # stopping twice is harmless


async def test_starting_twice_is_an_error() -> None:
    sweeper = Sweeper(RecordingIndex(), INTERVAL)  # type: ignore[arg-type]
    sweeper.start()
    try:
        with pytest.raises(RuntimeError):
            sweeper.start()
    finally:
        await sweeper.stop()


@pytest.mark.parametrize("interval", [0, -1.0])
def test_the_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Sweeper(RecordingIndex(), interval)  # type: ignore[arg-type]
