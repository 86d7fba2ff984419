"""Read-your-writes across replicas (SPEC §7.4): three ``cachegate serve`` processes on one
PostgreSQL control store and one shared cache index (PostgreSQL, then Redis). What one replica
wrote is read by another at once: a write through one, an immediate read through the next, in a loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from .demo_server import free_port
from .gateway_process import cached_model_config, create_key, serving_replicas
from pg import PgServer
from redis_server import RedisServer

REPLICAS = 3
ROUNDS = 12
FLOOR = 1024


def policy(words: int = 2000) -> str:
    """A system prompt above the floor that no other round sends."""
    return f"[round {uuid.uuid4()}] " + " ".join(f"clause {i}: reply in full sentences." for i in range(words // 5))


@pytest.fixture(params=["postgres", pytest.param("redis", marks=pytest.mark.redis)])
def index_url(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[str]:
    if request.param == "postgres":
        yield pg_server.create_database()
        return
    redis: RedisServer = request.getfixturevalue("redis_server")
    prefix = redis.fresh_prefix()
    yield redis.index_url(prefix)
    redis.drop(prefix)


@pytest.mark.postgres
def test_what_one_replica_writes_another_reads_at_once(tmp_path: Path, pg_server: PgServer, index_url: str) -> None:
    upstream_port = free_port()
    ports = [free_port() for _ in range(REPLICAS)]
    folders = [tmp_path / f"replica-{n}" for n in range(REPLICAS)]
    store_url = pg_server.create_database()
    for folder in folders:
        folder.mkdir()
    configs = [
        cached_model_config(
            folder, upstream_port, FLOOR, f'control_store_url: "{store_url}"\ncache_index_url: "{index_url}"'
        )
        for folder in folders
    ]
    with serving_replicas(configs, upstream_port, ports):
        key = create_key(configs[0])
        clients = [OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) for port in ports]
        for round_ in range(ROUNDS):
            writer, reader = clients[round_ % REPLICAS], clients[(round_ + 1) % REPLICAS]
            messages = marked(policy())
            written = usage_of(writer, messages)
            read = usage_of(reader, messages)
            assert written["cache_creation_input_tokens"] > FLOOR and written["cache_read_input_tokens"] == 0, written
            assert read["cache_read_input_tokens"] == written["cache_creation_input_tokens"], f"round {round_}"
            assert read["cache_creation_input_tokens"] == 0


def marked(text: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "Hello"},
    ]


def usage_of(client: OpenAI, messages: list[dict[str, Any]]) -> dict[str, Any]:
    usage = client.chat.completions.create(model="qwen3", messages=messages).usage  # type: ignore[arg-type]
    assert usage is not None
    return dict(usage.model_extra or {})
