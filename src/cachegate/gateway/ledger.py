"""The usage ledger writer: rows are appended off the request path, in batches (SPEC §2.6, §10).

While the control store is down, rows wait in a bounded buffer and are written when it returns
(SPEC §11); past the bound the oldest rows are dropped and counted, so memory stays bounded.
"""

from __future__ import annotations

import logging
from collections import deque

from cachegate.gateway import metrics
from cachegate.gateway.periodic import Periodic
from cachegate.store.base import ControlStore, LedgerRow, StoreError

log = logging.getLogger(__name__)


class LedgerWriter:
    def __init__(
        self, store: ControlStore, interval: float = 1.0, batch_size: int = 1000, max_buffered: int = 100_000
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._rows: deque[LedgerRow] = deque()
        self._max_buffered = max_buffered
        self._periodic = Periodic("ledger flush", interval, self.flush)

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def append(self, row: LedgerRow) -> None:
        if len(self._rows) >= self._max_buffered:
            self._rows.popleft()
            metrics.LEDGER_DROPPED.inc()
        self._rows.append(row)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        await self.flush()

    async def flush(self) -> bool:
        """Write everything buffered; returns False (keeping the rows) if the store is unavailable."""
        while self._rows:
            batch = [self._rows.popleft() for _ in range(min(self._batch_size, len(self._rows)))]
            try:
                await self._store.append_ledger(batch)
            except StoreError as exc:
                room = self._max_buffered - len(self._rows)
                kept = batch[len(batch) - room :] if room < len(batch) else batch
                self._rows.extendleft(reversed(kept))
                metrics.LEDGER_DROPPED.inc(len(batch) - len(kept))
                log.warning("ledger write failed, %d rows kept for later: %s", len(self._rows), exc)
                return False
            except Exception:
                # Not an outage but rows the store refuses: retrying them would block every later row.
                metrics.LEDGER_DROPPED.inc(len(batch))
                log.exception("the store refused a ledger batch of %d rows; they are dropped", len(batch))
        return True
