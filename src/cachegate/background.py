"""Work beside the requests: periodic rounds, and backends opened in the background until they answer.

``Periodic`` runs a round of work every few seconds (the ledger flush, cache refreshes, catalog
reloads, index sweeps). A round that fails is logged and the next one goes on: a task that died
on one unexpected error would silently stop billing, refreshing or reloading for the life of the
process. Stopping lets a round in progress finish instead of cancelling it halfway, because a
ledger write cut off mid-flight could be lost, or land and then be written again.

``Reconnecting`` keeps a backend out of start-up: a backend being down must never keep the
gateway from starting (SPEC §11). The cache index is served around (requests go uncached), the
control store is waited for (requests get 503 until it answers). ``open()`` tries once; if the
backend cannot be reached, the caller starts anyway, ``get()`` raises the backend's own
"unavailable" error at once, and one background task tries again after 0.25 s, 0.5 s, 1 s, … up
to ``max_backoff`` seconds between attempts, until an attempt succeeds. Callers never wait for a
connection attempt, and while the backend is missing nothing but that one task touches the
network: no busy loop, no stampede of reconnects.

Once open, losing the backend again is the adapter's business: the PostgreSQL pools reconnect on
their next acquire, SQLite reopens nothing (its errors are per statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``work()`` every ``interval`` seconds, from ``start()`` until ``stop()``; the first round
    comes one interval after the start."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        if interval <= 0:
            raise ValueError(f"the {name} interval must be positive, not {interval!r}")
        self._name = name
        self._interval = interval
        self._work = work
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"the {self._name} has been started already")
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"cachegate-{self._name}")

    async def stop(self) -> None:
        """Ask the loop to end and wait for the round in progress, if any, to finish."""
        if self._task is None:
            return
        self._stopping.set()
        await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
                return
            except TimeoutError:
                pass
            try:
                await self._work()
            except Exception:
                log.exception("%s failed; the next round runs in %s s", self._name, self._interval)


class Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=Closable)


def backoff_delays(min_backoff: float, max_backoff: float) -> Iterator[float]:
    """``min_backoff`` doubling up to ``max_backoff``, each jittered by ±20% so replicas do not retry in step."""
    delay = min_backoff
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * 2, max_backoff)


class Reconnecting(Generic[T]):
    """Whatever ``opener`` returns, once it has returned.

    ``unavailable`` is the exception type meaning "cannot be reached now": it is retried. Any other
    exception of the first attempt is a configuration error (an unknown URL scheme, a bad option)
    and is raised, since retrying would not help; later, it is logged and retried, because the
    process is serving by then and must not stop for a backend. ``while_down`` and ``resumes`` say
    in the logs what the gateway does meanwhile and what comes back.
    """

    def __init__(
        self,
        what: str,
        opener: Callable[[], Awaitable[T]],
        unavailable: type[Exception],
        *,
        while_down: str,
        resumes: str,
        min_backoff: float = 0.25,
        max_backoff: float = 5.0,
    ) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("backoffs must satisfy 0 < min_backoff <= max_backoff")
        self._what = what
        self._opener = opener
        self._unavailable = unavailable
        self._while_down = while_down
        self._resumes = resumes
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._inner: T | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error: str | None = None
        """Why the backend is not open yet (None once open): for logs and ``/readyz``."""

    async def open(self) -> None:
        """Try the opener once now; if the backend cannot be reached, keep trying in the background."""
        try:
            self._opened(await self._opener())
        except self._unavailable as exc:
            self._failed(exc)
            self._start()

    @property
    def connected(self) -> bool:
        return self._inner is not None

    def get(self) -> T:
        """The open backend, or the ``unavailable`` error at once (never a wait)."""
        if self._inner is not None:
            return self._inner
        if self._closed:
            raise self._unavailable(f"the {self._what} is closed")
        self._start()
        raise self._unavailable(f"the {self._what} is not connected yet ({self.last_error})")

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry(), name=f"cachegate-{self._what}-reconnect")

    async def _retry(self) -> None:
        for delay in backoff_delays(self._min_backoff, self._max_backoff):
            if self._closed:
                return
            await asyncio.sleep(delay)
            try:
                inner = await self._opener()
            except self._unavailable as exc:
                self._failed(exc)
                continue
            except Exception:
                log.exception("opening the %s failed unexpectedly; retrying", self._what)
                continue
            if self._closed:  # closed while the attempt was in flight
                await inner.aclose()
                return
            self._opened(inner)
            log.info("%s connected: %s resumes", self._what, self._resumes)
            return

    def _opened(self, inner: T) -> None:
        self._inner, self.last_error = inner, None

    def _failed(self, exc: Exception) -> None:
        if self.last_error is None:
            log.warning("%s unavailable, %s and retrying in the background: %s", self._what, self._while_down, exc)
        self.last_error = str(exc)
