"""The operator's story, end to end (SPEC §13, §14): through the admin API an operator creates a
tenant, a key with a monthly budget and a rate limit, and a cached model; the tenant's traffic,
sent with the official SDK, is capped where the budget says; the dashboard, read in a real browser,
shows per day what the tenant paid, what list price would have been, what caching saved and why
its misses missed — the ledger's figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import TEST_CONFIG
from selenium.webdriver.common.by import By

from cachegate.tokens.base import TokenCounter

from browser import chromium, require_chromium
from dashboard_pages import Expected, budget_cells, day_of, follow, shot, show_misses, table_rows
from harness import GatewayHarness
from prompts import marked_system, system_text

MONTHLY_BUDGET = Decimal("0.02")
REQUESTS_PER_MINUTE = 100


@pytest.fixture(scope="module")
def story_gateway(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    require_chromium()
    folder = tmp_path_factory.mktemp("story")
    harness = GatewayHarness(qwen3, f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db", TEST_CONFIG)
    yield harness.start()
    harness.stop()


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


def set_up_tenant(gateway: GatewayHarness) -> tuple[str, str]:
    """What the operator does through the admin API; returns the tenant's principal id and key secret."""
    headers = {"authorization": f"Bearer {gateway.keys.admin}"}
    with httpx.Client(base_url=f"{gateway.base_url}/admin/v1", headers=headers, timeout=30) as admin:
        principal = ok(admin.post("/principals", json={"name": "story-tenant"}))
        key = ok(admin.post("/keys", json={"principal": "story-tenant"}))
        ok(admin.put("/endpoints/story-vllm", json={"base_url": f"{gateway.fake_url}/v1"}))
        model = {
            "endpoints": ["story-vllm"],
            "upstream_model": "qwen3-fake",
            "tokenizer": "qwen3",
            "input_price": "0.00001",
            "output_price": "0.00002",
        }
        ok(admin.put("/models/story-model", json=model))
        ok(admin.post("/tariffs/story-model", json={"min_prefix_tokens": 256}))
        ok(admin.put("/budgets/principal/story-tenant/month", json={"limit": str(MONTHLY_BUDGET)}))
        ok(admin.put(f"/rate-limits/{key['id']}", json={"requests_per_minute": REQUESTS_PER_MINUTE}))
    return principal["id"], key["secret"]


def tenant_traffic(gateway: GatewayHarness, secret: str) -> int:
    """A conversation re-sent, then its system prompt changed, until the budget refuses; returns how
    many requests were served."""
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0, timeout=30)
    question = {"role": "user", "content": "Which rule covers refunds?"}
    system = system_text()
    for served in range(40):
        if served and served % 4 == 0:
            system = system_text()  # the tenant edits its system prompt: a miss that says why
        messages = [marked_system(system), question]
        try:
            raw = client.chat.completions.with_raw_response.create(model="story-model", messages=messages)
        except openai.RateLimitError as refused:
            error = refused.response.json()["error"]
            assert error["code"] == "budget_exceeded" and "monthly budget" in error["message"], error
            return served
        assert raw.headers["x-ratelimit-limit-requests"] == str(REQUESTS_PER_MINUTE)
    pytest.fail("the monthly budget never refused a request")


def test_an_operator_sets_up_a_tenant_caps_it_and_reads_its_bill(story_gateway: GatewayHarness, tmp_path: Path) -> None:
    gateway = story_gateway
    principal_id, secret = set_up_tenant(gateway)

    served = tenant_traffic(gateway, secret)

    rows = [row for row in gateway.ledger_rows("chat") if row.principal_id == principal_id]
    assert len(rows) == served > 2
    costs = [row.cost or Decimal(0) for row in rows]
    assert sum(costs[:-1]) < MONTHLY_BUDGET <= sum(costs)  # the request that crossed it was the last served
    ledger = Expected(rows)
    reasons = {row.miss_reason for row in rows}
    assert {"first_write", "prefix_changed"} <= reasons and None in reasons  # misses, and reads
    assert ledger.sum("cache_read_tokens") > 0 and ledger.money("list_cost") > ledger.money("cost")

    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    print(f"operator story screenshots: {screenshots}")
    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{gateway.base_url}/admin/login")
        driver.find_element(By.ID, "key").send_keys(gateway.keys.admin)
        follow(driver, driver.find_element(By.ID, "login"))
        follow(driver, driver.find_element(By.CSS_SELECTOR, f'#per-principal tr[data-row="{principal_id}"] a'))
        assert driver.find_element(By.ID, "title").text == "Principal story-tenant"
        days = {day_of(row) for row in rows}
        shown = table_rows(driver, "per-day")
        assert shown == {day: ledger.where(lambda row, d=day: day_of(row) == d).cells() for day in days}
        for day in days:  # paid, list price, saved: each the ledger's to the last digit
            paid, listed = (shown[day][name] for name in ("cost", "list_cost"))
            assert Decimal(listed) - Decimal(paid) == Decimal(shown[day]["saving"])
        assert show_misses(driver) == ledger.misses()
        month = rows[0].at.date().isoformat()[:7]
        this_month = ledger.where(lambda row: day_of(row).startswith(month))
        assert table_rows(driver, "budgets") == {
            f"principal:{principal_id}:month": budget_cells(str(MONTHLY_BUDGET), this_month)
        }
        shot(driver, screenshots, "tenant")
