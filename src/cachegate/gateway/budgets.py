"""Budgets on the request path (SPEC §13): a key or principal past its budget gets a 429.

The check is in memory: a few dict lookups per request, never a store query. What it compares
with each limit is ``core.budgets.Spend``: the store's running totals (every replica's rows that
reached the store), reloaded at start and every ``budgets.refresh_seconds``, plus the rows this
process billed that the store does not have yet (the ledger writer tells of each row as it is
billed and as it is stored). A reload runs between two ledger rounds, so no row is counted twice
or missed.

How far spend can pass a budget (docs/spec.md §13): a request is priced only when it ends, and
another replica's spend is seen here only once it has reached the store and this replica has
reloaded; both are bounded, and the bound is written down and tested
(tests/cli/test_budget_replicas.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from cachegate.asgi import Headers, Refusal
from cachegate.background import Periodic
from cachegate.core.budgets import BudgetPeriod, BudgetSubject, Spend, Windows, window_end
from cachegate.gateway import metrics
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.ledger import LedgerWriter
from cachegate.store.base import ApiKey, Budget, Catalog, ControlStore, LedgerRow, StoreError

log = logging.getLogger(__name__)

# A budget refusal will not clear by retrying soon: the SDKs of both dialects honour this header
# and do not retry (they retry every other 429 by default).
NO_RETRY: Final[Headers] = [(b"x-should-retry", b"false")]

_SECONDS_PER_DAY = 86_400


class BudgetExceeded(Refusal):
    """429 naming the budget that is spent: whose (this key or its principal), which period, the limit."""

    def __init__(self, budget: Budget, at: datetime) -> None:
        whose = "this API key" if budget.subject is BudgetSubject.KEY else "this API key's principal"
        windows = Windows.at(at)
        which = {
            BudgetPeriod.DAY: f"daily budget (UTC day {windows.day})",
            BudgetPeriod.MONTH: f"monthly budget (UTC month {windows.month})",
            BudgetPeriod.TOTAL: "total budget",
        }[budget.period]
        end = window_end(budget.period, at)
        until = f"; it renews at {end.strftime('%Y-%m-%dT%H:%M:%SZ')}" if end is not None else ""
        super().__init__(
            429,
            f"budget exceeded: the {which} of {whose}, {budget.limit}, is spent{until}",
            "budget_exceeded",
            type_="insufficient_quota",
        )
        self.budget = budget


class Budgets:
    def __init__(
        self,
        store: ControlStore,
        catalog: CatalogCache,
        ledger: LedgerWriter,
        refresh_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._ledger = ledger
        self._clock = clock
        self._spend = Spend()
        self._periodic = Periodic("budget spend reload", refresh_seconds, self.reload)
        self._indexed: Catalog | None = None
        self._by_subject: dict[tuple[str, str], tuple[Budget, ...]] = {}
        self._day = -1
        self._windows = Windows("", "")
        self.loaded = False
        ledger.observe(self)

    async def start(self) -> None:
        """Load the spend now if the store answers (else at the next round), then reload periodically."""
        await self.reload()
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def reload(self) -> None:
        """Replace the store's part of the spend with its current totals; a store that fails keeps the last."""
        async with self._ledger.between_rounds():
            now = datetime.fromtimestamp(self._clock(), UTC)
            try:
                totals = await self._store.spend_totals(now)
            except StoreError as exc:
                log.warning("budget spend reload failed, keeping the last one: %s", exc)
                return
            self._spend.load(totals, Windows.at(now))
        self.loaded = True

    def check(self, key: ApiKey) -> None:
        """Raise ``BudgetExceeded`` if a budget of the key or of its principal is spent (spend ≥ limit)."""
        by_subject = self._budgets_by_subject()
        if not by_subject:
            return
        now = self._clock()
        windows = self._windows_at(now)
        for subject in ((BudgetSubject.KEY, key.id), (BudgetSubject.PRINCIPAL, key.principal_id)):
            for budget in by_subject.get(subject, ()):
                if self._spend.spent(subject[0], subject[1], budget.period, windows) >= budget.limit:
                    metrics.labelled(metrics.BUDGET_REFUSALS, budget.period.value).inc()
                    raise BudgetExceeded(budget, datetime.fromtimestamp(now, UTC))

    # LedgerObserver

    def billed(self, row: LedgerRow) -> None:
        if row.cost:
            self._spend.billed(row.principal_id, row.key_id, row.at, row.cost)

    def settled(self, rows: Sequence[LedgerRow]) -> None:
        for row in rows:
            if row.cost:
                self._spend.settled(row.principal_id, row.key_id, row.at, row.cost)

    def _budgets_by_subject(self) -> dict[tuple[str, str], tuple[Budget, ...]]:
        """The catalog's budgets by subject, indexed again only when a reload brought a new catalog."""
        catalog = self._catalog.current
        if catalog is not self._indexed:
            grouped: dict[tuple[str, str], list[Budget]] = {}
            for budget in catalog.budgets:
                grouped.setdefault((budget.subject.value, budget.subject_id), []).append(budget)
            self._by_subject = {subject: tuple(budgets) for subject, budgets in grouped.items()}
            self._indexed = catalog
        return self._by_subject

    def _windows_at(self, now: float) -> Windows:
        """The windows of ``now``, formatted once a UTC day rather than once a request."""
        day = int(now // _SECONDS_PER_DAY)
        if day != self._day:
            self._windows = Windows.at(datetime.fromtimestamp(now, UTC))
            self._day = day
        return self._windows
