"""The dashboard in a real browser (headless Chromium, Selenium): a scripted run through a running
gateway, then every page read as an operator reads it, its figures checked against the ledger.

The screenshots of each page are saved under the test's temporary folder (``<tmp>/screenshots``;
the path is printed: ``pytest -s`` shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_CONFIG
from openai import OpenAI
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from cachegate.store.base import MISS_REASONS, Budget, BudgetPeriod, BudgetSubject, LedgerRow
from cachegate.tokens.base import TokenCounter

from browser import chromium, require_chromium
from harness import GatewayHarness
from prompts import MARK_1H, MARK_5M, marked_system, system_text

# -- the figures as the ledger gives them, computed here from its rows ---------------------------


@dataclass(frozen=True)
class Expected:
    """What a page must show for a set of ledger rows, formatted as the pages format."""

    rows: list[LedgerRow]

    def sum(self, field: str) -> int:
        return sum(getattr(row, field) for row in self.rows)

    def money(self, field: str) -> Decimal:
        amounts = (getattr(row, field) for row in self.rows)
        return sum((amount for amount in amounts if amount is not None), Decimal(0))

    @property
    def written(self) -> int:
        return sum(self.sum(f"cache_creation_{ttl}_tokens") for ttl in ("5m", "1h", "24h"))

    def cells(self) -> dict[str, str]:
        prompt, read = self.sum("prompt_tokens"), self.sum("cache_read_tokens")
        degraded = sum(row.degraded for row in self.rows)
        return {
            "requests": f"{len(self.rows):,}",
            "prompt_tokens": f"{prompt:,}",
            "hit_rate": f"{(read / prompt if prompt else 0) * 100:.1f} %",
            "cache_read_tokens": f"{read:,}",
            "cache_write_tokens": f"{self.written:,}",
            "cost": format(self.money("cost"), "f"),
            "list_cost": format(self.money("list_cost"), "f"),
            "saving": format(self.money("list_cost") - self.money("cost"), "f"),
            "degraded_rate": f"{(degraded / len(self.rows) if self.rows else 0) * 100:.1f} %",
        }

    def cards(self) -> dict[str, str]:
        cards = self.cells()
        del cards["prompt_tokens"]
        prompt = self.sum("prompt_tokens")
        uncached = prompt - self.sum("cache_read_tokens") - self.written
        cards.update(
            cache_write_5m_tokens=f"{self.sum('cache_creation_5m_tokens'):,}",
            cache_write_1h_tokens=f"{self.sum('cache_creation_1h_tokens'):,}",
            cache_write_24h_tokens=f"{self.sum('cache_creation_24h_tokens'):,}",
            uncached_tokens=f"{uncached:,}",
        )
        return cards

    def drift(self) -> tuple[str, str]:
        counted = [row for row in self.rows if row.counted_prompt_tokens is not None]
        drifts = [(row.counted_prompt_tokens or 0) - row.prompt_tokens for row in counted]
        return ("–" if not drifts else f"{sum(drifts) / len(drifts):+.2f}", f"{len(drifts):,}")

    def misses(self) -> list[tuple[str, str]]:
        counts = {reason: sum(row.miss_reason == reason for row in self.rows) for reason in MISS_REASONS}
        seen = sorted(((r, n) for r, n in counts.items() if n), key=lambda item: -item[1])
        return [(reason, f"{count:,}") for reason, count in seen]

    def where(self, test: Callable[[LedgerRow], bool]) -> Expected:
        return Expected([row for row in self.rows if test(row)])


# -- reading a page ---------------------------------------------------------------------------------


def figures_in(element: Any) -> dict[str, str]:
    """The ``data-figure`` cells (or cards) inside ``element``, by name."""
    found = {}
    for cell in element.find_elements(By.CSS_SELECTOR, "[data-figure]"):
        value = cell.find_elements(By.CSS_SELECTOR, ".value")
        found[cell.get_attribute("data-figure")] = (value[0] if value else cell).text
    return found


def table_rows(driver: WebDriver, table_id: str) -> dict[str, dict[str, str]]:
    return {
        row.get_attribute("data-row"): figures_in(row)
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    }


def pick(figures: dict[str, str], names: Iterable[str]) -> dict[str, str]:
    return {name: figures[name] for name in names}


def follow(driver: WebDriver, element: Any) -> None:
    """Click a link or a submit button and wait until the next page has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 30).until(staleness_of(page))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def shot(driver: WebDriver, folder: Path, name: str) -> None:
    """A screenshot of the whole page (the window grown to its height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, int(height) + 120))
    driver.save_screenshot(str(folder / f"{name}.png"))


# -- the run -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard_gateway(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    require_chromium()  # before the gateway starts: nothing to run without a browser
    folder = tmp_path_factory.mktemp("dashboard")
    harness = GatewayHarness(qwen3, f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db", TEST_CONFIG)
    yield harness.start()
    harness.stop()


def chat(gateway: GatewayHarness, key: str, model: str, messages: list[dict[str, Any]]) -> None:
    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)
    client.chat.completions.create(model=model, messages=messages)


def scripted_run(gateway: GatewayHarness) -> list[LedgerRow]:
    """Cached conversations of two tenants (writes, reads, a miss, an outage), then the ledger."""
    keys = gateway.keys
    prefix_a = system_text()
    for question in ("What is rule 1?", "And rule 2?", "And rule 3?"):  # a 1h write, then two reads
        chat(gateway, keys.a, "cached", [marked_system(prefix_a, MARK_1H), {"role": "user", "content": question}])
    chat(gateway, keys.a, "cached", [marked_system(system_text(), MARK_5M), {"role": "user", "content": "Hi"}])
    chat(gateway, keys.a, "floored", [marked_system(system_text(), MARK_1H), {"role": "user", "content": "Hi"}])
    chat(gateway, keys.a, "plain", [{"role": "user", "content": "No cache here"}])
    gateway.index.down = True  # an outage: served uncached, flagged degraded
    try:
        chat(gateway, keys.a, "cached", [marked_system(prefix_a, MARK_1H), {"role": "user", "content": "Rule 4?"}])
    finally:
        gateway.index.down = False
    prefix_b = system_text()
    for question in ("Hello", "Again"):
        chat(gateway, keys.b, "cached", [marked_system(prefix_b, MARK_5M), {"role": "user", "content": question}])
    return gateway.ledger_rows("chat")


def history(gateway: GatewayHarness, now: datetime) -> list[LedgerRow]:
    """Ledger rows of the six days before today (as a journal replay would bring them), with miss
    reasons and count drift, so the charts have days to draw and the month's window is crossed."""
    keys = gateway.keys
    key_of = {p: gateway.call(gateway.store.list_api_keys(p))[0].id for p in (keys.principal_a, keys.principal_b)}
    rows = []
    for days_ago in range(1, 7):
        at = now - timedelta(days=days_ago)
        for principal in (keys.principal_a, keys.principal_b)[: 1 + days_ago % 2]:
            read = 100 * days_ago
            rows.append(
                LedgerRow(
                    at=at, principal_id=principal, key_id=key_of[principal], model="cached", status=200,
                    streaming=False, prompt_tokens=1000 + days_ago, completion_tokens=20, cache_read_tokens=read,
                    cache_creation_5m_tokens=50, cache_creation_1h_tokens=30, cache_creation_24h_tokens=0,
                    upstream_cached_tokens=None, cost=Decimal(f"0.00{days_ago}5"), list_cost=Decimal("0.0101"),
                    latency_ms=30.0, degraded=days_ago == 3, counted_prompt_tokens=1000 + 2 * days_ago,
                    row_id=f"history-{principal}-{days_ago}",
                    miss_reason=("first_write", "expired", "prefix_changed", "expired", None, "expired")[days_ago - 1],
                )
            )  # fmt: skip
    gateway.call(gateway.store.append_ledger(rows))
    return rows


def test_the_dashboard_shows_the_ledger(dashboard_gateway: GatewayHarness, tmp_path: Path) -> None:
    gateway = dashboard_gateway
    keys = gateway.keys
    store = gateway.store.inner
    key_b = gateway.call(store.list_api_keys(keys.principal_b))[0].id
    for budget in (
        Budget(BudgetSubject.PRINCIPAL, keys.principal_a, BudgetPeriod.DAY, Decimal("0.01")),
        Budget(BudgetSubject.KEY, key_b, BudgetPeriod.MONTH, Decimal("5")),
        Budget(BudgetSubject.PRINCIPAL, keys.principal_b, BudgetPeriod.TOTAL, Decimal("100")),
    ):
        gateway.call(store.put_budget(budget))
    now = datetime.now(UTC)
    today, month = now.date().isoformat(), now.date().isoformat()[:7]
    past = history(gateway, now)
    ledger = Expected(scripted_run(gateway))
    assert len(ledger.rows) == len(past) + 9 and ledger.written > 0 and any(r.degraded for r in ledger.rows)
    assert any(row.cache_read_tokens for row in ledger.rows if row not in past)  # the run read from the cache
    of_a = ledger.where(lambda row: row.principal_id == keys.principal_a)
    of_b = ledger.where(lambda row: row.principal_id == keys.principal_b)
    by_day = {
        day: ledger.where(lambda row, d=day: day_of(row) == d).cells() for day in {day_of(row) for row in ledger.rows}
    }
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    print(f"dashboard screenshots: {screenshots}")
    admin = f"{gateway.base_url}/admin"

    with chromium(tmp_path / "profile") as driver:
        # Not logged in: the login page. A tenant key and a wrong key do not log in.
        driver.get(f"{admin}/")
        assert driver.current_url == f"{admin}/login"
        for secret, message in ((keys.a, "not an admin key"), ("sk-not-a-key", "not a valid API key")):
            driver.find_element(By.ID, "key").send_keys(secret)
            follow(driver, driver.find_element(By.ID, "login"))
            assert message in driver.find_element(By.ID, "message").text
            assert driver.get_cookie("cachegate_admin") is None
            driver.get(f"{admin}/")
            assert driver.current_url == f"{admin}/login"
        shot(driver, screenshots, "login-refused")

        driver.find_element(By.ID, "key").send_keys(keys.admin)
        follow(driver, driver.find_element(By.ID, "login"))
        assert driver.current_url == f"{admin}/"
        cookie = driver.get_cookie("cachegate_admin")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/admin" and not cookie["secure"]  # plain http here

        # Overview: totals, the day, each principal, each model, misses, budgets.
        assert driver.find_element(By.ID, "title").text == "Overview"
        assert figures_in(driver.find_element(By.ID, "totals")) == ledger.cards()
        assert table_rows(driver, "per-day") == by_day
        assert table_rows(driver, "per-principal") == {keys.principal_a: of_a.cells(), keys.principal_b: of_b.cells()}
        models = table_rows(driver, "per-model")
        assert sorted(models) == sorted({row.model for row in ledger.rows})
        for model, shown in models.items():
            of_model = ledger.where(lambda row, m=model: row.model == m)
            assert shown == {**of_model.cells(), "drift": of_model.drift()[0], "drift_count": of_model.drift()[1]}
        assert show_misses(driver) == ledger.misses()
        budgets = table_rows(driver, "budgets")
        of_key_b = of_b.where(lambda row: row.key_id == key_b)
        assert budgets == {
            f"principal:{keys.principal_a}:day": budget_cells("0.01", of_a.where(lambda r: day_of(r) == today)),
            f"key:{key_b}:month": budget_cells("5", of_key_b.where(lambda r: day_of(r).startswith(month))),
            f"principal:{keys.principal_b}:total": budget_cells("100", of_b),
        }
        hit_rate_points = driver.find_elements(By.CSS_SELECTOR, "#chart-hit-rate circle title")
        assert len(hit_rate_points) == 30
        for point, days_ago in ((-1, 0), (-3, 2)):
            day = (now - timedelta(days=days_ago)).date().isoformat()
            tip = f"{day} hit rate: {by_day[day]['hit_rate']}"
            assert hit_rate_points[point].get_attribute("textContent") == tip
        for chart in ("chart-tokens", "chart-spend"):
            assert driver.find_element(By.ID, chart).find_elements(By.TAG_NAME, "polyline")
        assert nothing_from_elsewhere(driver, gateway.base_url)
        shot(driver, screenshots, "overview")

        # A principal's page, reached by its link: its own figures, per model and per key.
        follow(driver, driver.find_element(By.CSS_SELECTOR, f'#per-principal tr[data-row="{keys.principal_a}"] a'))
        assert driver.find_element(By.ID, "title").text == "Principal tenant-a"
        assert figures_in(driver.find_element(By.ID, "totals")) == of_a.cards()
        assert table_rows(driver, "per-day") == {
            day: of_a.where(lambda row, d=day: day_of(row) == d).cells() for day in {day_of(r) for r in of_a.rows}
        }
        assert {k: pick(v, of_a.cells()) for k, v in table_rows(driver, "per-model").items()} == {
            model: of_a.where(lambda row, m=model: row.model == m).cells() for model in {r.model for r in of_a.rows}
        }
        assert table_rows(driver, "per-key") == {of_a.rows[0].key_id: of_a.cells()}
        assert list(table_rows(driver, "budgets")) == [f"principal:{keys.principal_a}:day"]
        shot(driver, screenshots, "principal")

        # A model's page: its figures, per principal, and its count drift.
        driver.get(f"{admin}/")
        follow(driver, driver.find_element(By.CSS_SELECTOR, '#per-model tr[data-row="cached"] a'))
        cached = ledger.where(lambda row: row.model == "cached")
        assert driver.find_element(By.ID, "title").text == "Model cached"
        assert figures_in(driver.find_element(By.ID, "totals")) == cached.cards()
        assert table_rows(driver, "per-principal") == {
            keys.principal_a: cached.where(lambda row: row.principal_id == keys.principal_a).cells(),
            keys.principal_b: cached.where(lambda row: row.principal_id == keys.principal_b).cells(),
        }
        drift = driver.find_element(By.ID, "drift")
        assert (figures_in(drift)["drift"], figures_in(drift)["drift_count"]) == cached.drift()
        assert show_misses(driver) == cached.misses()
        shot(driver, screenshots, "model")

        # A window of one day shows today's; a bad one is refused.
        driver.get(f"{admin}/?days=1")
        assert figures_in(driver.find_element(By.ID, "totals")) == ledger.where(lambda r: day_of(r) == today).cards()
        assert list(table_rows(driver, "per-day")) == [today]
        driver.get(f"{admin}/?days=0")
        assert "days must be" in driver.find_element(By.ID, "message").text

        # Logging out forgets the key.
        driver.get(f"{admin}/")
        follow(driver, driver.find_element(By.ID, "logout"))
        assert driver.current_url == f"{admin}/login" and driver.get_cookie("cachegate_admin") is None
        driver.get(f"{admin}/models/cached")
        assert driver.current_url == f"{admin}/login"
    assert sorted(path.name for path in screenshots.iterdir()) == [
        "login-refused.png",
        "model.png",
        "overview.png",
        "principal.png",
    ]


def day_of(row: LedgerRow) -> str:
    return row.at.astimezone(UTC).date().isoformat()


def budget_cells(limit: str, rows: Expected) -> dict[str, str]:
    spent = rows.money("cost")
    return {"limit": limit, "spent": format(spent, "f"), "share": f"{float(spent / Decimal(limit)) * 100:.1f} %"}


def show_misses(driver: WebDriver) -> list[tuple[str, str]]:
    """The top miss reasons shown, in order (none: the page says so)."""
    element = driver.find_element(By.ID, "misses")
    if element.tag_name == "p":
        return []
    return [(row["reason"], row["count"]) for row in misses_table(element)]


def misses_table(element: Any) -> list[dict[str, str]]:
    return [
        {"reason": row.get_attribute("data-row"), "count": figures_in(row)["count"]}
        for row in element.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]


def nothing_from_elsewhere(driver: WebDriver, base_url: str) -> bool:
    """Every resource the page loaded came from the gateway itself (no CDN: it works offline)."""
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    links = [
        element.get_attribute(attribute)
        for attribute, selector in (("src", "[src]"), ("href", "link[href]"))
        for element in driver.find_elements(By.CSS_SELECTOR, selector)
    ]
    return all(url.startswith(base_url) for url in [*loaded, *links])
