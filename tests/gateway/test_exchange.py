"""One request in flight (SPEC §2.5, §8, §10, §11): the classification is awaited only within its deadline,
the usage gets our cache fields (or loses the upstream's), and the ledger row is priced in decimals."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cachegate.core.types import CacheStats, CacheTariff, Classification
from cachegate.gateway.classifier import CacheClassifier
from cachegate.gateway.exchange import Exchange
from cachegate.index.memory import MemoryIndex
from cachegate.store.base import ApiKey, Model

from .doubles import ISSUED, metric

KEY = ApiKey("key_a", "prn_a", b"\x00" * 32, is_admin=False, created_at=ISSUED, revoked_at=None)
MODEL = Model("m", "vllm", "Qwen/Qwen3-32B", "qwen3", Decimal("0.000001"), Decimal("0.000002"))
STARTED_AT = 1_750_000_000.0
DEGRADED = "cachegate_cache_degraded_total"


DEFAULT_TARIFF = CacheTariff()


def exchange(
    *,
    tariff: CacheTariff | None = DEFAULT_TARIFF,
    task: asyncio.Task[Classification] | None = None,
    deadline: float = 5.0,
    elapsed: float = 0.0,
) -> Exchange:
    """An exchange whose request arrived ``elapsed`` seconds ago."""
    return Exchange(
        key=KEY,
        model=MODEL,
        tariff=tariff,
        streaming=False,
        started_at=STARTED_AT,
        started_perf=time.perf_counter() - elapsed,
        classify_deadline=deadline,
        classifier=CacheClassifier(MemoryIndex(), commit_deadline=1.0),
        task=task,
    )


def classified(stats: CacheStats, counted_total: int | None = None) -> asyncio.Task[Classification]:
    async def decided() -> Classification:
        return Classification(stats=stats, counted_total=counted_total)

    return asyncio.create_task(decided())


async def never_decided() -> Classification:
    pending: asyncio.Future[Classification] = asyncio.get_running_loop().create_future()
    return await pending


async def broken() -> Classification:
    raise RuntimeError("a bug in the classification")


def usage(prompt_tokens: int, completion_tokens: int, **upstream_fields: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        **upstream_fields,
    }


# --- classification_result ---------------------------------------------------------------------


async def test_without_a_classification_task_the_result_is_plain_zeros() -> None:
    result = await exchange().classification_result()

    assert result == Classification()


async def test_a_classification_in_time_is_used() -> None:
    stats = CacheStats(read=1000, creation_1h=200)

    result = await exchange(task=classified(stats)).classification_result()

    assert result == Classification(stats=stats)


async def test_a_ready_classification_is_used_even_after_the_deadline() -> None:
    task = classified(CacheStats(read=1000))
    await asyncio.sleep(0)

    result = await exchange(task=task, deadline=1.0, elapsed=60.0).classification_result()

    assert result.stats.read == 1000
    assert not result.degraded


async def test_past_the_deadline_the_result_is_degraded_zeros_and_the_task_cancelled() -> None:
    task = asyncio.create_task(never_decided())
    degraded_before = metric(DEGRADED, reason="deadline")
    late = exchange(task=task, deadline=1.0, elapsed=60.0)

    result = await late.classification_result()

    assert result == Classification.degraded_zeros()
    assert late.degraded
    await asyncio.sleep(0)
    assert task.cancelled()
    assert metric(DEGRADED, reason="deadline") - degraded_before == 1


async def test_a_classification_slower_than_the_deadline_is_given_up() -> None:
    task = asyncio.create_task(never_decided())

    result = await exchange(task=task, deadline=0.02).classification_result()

    assert result == Classification.degraded_zeros()
    await asyncio.sleep(0)
    assert task.cancelled()


async def test_the_result_is_decided_once() -> None:
    task = asyncio.create_task(never_decided())
    late = exchange(task=task, deadline=1.0, elapsed=60.0)
    first = await late.classification_result()

    assert await late.classification_result() is first


async def test_a_classification_that_raised_degrades_whether_done_before_or_awaited() -> None:
    done_first = asyncio.create_task(broken())
    await asyncio.sleep(0)
    awaited = asyncio.create_task(broken())
    degraded_before = metric(DEGRADED, reason="error")

    for task in (done_first, awaited):
        assert await exchange(task=task).classification_result() == Classification.degraded_zeros()

    assert metric(DEGRADED, reason="error") - degraded_before == 2


# --- apply_usage -------------------------------------------------------------------------------


async def test_a_model_without_caching_loses_the_upstreams_cache_fields() -> None:
    uncached = exchange(tariff=None)
    reported = usage(
        100,
        5,
        prompt_tokens_details={"cached_tokens": 64, "audio_tokens": 0},
        cache_read_input_tokens=64,
        prompt_cache_hit_tokens=64,
    )

    await uncached.apply_usage(reported)

    assert reported == usage(100, 5, prompt_tokens_details={"audio_tokens": 0})
    row = uncached.ledger_row()
    assert row.upstream_cached_tokens == 64  # kept for reconciliation, never shown to the client
    assert (row.cache_read_tokens, row.degraded) == (0, False)
    assert row.cost == row.list_cost == 100 * MODEL.input_price + 5 * MODEL.output_price


async def test_a_cached_model_reports_our_split_in_place_of_the_upstreams() -> None:
    cached = exchange(task=classified(CacheStats(read=1000, creation_5m=300, creation_1h=200)))
    reported = usage(2000, 100, prompt_tokens_details={"cached_tokens": 1920})

    await cached.apply_usage(reported)

    assert reported["prompt_tokens_details"] == {"cached_tokens": 1000, "cache_write_tokens": 500}
    assert (reported["cache_read_input_tokens"], reported["cache_creation_input_tokens"]) == (1000, 500)
    assert reported["cache_creation"] == {
        "ephemeral_5m_input_tokens": 300,
        "ephemeral_1h_input_tokens": 200,
        "ephemeral_24h_input_tokens": 0,
    }
    assert "cache_degraded" not in reported
    assert cached.upstream_cached == 1920


# --- ledger_row --------------------------------------------------------------------------------


async def test_the_ledger_row_is_priced_with_the_tariff_in_decimals() -> None:
    cached = exchange(task=classified(CacheStats(read=1000, creation_5m=300, creation_1h=200)))
    cached.status = 200
    await cached.apply_usage(usage(2000, 100))

    row = cached.ledger_row()

    # uncached 500 + read 1000·0.1 + 5m 300·1.25 + 1h 200·2.0 = 1375 input units
    assert row.cost == Decimal("0.001375") + Decimal("0.0002")
    assert row.list_cost == Decimal("0.002") + Decimal("0.0002")
    assert isinstance(row.cost, Decimal) and isinstance(row.list_cost, Decimal)
    assert (row.prompt_tokens, row.completion_tokens) == (2000, 100)
    assert (row.cache_read_tokens, row.cache_creation_5m_tokens, row.cache_creation_1h_tokens) == (1000, 300, 200)
    assert (row.principal_id, row.key_id, row.model, row.status) == ("prn_a", "key_a", "m", 200)
    assert row.at == datetime.fromtimestamp(STARTED_AT, UTC)
    assert not row.degraded


async def test_the_ledger_keeps_our_prompt_count_when_the_prompt_was_counted() -> None:
    counted = exchange(task=classified(CacheStats(creation_1h=1500), counted_total=1990))
    await counted.apply_usage(usage(2000, 10))
    looked_up = exchange(task=classified(CacheStats(read=1500)))
    await looked_up.apply_usage(usage(2000, 10))

    assert counted.ledger_row().counted_prompt_tokens == 1990
    assert looked_up.ledger_row().counted_prompt_tokens is None  # a pure read renders nothing


async def test_the_ledger_bills_the_split_as_capped_for_the_client() -> None:
    cached = exchange(task=classified(CacheStats(read=1000, creation_5m=500)))
    reported = usage(1200, 0)

    await cached.apply_usage(reported)
    row = cached.ledger_row()

    assert reported["cache_creation_input_tokens"] == 200
    assert (row.cache_read_tokens, row.cache_creation_5m_tokens) == (1000, 200)
    assert row.cost == (Decimal(1000) * Decimal("0.1") + Decimal(200) * Decimal("1.25")) * MODEL.input_price


async def test_a_degraded_classification_flags_the_usage_and_the_ledger_row() -> None:
    degraded = exchange(task=asyncio.create_task(broken()))
    reported = usage(2000, 100, prompt_tokens_details={"cached_tokens": 1920})

    await degraded.apply_usage(reported)
    row = degraded.ledger_row()

    assert reported["cache_degraded"] is True
    assert (reported["cache_read_input_tokens"], reported["cache_creation_input_tokens"]) == (0, 0)
    assert row.degraded
    assert (row.cache_read_tokens, row.cache_creation_5m_tokens) == (0, 0)
    assert row.cost == row.list_cost  # an outage never bills a surcharge


# --- a client that left (SPEC §11) ---------------------------------------------------------------


async def test_a_client_that_left_is_billed_the_drained_usage_with_its_reads_and_no_write() -> None:
    split = CacheStats(read=600, creation_5m=300)
    gone = exchange(task=classified(split, counted_total=1000))
    gone.status = 200

    await gone.client_left(usage(1002, 40))
    row = gone.ledger_row()

    assert (row.disconnect, row.status, row.prompt_tokens, row.completion_tokens) == ("drained", 499, 1002, 40)
    assert (row.cache_read_tokens, row.cache_creation_5m_tokens) == (600, 0)


async def test_without_the_upstreams_usage_the_prompt_is_our_count_and_the_completion_what_was_relayed() -> None:
    gone = exchange(task=classified(CacheStats(), counted_total=1000))
    gone.status = 200
    gone.relayed_tokens = 7

    await gone.client_left(None)
    row = gone.ledger_row()

    assert (row.disconnect, row.prompt_tokens, row.completion_tokens) == ("counted", 1000, 7)
    assert row.cost == Decimal("0.000001") * 1000 + Decimal("0.000002") * 7


async def test_without_a_classification_the_prompt_is_counted_on_demand() -> None:
    gone = exchange(tariff=None)
    gone.status = 200

    async def count() -> int:
        return 321

    gone.count_prompt = count
    await gone.client_left(None)

    assert (gone.ledger_row().prompt_tokens, gone.ledger_row().disconnect) == (321, "counted")


async def test_a_client_that_left_a_refused_request_is_billed_as_the_upstream_answered() -> None:
    gone = exchange(tariff=None)
    gone.status = 503
    gone.relayed_tokens = 3

    await gone.client_left(None)
    row = gone.ledger_row()

    assert (row.status, row.prompt_tokens, row.completion_tokens, row.disconnect) == (503, 0, 0, None)
