"""``cachegate serve --workers 2`` as an operator runs it: two gateway processes on one socket, on the
embedded default's SQLite store and index, supervised (SPEC §1; src/cachegate/workers.py).

Every request goes on a connection of its own, so the kernel may hand any of them to either worker:
what one wrote the next reads, whichever served it; ``/metrics`` adds up both workers' counters; a
worker that dies is started again; SIGTERM stops both and every billed row is in the store.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from .demo_server import free_port
from .gateway_process import Running, cached_model_config, create_key

FLOOR = 1024
ROUNDS = 6


@pytest.fixture
def served(tmp_path: Path) -> Any:
    upstream_port, port = free_port(), free_port()
    config = cached_model_config(tmp_path, upstream_port, FLOOR, "metrics: {require_admin_key: false}")
    upstream = Running("-c", str(config), "fake-upstream", "--port", str(upstream_port))
    gateway = Running("-c", str(config), "serve", "--port", str(port), "--workers", "2")
    try:
        upstream.wait_for("fake upstream listening")
        for worker in range(2):
            gateway.wait_for(rf"worker {worker} started \(pid \d+\)")
        wait_for_count(gateway, "Application startup complete", 2)
        yield config, port, gateway
    finally:
        gateway.stop()
        upstream.stop()


def wait_for_count(process: Running, pattern: str, count: int, timeout: float = 60.0) -> None:
    """Until ``pattern`` has been printed ``count`` times (once per worker, say)."""
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, process.output)) < count:
        if process.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{pattern!r} not printed {count} times:\n{process.output}")
        time.sleep(0.05)


def worker_pids(gateway: Running) -> dict[int, int]:
    """The latest pid of each worker slot, from the supervisor's log."""
    pids: dict[int, int] = {}
    for match in re.finditer(r"worker (\d+) started \(pid (\d+)\)", gateway.output):
        pids[int(match[1])] = int(match[2])
    return pids


def one_shot(port: int, key: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One request on a fresh connection: nothing ties it to the worker of the previous one."""
    with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) as client:  # its own pool
        usage = client.chat.completions.create(model="qwen3", messages=messages).usage  # type: ignore[arg-type]
    assert usage is not None
    return dict(usage.model_extra or {})


def marked_conversation() -> list[dict[str, Any]]:
    policy = f"[conversation {uuid.uuid4()}] " + " ".join(f"clause {i}: answer briefly." for i in range(400))
    return [
        {"role": "system", "content": [{"type": "text", "text": policy, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "Hello"},
    ]


def test_two_workers_serve_one_cache_and_one_metrics_page(served: Any) -> None:
    config, port, gateway = served
    key = create_key(config)
    pids = worker_pids(gateway)
    assert len(pids) == 2 and len(set(pids.values())) == 2 and os.getpid() not in pids.values()

    for _ in range(ROUNDS):
        messages = marked_conversation()
        written = one_shot(port, key, messages)
        read = one_shot(port, key, messages)
        assert written["cache_creation_input_tokens"] > FLOOR and written["cache_read_input_tokens"] == 0, written
        assert read["cache_read_input_tokens"] == written["cache_creation_input_tokens"], read

    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    served_ok = re.search(r'cachegate_requests_total\{route="chat",status="2xx"\} (\S+)', page)
    assert served_ok is not None and float(served_ok[1]) == 2 * ROUNDS, page  # both workers' requests


def test_a_worker_that_dies_is_started_again(served: Any) -> None:
    config, port, gateway = served
    key = create_key(config)
    before = worker_pids(gateway)
    seen = len(gateway.lines)

    os.kill(before[0], signal.SIGKILL)
    gateway.wait_for(r"worker 0 \(pid \d+\) exited with status -9; starting it again", start=seen)
    restarted = gateway.wait_for(r"worker 0 started \(pid (\d+)\)", start=seen)
    wait_for_count(gateway, "Application startup complete", 3)

    assert int(restarted[1]) != before[0]
    for _ in range(4):
        assert one_shot(port, key, marked_conversation())["cache_creation_input_tokens"] > FLOOR


def test_sigterm_stops_every_worker_and_every_row_is_billed(served: Any) -> None:
    config, port, gateway = served
    key = create_key(config)
    for _ in range(ROUNDS):
        one_shot(port, key, marked_conversation())
    pids = worker_pids(gateway)

    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(60) == 0

    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    for pid in pids.values():
        assert f"(pid {pid}) stopped\n" in gateway.output  # after draining, as asked
        assert f"Finished server process [{pid}]" in gateway.output
    with sqlite3.connect(config.parent / "data" / "control.db") as db:
        billed = db.execute("SELECT count(*) FROM ledger WHERE status = 200").fetchone()[0]
    assert billed == ROUNDS
