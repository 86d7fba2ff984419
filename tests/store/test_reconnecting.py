"""The reconnecting control store: the gateway starts without it, every call fails fast while it is
missing, and once it answers it is prepared (migrated, seeded) before anything uses it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cachegate.core.budgets import KeyTotals
from cachegate.store.base import ControlStore, LedgerRow, StoreUnavailable
from cachegate.store.factory import open_store
from cachegate.store.reconnecting import ReconnectingStore

from pg import PgServer

GIVE_UP_AFTER = 10.0


async def until_connected(store: ReconnectingStore) -> None:
    async with asyncio.timeout(GIVE_UP_AFTER):
        while not store.connected:
            await asyncio.sleep(0.005)


async def migrated(store: ControlStore) -> None:
    await store.migrate()


async def test_a_store_that_cannot_be_created_fails_fast_then_is_opened_and_prepared(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the database's folder should be")
    url = f"sqlite:///{blocked / 'control.db'}"
    prepared: list[ControlStore] = []

    async def prepare(store: ControlStore) -> None:
        await store.migrate()
        prepared.append(store)

    store = await ReconnectingStore.open(lambda: open_store(url), prepare, min_backoff=0.01, max_backoff=0.02)
    try:
        assert not store.connected and "cannot create the directory" in (store.last_error or "")
        with pytest.raises(StoreUnavailable, match="not connected yet"):
            await store.find_api_key(b"h" * 32)
        assert prepared == []
        blocked.unlink()
        await until_connected(store)
        assert len(prepared) == 1
        principal = await store.create_principal("acme")
        assert [p.id for p in await store.list_principals()] == [principal.id]
    finally:
        await store.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.list_principals()


async def test_a_store_that_opens_but_cannot_be_prepared_is_closed_and_tried_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    attempts: list[ControlStore] = []

    async def prepare(store: ControlStore) -> None:
        attempts.append(store)
        if len(attempts) < 3:
            raise StoreUnavailable("the schema is locked by another process")
        await store.migrate()

    store = await ReconnectingStore.open(lambda: open_store(url), prepare, min_backoff=0.01, max_backoff=0.01)
    try:
        await until_connected(store)
        assert len(attempts) == 3
        for closed in attempts[:2]:  # the stores that failed their preparation were closed
            with pytest.raises(RuntimeError, match="after shutdown"):  # its worker thread is gone
                await closed.list_principals()
        assert await store.list_principals() == []
    finally:
        await store.aclose()


async def test_a_configuration_error_is_raised_not_retried() -> None:
    with pytest.raises(ValueError, match="unsupported control store URL"):
        await ReconnectingStore.open(lambda: open_store("mysql://db/x"), migrated)


@pytest.mark.postgres
async def test_a_postgres_database_created_after_start_is_picked_up(pg_server: PgServer) -> None:
    url = pg_server.database_url()
    store = await ReconnectingStore.open(lambda: open_store(url), migrated, min_backoff=0.05, max_backoff=0.1)
    try:
        assert not store.connected and "does not exist" in (store.last_error or "")
        pg_server.create_database(url)
        await until_connected(store)
        await store.create_principal("acme")
        assert [p.name for p in await store.list_principals()] == ["acme"]
    finally:
        await store.aclose()


async def test_spend_totals_are_read_through_once_connected(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    at = datetime(2026, 12, 2, 9, tzinfo=UTC)
    row = LedgerRow(at, "prn_a", "key_a", "m", 200, False, 10, 5, 0, 0, 0, 0, None, Decimal("0.5"), None, 1.0, False)
    store = await ReconnectingStore.open(lambda: open_store(url), migrated)
    try:
        await until_connected(store)
        await store.append_ledger([row])
        assert await store.spend_totals(at) == [KeyTotals("prn_a", "key_a", *(Decimal("0.5"),) * 3)]
    finally:
        await store.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.spend_totals(at)
