"""The fault matrix (SPEC §11): each cell a fault injected while a running gateway serves, counted.

Every test sends its requests with a key of its own, so that its ledger rows are told apart, and
asserts three counts: how many requests failed because of the fault (0 where the fault is a cache
backend's), how many ledger rows were written (exactly one per request: none lost, none twice),
and what each stream cut by the fault was billed. The cells tested elsewhere are listed, with
their tests, in docs/faults.md.

The gateway is the suite's own (tests/e2e/harness.py) with one deadline tightened: the upstream
client gives up after one second without a byte, so a stalled upstream is a test of seconds.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anthropic
import asyncpg
import openai
import pytest
from conftest import TEST_CONFIG
from openai import OpenAI

from cachegate.core.sse import DEFAULT_MAX_EVENT_BYTES
from cachegate.store.base import LedgerRow
from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness
from pg import PgServer
from prompts import MARK_1H, marked_system, system_text
from tcp_relay import TcpRelay

T = TypeVar("T")

READ_TIMEOUT = 1.0  # the upstream client's read timeout here: a stall past it is a fault
FAULT_CONFIG: dict[str, Any] = {
    **TEST_CONFIG,
    "deadlines": {**TEST_CONFIG["deadlines"], "upstream_read_seconds": READ_TIMEOUT},
}
BATCH = 8  # requests sent at once while a fault lasts
# The upstream's faults involve neither store nor index: their cells run over SQLite alone.
ONE_BACKEND = pytest.mark.parametrize("gateway", ["sqlite"], indirect=True)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest, qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayHarness]:
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("faults")
        store_url, index_url = f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db"
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        store_url, index_url = server.create_database(), server.create_database()
    harness = GatewayHarness(qwen3, store_url, index_url, FAULT_CONFIG).start()
    yield harness
    harness.stop()


@pytest.fixture
def restarting_pg(qwen3: TokenCounter, pg_server: PgServer) -> Iterator[tuple[GatewayHarness, TcpRelay, str]]:
    """A gateway whose control store and cache index are one PostgreSQL reached through a relay the
    test switches off and on, as a restart of the server looks to its clients: connections cut, the
    port refused, then the same server again. Yields it, the relay and the database's own URL."""
    direct = pg_server.create_database()
    url = urlsplit(direct)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = TcpRelay((url.hostname or "127.0.0.1", url.port or 5432), port).start()
    auth = f"{url.username}@" if url.username else ""
    relayed = url._replace(netloc=f"{auth}127.0.0.1:{port}").geturl()
    harness = GatewayHarness(qwen3, relayed, relayed, FAULT_CONFIG).start()
    yield harness, relay, direct
    harness.stop()
    relay.stop()


@pytest.fixture
def key(gateway: GatewayHarness) -> tuple[str, str]:
    return new_key(gateway)


def new_key(gateway: GatewayHarness) -> tuple[str, str]:
    """A key of a principal of its own (its id, its secret): one test's rows and cache entries are its own."""

    async def create() -> tuple[str, str]:
        principal = await gateway.store.inner.create_principal(f"tenant-{time.monotonic_ns()}")
        created, secret = await gateway.store.inner.create_api_key(principal.id)
        return created.id, secret

    return gateway.call(create())


def client(gateway: GatewayHarness, secret: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0, timeout=30)


def conversation(text: str) -> list[dict[str, Any]]:
    return [marked_system(text, MARK_1H), {"role": "user", "content": "What is rule 3?"}]


def ask(gateway: GatewayHarness, secret: str, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """One marked chat request; its usage with cachegate's fields."""
    response = client(gateway, secret).chat.completions.create(model="cached", messages=messages, **kw)
    assert response.usage is not None
    return response.usage.model_dump()


def stream(gateway: GatewayHarness, secret: str, messages: list[dict[str, Any]], behavior: str = "") -> dict[str, Any]:
    """One marked streamed request read to its end; the usage of its usage frame."""
    headers = {"x-fake-behavior": behavior} if behavior else {}
    chunks = client(gateway, secret).chat.completions.create(
        model="cached", messages=messages, stream=True, stream_options={"include_usage": True}, extra_headers=headers
    )
    usage = [chunk.usage.model_dump() for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1
    return usage[0]


def degraded(usage: dict[str, Any]) -> bool:
    """Whether the usage says the cache was bypassed (the field is there only when it was, §8)."""
    return usage.get("cache_degraded") is True


def json_or_stream(gateway: GatewayHarness, secret: str, messages: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Request ``n`` of a batch: the odd ones streamed, the even ones JSON; its usage."""
    return stream(gateway, secret, messages) if n % 2 else ask(gateway, secret, messages)


def at_once(count: int, send: Callable[[int], T]) -> list[T]:
    """``send(0)`` … ``send(count - 1)`` on as many threads at once; their results in order."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(send, range(count)))


def rows_of(gateway: GatewayHarness, key_id: str, count: int, route: str = "chat") -> list[LedgerRow]:
    """The ledger rows of ``key_id`` on ``route`` once ``count`` of them are stored (a request that ends
    in a fault is billed as its route ends, a moment after its client saw the end), or what there is
    after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        rows = gateway.ledger_rows(route)
        mine = [row for row in rows if row.key_id == key_id]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def flush_index(gateway: GatewayHarness) -> int:
    """Delete every entry of the index behind the gateway's back, as an operator's flush does; how many."""
    url = gateway.config.index_url
    if url.startswith("sqlite:"):
        with sqlite3.connect(urlsplit(url).path) as connection:
            return connection.execute("DELETE FROM cache_index_entries").rowcount

    async def delete() -> int:
        connection = await asyncpg.connect(url)
        try:
            return int((await connection.execute("DELETE FROM cache_index_entries")).split()[-1])
        finally:
            await connection.close()

    return gateway.call(delete())


# --- the cache index ------------------------------------------------------------------------------


def test_an_index_flushed_mid_run_is_written_again_and_every_request_billed_exactly(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = conversation(system_text())
    before = [ask(gateway, secret, messages) for _ in range(3)]
    written = before[0]["cache_creation_input_tokens"]
    assert written > 0 and [usage["cache_read_input_tokens"] for usage in before] == [0, written, written]

    assert flush_index(gateway) >= 1

    after = [ask(gateway, secret, messages) for _ in range(3)]
    assert [usage["cache_creation_input_tokens"] for usage in after] == [written, 0, 0]
    assert [usage["cache_read_input_tokens"] for usage in after] == [0, written, written]
    assert not any(degraded(usage) for usage in before + after)
    rows = rows_of(gateway, key_id, 6)
    assert len(rows) == 6 and all(row.status == 200 and not row.degraded for row in rows)
    assert sum(row.cache_creation_1h_tokens for row in rows) == 2 * written
    assert sum(row.cache_read_tokens for row in rows) == 4 * written


def test_an_index_slow_past_the_deadline_serves_a_concurrent_batch_uncached_and_bills_each(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = conversation(system_text())
    written = ask(gateway, secret, messages)["cache_creation_input_tokens"]

    gateway.index.delay = 3.0  # the classification deadline is 1 s
    during = at_once(BATCH, lambda _: ask(gateway, secret, messages))
    gateway.index.delay = 0.0

    assert all(degraded(usage) for usage in during)
    assert all(usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0 for usage in during)
    assert ask(gateway, secret, messages)["cache_read_input_tokens"] == written  # the entry outlived the stall
    rows = rows_of(gateway, key_id, BATCH + 2)
    assert len(rows) == BATCH + 2
    assert sum(row.degraded for row in rows) == BATCH
    assert all(row.status == 200 and row.prompt_tokens == rows[0].prompt_tokens for row in rows)


def test_an_index_down_mid_run_fails_no_request_and_loses_no_row(gateway: GatewayHarness, key: tuple[str, str]) -> None:
    key_id, secret = key
    messages = conversation(system_text())
    written = ask(gateway, secret, messages)["cache_creation_input_tokens"]

    gateway.index.down = True
    during = at_once(BATCH, lambda n: json_or_stream(gateway, secret, messages, n))
    gateway.index.down = False

    assert all(degraded(usage) and usage["cache_read_input_tokens"] == 0 for usage in during)
    assert ask(gateway, secret, messages)["cache_read_input_tokens"] == written
    rows = rows_of(gateway, key_id, BATCH + 2)
    assert len(rows) == BATCH + 2 and sum(row.degraded for row in rows) == BATCH
    assert sum(row.streaming for row in rows) == BATCH // 2


# --- the token counter ----------------------------------------------------------------------------


def test_a_hung_token_counter_serves_hits_as_ever_and_misses_uncached_and_bills_each_the_upstreams_count(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    cached = conversation(system_text())
    first = ask(gateway, secret, cached)
    written = first["cache_creation_input_tokens"]

    def send(n: int) -> dict[str, Any]:
        """The first half repeat the cached prefix (a hit needs no count); the rest are new prefixes."""
        return json_or_stream(gateway, secret, cached if n < BATCH // 2 else conversation(system_text()), n)

    gateway.counter.delay = 3600.0  # hung: it would answer in an hour
    during = at_once(BATCH, send)
    gateway.counter.delay = 0.0

    hits, misses = during[: BATCH // 2], during[BATCH // 2 :]
    assert all(not degraded(usage) and usage["cache_read_input_tokens"] == written for usage in hits)
    assert all(degraded(usage) and usage["cache_creation_input_tokens"] == 0 for usage in misses)
    assert ask(gateway, secret, conversation(system_text()))["cache_creation_input_tokens"] > 0  # counting again
    rows = rows_of(gateway, key_id, BATCH + 2)
    assert len(rows) == BATCH + 2 and sum(row.degraded for row in rows) == BATCH // 2
    billed = sorted(row.prompt_tokens for row in rows[: BATCH + 1])
    assert billed == sorted(usage["prompt_tokens"] for usage in [first, *during])  # the upstream's counts
    assert all(row.status == 200 and row.completion_tokens > 0 for row in rows)


# --- the upstream ---------------------------------------------------------------------------------


@ONE_BACKEND
def test_an_upstream_stalling_before_its_headers_is_a_502_in_each_dialect_and_billed(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    stall = {"x-fake-behavior": f"stall={READ_TIMEOUT * 3}"}
    messages = conversation(system_text())
    with pytest.raises(openai.APIStatusError) as json_error:
        client(gateway, secret).chat.completions.create(model="cached", messages=messages, extra_headers=stall)
    with pytest.raises(openai.APIStatusError) as stream_error:
        client(gateway, secret).chat.completions.create(
            model="cached", messages=messages, stream=True, extra_headers=stall
        )
    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(anthropic.APIStatusError) as messages_error:
        claude.messages.create(
            model="cached", max_tokens=64, messages=[{"role": "user", "content": "hi"}], extra_headers=stall
        )

    for caught in (json_error.value, stream_error.value):
        assert caught.status_code == 502
        assert isinstance(caught.body, dict) and caught.body["code"] == "upstream_unreachable"
    assert messages_error.value.status_code == 502
    assert messages_error.value.body["type"] == "error"  # type: ignore[index]
    assert messages_error.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    rows = rows_of(gateway, key_id, 2)  # the two chat requests; the Messages one is the route "messages"
    assert len(rows) == 2
    assert all(row.status == 502 and row.completion_tokens == 0 for row in rows)
    assert len(rows_of(gateway, key_id, 1, route="messages")) == 1
    assert ask(gateway, secret, messages)["cache_read_input_tokens"] == 0  # nothing was committed


def read_cut_stream(gateway: GatewayHarness, secret: str, messages: list[dict[str, Any]], behavior: str) -> int:
    """Read a stream the upstream breaks off; how many chunks arrived before the client's error."""
    received = 0
    with pytest.raises(openai.APIError):  # the connection is closed mid-body: an error, never a hang
        for _ in client(gateway, secret).chat.completions.create(
            model="cached",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-behavior": behavior},
        ):
            received += 1
    return received


def assert_billed_as_cut(row: LedgerRow, prompt_tokens: int, relayed: int) -> None:
    """A stream the upstream broke off: our count of the prompt, the chunks relayed, nothing written."""
    assert row.streaming and row.status == 502 and row.disconnect == "counted"
    assert row.prompt_tokens == prompt_tokens and row.completion_tokens == relayed
    assert row.cache_creation_1h_tokens == row.cache_read_tokens == 0


@ONE_BACKEND
def test_a_stream_the_upstream_cuts_is_billed_its_prompt_and_the_chunks_relayed(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = conversation(system_text())
    received = read_cut_stream(gateway, secret, messages, "cut=5")
    assert received == 6  # the role chunk and five content chunks

    after = ask(gateway, secret, messages)
    assert after["cache_read_input_tokens"] == 0  # the cut stream committed nothing
    rows = rows_of(gateway, key_id, 2)
    assert len(rows) == 2
    assert_billed_as_cut(rows[0], after["prompt_tokens"], relayed=5)


@ONE_BACKEND
def test_an_anthropic_stream_the_upstream_cuts_ends_with_an_error_event_and_is_billed(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key=secret, max_retries=0, timeout=30)
    with (
        pytest.raises(anthropic.APIStatusError) as caught,  # the SDK raises on the error event
        claude.messages.stream(
            model="cached",
            max_tokens=64,
            messages=[{"role": "user", "content": system_text()}],
            extra_headers={"x-fake-behavior": "cut=5"},
        ) as events,
    ):
        for _ in events:
            pass
    assert "broke off" in str(caught.value)
    rows = rows_of(gateway, key_id, 1, route="messages")
    assert len(rows) == 1
    assert rows[0].status == 502 and rows[0].disconnect == "counted"
    assert rows[0].prompt_tokens > 0 and rows[0].completion_tokens == 5


@ONE_BACKEND
def test_an_upstream_stalling_mid_stream_cuts_the_stream_and_bills_it(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = conversation(system_text())
    received = read_cut_stream(gateway, secret, messages, f"chunks=4,pace={READ_TIMEOUT * 3}")
    assert received == 1  # the role chunk, then the stall past the read timeout

    after = ask(gateway, secret, messages)
    assert after["cache_read_input_tokens"] == 0
    rows = rows_of(gateway, key_id, 2)
    assert len(rows) == 2
    assert_billed_as_cut(rows[0], after["prompt_tokens"], relayed=0)


@ONE_BACKEND
def test_an_upstream_event_over_the_limit_cuts_the_stream_commits_nothing_and_is_billed(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = conversation(system_text())
    read_cut_stream(gateway, secret, messages, f"big-event={DEFAULT_MAX_EVENT_BYTES + 1024}")

    after = ask(gateway, secret, messages)
    assert after["cache_read_input_tokens"] == 0 and after["cache_creation_input_tokens"] > 0
    rows = rows_of(gateway, key_id, 2)
    assert len(rows) == 2
    assert_billed_as_cut(rows[0], after["prompt_tokens"], relayed=0)


# --- PostgreSQL ----------------------------------------------------------------------------------


def test_postgresql_restarted_mid_run_fails_no_known_key_and_writes_every_row_once_back(
    restarting_pg: tuple[GatewayHarness, TcpRelay, str],
) -> None:
    gateway, relay, direct_url = restarting_pg
    key_id, secret = new_key(gateway)
    messages = conversation(system_text())
    written = ask(gateway, secret, messages)["cache_creation_input_tokens"]
    assert written > 0 and len(rows_of(gateway, key_id, 1)) == 1

    relay.stop()  # PostgreSQL goes away: the store's and the index's connections are cut
    try:
        during = at_once(BATCH, lambda n: json_or_stream(gateway, secret, messages, n))
        assert gateway.gateway.ledger.buffered >= BATCH  # the rows wait in the journal
    finally:
        relay.start()  # and comes back
    assert all(degraded(usage) for usage in during)  # the index was down too: served uncached

    rows = rows_of(gateway, key_id, BATCH + 1)
    assert len(rows) == BATCH + 1 and sum(row.degraded for row in rows) == BATCH

    async def stored_in_postgres() -> int:
        connection = await asyncpg.connect(direct_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM ledger WHERE key_id = $1", key_id))
        finally:
            await connection.close()

    assert gateway.call(stored_in_postgres()) == BATCH + 1  # every row once: none lost, none twice
