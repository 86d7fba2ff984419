"""Reading the dashboard's pages in a browser, and what they must show for a set of ledger rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from cachegate.store.base import MISS_REASONS, LedgerRow

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
    WebDriverWait(driver, 30).until(lambda _: _gone(page))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _gone(element: Any) -> bool:
    """Whether ``element`` left the document. Selenium's ``staleness_of`` knows only the stale
    reference error; ChromeDriver may instead answer a node of the unloading page with an
    "unknown error" saying the node no longer belongs to the document, which means the same."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in (exc.msg or ""):
            return True
        raise
    return False


def shot(driver: WebDriver, folder: Path, name: str) -> None:
    """A screenshot of the whole page (the window grown to its height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, int(height) + 120))
    driver.save_screenshot(str(folder / f"{name}.png"))


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
