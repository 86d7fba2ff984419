"""A new user's first minutes: ``cachegate serve`` with no config, then the same marked prompt twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from openai import OpenAI

from .demo_server import running_demo

POLICY = " ".join(f"Rule {i}: keep answers short, kind and exact." for i in range(150))
MESSAGES = [
    {
        "role": "system",
        "content": [{"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    },
    {"role": "user", "content": "Hello"},
]


def test_a_fresh_demo_writes_then_reads(tmp_path: Path) -> None:
    with running_demo(tmp_path) as (base_url, key):
        client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
        first, second = (client.chat.completions.create(model="demo", messages=MESSAGES).usage for _ in range(2))
    assert first is not None and second is not None
    extra_first, extra_second = first.model_extra or {}, second.model_extra or {}
    assert extra_first["cache_creation_input_tokens"] > 1024 and extra_first["cache_read_input_tokens"] == 0
    assert extra_second["cache_read_input_tokens"] == extra_first["cache_creation_input_tokens"]
    assert extra_second["cache_creation_input_tokens"] == 0
    assert (tmp_path / "data" / "control.db").exists() and (tmp_path / "data" / "cache-index.db").exists()


def test_shutdown_writes_every_ledger_row(tmp_path: Path) -> None:
    with running_demo(tmp_path) as (base_url, key):
        client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    with sqlite3.connect(tmp_path / "data" / "control.db") as connection:
        (rows,) = connection.execute("SELECT count(*) FROM ledger").fetchone()
    assert rows == 3
