"""A budget across replicas (SPEC §13): two ``cachegate serve`` processes on one PostgreSQL store.

Traffic of one key goes through both at once until both refuse it; then the spend the store holds
is compared with the bound docs/spec.md §13 writes down:

    spend ≤ limit + M · (C + Q · L)

M the largest cost of one request, C the requests of the key in flight at once (the client
threads), Q the requests per second through the other replica, L = ``ledger.flush_interval_seconds``
+ ``budgets.refresh_seconds`` + the time a ledger round and a reload take (a margin here).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from cachegate.store.base import Budget, BudgetPeriod, BudgetSubject
from cachegate.store.keys import hash_secret
from cachegate.store.postgres import PostgresStore

from .demo_server import free_port
from .gateway_process import create_key, serving_replicas
from pg import PgServer

FLUSH_SECONDS = 0.2
REFRESH_SECONDS = 1.0
ROUND_MARGIN_SECONDS = 0.5  # a ledger round and a reload, on a busy two-core machine
THREADS_PER_REPLICA = 3
LIMIT = Decimal("0.03")


def write_config(work: Path, upstream_port: int, store_url: str) -> Path:
    config = work / "cachegate.yaml"
    config.write_text(
        f"""
data_dir: {work / "data"}
control_store_url: "{store_url}"
cache_index_url: "sqlite:///{work / "index.db"}"
catalog_refresh_seconds: {REFRESH_SECONDS}
budgets: {{refresh_seconds: {REFRESH_SECONDS}}}
ledger: {{flush_interval_seconds: {FLUSH_SECONDS}}}
endpoints:
  - {{name: fake, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
models:
  - alias: priced
    endpoint: fake
    upstream_model: m
    tokenizer: qwen3
    input_price: "0.000001"
    output_price: "0.000002"
"""
    )
    return config


async def _set_budget(store_url: str, secret: str) -> str:
    store = await PostgresStore.open(store_url)
    try:
        key = await store.find_api_key(hash_secret(secret))
        assert key is not None
        await store.put_budget(Budget(BudgetSubject.KEY, key.id, BudgetPeriod.TOTAL, LIMIT))
        return key.id
    finally:
        await store.aclose()


async def _stored(store_url: str, key_id: str) -> tuple[Decimal, Decimal, int]:
    """The key's total spend as the store's totals hold it, the largest cost of one request, and the count."""
    store = await PostgresStore.open(store_url)
    try:
        [totals] = [t for t in await store.spend_totals(_now()) if t.key_id == key_id]
        async with store._pool.acquire() as connection:
            row = await connection.fetchrow("SELECT max(cost), count(*) FROM ledger WHERE key_id = $1", key_id)
        return totals.total, row[0], row[1]
    finally:
        await store.aclose()


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.postgres
def test_two_replicas_overshoot_a_budget_by_no_more_than_the_documented_bound(
    tmp_path: Path, pg_server: PgServer
) -> None:
    upstream_port = free_port()
    ports = [free_port(), free_port()]
    store_url = pg_server.create_database()
    folders = [tmp_path / "replica-0", tmp_path / "replica-1"]
    for folder in folders:
        folder.mkdir()
    configs = [write_config(folder, upstream_port, store_url) for folder in folders]
    with serving_replicas(configs, upstream_port, ports):
        secret = create_key(configs[0])
        key_id = asyncio.run(_set_budget(store_url, secret))
        time.sleep(REFRESH_SECONDS * 2)  # every replica's catalog has the budget

        served: Counter[int] = Counter()
        refused: Counter[int] = Counter()
        lock = threading.Lock()

        def traffic(replica: int) -> None:
            client = OpenAI(base_url=f"http://127.0.0.1:{ports[replica]}/v1", api_key=secret, max_retries=0)
            while True:
                try:
                    client.chat.completions.create(
                        model="priced", messages=[{"role": "user", "content": "Name three rivers."}], max_tokens=16
                    )
                except openai.RateLimitError as exc:
                    assert exc.response.json()["error"]["code"] == "budget_exceeded"
                    with lock:
                        refused[replica] += 1
                    return
                with lock:
                    served[replica] += 1

        threads = [
            threading.Thread(target=traffic, args=(replica,)) for replica in (0, 1) for _ in range(THREADS_PER_REPLICA)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - started
        time.sleep(FLUSH_SECONDS * 5)  # the last rows reach the store

        spent, largest, requests = asyncio.run(_stored(store_url, key_id))
        assert requests == sum(served.values())
        assert refused == {0: THREADS_PER_REPLICA, 1: THREADS_PER_REPLICA}  # both replicas trip
        other_replica_rate = max(served.values()) / elapsed
        lag = FLUSH_SECONDS + REFRESH_SECONDS + ROUND_MARGIN_SECONDS
        bound = LIMIT + largest * (len(threads) + Decimal(other_replica_rate) * Decimal(lag))
        print(
            f"budget {LIMIT}: spent {spent} in {requests} requests over {elapsed:.1f} s"
            f" (overshoot {spent - LIMIT}, bound {bound - LIMIT:.6f}; {other_replica_rate:.0f} req/s per replica)"
        )
        assert LIMIT <= spent <= bound
