"""Issue 15: kill a loaded ``cachegate serve`` with SIGKILL, start it again, and count the bill.

Every request is told apart by the upstream-reported cached tokens it asks the fake upstream for
(``x-fake-behavior: cached=N``), which the ledger keeps per row: each request answered with a 2xx
must have exactly one row, and no request may have two. Requests cut off by the kill may have a
row or not (their row may be journaled before their last byte was lost), but never two.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from .demo_server import free_port, start_demo
from pg import PgServer, pg_server  # noqa: F401  (fixture)

CONCURRENCY = 16
KILL_AFTER_SECONDS = 2.5  # past a ledger flush (1 s) or two, so some rows are in the store and some are not


async def one_request(session: aiohttp.ClientSession, base_url: str, key: str, number: int) -> bool:
    """True if the gateway answered with a 2xx and the client received the whole response."""
    streaming = number % 2 == 0
    body = {"model": "demo", "messages": [{"role": "user", "content": f"hello {number}"}], "stream": streaming}
    if streaming:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {key}", "x-fake-behavior": f"cached={number},chunks=4"}
    try:
        async with session.post(f"{base_url}/v1/chat/completions", json=body, headers=headers) as response:
            data = await response.read()
            if not 200 <= response.status < 300:
                return False
            return b"data: [DONE]" in data if streaming else b'"usage"' in data
    except (TimeoutError, aiohttp.ClientError):
        return False


async def load_until_killed(base_url: str, key: str, process: subprocess.Popen[str]) -> tuple[set[int], int]:
    """Requests from CONCURRENCY clients; SIGKILL the gateway mid-load. Returns the answered numbers and the sent."""
    answered: set[int] = set()
    numbers = iter(range(1, 10**9))
    sent = 0
    stop_at = time.monotonic() + KILL_AFTER_SECONDS

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while process.poll() is None:
            number = next(numbers)
            sent += 1
            if await one_request(session, base_url, key, number):
                answered.add(number)

    async def killer() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await asyncio.gather(killer(), *(client(session) for _ in range(CONCURRENCY)))
    return answered, sent


def crash_and_restart(folder: Path, env: dict[str, str]) -> tuple[set[int], int, int]:
    """Load, kill, restart (which replays the journal before serving), stop cleanly.

    Returns the answered request numbers, how many were sent, and how many rows the restart replayed.
    """
    port = free_port()
    started = start_demo(folder, env, port)
    process = started.process
    answered, sent = asyncio.run(load_until_killed(started.base_url.removesuffix("/v1"), started.key, process))
    assert process.returncode == -signal.SIGKILL

    again = start_demo(folder, env, free_port())
    again.process.send_signal(signal.SIGINT)
    rest, _ = again.process.communicate(timeout=30)
    replayed = re.search(r"replayed (\d+) rows", again.output + rest)
    return answered, sent, int(replayed.group(1)) if replayed else 0


def check_the_bill(answered: set[int], sent: int, billed: list[int | None], replayed: int) -> None:
    counts = Counter(billed)
    assert len(answered) > 100, f"only {len(answered)} requests answered before the kill"
    assert sent > len(answered), "the kill came after the load: nothing was cut off"
    assert replayed > 0, "nothing was left in the journal at the kill: the test did not test it"
    unbilled = sorted(number for number in answered if counts[number] == 0)
    twice = sorted(number for number, count in counts.items() if count > 1)
    assert unbilled == [], f"{len(unbilled)} answered requests have no ledger row: {unbilled[:10]}"
    assert twice == [], f"{len(twice)} requests have more than one row: {twice[:10]}"


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    env["CACHEGATE_DEMO__PORT"] = str(free_port())
    return env


def test_sigkill_under_load_loses_no_answered_request_and_bills_none_twice_on_sqlite(tmp_path: Path) -> None:
    answered, sent, replayed = crash_and_restart(tmp_path, demo_env())

    with sqlite3.connect(tmp_path / "data" / "control.db") as connection:
        billed = [value for (value,) in connection.execute("SELECT upstream_cached_tokens FROM ledger")]
    check_the_bill(answered, sent, billed, replayed)
    assert list((tmp_path / "data" / "ledger-journal").glob("*.journal")) == []


@pytest.mark.postgres
def test_sigkill_under_load_loses_no_answered_request_and_bills_none_twice_on_postgres(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811  (the fixture imported above)
) -> None:
    url = pg_server.create_database()
    env = demo_env()
    env["CACHEGATE_CONTROL_STORE_URL"] = url
    answered, sent, replayed = crash_and_restart(tmp_path, env)

    async def billed() -> list[int | None]:
        connection = await asyncpg.connect(url)
        try:
            return [row[0] for row in await connection.fetch("SELECT upstream_cached_tokens FROM ledger")]
        finally:
            await connection.close()

    check_the_bill(answered, sent, asyncio.run(billed()), replayed)
