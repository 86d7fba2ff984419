"""Request cost in decimal arithmetic (SPEC §10)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.pricing import price
from cachegate.core.types import CacheStats, CacheTariff

from .bodies import PROPERTY

IN, OUT = Decimal("0.00001"), Decimal("0.00003")


def test_the_reference_worked_example() -> None:
    # prompt 2000 = read 1000 + 1h creation 500 + uncached 500; completion 500
    cost, list_cost = price(2000, 500, CacheStats(read=1000, creation_1h=500), IN, OUT, CacheTariff())
    assert cost == Decimal("0.031")  # 0.005 uncached + 0.001 read + 0.010 write + 0.015 output
    assert list_cost == Decimal("0.035")


def test_without_a_tariff_cost_is_the_list_price() -> None:
    cost, list_cost = price(2000, 500, CacheStats(read=1000, creation_1h=500), IN, OUT, None)
    assert cost == list_cost == Decimal("0.035")


def test_each_tier_has_its_multiplier() -> None:
    tariff = CacheTariff(
        write_multiplier_5m="1.25",
        write_multiplier_1h="2",
        write_multiplier_24h="3",
        read_multiplier="0",
    )
    one = Decimal(1)
    assert price(100, 0, CacheStats(creation_5m=100), one, one, tariff)[0] == Decimal("125")
    assert price(100, 0, CacheStats(creation_1h=100), one, one, tariff)[0] == Decimal("200")
    assert price(100, 0, CacheStats(creation_24h=100), one, one, tariff)[0] == Decimal("300")
    assert price(100, 0, CacheStats(read=100), one, one, tariff)[0] == Decimal("0")


def test_a_split_past_the_prompt_is_billed_as_capped() -> None:
    cost, _ = price(1000, 0, CacheStats(read=1000, creation_5m=200), IN, OUT, CacheTariff())
    assert cost == 1000 * IN * Decimal("0.1")


@PROPERTY
@given(
    st.integers(0, 100_000),
    st.integers(0, 10_000),
    st.builds(CacheStats, *[st.integers(0, 50_000)] * 4),
)
def test_money_is_decimal_and_no_tariff_means_no_discount(
    prompt_tokens: int, completion_tokens: int, stats: CacheStats
) -> None:
    cost, list_cost = price(prompt_tokens, completion_tokens, stats, IN, OUT, CacheTariff())
    assert isinstance(cost, Decimal) and isinstance(list_cost, Decimal)
    assert cost >= 0
    assert price(prompt_tokens, completion_tokens, stats, IN, OUT, None) == (list_cost, list_cost)
