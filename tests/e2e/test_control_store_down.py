"""SPEC §11, control store down: known keys keep working, unseen keys get 503, ledger rows wait."""

from __future__ import annotations

import time

import openai
import pytest
from openai import OpenAI

from harness import GatewayHarness
from store.rawdb import query


def client(gateway: GatewayHarness, key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def ask(gateway: GatewayHarness, key: str) -> None:
    client(gateway, key).chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])


def ledger_requests(gateway: GatewayHarness) -> int:
    """The rows the ledger holds: read from the database itself, not through the (faulty) store."""
    [(count,)] = gateway.call(query(gateway.config.store_url, "SELECT count(*) FROM ledger"))
    return int(count)  # type: ignore[call-overload]


def test_store_outage_keeps_known_keys_refuses_unseen_ones_and_loses_no_ledger_row(gateway: GatewayHarness) -> None:
    async def new_key() -> str:
        principal = await gateway.store.inner.get_principal("tenant-a")
        return (await gateway.store.inner.create_api_key(principal.id))[1]

    unseen = gateway.call(new_key())
    ask(gateway, gateway.keys.a)  # seen: now resolved from memory
    deadline = time.monotonic() + 10
    while ledger_requests(gateway) == 0 or gateway.gateway.ledger.buffered:
        assert time.monotonic() < deadline, "the ledger writer never flushed"
        time.sleep(0.1)
    before = ledger_requests(gateway)

    gateway.store.down = True
    for _ in range(3):
        ask(gateway, gateway.keys.a)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(gateway, unseen)
    assert caught.value.status_code == 503
    time.sleep(1.5)  # a flush attempt fails meanwhile; the rows stay buffered
    assert gateway.gateway.ledger.buffered >= 3

    gateway.store.down = False
    deadline = time.monotonic() + 10
    while gateway.gateway.ledger.buffered:
        assert time.monotonic() < deadline, "buffered ledger rows were never written"
        time.sleep(0.1)
    assert ledger_requests(gateway) == before + 3
    ask(gateway, unseen)  # and the new key works once the store is back
