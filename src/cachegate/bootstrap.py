"""Open the ports a configuration names and wire them into a Gateway.

The configuration's endpoints and models (and a model's initial cache tariff) are seeded into
the control store, which stays the source of truth at run time; the CLI edits the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.config import DEMO_MODEL, Config, ConfigError, ModelConfig
from cachegate.gateway.app import Gateway
from cachegate.index.factory import open_index
from cachegate.index.reconnecting import ReconnectingIndex
from cachegate.store.base import ControlStore, Endpoint, NotFound
from cachegate.store.factory import open_store
from cachegate.store.reconnecting import ReconnectingStore
from cachegate.tokens.base import TokenCounter, TokenizerLoadError
from cachegate.tokens.registry import open_counter
from cachegate.upstream.httptools_client import HttptoolsUpstream

DEMO_PRINCIPAL = "demo"


@dataclass(frozen=True, slots=True)
class DemoAccess:
    base_url: str
    model: str
    secret: str


async def open_counters(config: Config) -> dict[str, TokenCounter]:
    """Every configured token counter: local files loaded, remote services asked for their version.

    A tokenizer whose files cannot be loaded is a ``TokenizerLoadError`` naming its setting
    (``tokenizers.NAME: ...``); the counters opened before it are closed first.
    """
    counters: dict[str, TokenCounter] = {}
    try:
        for name, spec in config.tokenizers.items():
            try:
                counters[name] = await open_counter(spec)
            except TokenizerLoadError as exc:
                raise TokenizerLoadError(f"tokenizers.{name}: {exc}") from exc
    except BaseException:
        await close_counters(counters)
        raise
    return counters


async def close_counters(counters: dict[str, TokenCounter]) -> None:
    for counter in counters.values():
        await counter.aclose()


async def open_gateway(config: Config, counters: dict[str, TokenCounter] | None = None) -> Gateway:
    """Open the store, the index and the upstream client, and wire them into a Gateway.

    Neither the control store nor the cache index is a start-up dependency (SPEC §11): a backend
    that cannot be reached is opened in the background while the gateway runs, answering 503 until
    the store is there (``store/reconnecting.py``) and serving uncached until the index is
    (``index/reconnecting.py``). The store is migrated and seeded each time it is opened.
    """
    try:
        store = await ReconnectingStore.open(lambda: open_store(config.store_url), lambda new: prepare(new, config))
    except ValueError as exc:  # the URL itself: retrying would not help
        raise ConfigError(f"invalid configuration: control_store_url: {exc}") from exc
    try:
        index = await ReconnectingIndex.open(
            lambda: open_index(config.index_url, retention=config.miss_retention_seconds)
        )
    except BaseException as exc:
        await store.aclose()
        if isinstance(exc, ValueError):
            raise ConfigError(f"invalid configuration: cache_index_url: {exc}") from exc
        raise
    upstream = HttptoolsUpstream(
        connect_timeout=config.deadlines.upstream_connect_seconds,
        read_timeout=config.deadlines.upstream_read_seconds,
    )
    return Gateway(config, store, index, counters or await open_counters(config), upstream)


async def prepare(store: ControlStore, config: Config) -> None:
    """Bring a freshly opened store's schema up to date and seed it from the configuration."""
    await store.migrate()
    await seed_store(store, config)


async def seed_store(store: ControlStore, config: Config) -> None:
    for endpoint in config.endpoints:
        await store.put_endpoint(endpoint.to_endpoint())
    models: list[ModelConfig] = list(config.models)
    if config.demo.enabled:
        await store.put_endpoint(Endpoint("demo", f"http://127.0.0.1:{config.demo.port}/v1", None))
        models.append(DEMO_MODEL)
    catalog = await store.load_catalog()
    for model in models:
        await store.put_model(model.to_model())
        if model.cache is not None and not catalog.tariffs.get(model.alias):
            await store.set_cache_tariff(model.alias, model.cache.to_tariff())


async def create_demo_key(store: ControlStore, gateway_url: str) -> DemoAccess:
    """A fresh key for the demo principal; the secret exists only in what this returns."""
    try:
        principal = await store.get_principal(DEMO_PRINCIPAL)
    except NotFound:
        principal = await store.create_principal(DEMO_PRINCIPAL)
    _, secret = await store.create_api_key(principal.id)
    return DemoAccess(base_url=f"{gateway_url}/v1", model=DEMO_MODEL.alias, secret=secret)
