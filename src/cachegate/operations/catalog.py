"""What the gateway routes and prices by: endpoints, models and their cache tariffs (SPEC §10).

A model names a tokenizer, and may name a TTL for automatic caching; both must be ones the
configuration has (``model_fits``), or every request to the model would fail later. An
endpoint's upstream key is a secret: listings say only whether one is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from cachegate.config import Config
from cachegate.core.types import CacheTariff, TtlTier
from cachegate.operations.checks import (
    ALIAS_PATTERN,
    NAME_PATTERN,
    InvalidArgument,
    check_count,
    check_decimal,
    check_http_url,
    check_name,
    check_secret,
)
from cachegate.store.base import ControlStore, Endpoint, Model, NotFound, TariffVersion
from cachegate.store.values import decimal_text, utcnow


@dataclass(frozen=True, slots=True)
class ModelView:
    model: Model
    caching: bool  # whether a cache tariff is in force now


def upstream_key_state(endpoint: Endpoint) -> str:
    """Whether an upstream key is set ("set" or "none"); the key itself is never shown."""
    return "set" if endpoint.api_key else "none"


async def put_endpoint(store: ControlStore, name: str, base_url: str, api_key: str | None = None) -> Endpoint:
    """Add the endpoint, or replace the one of that name."""
    endpoint = Endpoint(
        name=check_name(name, "name", NAME_PATTERN),
        base_url=check_http_url(base_url, "base_url"),
        api_key=None if api_key is None else check_secret(api_key, "api_key"),
    )
    await store.put_endpoint(endpoint)
    return endpoint


async def list_endpoints(store: ControlStore) -> list[Endpoint]:
    catalog = await store.load_catalog()
    return sorted(catalog.endpoints.values(), key=lambda e: e.name)


async def get_endpoint(store: ControlStore, name: str) -> Endpoint:
    endpoint = (await store.load_catalog()).endpoints.get(name)
    if endpoint is None:
        raise NotFound(f"endpoint {name!r} does not exist")
    return endpoint


def model_fits(
    config: Config, endpoints: Sequence[str], tokenizer: str, automatic_caching: TtlTier | None
) -> InvalidArgument | None:
    """Why a model with these endpoints, tokenizer and automatic-caching TTL could not be served, or None."""
    if len(set(endpoints)) != len(endpoints):
        return InvalidArgument("endpoint", "endpoint names an endpoint twice")
    if tokenizer not in config.tokenizers:
        known = ", ".join(sorted(config.tokenizers))
        return InvalidArgument("tokenizer", f"unknown tokenizer {tokenizer!r}: the configuration has {known}")
    if automatic_caching is not None and automatic_caching not in config.accepted_ttls:
        accepted = ", ".join(str(tier) for tier in config.accepted_ttls)
        return InvalidArgument(
            "automatic_caching",
            f"automatic_caching {automatic_caching} is not an accepted TTL: the configuration accepts {accepted}",
        )
    return None


async def put_model(store: ControlStore, config: Config, model: Model) -> Model:
    """Add the model, or replace the one of that alias; its endpoints must exist (SPEC §15: requests
    are spread over several by prefix affinity, the first one first)."""
    check_name(model.alias, "alias", ALIAS_PATTERN)
    for endpoint in model.endpoints:
        check_name(endpoint, "endpoint", NAME_PATTERN)
    check_name(model.upstream_model, "upstream_model")
    check_name(model.tokenizer, "tokenizer")
    check_decimal(model.input_price, "input_price")
    check_decimal(model.output_price, "output_price")
    if (problem := model_fits(config, model.endpoints, model.tokenizer, model.automatic_cache_ttl)) is not None:
        raise problem
    await store.put_model(model)
    return model


async def list_models(store: ControlStore) -> list[ModelView]:
    catalog = await store.load_catalog()
    now = utcnow()
    return [
        ModelView(m, catalog.tariff_at(m.alias, now) is not None)
        for m in sorted(catalog.models.values(), key=lambda m: m.alias)
    ]


async def get_model(store: ControlStore, alias: str) -> ModelView:
    catalog = await store.load_catalog()
    model = catalog.models.get(alias)
    if model is None:
        raise NotFound(f"model {alias!r} does not exist")
    return ModelView(model, catalog.tariff_at(alias, utcnow()) is not None)


async def set_tariff(
    store: ControlStore,
    model: str,
    *,
    write_5m: Decimal,
    write_1h: Decimal,
    write_24h: Decimal,
    read: Decimal,
    min_prefix_tokens: int,
) -> TariffVersion:
    """Close the model's tariff in force (if any) and open a new version from now: caching is on."""
    tariff = CacheTariff(
        write_multiplier_5m=decimal_text(check_decimal(write_5m, "write_5m")),
        write_multiplier_1h=decimal_text(check_decimal(write_1h, "write_1h")),
        write_multiplier_24h=decimal_text(check_decimal(write_24h, "write_24h")),
        read_multiplier=decimal_text(check_decimal(read, "read")),
        min_prefix_tokens=check_count(min_prefix_tokens, "min_prefix_tokens", minimum=0),
    )
    return await store.set_cache_tariff(model, tariff)


async def disable_tariff(store: ControlStore, model: str) -> bool:
    """Close the model's tariff in force: caching stops for it. Returns whether there was one."""
    return await store.disable_cache_tariff(model)


async def list_tariffs(store: ControlStore, model: str | None = None) -> list[TariffVersion]:
    """Tariff versions, oldest first: of ``model``, or of every model (by alias)."""
    catalog = await store.load_catalog()
    if model is not None and model not in catalog.models:
        raise NotFound(f"model {model!r} does not exist")
    aliases = sorted(catalog.tariffs) if model is None else [model]
    return [version for alias in aliases for version in catalog.tariffs.get(alias, ())]


def tariff_state(version: TariffVersion, now: datetime) -> str:
    """ "in force", "scheduled" or "ended"."""
    if version.in_force(now):
        return "in force"
    return "scheduled" if now < version.valid_from else "ended"
