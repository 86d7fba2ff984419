"""SIGTERM with streams open, and admin commands refused when they name what the config lacks (SPEC §11, §13).

``cachegate serve`` (the demo) as a subprocess: streams open when SIGTERM comes finish within the
drain deadline, and every request has its ledger row by the time the process has exited; streams
longer than the deadline are cut and billed as clients that left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import aiohttp

from .demo_server import free_port, start_demo
from .gateway_process import cachegate

STREAMS = 4


def demo_env(drain_seconds: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    env["CACHEGATE_DEMO__PORT"] = str(free_port())
    env["CACHEGATE_SERVER__SHUTDOWN_DRAIN_SECONDS"] = str(drain_seconds)
    return env


async def streams_through_sigterm(base_url: str, key: str, process: subprocess.Popen[str], pace: float) -> list[bytes]:
    """Open STREAMS streams, SIGTERM the gateway once each has sent its first bytes, read them to their end."""
    await listening(base_url)
    started = asyncio.Barrier(STREAMS + 1)

    async def stream(session: aiohttp.ClientSession, number: int) -> bytes:
        body = {
            "model": "demo",
            "messages": [{"role": "user", "content": f"hello {number}"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"authorization": f"Bearer {key}", "x-fake-behavior": f"cached={number},chunks=10,pace={pace}"}
        received = b""
        async with session.post(f"{base_url}/chat/completions", json=body, headers=headers) as response:
            received += await response.content.readany()
            await started.wait()
            try:
                async for chunk in response.content.iter_any():
                    received += chunk
            except aiohttp.ClientPayloadError:
                pass  # cut by the gateway at its drain deadline
        return received

    async def terminate() -> None:
        await started.wait()
        process.send_signal(signal.SIGTERM)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        *received, _ = await asyncio.gather(*(stream(session, number) for number in range(1, STREAMS + 1)), terminate())
    return received


async def listening(base_url: str) -> None:
    """Wait until the gateway accepts connections (uvicorn binds after the application has started)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(base_url.removesuffix("/v1") + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{base_url} never accepted a connection")


def ledger(folder: Path) -> list[tuple[int | None, int, str | None]]:
    with sqlite3.connect(folder / "data" / "control.db") as connection:
        return list(connection.execute("SELECT upstream_cached_tokens, status, disconnect FROM ledger"))


def test_sigterm_lets_open_streams_finish_and_bills_each_before_exiting(tmp_path: Path) -> None:
    started = start_demo(tmp_path, demo_env(drain_seconds=30), free_port())

    received = asyncio.run(streams_through_sigterm(started.base_url, started.key, started.process, pace=0.2))

    assert started.process.wait(30) == -signal.SIGTERM  # uvicorn ends by the signal it was stopped with
    assert all(b"data: [DONE]" in stream for stream in received)
    assert sorted(ledger(tmp_path)) == [(number, 200, None) for number in range(1, STREAMS + 1)]
    assert list((tmp_path / "data" / "ledger-journal").glob("*.journal")) == []


def test_streams_past_the_drain_deadline_are_cut_and_billed_as_clients_that_left(tmp_path: Path) -> None:
    started = start_demo(tmp_path, demo_env(drain_seconds=0.5), free_port())

    received = asyncio.run(streams_through_sigterm(started.base_url, started.key, started.process, pace=2.0))

    assert started.process.wait(30) == -signal.SIGTERM
    assert not any(b"data: [DONE]" in stream for stream in received)
    assert sorted(ledger(tmp_path)) == [(None, 499, "counted")] * STREAMS


def test_model_add_refuses_a_tokenizer_the_config_does_not_have(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    add = ["model", "add", "m", "--endpoint", "demo", "--upstream-model", "x"]

    refused = subprocess.run(
        cachegate(*add, "--tokenizer", "llama3"), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    ttl = subprocess.run(
        cachegate(*add, "--automatic-caching", "24h"), cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert refused.returncode == 2
    assert "unknown tokenizer 'llama3': the configuration has qwen3" in refused.stderr
    assert ttl.returncode == 2
    assert "--automatic-caching 24h is not an accepted TTL: the configuration accepts 5m, 1h" in ttl.stderr
    assert not (tmp_path / "data" / "control.db").exists()  # refused before the store was opened
