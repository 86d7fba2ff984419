"""The catalog cache (SPEC §11): routing and pricing never wait on the control store, and a failed reload
keeps the last good catalog."""

from __future__ import annotations

from decimal import Decimal
from typing import cast

from cachegate.gateway.catalog import CatalogCache
from cachegate.store.base import Catalog, ControlStore, Endpoint, Model, StoreUnavailable

from .doubles import CatalogStore, eventually

INTERVAL = 0.005


def catalog_with(*aliases: str) -> Catalog:
    price = Decimal("0.000001")
    return Catalog(
        endpoints={"vllm": Endpoint("vllm", "http://10.0.0.5:8000/v1", None)},
        models={alias: Model(alias, "vllm", alias, "qwen3", price, price) for alias in aliases},
        tariffs={},
    )


def cache_for(store: CatalogStore) -> CatalogCache:
    return CatalogCache(cast(ControlStore, store), refresh_seconds=INTERVAL)


async def test_load_replaces_the_empty_catalog() -> None:
    first = catalog_with("m1")
    cache = cache_for(CatalogStore(first))
    assert cache.current.models == {}

    await cache.load()

    assert cache.current is first


async def test_a_failed_reload_keeps_the_last_good_catalog_until_the_store_returns() -> None:
    first, second = catalog_with("m1"), catalog_with("m1", "m2")
    store = CatalogStore(first)
    cache = cache_for(store)
    await cache.load()
    store.failure = StoreUnavailable("control store: connection refused")
    await cache.start()
    try:
        await eventually(lambda: store.loads >= 4)  # several reloads failed
        assert cache.current is first

        store.catalog, store.failure = second, None
        await eventually(lambda: cache.current is second)
    finally:
        await cache.stop()


async def test_stop_ends_the_reloads() -> None:
    store = CatalogStore(catalog_with("m1"))
    cache = cache_for(store)
    await cache.start()
    await eventually(lambda: store.loads >= 1)

    await cache.stop()
    loads = store.loads
    await cache.stop()  # idempotent

    assert store.loads == loads


async def test_reloads_survive_an_unexpected_store_error() -> None:
    first, second = catalog_with("m1"), catalog_with("m1", "m2")
    store = CatalogStore(first)
    cache = cache_for(store)
    store.failure = ValueError("a row the store could not decode")
    await cache.start()
    try:
        await eventually(lambda: store.loads >= 1)
        store.catalog, store.failure = second, None
        await eventually(lambda: cache.current is second)
    finally:
        await cache.stop()


async def test_a_store_down_at_start_is_waited_for_then_reloaded_from() -> None:
    first, second = catalog_with("m1"), catalog_with("m1", "m2")
    store = CatalogStore(first)
    store.failure = StoreUnavailable("control store: connection refused")
    cache = cache_for(store)
    await cache.start()  # does not raise: the gateway starts and answers 503 meanwhile
    try:
        assert not cache.loaded and cache.current.models == {}
        await eventually(lambda: store.loads >= 2)  # tried again in the background
        assert not cache.loaded
        store.failure = None
        await eventually(lambda: cache.loaded)
        assert cache.current is first
        store.catalog = second
        await eventually(lambda: cache.current is second)  # then reloaded periodically
    finally:
        await cache.stop()
