"""What the httptools adapter promises beyond the port's contract (test_contract.py runs that part):
when it retries, how it frames a request, how it bounds its buffers and its connections, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from cachegate.upstream._http1 import HIGH_WATER
from cachegate.upstream._request import target
from cachegate.upstream.base import UpstreamRequest, UpstreamUnavailable
from cachegate.upstream.httptools_client import HttptoolsResponse, HttptoolsUpstream

from .servers import BLAST, GIVE_UP_AFTER, Blaster, RawServer, Request, answer_each, read_request, response, until_still

SOCKET_READ = 256 * 1024  # the most asyncio's transports read from a socket at once


@pytest.fixture
def server_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server's TLS context whose certificate the client trusts: its CA is put in SSL_CERT_FILE,
    which ssl.create_default_context() reads (the adapter takes no TLS settings of its own)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return context


@pytest.fixture
async def upstream() -> AsyncIterator[HttptoolsUpstream]:
    client = HttptoolsUpstream()
    yield client
    await client.aclose()


def post(url: str, body: bytes = b"{}", headers: list[tuple[bytes, bytes]] | None = None) -> UpstreamRequest:
    return UpstreamRequest("POST", url, headers or [], body)


async def read_all(upstream: HttptoolsUpstream, request: UpstreamRequest) -> bytes:
    response = await upstream.send(request)
    try:
        return await response.read()
    finally:
        response.release()


# --- the keep-alive race -------------------------------------------------------------------------


async def test_a_post_that_meets_a_closing_idle_connection_is_sent_again(upstream: HttptoolsUpstream):
    seen: list[Request] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await read_request(reader)
        assert first is not None
        seen.append(first)
        writer.write(response(200, b"ok"))
        await writer.drain()
        await read_request(reader)  # closed as the next request arrives, unanswered

    async with RawServer(handler) as server:
        await read_all(upstream, post(server.url(), b"first"))
        assert await read_all(upstream, post(server.url(), b"second")) == b"ok"
        assert server.accepted == 2
    assert [request.body for request in seen] == [b"first", b"second"]


async def test_a_new_connection_closed_without_an_answer_is_not_retried(upstream: HttptoolsUpstream):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamUnavailable):
            await upstream.send(post(server.url()))
        assert server.accepted == 1


async def test_a_reused_connection_that_broke_off_mid_head_is_not_retried(upstream: HttptoolsUpstream):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")  # the server saw this request: it must not be resent

    async with RawServer(handler) as server:
        await read_all(upstream, post(server.url()))
        with pytest.raises(UpstreamUnavailable):
            await upstream.send(post(server.url()))
        assert server.accepted == 1


async def test_a_response_followed_by_stray_bytes_leaves_its_connection_unused(upstream: HttptoolsUpstream):
    stray = response(200, b"second") + b"HTTP/1.1 408 Request Timeout\r\n\r\n"
    async with RawServer(answer_each(lambda _: stray)) as server:
        assert await read_all(upstream, post(server.url())) == b"second"
        assert await read_all(upstream, post(server.url())) == b"second"
        assert server.accepted == 2


# --- the request on the wire ---------------------------------------------------------------------


async def test_the_framing_headers_are_the_adapters_own(upstream: HttptoolsUpstream):
    seen: list[Request] = []
    callers = [
        (b"Host", b"elsewhere.example"),
        (b"content-length", b"999"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close"),
        (b"upgrade", b"h2c"),
        (b"x-kept", b"1"),
    ]
    async with RawServer(answer_each(lambda request: seen.append(request) or response(200))) as server:
        await read_all(upstream, post(server.url(), b"abc", callers))
        host = server.url().removeprefix("http://").rstrip("/")
    assert seen[0].headers == [("host", host), ("x-kept", "1"), ("content-length", "3")]


async def test_a_bodyless_get_has_no_length_and_an_empty_post_has_length_zero(upstream: HttptoolsUpstream):
    seen: list[Request] = []
    async with RawServer(answer_each(lambda request: seen.append(request) or response(200))) as server:
        await read_all(upstream, UpstreamRequest("GET", server.url(), [], b""))
        await read_all(upstream, UpstreamRequest("POST", server.url(), [], b""))
    assert [request.header("content-length") for request in seen] == [None, "0"]


@pytest.mark.parametrize("value", [b"a\r\nx-injected: 1", b"a\nb", b"a\rb"])
async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent(
    upstream: HttptoolsUpstream, value: bytes
):
    async with RawServer(answer_each(lambda _: response(200))) as server:
        with pytest.raises(ValueError, match="CR or LF"):
            await upstream.send(post(server.url(), headers=[(b"x-trace", value)]))
        assert server.accepted == 0


@pytest.mark.parametrize(
    ("url", "origin", "head"),
    [
        ("http://example.com/v1/models", "http://example.com", b"GET /v1/models HTTP/1.1\r\nhost: example.com\r\n"),
        ("http://example.com:80", "http://example.com", b"GET / HTTP/1.1\r\nhost: example.com\r\n"),
        ("https://example.com:443/a?b=c", "https://example.com", b"GET /a?b=c HTTP/1.1\r\nhost: example.com\r\n"),
        ("http://[::1]:8000/v1", "http://[::1]:8000", b"GET /v1 HTTP/1.1\r\nhost: [::1]:8000\r\n"),
        ("https://bücher.de/x%2Fy z", "https://bücher.de", b"GET /x%2Fy%20z HTTP/1.1\r\nhost: xn--bcher-kva.de\r\n"),
    ],
)
def test_a_url_gives_the_pool_its_origin_and_the_request_its_line_and_host(url: str, origin: str, head: bytes):
    parsed = target("GET", url)
    assert (parsed.origin, parsed.head) == (origin, head)


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///path", "http://example.com:99999/", "http://a..b/"])
def test_a_url_it_cannot_send_to_is_unavailable(url: str):
    with pytest.raises(UpstreamUnavailable):
        target("GET", url)


@pytest.mark.parametrize("method", ["", "GET /x HTTP/1.1\r\nx:", "PÖST"])
def test_a_method_that_is_not_a_token_is_refused(method: str):
    with pytest.raises(ValueError, match="not an HTTP method"):
        target(method, "http://example.com/")


# --- buffers and connections ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_the_unread_body_it_buffers_stays_under_the_high_water_mark(
    upstream: HttptoolsUpstream, tls: bool, request: pytest.FixtureRequest
):
    blaster = Blaster()
    async with RawServer(blaster, tls=request.getfixturevalue("server_tls") if tls else None) as server:
        response = await upstream.send(UpstreamRequest("GET", server.url(), [], b""))
        assert isinstance(response, HttptoolsResponse)
        connection = response._connection  # white box: the protocol's own count of unread bytes
        try:
            chunks = response.chunks()
            received = len(await anext(chunks))
            await until_still(lambda: blaster.sent)
            assert HIGH_WATER < connection._buffered <= HIGH_WATER + SOCKET_READ
            assert connection._paused
            received += sum([len(piece) async for piece in chunks])  # taking the buffer resumes reading
            assert received == BLAST
        finally:
            response.release()


async def test_at_most_max_connections_per_origin_are_open_and_the_next_request_waits():
    async with (
        contextlib.aclosing(HttptoolsUpstream(max_connections_per_origin=2)) as upstream,
        RawServer(answer_each(lambda request: response(200, request.target.encode()))) as server,
    ):
        held = [await upstream.send(post(server.url(f"/{i}"))) for i in range(2)]
        waiting = asyncio.create_task(read_all(upstream, post(server.url("/2"))))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        held[0].release()
        assert await asyncio.wait_for(waiting, GIVE_UP_AFTER) == b"/2"  # on the connection released
        held[1].release()
        assert server.accepted == 2


@pytest.mark.parametrize("handed_first", [False, True], ids=["cancelled-in-line", "cancelled-once-handed"])
async def test_a_request_cancelled_while_waiting_for_a_connection_passes_its_turn_on(handed_first: bool):
    async with (
        contextlib.aclosing(HttptoolsUpstream(max_connections_per_origin=1)) as upstream,
        RawServer(answer_each(lambda _: response(200, b"ok"))) as server,
    ):
        held = await upstream.send(post(server.url()))
        cancelled = asyncio.create_task(upstream.send(post(server.url())))
        waiting = asyncio.create_task(read_all(upstream, post(server.url())))
        await asyncio.sleep(0.05)
        if handed_first:
            held.release()  # the connection goes to the first in line, which is cancelled before it runs
            cancelled.cancel()
        else:
            cancelled.cancel()
            held.release()
        assert await asyncio.wait_for(waiting, GIVE_UP_AFTER) == b"ok"
        assert server.accepted == 1


async def test_a_connection_the_server_closed_frees_its_slot():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok", headers=(("Connection", "close"),)))

    async with (
        contextlib.aclosing(HttptoolsUpstream(max_connections_per_origin=1)) as upstream,
        RawServer(handler) as server,
    ):
        bodies = [await asyncio.wait_for(read_all(upstream, post(server.url())), GIVE_UP_AFTER) for _ in range(3)]
        assert server.accepted == 3
    assert bodies == [b"ok"] * 3


async def test_a_request_waiting_for_a_connection_fails_when_the_client_closes():
    async with (
        contextlib.aclosing(HttptoolsUpstream(max_connections_per_origin=1)) as upstream,
        RawServer(answer_each(lambda _: response(200, b"ok"))) as server,
    ):
        held = await upstream.send(post(server.url()))
        waiting = asyncio.create_task(upstream.send(post(server.url())))
        await asyncio.sleep(0.05)
        await upstream.aclose()
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(waiting, GIVE_UP_AFTER)
        held.release()


async def test_a_released_response_cannot_be_read(upstream: HttptoolsUpstream):
    async with RawServer(answer_each(lambda _: response(200, b"ok"))) as server:
        response_ = await upstream.send(post(server.url()))
        response_.release()
        with pytest.raises(RuntimeError, match="released"):
            await response_.read()


# --- TLS -----------------------------------------------------------------------------------------


async def test_https_is_verified_with_the_default_trust_store_and_kept_alive(
    upstream: HttptoolsUpstream, server_tls: ssl.SSLContext
):
    async with RawServer(answer_each(lambda request: response(200, request.body)), tls=server_tls) as server:
        bodies = [await read_all(upstream, post(server.url(), b"%d" % i)) for i in range(3)]
        assert server.accepted == 1
    assert bodies == [b"0", b"1", b"2"]
