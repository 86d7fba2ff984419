"""The ControlStore contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from cachegate.core.budgets import KeyTotals
from cachegate.core.types import CacheTariff
from cachegate.store.base import (
    MISS_REASONS,
    Budget,
    BudgetPeriod,
    BudgetSubject,
    Conflict,
    ControlStore,
    Endpoint,
    LedgerRow,
    Model,
    NotFound,
    RateLimit,
    UsageGroup,
    UsageQuery,
)
from cachegate.store.keys import hash_secret
from cachegate.store.statements import SCHEMA

from store.rawdb import everything_stored, execute, query

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


async def add_model(store: ControlStore, alias: str = "m") -> Model:
    await store.put_endpoint(Endpoint("local", "http://127.0.0.1:8000/v1", None))
    model = Model(alias, "local", "qwen3-8b", "qwen3", Decimal("0.0000025"), Decimal("0.00001"))
    await store.put_model(model)
    return model


# principals


async def test_principals_are_found_by_name_or_id_and_listed_by_name(store: ControlStore) -> None:
    zeta = await store.create_principal("zeta")
    acme = await store.create_principal("acme")

    assert await store.get_principal("acme") == acme
    assert await store.get_principal(zeta.id) == zeta
    assert await store.list_principals() == [acme, zeta]
    assert acme.id != zeta.id and acme.created_at.tzinfo is not None


async def test_a_principal_name_is_taken_once(store: ControlStore) -> None:
    await store.create_principal("acme")

    with pytest.raises(Conflict, match="acme"):
        await store.create_principal("acme")
    assert len(await store.list_principals()) == 1


async def test_an_unknown_principal_is_not_found(store: ControlStore) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await store.get_principal("ghost")


# API keys


async def test_a_key_is_found_by_the_hash_of_its_secret(store: ControlStore) -> None:
    acme = await store.create_principal("acme")

    key, secret = await store.create_api_key(acme.id, admin=True)

    assert key.secret_hash == hash_secret(secret)
    assert key.is_admin and key.principal_id == acme.id and key.revoked_at is None
    assert await store.find_api_key(hash_secret(secret)) == key
    assert await store.find_api_key(hash_secret(secret + "x")) is None


async def test_only_the_hash_of_a_secret_is_stored(store: ControlStore, store_url: str) -> None:
    acme = await store.create_principal("acme")

    key, secret = await store.create_api_key(acme.id)
    stored = await everything_stored(store_url)

    assert key.secret_hash in stored or key.secret_hash.hex().encode() in stored  # the dump does see the key
    assert secret.removeprefix("cg-").encode() not in stored


async def test_keys_are_listed_per_principal_without_their_secrets(store: ControlStore) -> None:
    acme = await store.create_principal("acme")
    zeta = await store.create_principal("zeta")
    first, _ = await store.create_api_key(acme.id)
    second, _ = await store.create_api_key(acme.id)
    other, _ = await store.create_api_key(zeta.id)

    assert {k.id for k in await store.list_api_keys(acme.id)} == {first.id, second.id}
    assert {k.id for k in await store.list_api_keys()} == {first.id, second.id, other.id}


async def test_a_key_for_an_unknown_principal_is_refused(store: ControlStore) -> None:
    with pytest.raises(NotFound, match="prn_ghost"):
        await store.create_api_key("prn_ghost")
    assert await store.list_api_keys() == []


async def test_a_revoked_key_is_still_found_with_its_revocation_time(store: ControlStore) -> None:
    acme = await store.create_principal("acme")
    key, secret = await store.create_api_key(acme.id)

    await store.revoke_api_key(key.id)
    revoked = await store.find_api_key(hash_secret(secret))
    await store.revoke_api_key(key.id)

    assert revoked is not None and revoked.revoked_at is not None
    assert revoked.revoked_at >= key.created_at
    assert await store.find_api_key(hash_secret(secret)) == revoked  # the first revocation time stays


async def test_the_catalog_counts_revoked_keys_so_replicas_notice_a_revocation(store: ControlStore) -> None:
    acme = await store.create_principal("acme")
    first, _ = await store.create_api_key(acme.id)
    second, _ = await store.create_api_key(acme.id)
    before = (await store.load_catalog()).revocations

    await store.revoke_api_key(first.id)
    once = (await store.load_catalog()).revocations
    await store.revoke_api_key(first.id)  # again: no change
    again = (await store.load_catalog()).revocations
    await store.revoke_api_key(second.id)

    assert (before, once, again, (await store.load_catalog()).revocations) == (0, 1, 1, 2)


async def test_revoking_an_unknown_key_is_not_found(store: ControlStore) -> None:
    with pytest.raises(NotFound, match="key_ghost"):
        await store.revoke_api_key("key_ghost")


# endpoints and models


async def test_endpoints_and_models_are_upserted(store: ControlStore) -> None:
    model = await add_model(store)
    moved = Endpoint("remote", "https://llm.example/v1", "sk-upstream")
    await store.put_endpoint(moved)
    await store.put_endpoint(replace(moved, base_url="https://llm2.example/v1"))
    repriced = replace(model, endpoint="remote", input_price=Decimal("0.000000123456789"), tokenizer="hf:/models/x")

    await store.put_model(repriced)
    catalog = await store.load_catalog()

    assert catalog.endpoints == {
        "local": Endpoint("local", "http://127.0.0.1:8000/v1", None),
        "remote": Endpoint("remote", "https://llm2.example/v1", "sk-upstream"),
    }
    assert catalog.models == {"m": repriced}
    assert catalog.models["m"].input_price == Decimal("0.000000123456789")
    assert catalog.tariffs == {}


async def test_a_model_needs_an_existing_endpoint(store: ControlStore) -> None:
    with pytest.raises(NotFound, match="nowhere"):
        await store.put_model(Model("m", "nowhere", "x", "qwen3", Decimal(0), Decimal(0)))
    assert (await store.load_catalog()).models == {}


async def test_a_model_lists_several_endpoints_in_order_and_can_drop_them_again(
    store: ControlStore, store_url: str
) -> None:
    model = await add_model(store)
    for name in ("r1", "r2", "r3"):
        await store.put_endpoint(Endpoint(name, f"http://{name}.example/v1", None))
    replicas = model.with_endpoints(["r3", "local", "r1"])

    await store.put_model(replicas)
    loaded = (await store.load_catalog()).models["m"]
    assert loaded == replicas and loaded.endpoints == ("r3", "local", "r1")
    assert (await query(store_url, "SELECT endpoint FROM models"))[0][0] == "r3"  # the first stays in models

    await store.put_model(replicas.with_endpoints(["r2", "r1"]))
    assert (await store.load_catalog()).models["m"].endpoints == ("r2", "r1")
    await store.put_model(replicas.with_endpoints(["local"]))
    assert (await store.load_catalog()).models["m"] == model
    assert await query(store_url, "SELECT model FROM model_endpoints") == []


async def test_every_endpoint_of_a_model_must_exist_and_be_named_once(store: ControlStore) -> None:
    model = await add_model(store)

    with pytest.raises(NotFound, match="nowhere"):
        await store.put_model(model.with_endpoints(["local", "nowhere"]))
    with pytest.raises(ValueError, match="more than once"):
        await store.put_model(model.with_endpoints(["local", "local"]))
    with pytest.raises(ValueError, match="at least one"):
        model.with_endpoints([])
    assert (await store.load_catalog()).models == {"m": model}


async def test_a_negative_price_is_refused(store: ControlStore) -> None:
    model = await add_model(store)

    with pytest.raises(ValueError, match="input_price"):
        await store.put_model(replace(model, input_price=Decimal("-0.1")))
    assert (await store.load_catalog()).models == {"m": model}


# cache tariffs


async def test_setting_a_tariff_twice_keeps_two_versions_one_open(store: ControlStore) -> None:
    await add_model(store)
    cheaper = CacheTariff(read_multiplier="0.05", min_prefix_tokens=2048)

    first = await store.set_cache_tariff("m", CacheTariff(), at=T0)
    second = await store.set_cache_tariff("m", cheaper, at=T0 + timedelta(hours=1))
    versions = (await store.load_catalog()).tariffs["m"]

    assert versions == (replace(first, valid_until=second.valid_from), second)
    assert second.tariff == cheaper and second.valid_until is None


async def test_the_tariff_in_force_at_a_time_is_picked(store: ControlStore) -> None:
    await add_model(store)
    second_tariff = CacheTariff(write_multiplier_5m="1.5")
    await store.set_cache_tariff("m", CacheTariff(), at=T0)
    await store.set_cache_tariff("m", second_tariff, at=T0 + timedelta(hours=1))
    assert await store.disable_cache_tariff("m", at=T0 + timedelta(hours=2))

    catalog = await store.load_catalog()

    assert catalog.tariff_at("m", T0 - timedelta(microseconds=1)) is None
    assert catalog.tariff_at("m", T0) == CacheTariff()
    assert catalog.tariff_at("m", T0 + timedelta(minutes=59)) == CacheTariff()
    assert catalog.tariff_at("m", T0 + timedelta(hours=1)) == second_tariff
    assert catalog.tariff_at("m", T0 + timedelta(hours=2)) is None
    assert all(v.valid_until is not None for v in catalog.tariffs["m"])


async def test_disabling_closes_the_open_version_once(store: ControlStore) -> None:
    await add_model(store)
    await store.set_cache_tariff("m", CacheTariff())

    assert await store.disable_cache_tariff("m") is True
    assert await store.disable_cache_tariff("m") is False
    assert (await store.load_catalog()).tariff_at("m", datetime.now(UTC)) is None


async def test_a_tariff_is_stored_with_its_multipliers_exact(store: ControlStore) -> None:
    await add_model(store)
    tariff = CacheTariff("1.2500", "2", "2.75", "0.0125", 0)

    await store.set_cache_tariff("m", tariff, at=T0)

    assert (await store.load_catalog()).tariff_at("m", T0) == tariff


async def test_a_tariff_for_an_unknown_model_is_not_found(store: ControlStore) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await store.set_cache_tariff("ghost", CacheTariff())
    with pytest.raises(NotFound, match="ghost"):
        await store.disable_cache_tariff("ghost")


@pytest.mark.parametrize(
    "tariff",
    [CacheTariff(read_multiplier="-0.1"), CacheTariff(write_multiplier_1h="two"), CacheTariff(min_prefix_tokens=-1)],
)
async def test_an_invalid_tariff_is_refused(store: ControlStore, tariff: CacheTariff) -> None:
    await add_model(store)

    with pytest.raises(ValueError):
        await store.set_cache_tariff("m", tariff)
    assert (await store.load_catalog()).tariffs == {}


# budgets and rate limits


async def test_budgets_are_set_replaced_listed_and_deleted(store: ControlStore) -> None:
    acme = await store.create_principal("acme")
    key, _ = await store.create_api_key(acme.id)
    monthly = Budget(BudgetSubject.PRINCIPAL, acme.id, BudgetPeriod.MONTH, Decimal("100"))
    daily = Budget(BudgetSubject.KEY, key.id, BudgetPeriod.DAY, Decimal("2.5"))

    await store.put_budget(monthly)
    await store.put_budget(daily)
    await store.put_budget(replace(daily, limit=Decimal("0.0000003")))  # replaces: one per subject and period

    budgets = (await store.load_catalog()).budgets
    assert budgets == (replace(daily, limit=Decimal("0.0000003")), monthly)
    assert await store.delete_budget(BudgetSubject.KEY, key.id, BudgetPeriod.DAY)
    assert not await store.delete_budget(BudgetSubject.KEY, key.id, BudgetPeriod.DAY)
    assert (await store.load_catalog()).budgets == (monthly,)


async def test_a_budget_needs_its_subject_and_a_valid_limit(store: ControlStore) -> None:
    acme = await store.create_principal("acme")

    with pytest.raises(NotFound, match="key_ghost"):
        await store.put_budget(Budget(BudgetSubject.KEY, "key_ghost", BudgetPeriod.TOTAL, Decimal("1")))
    with pytest.raises(NotFound, match=acme.name):  # a principal is named by its id, not its name
        await store.put_budget(Budget(BudgetSubject.PRINCIPAL, acme.name, BudgetPeriod.TOTAL, Decimal("1")))
    with pytest.raises(ValueError):
        await store.put_budget(Budget(BudgetSubject.PRINCIPAL, acme.id, BudgetPeriod.TOTAL, Decimal("-1")))
    assert (await store.load_catalog()).budgets == ()


async def test_rate_limits_are_set_replaced_and_deleted_per_key(store: ControlStore) -> None:
    acme = await store.create_principal("acme")
    key, _ = await store.create_api_key(acme.id)

    await store.put_rate_limit(RateLimit(key.id, requests_per_minute=60))
    await store.put_rate_limit(RateLimit(key.id, input_tokens_per_minute=40_000))

    assert (await store.load_catalog()).rate_limits == {key.id: RateLimit(key.id, None, 40_000)}
    assert await store.delete_rate_limit(key.id)
    assert not await store.delete_rate_limit(key.id)
    assert (await store.load_catalog()).rate_limits == {}


@pytest.mark.parametrize("limit", [0, -5, True, 1.5])
async def test_a_rate_limit_must_be_a_positive_whole_number(store: ControlStore, limit: object) -> None:
    acme = await store.create_principal("acme")
    key, _ = await store.create_api_key(acme.id)

    with pytest.raises(ValueError):
        await store.put_rate_limit(RateLimit(key.id, requests_per_minute=limit))  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await store.put_rate_limit(RateLimit("key_ghost", requests_per_minute=1))
    assert (await store.load_catalog()).rate_limits == {}


async def test_a_version_cannot_start_before_the_open_one(store: ControlStore) -> None:
    await add_model(store)
    await store.set_cache_tariff("m", CacheTariff(), at=T0)

    with pytest.raises(Conflict, match="'m'"):
        await store.set_cache_tariff("m", CacheTariff(read_multiplier="0.2"), at=T0 - timedelta(seconds=1))
    with pytest.raises(Conflict, match="'m'"):
        await store.disable_cache_tariff("m", at=T0 - timedelta(seconds=1))
    assert len((await store.load_catalog()).tariffs["m"]) == 1


async def test_naive_timestamps_are_refused(store: ControlStore) -> None:
    await add_model(store)
    naive = datetime(2025, 3, 1, 12, 0)

    with pytest.raises(ValueError, match="timezone"):
        await store.set_cache_tariff("m", CacheTariff(), at=naive)
    with pytest.raises(ValueError, match="timezone"):
        await store.append_ledger([ledger_row(naive, "prn_a", "m")])
    assert (await store.load_catalog()).tariffs == {}
    assert await store.usage(UsageQuery()) == []


@pytest.mark.postgres
async def test_concurrent_tariff_changes_never_leave_two_open_versions(pg_database: str) -> None:
    from cachegate.store.postgres import PostgresStore

    stores = [await PostgresStore.open(pg_database, max_size=4) for _ in range(2)]  # like two processes
    try:
        await stores[0].migrate()
        await add_model(stores[0])
        tariffs = [CacheTariff(read_multiplier=f"0.{n}") for n in range(1, 10)]

        await asyncio.gather(*(stores[n % 2].set_cache_tariff("m", t) for n, t in enumerate(tariffs)))
        versions = (await stores[1].load_catalog()).tariffs["m"]
    finally:
        for opened in stores:
            await opened.aclose()

    assert len(versions) == len(tariffs)
    assert [v.valid_until is None for v in versions] == [False] * (len(tariffs) - 1) + [True]
    assert all(earlier.valid_until == later.valid_from for earlier, later in itertools.pairwise(versions))
    assert sorted(v.tariff.read_multiplier for v in versions) == sorted(t.read_multiplier for t in tariffs)


# usage ledger


def ledger_row(at: datetime, principal: str, model: str, **fields: object) -> LedgerRow:
    row = LedgerRow(
        at=at,
        principal_id=principal,
        key_id="key_test",
        model=model,
        status=200,
        streaming=False,
        prompt_tokens=100,
        completion_tokens=10,
        cache_read_tokens=50,
        cache_creation_5m_tokens=20,
        cache_creation_1h_tokens=5,
        cache_creation_24h_tokens=1,
        upstream_cached_tokens=None,
        cost=Decimal("0.1"),
        list_cost=Decimal("0.3"),
        latency_ms=12.5,
        degraded=False,
    )
    return replace(row, **fields)


async def test_usage_splits_principals_and_utc_days_and_folds_status_streaming_and_cost_gaps(
    store: ControlStore,
) -> None:
    eastern = timezone(timedelta(hours=-5))
    await store.append_ledger(
        [
            ledger_row(T0, "prn_a", "m"),
            ledger_row(T0 + timedelta(hours=1), "prn_a", "m", cost=Decimal("0.2"), degraded=True, streaming=True),
            ledger_row(T0, "prn_a", "m", cost=None, list_cost=None, status=502, upstream_cached_tokens=7),
            ledger_row(T0, "prn_b", "m", prompt_tokens=1, completion_tokens=2),
            ledger_row(T0, "prn_a", "other", cache_read_tokens=0),
            # 20:00 on March 1st at UTC-5 is 01:00 on March 2nd in UTC
            ledger_row(datetime(2025, 3, 1, 20, 0, tzinfo=eastern), "prn_a", "m", cost=Decimal("0.000000001")),
        ]
    )

    usage = await store.usage(UsageQuery())

    none = misses()
    assert usage == [  # by day, key, model, then principal: one key under two principals stays two groups
        # three rows, a 502 without a cost among them: 300 prompt, reads 150, writes 5m 60, 1h 15, 24h 3
        UsageGroup(
            "2025-03-01", "prn_a", "key_test", "m", 3, 300, 72, 150, 60, 15, 3, 30,
            Decimal("0.3"), Decimal("0.6"), 1, none, 0, 0,
        ),
        UsageGroup(
            "2025-03-01", "prn_b", "key_test", "m", 1, 1, -75, 50, 20, 5, 1, 2,
            Decimal("0.1"), Decimal("0.3"), 0, none, 0, 0,
        ),
        UsageGroup(
            "2025-03-01", "prn_a", "key_test", "other", 1, 100, 74, 0, 20, 5, 1, 10,
            Decimal("0.1"), Decimal("0.3"), 0, none, 0, 0,
        ),
        UsageGroup(
            "2025-03-02", "prn_a", "key_test", "m", 1, 100, 24, 50, 20, 5, 1, 10,
            Decimal("0.000000001"), Decimal("0.3"), 0, none, 0, 0,
        ),
    ]  # fmt: skip
    assert all(isinstance(group.cost, Decimal) and isinstance(group.list_cost, Decimal) for group in usage)


def misses(**counts: int) -> tuple[tuple[str, int], ...]:
    return tuple((reason, counts.get(reason, 0)) for reason in MISS_REASONS)


async def test_usage_is_grouped_by_utc_day_key_and_model_with_every_figure(store: ControlStore) -> None:
    eastern = timezone(timedelta(hours=-5))
    await store.append_ledger(
        [
            ledger_row(T0, "prn_a", "m", counted_prompt_tokens=103),
            ledger_row(
                T0 + timedelta(hours=1),
                "prn_a",
                "m",
                cost=Decimal("0.2"),
                degraded=True,
                miss_reason="degraded",
                cache_read_tokens=0,
                cache_creation_5m_tokens=0,
                cache_creation_1h_tokens=0,
                cache_creation_24h_tokens=0,
                counted_prompt_tokens=98,
            ),
            ledger_row(T0, "prn_a", "m", cost=None, list_cost=None, status=502, miss_reason="first_write"),
            ledger_row(T0, "prn_a", "m", key_id="key_two", miss_reason="expired", cost=Decimal("0.000000001")),
            ledger_row(T0, "prn_b", "m", key_id="key_b", prompt_tokens=80, miss_reason="prefix_changed"),
            ledger_row(T0, "prn_a", "other", cache_read_tokens=0, miss_reason="below_floor"),
            # 20:00 on March 1st at UTC-5 is 01:00 on March 2nd in UTC
            ledger_row(datetime(2025, 3, 1, 20, 0, tzinfo=eastern), "prn_a", "m", miss_reason="first_write"),
        ]
    )

    usage = await store.usage(UsageQuery())

    assert usage == [  # by day, key, model
        UsageGroup(
            "2025-03-01", "prn_b", "key_b", "m", 1, 80, 4, 50, 20, 5, 1, 10,
            Decimal("0.1"), Decimal("0.3"), 0, misses(prefix_changed=1), 0, 0,
        ),
        # three rows: 300 prompt, reads 50+0+50, writes 5m 20+0+20, 1h 5+0+5, 24h 1+0+1
        UsageGroup(
            "2025-03-01", "prn_a", "key_test", "m", 3, 300, 148, 100, 40, 10, 2, 30,
            Decimal("0.3"), Decimal("0.6"), 1, misses(degraded=1, first_write=1), 3 - 2, 2,
        ),
        UsageGroup(
            "2025-03-01", "prn_a", "key_test", "other", 1, 100, 74, 0, 20, 5, 1, 10,
            Decimal("0.1"), Decimal("0.3"), 0, misses(below_floor=1), 0, 0,
        ),
        UsageGroup(
            "2025-03-01", "prn_a", "key_two", "m", 1, 100, 24, 50, 20, 5, 1, 10,
            Decimal("0.000000001"), Decimal("0.3"), 0, misses(expired=1), 0, 0,
        ),
        UsageGroup(
            "2025-03-02", "prn_a", "key_test", "m", 1, 100, 24, 50, 20, 5, 1, 10,
            Decimal("0.1"), Decimal("0.3"), 0, misses(first_write=1), 0, 0,
        ),
    ]  # fmt: skip
    first = usage[1]
    assert first.saving == Decimal("0.3") and first.hit_rate == 100 / 300 and first.cache_write_tokens == 52
    assert all(isinstance(group.cost, Decimal) and isinstance(group.list_cost, Decimal) for group in usage)


async def test_usage_is_filtered_by_time_and_principal(store: ControlStore) -> None:
    await store.append_ledger(
        [ledger_row(T0 + timedelta(days=day), principal, "m") for day in range(3) for principal in ("prn_a", "prn_b")]
    )

    def days(usage: list[UsageGroup]) -> list[tuple[str, str]]:
        return [(group.day, group.principal_id) for group in usage]

    since_second_day = await store.usage(UsageQuery(since=T0 + timedelta(days=1)))
    until_second_day = await store.usage(UsageQuery(until=T0 + timedelta(days=1)))
    one_day_of_b = await store.usage(
        UsageQuery(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2), principal_id="prn_b")
    )

    assert days(since_second_day) == [(d, p) for d in ("2025-03-02", "2025-03-03") for p in ("prn_a", "prn_b")]
    assert days(until_second_day) == [("2025-03-01", "prn_a"), ("2025-03-01", "prn_b")]  # until is exclusive
    assert days(one_day_of_b) == [("2025-03-02", "prn_b")]
    assert await store.usage(UsageQuery(principal_id="prn_ghost")) == []
    assert await store.usage(UsageQuery(since=T0 + timedelta(days=3))) == []


async def test_usage_sums_costs_exactly(store: ControlStore) -> None:
    rows = [ledger_row(T0, "prn_a", "m", cost=Decimal("0.1"), list_cost=Decimal("0.0000001")) for _ in range(1000)]

    await store.append_ledger(rows)
    [group] = await store.usage(UsageQuery())

    assert group.cost == Decimal("100") and group.list_cost == Decimal("0.0001") and group.requests == 1000
    assert group.saving == Decimal("-99.9999")


async def test_appending_nothing_is_a_no_op(store: ControlStore, store_url: str) -> None:
    await store.append_ledger([])

    assert await query(store_url, "SELECT count(*) FROM ledger") == [(0,)]
    assert await store.usage(UsageQuery()) == [] and await store.spend_totals(T0) == []


async def test_our_prompt_count_is_kept_beside_the_upstreams(store: ControlStore, store_url: str) -> None:
    await store.append_ledger(
        [ledger_row(T0, "prn_a", "m", counted_prompt_tokens=98), ledger_row(T0, "prn_a", "m", key_id="key_2")]
    )

    stored = await query(store_url, "SELECT key_id, prompt_tokens, counted_prompt_tokens FROM ledger ORDER BY key_id")

    assert stored == [("key_2", 100, None), ("key_test", 100, 98)]


async def test_how_a_client_that_left_was_billed_is_kept(store: ControlStore, store_url: str) -> None:
    await store.append_ledger(
        [ledger_row(T0, "prn_a", "m", disconnect="counted", status=499), ledger_row(T0, "prn_a", "m", key_id="key_2")]
    )

    stored = await query(store_url, "SELECT key_id, status, disconnect FROM ledger ORDER BY key_id")

    assert stored == [("key_2", 200, None), ("key_test", 499, "counted")]


async def test_why_a_breakpoint_missed_is_kept(store: ControlStore, store_url: str) -> None:
    await store.append_ledger(
        [ledger_row(T0, "prn_a", "m", miss_reason="expired"), ledger_row(T0, "prn_a", "m", key_id="key_2")]
    )

    stored = await query(store_url, "SELECT key_id, miss_reason FROM ledger ORDER BY key_id")

    assert stored == [("key_2", None), ("key_test", "expired")]


async def test_a_row_id_is_stored_once_however_often_it_is_sent(store: ControlStore, store_url: str) -> None:
    first, second = ledger_row(T0, "prn_a", "m", row_id="r1"), ledger_row(T0, "prn_a", "m", row_id="r2")
    await store.append_ledger([first])

    await store.append_ledger([first, second, second])  # a journal replayed after a crash, and a retry
    await store.append_ledger([ledger_row(T0, "prn_a", "m"), ledger_row(T0, "prn_a", "m")])  # no ids: both kept

    stored = await query(store_url, "SELECT row_id FROM ledger")
    assert sorted(row_id or "-" for (row_id,) in stored) == ["-", "-", "r1", "r2"]
    [group] = await store.usage(UsageQuery())
    assert group.requests == 4


# spend totals (budgets, SPEC §13)


async def test_spend_is_totalled_per_key_for_the_utc_day_month_and_all_time(store: ControlStore) -> None:
    eastern = timezone(timedelta(hours=-5))
    await store.append_ledger(
        [
            ledger_row(T0, "prn_a", "m", cost=Decimal("0.1")),
            ledger_row(T0 + timedelta(hours=11), "prn_a", "m", cost=Decimal("0.000000001")),
            ledger_row(T0 - timedelta(days=1), "prn_a", "m", cost=Decimal("1")),  # February: the total only
            ledger_row(T0 + timedelta(days=1), "prn_a", "m", cost=Decimal("10")),  # another day of March
            ledger_row(T0, "prn_a", "m", cost=None, status=502),  # unpriced: nothing
            ledger_row(T0, "prn_b", "m", key_id="key_b", cost=Decimal("0.5")),
            # 20:00 on March 1st at UTC-5 is 01:00 on March 2nd in UTC: not March 1st's
            ledger_row(datetime(2025, 3, 1, 20, 0, tzinfo=eastern), "prn_b", "m", key_id="key_b", cost=Decimal("7")),
        ]
    )

    totals = await store.spend_totals(T0 + timedelta(hours=3))

    assert totals == [
        KeyTotals("prn_b", "key_b", Decimal("0.5"), Decimal("7.5"), Decimal("7.5")),
        KeyTotals("prn_a", "key_test", Decimal("0.100000001"), Decimal("10.100000001"), Decimal("11.100000001")),
    ]
    next_month = await store.spend_totals(datetime(2025, 4, 1, tzinfo=UTC))
    assert [(t.key_id, t.day, t.month, t.total) for t in next_month] == [
        ("key_b", 0, 0, Decimal("7.5")),
        ("key_test", 0, 0, Decimal("11.100000001")),
    ]


async def test_a_row_sent_twice_is_counted_in_the_spend_once(store: ControlStore) -> None:
    first, second = ledger_row(T0, "prn_a", "m", row_id="r1"), ledger_row(T0, "prn_a", "m", row_id="r2")
    await store.append_ledger([first])

    await store.append_ledger([first, second, second])

    [totals] = await store.spend_totals(T0)
    assert (totals.day, totals.month, totals.total) == (Decimal("0.2"),) * 3


async def test_a_refused_batch_adds_nothing_to_the_spend(store: ControlStore) -> None:
    with pytest.raises((sqlite3.IntegrityError, asyncpg.NotNullViolationError)):
        await store.append_ledger([ledger_row(T0, "prn_a", "m"), ledger_row(T0, "prn_a", "m", principal_id=None)])

    assert await store.spend_totals(T0) == []


async def test_the_spend_of_rows_billed_before_the_totals_existed_is_filled_in(
    store: ControlStore, store_url: str
) -> None:
    await store.append_ledger(
        [ledger_row(T0, "prn_a", "m", cost=Decimal("0.25")), ledger_row(T0 - timedelta(days=1), "prn_a", "m")]
    )
    expected = await store.spend_totals(T0)
    await execute(store_url, "DROP TABLE spend")  # as before the step that made it
    await execute(store_url, "DELETE FROM schema_migrations WHERE version = 9")

    await store.migrate()

    assert (
        await store.spend_totals(T0)
        == expected
        == [KeyTotals("prn_a", "key_test", Decimal("0.25"), Decimal("0.25"), Decimal("0.35"))]
    )


async def test_a_ledger_batch_is_written_all_or_nothing(store: ControlStore) -> None:
    refused_by_the_database = ledger_row(T0, "prn_a", "m", principal_id=None)  # NOT NULL

    with pytest.raises((sqlite3.IntegrityError, asyncpg.NotNullViolationError)):
        await store.append_ledger([ledger_row(T0, "prn_a", "m"), refused_by_the_database])
    assert await store.usage(UsageQuery()) == []


async def test_money_is_never_stored_as_floating_point(store: ControlStore, store_url: str) -> None:
    await add_model(store)
    await store.set_cache_tariff("m", CacheTariff())
    await store.append_ledger([ledger_row(T0, "prn_a", "m")])
    decimal_columns = {
        "models": ["input_price", "output_price"],
        "cache_tariffs": ["write_multiplier_5m", "write_multiplier_1h", "write_multiplier_24h", "read_multiplier"],
        "ledger": ["cost", "list_cost"],
    }
    type_of = "typeof" if store_url.startswith("sqlite") else "pg_typeof"

    stored_types = {
        f"{table}.{column}": await query(store_url, f"SELECT DISTINCT CAST({type_of}({column}) AS TEXT) FROM {table}")
        for table, columns in decimal_columns.items()
        for column in columns
    }

    expected = [("text",)] if type_of == "typeof" else [("numeric",)]
    assert stored_types == {name: expected for name in stored_types}


# migrations


async def test_migrating_again_changes_nothing(store: ControlStore, store_url: str) -> None:
    acme = await store.create_principal("acme")
    before = await query(store_url, "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")

    await store.migrate()

    assert await query(store_url, "SELECT version, name, applied_at FROM schema_migrations ORDER BY version") == before
    assert [version for version, *_ in before] == [step.version for step in SCHEMA.steps]
    assert await store.list_principals() == [acme]


async def test_two_processes_can_migrate_at_once(store_url: str) -> None:
    from cachegate.store.factory import open_store

    first, second = await open_store(store_url), await open_store(store_url)  # two connections, like two processes
    try:
        await asyncio.gather(first.migrate(), second.migrate())
    finally:
        await first.aclose()
        await second.aclose()

    assert await query(store_url, "SELECT version FROM schema_migrations") == [(step.version,) for step in SCHEMA.steps]
