"""The state the endpoint choice is made from (gateway/replicas.py): in-flight counts and a short
breaker, driven over real loopback connections (one fake upstream, one port that refuses)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from cachegate.core.affinity import rendezvous_order
from cachegate.fake_upstream import start_fake_upstream
from cachegate.gateway.replicas import Replicas
from cachegate.store.base import Endpoint
from cachegate.upstream.base import UpstreamRefused, UpstreamRequest
from cachegate.upstream.httptools_client import HttptoolsUpstream

from fixed_counter import FixedCounter


def refusing_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def live() -> AsyncIterator[Endpoint]:
    runner, port = await start_fake_upstream(FixedCounter(), "127.0.0.1", 0)
    yield Endpoint("live", f"http://127.0.0.1:{port}/v1", None)
    await runner.cleanup()


def models_request(endpoint: Endpoint) -> UpstreamRequest:
    return UpstreamRequest("GET", f"{endpoint.base_url}/models", [], b"")


def key_ranking(first: str, names: list[str]) -> bytes:
    return next(key for i in range(1000) if rendezvous_order(key := i.to_bytes(4, "big"), names)[0] == first)


async def test_a_refusing_endpoint_is_passed_over_then_tried_last_until_its_down_time_is_over(live: Endpoint) -> None:
    dead = Endpoint("dead", refusing_url(), None)
    now = [1000.0]
    replicas = Replicas(down_seconds=5.0, clock=lambda: now[0])
    key = key_ranking("dead", ["dead", "live"])
    upstream = HttptoolsUpstream(connect_timeout=5)
    try:
        assert replicas.order(key, [live, dead]) == [dead, live]
        endpoint, response = await replicas.send(upstream, [dead, live], models_request)
        assert endpoint == live and response.status == 200
        assert (replicas.in_flight("live"), replicas.in_flight("dead")) == (1, 0)
        response.release()
        replicas.finished(endpoint)

        now[0] += 4.9
        assert replicas.order(key, [live, dead]) == [live, dead]  # down: tried last
        now[0] += 0.2
        assert replicas.order(key, [live, dead]) == [dead, live]  # its time is over: first again
        assert replicas.in_flight("live") == 0
    finally:
        await upstream.aclose()


async def test_when_every_endpoint_refuses_the_last_refusal_is_raised() -> None:
    dead, also_dead = Endpoint("dead", refusing_url(), None), Endpoint("also-dead", refusing_url(), None)
    replicas = Replicas()
    upstream = HttptoolsUpstream(connect_timeout=5)
    try:
        with pytest.raises(UpstreamRefused):
            await replicas.send(upstream, [dead, also_dead], models_request)
        assert (replicas.in_flight("dead"), replicas.in_flight("also-dead")) == (0, 0)
    finally:
        await upstream.aclose()


def test_busy_endpoints_are_moved_back_and_one_endpoint_is_not_ranked() -> None:
    one, two = Endpoint("one", "http://one/v1", None), Endpoint("two", "http://two/v1", None)
    replicas = Replicas(max_in_flight=1)
    key = key_ranking("one", ["one", "two"])
    replicas.started(one)
    assert replicas.order(key, [one, two]) == [one, two]  # at the threshold
    replicas.started(one)
    assert replicas.order(key, [one, two]) == [two, one]  # past it
    assert replicas.order(key, [one]) == [one]
