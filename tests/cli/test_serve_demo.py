"""A new user's first minutes: ``cachegate serve`` with no config, then the same marked prompt twice."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from openai import OpenAI

POLICY = " ".join(f"Rule {i}: keep answers short, kind and exact." for i in range(150))
MESSAGES = [
    {
        "role": "system",
        "content": [{"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    },
    {"role": "user", "content": "Hello"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_demo(folder: Path) -> Iterator[tuple[str, str]]:
    """``cachegate serve`` in ``folder`` with no config; yields its base URL and demo key."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    env["CACHEGATE_DEMO__PORT"] = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "cachegate", "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = ""
    deadline = time.monotonic() + 60
    while "Application startup complete" not in output:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"cachegate serve exited early:\n{output}")
        output += line
        assert time.monotonic() < deadline, output
    key = re.search(r"API key\s*:\s*(cg-\S+)", output)
    base_url = re.search(r"base URL\s*:\s*(\S+)", output)
    assert key and base_url, output
    try:
        yield base_url.group(1), key.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130  # a clean shutdown on Ctrl-C, with the conventional status


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
