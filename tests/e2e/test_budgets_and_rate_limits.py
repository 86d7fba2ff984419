"""Budgets and per-key rate limits as clients meet them (SPEC §13): the official SDKs over real HTTP.

Each test makes a tenant of its own (a principal and a key) and sets its budgets and limits with
the store's methods, then has the gateway reload its catalog as every replica does periodically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic import Anthropic
from conftest import TEST_CONFIG
from openai import OpenAI

from cachegate.gateway import metrics
from cachegate.store.base import Budget, BudgetPeriod, BudgetSubject, RateLimit
from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness
from prompts import marked_system, system_text
from redis_server import RedisServer


@dataclass(frozen=True)
class Tenant:
    principal_id: str
    key_id: str
    secret: str


def new_tenant(gateway: GatewayHarness, principal_id: str | None = None) -> Tenant:
    async def make() -> Tenant:
        store = gateway.store.inner
        if principal_id is None:
            principal = await store.create_principal(f"tenant-{uuid.uuid4().hex[:12]}")
            owner = principal.id
        else:
            owner = principal_id
        key, secret = await store.create_api_key(owner)
        return Tenant(owner, key.id, secret)

    return gateway.call(make())


def apply(gateway: GatewayHarness, *, budgets: Sequence[Budget] = (), limit: RateLimit | None = None) -> None:
    """Set budgets and limits in the store, then reload as the periodic rounds would."""

    async def put() -> None:
        store = gateway.store.inner
        for budget in budgets:
            await store.put_budget(budget)
        if limit is not None:
            await store.put_rate_limit(limit)
        await gateway.gateway.catalog.load()
        await gateway.gateway.budgets.reload()

    gateway.call(put())


def openai_client(gateway: GatewayHarness, tenant: Tenant) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=tenant.secret, max_retries=0, timeout=30)


def anthropic_client(gateway: GatewayHarness, tenant: Tenant) -> Anthropic:
    return Anthropic(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0, timeout=30)


def chat(client: OpenAI, content: str = "What is rule 3?", **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="cached", messages=kw.pop("messages", [{"role": "user", "content": content}]), max_tokens=16, **kw
    )


def streamed(client: OpenAI) -> Any:
    """A streamed chat answer, read to its end; its raw response (the headers came with the first byte)."""
    response = chat(client, stream=True)
    for _ in response.parse():
        pass
    return response


def message(client: Anthropic, **kw: Any) -> Any:
    kw.setdefault("messages", [{"role": "user", "content": "What is rule 3?"}])
    return client.messages.with_raw_response.create(model="cached", max_tokens=16, **kw)


def cost_of(gateway: GatewayHarness, tenant: Tenant) -> Decimal:
    rows = [row for route in ("chat", "messages") for row in gateway.ledger_rows(route) if row.key_id == tenant.key_id]
    return sum((row.cost or Decimal(0) for row in rows), Decimal(0))


# -- budgets -----------------------------------------------------------------------------------------


def test_the_request_past_a_keys_daily_budget_gets_429_in_openais_shape(gateway: GatewayHarness) -> None:
    tenant = new_tenant(gateway)
    limit = Decimal("0.0001")
    apply(gateway, budgets=[Budget(BudgetSubject.KEY, tenant.key_id, BudgetPeriod.DAY, limit)])
    client = openai_client(gateway, tenant)

    served = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(100):
            chat(client)
            served += 1

    assert served > 1
    error = refused.value.response.json()["error"]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert error["message"].startswith(f"budget exceeded: the daily budget (UTC day {today}) of this API key, 0.0001")
    assert refused.value.response.headers["x-should-retry"] == "false"  # the SDKs do not retry it
    spent = cost_of(gateway, tenant)
    assert spent >= limit  # it was reached, and by the last request served only: sequential requests
    assert spent - limit < spent / served * 2  # overshoot below one request (costs vary by a token or two)


def test_a_principals_budget_covers_all_its_keys_and_no_other_tenant(gateway: GatewayHarness) -> None:
    first = new_tenant(gateway)
    second = new_tenant(gateway, first.principal_id)
    other = new_tenant(gateway)
    apply(gateway, budgets=[Budget(BudgetSubject.PRINCIPAL, first.principal_id, BudgetPeriod.TOTAL, Decimal("0.0001"))])

    with pytest.raises(openai.RateLimitError):
        for _ in range(100):
            chat(openai_client(gateway, first))

    with pytest.raises(anthropic.RateLimitError) as refused:
        message(anthropic_client(gateway, second))
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"] == "budget exceeded: the total budget of this API key's principal, 0.0001, is spent"
    assert first.principal_id not in body["error"]["message"]  # names the budget, never an id
    assert chat(openai_client(gateway, other)).http_response.status_code == 200


def test_a_budget_raised_or_of_another_day_lets_requests_through_again(gateway: GatewayHarness) -> None:
    tenant = new_tenant(gateway)
    client = openai_client(gateway, tenant)
    apply(gateway, budgets=[Budget(BudgetSubject.KEY, tenant.key_id, BudgetPeriod.MONTH, Decimal("0"))])
    with pytest.raises(openai.RateLimitError):
        chat(client)

    apply(gateway, budgets=[Budget(BudgetSubject.KEY, tenant.key_id, BudgetPeriod.MONTH, Decimal("1"))])

    assert chat(client).http_response.status_code == 200


def test_the_spend_a_gateway_knows_survives_a_reload_from_the_store(gateway: GatewayHarness) -> None:
    tenant = new_tenant(gateway)
    client = openai_client(gateway, tenant)
    for _ in range(3):
        chat(client)
    spent = cost_of(gateway, tenant)  # every row is in the store now
    apply(gateway, budgets=[Budget(BudgetSubject.KEY, tenant.key_id, BudgetPeriod.DAY, spent)])

    with pytest.raises(openai.RateLimitError):  # the reloaded totals alone reach the budget
        chat(client)
    totals = gateway.call(gateway.store.inner.spend_totals(datetime.now(UTC)))
    [mine] = [t for t in totals if t.key_id == tenant.key_id]
    assert mine.day == mine.month == mine.total == spent


# -- rate limits -------------------------------------------------------------------------------------


def test_the_request_past_the_requests_per_minute_gets_429_with_retry_after_and_headers(
    gateway: GatewayHarness,
) -> None:
    tenant = new_tenant(gateway)
    apply(gateway, limit=RateLimit(tenant.key_id, requests_per_minute=2))
    client = openai_client(gateway, tenant)

    first, second = chat(client), chat(client)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client)

    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in first.headers  # that limit is off
    response = refused.value.response
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(response.headers["retry-after"]) <= 30  # 2 a minute: one back within 30 s
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_every_route_of_a_limited_key_carries_its_dialects_headers(gateway: GatewayHarness) -> None:
    tenant = new_tenant(gateway)
    apply(gateway, limit=RateLimit(tenant.key_id, requests_per_minute=100, input_tokens_per_minute=50_000))
    client = openai_client(gateway, tenant)
    claude = anthropic_client(gateway, tenant)

    responses = {
        "chat": chat(client),
        "chat stream": streamed(client),
        "completions": client.completions.with_raw_response.create(model="cached", prompt="hello", max_tokens=4),
        "responses": client.responses.with_raw_response.create(model="cached", input="hello", max_output_tokens=16),
        "embeddings": client.embeddings.with_raw_response.create(model="cached", input="hello"),
        "models": client.models.with_raw_response.list(),
    }
    for route, response in responses.items():
        assert response.headers["x-ratelimit-limit-requests"] == "100", route
        assert response.headers["x-ratelimit-limit-tokens"] == "50000", route
    anthropic_responses = {
        "messages": message(claude),
        "count_tokens": claude.messages.with_raw_response.count_tokens(
            model="cached", messages=[{"role": "user", "content": "hello"}]
        ),
    }
    for route, response in anthropic_responses.items():
        headers = response.headers
        assert headers["anthropic-ratelimit-requests-limit"] == "100", route
        assert headers["anthropic-ratelimit-input-tokens-limit"] == "50000", route
        reset = datetime.strptime(headers["anthropic-ratelimit-input-tokens-reset"], "%Y-%m-%dT%H:%M:%SZ")
        assert abs(reset.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=90), route
        assert "x-ratelimit-limit-requests" not in headers
    # Billed routes take a request each; count_tokens (and the model list) only read.
    left = [
        int(
            claude.messages.with_raw_response.count_tokens(
                model="cached", messages=[{"role": "user", "content": "a"}]
            ).headers["anthropic-ratelimit-requests-remaining"]
        )
        for _ in range(3)
    ]
    assert left == sorted(left) and left[0] >= int(
        anthropic_responses["messages"].headers["anthropic-ratelimit-requests-remaining"]
    )
    assert int(responses["models"].headers["x-ratelimit-remaining-requests"]) == int(
        responses["embeddings"].headers["x-ratelimit-remaining-requests"]
    )


def test_cache_reads_do_not_count_against_the_input_token_limit(gateway: GatewayHarness) -> None:
    cached, uncached = new_tenant(gateway), new_tenant(gateway)
    budget = 1500  # about one and a half of these prompts a minute
    for tenant in (cached, uncached):
        apply(gateway, limit=RateLimit(tenant.key_id, input_tokens_per_minute=budget))
    system = system_text(600)

    served = []
    for turn in range(6):  # one conversation, its long system prompt cached after the first turn
        served.append(chat(openai_client(gateway, cached), messages=[marked_system(system), user(turn)]))
    assert [r.http_response.status_code for r in served] == [200] * 6
    usage = [r.parse().usage for r in served]
    prompt = usage[0].prompt_tokens
    assert budget / 2 < prompt < budget  # one prompt fits, two do not
    assert all(u.prompt_tokens_details.cached_tokens > prompt * 0.9 for u in usage[1:])

    client = openai_client(gateway, uncached)
    assert chat(client, messages=[marked_system(system_text(600)), user(0)]).http_response.status_code == 200
    assert chat(client, messages=[marked_system(system_text(600)), user(1)]).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as refused:  # as large, but a new prefix each time: all written
        chat(client, messages=[marked_system(system_text(600)), user(2)])
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.value.response.headers["retry-after"]) > 10  # a debt of about 500 tokens at 25 a second


def test_the_anthropic_dialect_is_limited_with_its_own_headers(gateway: GatewayHarness) -> None:
    tenant = new_tenant(gateway)
    apply(gateway, limit=RateLimit(tenant.key_id, requests_per_minute=1, input_tokens_per_minute=10_000))
    client = anthropic_client(gateway, tenant)

    served = message(client)
    with pytest.raises(anthropic.RateLimitError) as refused:
        message(client)

    assert served.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert served.headers["anthropic-ratelimit-input-tokens-remaining"] == "10000"  # debited once billed
    response = refused.value.response
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert "requests per minute" in response.json()["error"]["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert int(response.headers["anthropic-ratelimit-input-tokens-remaining"]) < 10_000


def user(turn: int) -> dict[str, Any]:
    return {"role": "user", "content": f"Question {turn}: what is rule {turn}?"}


# -- shared through Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_pair(
    redis_server: RedisServer, qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayHarness, GatewayHarness]]:
    """Two gateways on one control store whose rate limiter is one Redis."""
    folder: Path = tmp_path_factory.mktemp("redis-limits")
    prefix = redis_server.fresh_prefix()
    config = {**TEST_CONFIG, "rate_limits": {"redis_url": redis_server.index_url(prefix)}}
    store_url = f"sqlite:///{folder}/control.db"
    first = GatewayHarness(qwen3, store_url, f"sqlite:///{folder}/index-1.db", config).start()
    second = GatewayHarness(qwen3, store_url, f"sqlite:///{folder}/index-2.db", config, keys=first.keys).start()
    yield first, second
    second.stop()
    first.stop()
    redis_server.drop(prefix)


@pytest.mark.redis
def test_two_gateways_on_one_redis_share_a_keys_limit(redis_pair: tuple[GatewayHarness, GatewayHarness]) -> None:
    first, second = redis_pair
    tenant = new_tenant(first)
    apply(first, limit=RateLimit(tenant.key_id, requests_per_minute=3))
    apply(second)  # the other replica's catalog reload

    statuses = []
    for gateway in (first, second, first, second):
        try:
            statuses.append(chat(openai_client(gateway, tenant)).http_response.status_code)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
            assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"

    assert statuses == [200, 200, 200, 429]


@pytest.fixture(scope="module")
def dead_redis_gateway(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    folder: Path = tmp_path_factory.mktemp("dead-redis-limits")
    config = {**TEST_CONFIG, "rate_limits": {"redis_url": "redis://127.0.0.1:9/0", "redis_timeout_seconds": 0.2}}
    harness = GatewayHarness(qwen3, f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db", config).start()
    yield harness
    harness.stop()


def test_a_rate_limiter_that_is_down_lets_requests_through(
    dead_redis_gateway: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = new_tenant(dead_redis_gateway)
    apply(dead_redis_gateway, limit=RateLimit(tenant.key_id, requests_per_minute=1))
    skipped = metrics.RATE_LIMITER_UNAVAILABLE._value.get()

    responses = [chat(openai_client(dead_redis_gateway, tenant)) for _ in range(3)]

    assert [r.http_response.status_code for r in responses] == [200] * 3  # over the limit, yet served
    assert all("x-ratelimit-limit-requests" not in r.headers for r in responses)
    assert metrics.RATE_LIMITER_UNAVAILABLE._value.get() - skipped == 3
    assert any("rate limits are not enforced" in record.getMessage() for record in caplog.records)
