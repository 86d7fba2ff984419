"""What a request costs (SPEC §10), in decimal arithmetic: money is never a float."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from cachegate.core.types import CacheStats, CacheTariff
from cachegate.core.usage import cap_stats


def price(
    prompt_tokens: int,
    completion_tokens: int,
    stats: CacheStats,
    input_price: Decimal,
    output_price: Decimal,
    tariff: CacheTariff | None,
) -> tuple[Decimal, Decimal]:
    """``(cost, list_cost)`` of a request; prices are per token.

    ``cost = uncached·in + read·in·read_mult + Σ creation_tier·in·write_mult_tier + completion·out``
    with ``uncached = prompt - read - creation``. The split is capped against ``prompt_tokens``
    first (§6.6, idempotent on a split the response already reported), so what is billed is
    what the client was shown and ``uncached`` is never negative. Without a tariff in force
    there is no discount and no surcharge: ``cost == list_cost``.
    """
    output_cost = completion_tokens * output_price
    list_cost = prompt_tokens * input_price + output_cost
    if tariff is None:
        return list_cost, list_cost
    split = cap_stats(stats, prompt_tokens)
    uncached = prompt_tokens - split.read - split.creation
    input_units = (
        uncached
        + split.read * _decimal(tariff.read_multiplier)
        + split.creation_5m * _decimal(tariff.write_multiplier_5m)
        + split.creation_1h * _decimal(tariff.write_multiplier_1h)
        + split.creation_24h * _decimal(tariff.write_multiplier_24h)
    )
    return input_units * input_price + output_cost, list_cost


@lru_cache(maxsize=256)
def _decimal(text: str) -> Decimal:
    """Tariffs hold their multipliers as text; a request is priced with a handful of them."""
    return Decimal(text)
