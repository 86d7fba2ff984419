"""``cachegate serve`` with a cache backend down: it starts, serves uncached and flagged, and caches again
as soon as the backend answers, without a restart (SPEC §11; issue 14).

The backends: a real PostgreSQL or Redis cache index, reached either through a relay the test switches off
and on (a stopped service: connection refused, connections cut) or under the name of a database that
does not exist until the test creates it; and a ``cachegate tokenizer serve`` started after the gateway.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import asyncpg
import openai
import pytest
from openai import OpenAI

from .demo_server import free_port
from .gateway_process import Running, create_key
from .test_serve_demo import MESSAGES
from pg import PgServer
from redis_server import RedisServer
from tcp_relay import TcpRelay


def write_config(
    work: Path, upstream_port: int, index_url: str | None, tokenizer_port: int | None, store_url: str | None
) -> Path:
    """One cached model, ``qwen3``; its index at ``index_url`` and its control store at ``store_url``
    (else SQLite), and counted by a tokenizer service on ``tokenizer_port`` (else in process)."""
    config = work / "cachegate.yaml"
    index = f'cache_index_url: "{index_url}"' if index_url else ""
    store = f'control_store_url: "{store_url}"' if store_url else ""
    url = f"http://127.0.0.1:{tokenizer_port}"
    remote = f"remote: {{kind: remote, url: '{url}', model: qwen3}}" if tokenizer_port else ""
    config.write_text(
        f"""
data_dir: {work / "data"}
{index}
{store}
tokenizers:
  qwen3: {{kind: builtin, name: qwen3}}
  {remote}
endpoints:
  - {{name: fake, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
models:
  - alias: qwen3
    endpoint: fake
    upstream_model: m
    tokenizer: {"remote" if tokenizer_port else "qwen3"}
    cache: {{min_prefix_tokens: 1024}}
"""
    )
    return config


class Gateway:
    def __init__(
        self,
        work: Path,
        index_url: str | None = None,
        tokenizer_port: int | None = None,
        store_url: str | None = None,
        key: str | None = None,
    ) -> None:
        """``key``: the client's key; by default one is made with the CLI before the gateway starts."""
        upstream_port, self.port = free_port(), free_port()
        self.config = write_config(work, upstream_port, index_url, tokenizer_port, store_url)
        self.control_db = work / "data" / "control.db"
        key = key or create_key(self.config)
        self.upstream = Running("-c", str(self.config), "fake-upstream", "--port", str(upstream_port))
        self.server = Running("-c", str(self.config), "serve", "--port", str(self.port))
        self.upstream.wait_for("fake upstream listening")
        self.server.wait_for("Application startup complete")
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client = OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0)

    def ask(self) -> tuple[dict[str, Any], str | None]:
        """One marked request; its usage's extra fields and the ``x-cachegate-cache`` header."""
        raw = self.client.chat.completions.with_raw_response.create(model="qwen3", messages=MESSAGES)
        usage = raw.parse().usage
        assert usage is not None
        return dict(usage.model_extra or {}), raw.headers.get("x-cachegate-cache")

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def degraded_rows(self) -> list[bool]:
        with sqlite3.connect(self.control_db) as connection:
            return [bool(flag) for (flag,) in connection.execute("SELECT degraded FROM ledger ORDER BY rowid")]

    def stop(self) -> None:
        assert self.server.stop() == 130, self.server.output
        self.upstream.stop()


def postgres_relay(pg_server: PgServer) -> Iterator[tuple[TcpRelay, str]]:
    """A relay to a fresh database, switched off; yields it and the database's URL through it."""
    url = urlsplit(pg_server.create_database())
    target = (url.hostname or "127.0.0.1", url.port or 5432)
    relay = TcpRelay(target, free_port())
    auth = f"{url.username}@" if url.username else ""
    yield relay, url._replace(netloc=f"{auth}127.0.0.1:{relay.port}").geturl()
    relay.stop()


def redis_relay(redis_server: RedisServer) -> Iterator[tuple[TcpRelay, str]]:
    """A relay to Redis, switched off; yields it and an index URL through it, under a fresh key prefix."""
    prefix = redis_server.fresh_prefix()
    relay = TcpRelay(redis_server.address, free_port())
    yield relay, redis_server.index_url(prefix, f"redis://127.0.0.1:{relay.port}/0")
    relay.stop()
    redis_server.drop(prefix)


@pytest.fixture
def relay(pg_server: PgServer) -> Iterator[tuple[TcpRelay, str]]:
    yield from postgres_relay(pg_server)


@pytest.fixture(
    params=[pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("redis", marks=pytest.mark.redis)]
)
def index_relay(request: pytest.FixtureRequest) -> Iterator[tuple[TcpRelay, str]]:
    """A switched-off relay to a PostgreSQL or a Redis cache index, and the index URL through it."""
    if request.param == "postgres":
        yield from postgres_relay(request.getfixturevalue("pg_server"))
    else:
        yield from redis_relay(request.getfixturevalue("redis_server"))


def assert_degraded(gateway: Gateway) -> None:
    usage, header = gateway.ask()
    assert header == "degraded" and usage["cache_degraded"] is True
    assert usage["cache_creation_input_tokens"] == 0 and usage["cache_read_input_tokens"] == 0


def assert_caches(gateway: Gateway) -> int:
    """A write of the marked prefix, then a read of exactly as many tokens; returns that count."""
    (first, first_header), (second, second_header) = gateway.ask(), gateway.ask()
    assert first_header is None and second_header is None
    assert "cache_degraded" not in first or first["cache_degraded"] is False
    written = first["cache_creation_input_tokens"]
    assert written > 1024 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == written and second["cache_creation_input_tokens"] == 0
    return int(written)


def test_an_index_down_at_start_and_midway_never_stops_the_gateway(
    tmp_path: Path, index_relay: tuple[TcpRelay, str]
) -> None:
    proxy, index_url = index_relay
    gateway = Gateway(tmp_path, index_url)  # the port is closed: PostgreSQL or Redis is "stopped"
    try:
        assert gateway.probe("/healthz") == (200, {"status": "ok"})
        status, ready = gateway.probe("/readyz")
        assert status == 200 and ready["status"] == "ready"  # degraded is ready: it serves
        assert [reason.split(":")[0] for reason in ready["cache_degraded"]] == ["cache index"]
        assert_degraded(gateway)
        assert_degraded(gateway)
        mark = len(gateway.server.lines)
        proxy.start()
        gateway.server.wait_for("cache index connected", timeout=30, start=mark)
        assert gateway.probe("/readyz")[1]["cache_degraded"] == []
        written = assert_caches(gateway)

        proxy.stop()  # down again mid-run: connections cut, port closed
        assert_degraded(gateway)
        proxy.start()  # back: the pool reconnects on its next use, and what was written is still there
        usage, header = gateway.ask()
        assert header is None and usage["cache_read_input_tokens"] == written
    finally:
        gateway.stop()
    assert gateway.degraded_rows() == [True, True, False, False, True, False]


@pytest.mark.postgres
def test_an_index_database_created_after_start_is_used_without_restart(tmp_path: Path, pg_server: PgServer) -> None:
    index_url = pg_server.database_url()
    gateway = Gateway(tmp_path, index_url)
    try:
        assert_degraded(gateway)
        mark = len(gateway.server.lines)
        pg_server.create_database(index_url)
        gateway.server.wait_for("cache index connected", timeout=30, start=mark)
        assert_caches(gateway)
    finally:
        gateway.stop()
    assert gateway.degraded_rows() == [True, False, False]


def test_a_tokenizer_service_started_after_the_gateway_is_taken_up_without_restart(tmp_path: Path) -> None:
    tokenizer_port = free_port()
    gateway = Gateway(tmp_path, tokenizer_port=tokenizer_port)
    service = None
    try:
        status, ready = gateway.probe("/readyz")
        assert status == 200 and [reason.split(":")[0] for reason in ready["cache_degraded"]] == ["tokenizer remote"]
        assert_degraded(gateway)
        mark = len(gateway.server.lines)
        service = Running("-c", str(gateway.config), "tokenizer", "serve", "--port", str(tokenizer_port))
        gateway.server.wait_for("counting resumes", timeout=30, start=mark)
        assert gateway.probe("/readyz") == (200, {"status": "ready", "catalog": "loaded", "cache_degraded": []})
        assert_caches(gateway)
    finally:
        gateway.stop()
        if service is not None:
            service.stop()
    assert gateway.degraded_rows() == [True, False, False]


def test_an_index_file_that_cannot_be_created_is_retried_until_it_can(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the index's folder should be")
    gateway = Gateway(tmp_path, index_url=f"sqlite:///{blocked / 'cache-index.db'}")
    try:
        status, ready = gateway.probe("/readyz")
        assert status == 200 and [reason.split(":")[0] for reason in ready["cache_degraded"]] == ["cache index"]
        assert_degraded(gateway)
        mark = len(gateway.server.lines)
        blocked.unlink()
        gateway.server.wait_for("cache index connected", timeout=30, start=mark)
        assert_caches(gateway)
    finally:
        gateway.stop()
    assert gateway.degraded_rows() == [True, False, False]


@pytest.mark.postgres
def test_a_control_store_down_at_start_is_answered_503_until_it_returns(
    tmp_path: Path, relay: tuple[TcpRelay, str]
) -> None:
    proxy, store_url = relay
    unchecked = "sk-cannot-be-checked-yet"
    gateway = Gateway(tmp_path, store_url=store_url, key=unchecked)
    try:
        assert gateway.probe("/healthz") == (200, {"status": "ok"})
        status, ready = gateway.probe("/readyz")
        assert status == 503 and ready["status"] == "not_ready"

        # Every key is refused with 503, in the client's dialect: neither a pass nor a 401.
        with pytest.raises(openai.APIStatusError) as chat:
            gateway.ask()
        assert chat.value.status_code == 503 and chat.value.code == "control_store_unavailable"
        messages = anthropic.Anthropic(base_url=gateway.base_url, api_key=unchecked, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as message:
            messages.messages.create(model="qwen3", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
        assert message.value.status_code == 503
        assert isinstance(message.value.body, dict) and message.value.body["type"] == "error"

        mark = len(gateway.server.lines)
        proxy.start()
        gateway.server.wait_for("catalog loaded", timeout=30, start=mark)
        assert gateway.probe("/readyz")[0] == 200
        gateway.client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=create_key(gateway.config), max_retries=0)
        assert_caches(gateway)
    finally:
        gateway.stop()
    assert asyncio.run(ledger_degraded_flags(store_url)) == [False, False]


async def ledger_degraded_flags(store_url: str) -> list[bool]:
    connection = await asyncpg.connect(store_url)
    try:
        return [row["degraded"] for row in await connection.fetch("SELECT degraded FROM ledger ORDER BY at")]
    finally:
        await connection.close()
