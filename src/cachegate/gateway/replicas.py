"""Which endpoint of a model a request goes to (SPEC §15), and what this process knows of each.

The choice itself is pure (``core.affinity``); here is the state it is made from: how many
requests each endpoint has in flight from this process, and which endpoints refused a
connection lately — a short circuit breaker: an endpoint that refused is tried after every
other for ``down_seconds``, then as usual again. A refused connection never carried the request,
so the request is sent to the next endpoint at once; any later failure (no answer in time, a
broken body) is the client's 502 as with one endpoint, for the engine may have started on it.

In-flight counts are this process's own: N gateway replicas each spill over at the threshold.
A model with one endpoint goes through the same ``send``, with nothing to choose, so its
requests still count towards the endpoint's load when another model shares it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from cachegate.core.affinity import preference, rendezvous_order
from cachegate.gateway import metrics
from cachegate.store.base import Endpoint
from cachegate.upstream.base import Upstream, UpstreamRefused, UpstreamRequest, UpstreamResponse

log = logging.getLogger(__name__)


class Replicas:
    def __init__(
        self,
        max_in_flight: int | None = None,
        down_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_in_flight = max_in_flight
        self._down_seconds = down_seconds
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._down_until: dict[str, float] = {}

    def order(self, key: bytes, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """``endpoints`` in the order to try them for ``key``: rendezvous order, the overloaded
        and then the down ones moved back."""
        if len(endpoints) == 1:
            return list(endpoints)
        by_name = {endpoint.name: endpoint for endpoint in endpoints}
        ranked = rendezvous_order(key, list(by_name))
        now = self._clock()
        down = {name for name in ranked if self._down_until.get(name, 0.0) > now}
        tried = preference(ranked, self._in_flight, self._max_in_flight, down)
        if tried[0] != ranked[0]:
            reason = "down" if ranked[0] in down else "overloaded"
            metrics.labelled(metrics.PASSED_ON, reason).inc()
        return [by_name[name] for name in tried]

    async def send(
        self,
        upstream: Upstream,
        endpoints: Sequence[Endpoint],
        request_for: Callable[[Endpoint], UpstreamRequest],
    ) -> tuple[Endpoint, UpstreamResponse]:
        """Send to the first of ``endpoints`` that takes the connection; raises the last
        ``UpstreamRefused`` when none does. The endpoint returned counts one more request in
        flight until ``finished``."""
        for position, endpoint in enumerate(endpoints):
            self.started(endpoint)
            try:
                response = await upstream.send(request_for(endpoint))
            except UpstreamRefused as exc:
                self.finished(endpoint)
                self._down_until[endpoint.name] = self._clock() + self._down_seconds
                if position == len(endpoints) - 1:
                    raise
                log.warning("endpoint %s refused the connection, trying the next: %s", endpoint.name, exc)
                metrics.labelled(metrics.PASSED_ON, "refused").inc()
                continue
            except BaseException:
                self.finished(endpoint)
                raise
            self._down_until.pop(endpoint.name, None)
            metrics.labelled(metrics.ENDPOINT_REQUESTS, endpoint.name).inc()
            return endpoint, response
        raise ValueError("no endpoint to send to")

    def started(self, endpoint: Endpoint) -> None:
        self._in_flight[endpoint.name] = self._in_flight.get(endpoint.name, 0) + 1

    def finished(self, endpoint: Endpoint) -> None:
        self._in_flight[endpoint.name] -= 1

    def in_flight(self, endpoint: str) -> int:
        return self._in_flight.get(endpoint, 0)
