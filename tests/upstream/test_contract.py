"""The Upstream port's contract, run against its adapter (conftest's ``make_upstream`` builds it).

What the gateway relies on: ``send`` returns at the head, ``chunks`` yields the body as it arrives
(with back-pressure), ``read`` returns all of it, ``release`` reuses or drops the connection, and
every failure is an UpstreamUnavailable (nothing usable arrived) or an UpstreamBroken (the body
broke off) — never a raw socket or parser error.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator

import orjson
import pytest
import trustme

from cachegate.upstream.base import Upstream, UpstreamBroken, UpstreamRequest, UpstreamResponse, UpstreamUnavailable

from .conftest import MakeUpstream
from .servers import (
    BLAST,
    GIVE_UP_AFTER,
    Blaster,
    RawServer,
    Request,
    answer_each,
    chunk,
    eventually,
    read_request,
    response,
    until_still,
)
from fixed_counter import PROMPT_TOKENS

SSE_HEAD = response(
    200, headers=(("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")), length=False
)


def get(url: str) -> UpstreamRequest:
    return UpstreamRequest("GET", url, [], b"")


def post(url: str, body: bytes = b"{}", headers: list[tuple[bytes, bytes]] | None = None) -> UpstreamRequest:
    return UpstreamRequest("POST", url, [(b"content-type", b"application/json"), *(headers or [])], body)


def chat(base_url: str, *, stream: bool = False, behavior: str | None = None) -> UpstreamRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = [(b"x-fake-behavior", behavior.encode())] if behavior else []
    return post(f"{base_url}/chat/completions", orjson.dumps(body), headers)


async def read_all(upstream: Upstream, request: UpstreamRequest) -> tuple[UpstreamResponse, bytes]:
    response = await upstream.send(request)
    try:
        return response, await response.read()
    finally:
        response.release()


async def gather_chunks(chunks: AsyncIterator[bytes], size: int) -> bytes:
    """At least ``size`` bytes from ``chunks`` (a network chunk may come in several pieces)."""
    data = b""
    while len(data) < size:
        data += await asyncio.wait_for(anext(chunks), GIVE_UP_AFTER)
    return data


async def read_to_the_end(response: UpstreamResponse, reading: str, give_up: float = GIVE_UP_AFTER) -> None:
    """The whole body through ``read()`` or ``chunks()``; a hang fails the test instead of stalling it."""

    async def through_chunks() -> None:
        async for _ in response.chunks():
            pass

    await asyncio.wait_for(response.read() if reading == "read" else through_chunks(), give_up)


async def settle() -> None:
    """Let the event loop take in what the server just did to the connection (an EOF, a close)."""
    await asyncio.sleep(0.01)


# --- against the project's fake upstream --------------------------------------------------------


async def test_a_json_response_arrives_with_its_status_headers_and_body(upstream: Upstream, fake_upstream_url: str):
    response, body = await read_all(upstream, chat(fake_upstream_url))
    assert response.status == 200
    assert dict(response.headers)[b"content-type"].startswith(b"application/json")
    assert all(name == name.lower() for name, _ in response.headers)
    assert orjson.loads(body)["usage"]["prompt_tokens"] == PROMPT_TOKENS


async def test_an_error_status_is_a_response_not_an_exception(upstream: Upstream, fake_upstream_url: str):
    response, body = await read_all(upstream, chat(fake_upstream_url, behavior="status=503"))
    assert response.status == 503
    assert orjson.loads(body)["error"]["type"] == "server_error"


async def test_an_sse_stream_arrives_whole_through_chunks(upstream: Upstream, fake_upstream_url: str):
    response = await upstream.send(chat(fake_upstream_url, stream=True, behavior="chunks=5"))
    try:
        data = b"".join([piece async for piece in response.chunks()])
    finally:
        response.release()
    assert dict(response.headers)[b"content-type"] == b"text/event-stream"
    assert data.endswith(b"data: [DONE]\n\n")
    assert data.count(b"data: ") == 9  # role, 5 words, finish, usage, [DONE]


async def test_a_stream_cut_by_the_upstream_is_broken(upstream: Upstream, fake_upstream_url: str):
    response = await upstream.send(chat(fake_upstream_url, stream=True, behavior="cut=2"))
    received = b""
    try:
        with pytest.raises(UpstreamBroken):
            async for piece in response.chunks():
                received += piece
    finally:
        response.release()
    assert received.startswith(b"data: ")  # what arrived before the cut was handed over


# --- bodies and streaming ------------------------------------------------------------------------


async def test_stream_chunks_are_handed_over_before_the_stream_ends(upstream: Upstream):
    rest_may_follow = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await rest_may_follow.wait()
        writer.write(chunk(b"data: 2\n\n") + chunk(b""))
        await reader.read()

    async with RawServer(handler) as server:
        response = await upstream.send(get(server.url()))
        chunks = response.chunks()
        try:
            # The server holds the rest back until this arrives: a buffering adapter would hang here.
            assert await gather_chunks(chunks, 9) == b"data: 1\n\n"
            rest_may_follow.set()
            assert b"".join([piece async for piece in chunks]) == b"data: 2\n\n"
        finally:
            response.release()


def _content_length(body: bytes) -> bytes:
    return response(200, body)


def _chunked(body: bytes) -> bytes:
    head = response(200, headers=(("Transfer-Encoding", "chunked"),), length=False)
    return head + chunk(body[:5]) + chunk(body[5:]) + chunk(b"")


def _until_eof(body: bytes) -> bytes:
    return response(200, body, length=False)


@pytest.mark.parametrize("framing", [_content_length, _chunked, _until_eof], ids=["length", "chunked", "eof"])
@pytest.mark.parametrize("reading", ["read", "chunks"])
async def test_every_body_framing_is_read_to_its_end(upstream: Upstream, framing, reading: str):
    body = b'{"id": "x", "choices": []}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(framing(body))  # the server then closes: the end of an EOF-framed body

    async with RawServer(handler) as server:
        response = await upstream.send(get(server.url()))
        try:
            received = await response.read() if reading == "read" else b"".join([p async for p in response.chunks()])
        finally:
            response.release()
    assert received == body


async def test_an_interim_response_is_skipped(upstream: Upstream):
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response(200, b"final")
    async with RawServer(answer_each(lambda _: answer)) as server:
        response_, body = await read_all(upstream, get(server.url()))
    assert (response_.status, body) == (200, b"final")
    assert b"link" not in dict(response_.headers)


async def test_a_response_to_head_has_no_body_and_the_next_request_works(upstream: Upstream):
    def answer(request: Request) -> bytes:
        if request.method == "HEAD":
            return response(200, headers=(("Content-Length", "5"),), length=False)
        return response(200, b"hello")

    async with RawServer(answer_each(answer)) as server:
        head, head_body = await read_all(upstream, UpstreamRequest("HEAD", server.url(), [], b""))
        _, body = await read_all(upstream, get(server.url()))
    assert (head.status, head_body, body) == (200, b"", b"hello")


async def test_hop_by_hop_headers_are_removed_and_names_lower_cased(upstream: Upstream):
    headers = (
        ("Content-Type", "text/plain"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("X-Custom", "a"),
        ("Proxy-Authenticate", "Basic"),
        ("Set-Cookie", "s=1"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "t=2"),
    )
    answer = response(200, headers=headers, length=False) + chunk(b"ok") + chunk(b"")
    async with RawServer(answer_each(lambda _: answer)) as server:
        response_, body = await read_all(upstream, get(server.url()))
    assert body == b"ok"
    assert response_.headers == [
        (b"content-type", b"text/plain"),
        (b"x-custom", b"a"),
        (b"set-cookie", b"s=1"),
        (b"set-cookie", b"t=2"),
    ]


# --- the request on the wire ---------------------------------------------------------------------


async def test_the_request_carries_host_length_and_the_callers_headers(upstream: Upstream):
    seen: list[Request] = []

    def answer(request: Request) -> bytes:
        seen.append(request)
        return response(200, b"ok")

    async with RawServer(answer_each(answer)) as server:
        body = b'{"model": "m"}'
        await read_all(upstream, post(server.url("/v1/x?q=1"), body, [(b"x-trace", b"abc")]))
        port = server.url().split(":")[2].rstrip("/")
    (request,) = seen
    assert (request.method, request.target, request.body) == ("POST", "/v1/x?q=1", body)
    assert request.header("host") == f"127.0.0.1:{port}"
    assert request.header("content-length") == str(len(body))
    assert request.header("content-type") == "application/json"
    assert request.header("x-trace") == "abc"


async def test_a_path_is_sent_escaped(upstream: Upstream):
    seen: list[Request] = []
    async with RawServer(answer_each(lambda request: seen.append(request) or response(200))) as server:
        await read_all(upstream, get(server.url("/v1/a b/é?q=1")))
    assert seen[0].target == "/v1/a%20b/%C3%A9?q=1"


async def test_a_one_mebibyte_request_body_arrives_intact(upstream: Upstream):
    body = bytes(range(256)) * 4096

    def answer(request: Request) -> bytes:
        return response(200, hashlib.sha256(request.body).hexdigest().encode())

    async with RawServer(answer_each(answer)) as server:
        _, digest = await read_all(upstream, post(server.url(), body))
    assert digest == hashlib.sha256(body).hexdigest().encode()


# --- connections ---------------------------------------------------------------------------------


async def test_sequential_requests_share_one_keep_alive_connection(upstream: Upstream):
    async with RawServer(answer_each(lambda request: response(200, request.target.encode()))) as server:
        bodies = [(await read_all(upstream, post(server.url(f"/{i}"))))[1] for i in range(3)]
        assert server.accepted == 1
    assert bodies == [b"/0", b"/1", b"/2"]


async def test_a_connection_close_response_is_read_and_its_connection_not_reused(upstream: Upstream):
    # The server says "close" but leaves the socket open: only the header stops a reuse.
    answer = response(200, b"bye", headers=(("Connection", "close"),))
    async with RawServer(answer_each(lambda _: answer)) as server:
        bodies = [(await read_all(upstream, post(server.url())))[1] for _ in range(2)]
        assert server.accepted == 2
    assert bodies == [b"bye", b"bye"]


async def test_a_released_unread_response_does_not_leave_its_connection_to_the_next_request(upstream: Upstream):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            if request.target == "/long":
                writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))  # and more would follow
            else:
                writer.write(response(200, b"short"))

    async with RawServer(handler) as server:
        long = await upstream.send(get(server.url("/long")))
        long.release()
        _, body = await read_all(upstream, get(server.url("/short")))
        assert server.accepted == 2
    assert body == b"short"


async def test_an_idle_connection_the_server_closed_is_not_reused(upstream: Upstream):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))  # then closes: its keep-alive timeout, in short

    async with RawServer(handler) as server:
        await read_all(upstream, post(server.url()))
        await eventually(lambda: server.open_connections == 0)
        await settle()
        _, body = await read_all(upstream, post(server.url()))
        assert server.accepted == 2
    assert body == b"ok"


async def test_the_keep_alive_race_is_retried_on_a_new_connection(upstream: Upstream):
    """The server closes a reused connection just as a request arrives on it, without answering.

    GET here; the httptools adapter also retries a POST (its own tests).
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: closed unanswered

    async with RawServer(handler) as server:
        await read_all(upstream, get(server.url()))
        _, body = await read_all(upstream, get(server.url()))
        assert server.accepted == 2
    assert body == b"ok"


async def test_aclose_closes_idle_and_busy_connections(upstream: Upstream):

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            if request.target == "/busy":
                writer.write(response(200, b"part", headers=(("Content-Length", "100"),), length=False))
                await reader.read()  # until the client closes the connection
                return
            writer.write(response(200, b"done"))

    async with RawServer(handler) as server:
        busy = await upstream.send(get(server.url("/busy")))
        await read_all(upstream, get(server.url("/idle")))  # on a second connection, then left idle
        assert server.open_connections == 2
        await upstream.aclose()
        await eventually(lambda: server.open_connections == 0)
        with pytest.raises(UpstreamBroken):
            await busy.read()
        busy.release()


# --- failures ------------------------------------------------------------------------------------


async def test_a_refused_connection_is_unavailable(upstream: Upstream):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    with pytest.raises(UpstreamUnavailable):
        await upstream.send(post(f"http://127.0.0.1:{port}/v1/chat/completions"))


async def test_an_unknown_host_is_unavailable(upstream: Upstream):
    with pytest.raises(UpstreamUnavailable):
        await upstream.send(post("http://upstream.invalid/v1/chat/completions"))


async def test_a_url_that_is_not_http_is_unavailable(upstream: Upstream):
    with pytest.raises(UpstreamUnavailable):
        await upstream.send(get("ftp://127.0.0.1/v1/models"))


@pytest.mark.parametrize("read_first", [False, True], ids=["at-once", "after-the-request"])
async def test_a_server_that_closes_without_answering_is_unavailable(upstream: Upstream, read_first: bool):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if read_first:
            await read_request(reader)

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamUnavailable):
            await upstream.send(post(server.url()))


async def test_a_malformed_status_line_is_unavailable(upstream: Upstream):
    async with RawServer(answer_each(lambda _: b"HTTP/1.1 two hundred\r\n\r\n")) as server:
        with pytest.raises(UpstreamUnavailable):
            await upstream.send(get(server.url()))


@pytest.mark.parametrize("reading", ["read", "chunks"])
async def test_a_body_cut_midway_is_broken(upstream: Upstream, reading: str):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"x" * 50, headers=(("Content-Length", "100"),), length=False))

    async with RawServer(handler) as server:
        response_ = await upstream.send(get(server.url()))
        try:
            with pytest.raises(UpstreamBroken):
                await read_to_the_end(response_, reading)
        finally:
            response_.release()


async def test_a_header_stall_past_the_read_timeout_is_unavailable(make_upstream: MakeUpstream):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # no answer, until the client gives up

    upstream = make_upstream(read_timeout=0.2)
    async with RawServer(handler) as server:
        with pytest.raises(UpstreamUnavailable):
            await upstream.send(get(server.url()))


@pytest.mark.parametrize("reading", ["read", "chunks"])
async def test_a_malformed_chunked_body_is_broken(upstream: Upstream, reading: str):
    head_arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await head_arrived.wait()
        writer.write(b"zz\r\n")  # not a chunk size
        await reader.read()

    async with RawServer(handler) as server:
        response_ = await upstream.send(get(server.url()))
        head_arrived.set()
        try:
            with pytest.raises(UpstreamBroken):
                await read_to_the_end(response_, reading, give_up=1.0)
        finally:
            response_.release()


@pytest.mark.parametrize("reading", ["read", "chunks"])
async def test_a_body_stall_past_the_read_timeout_is_broken(make_upstream: MakeUpstream, reading: str):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await reader.read()  # and nothing more, until the client gives up

    upstream = make_upstream(read_timeout=0.2)
    async with RawServer(handler) as server:
        response_ = await upstream.send(get(server.url()))
        try:
            with pytest.raises(UpstreamBroken):
                await read_to_the_end(response_, reading)
        finally:
            response_.release()


async def test_a_stream_longer_than_the_read_timeout_is_not_cut_while_its_chunks_keep_coming(
    make_upstream: MakeUpstream,
):
    """The read timeout bounds each wait for the next bytes, not the whole body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        for n in range(8):  # 8 x 0.1 s: four read timeouts in all, never one between two chunks
            writer.write(chunk(b"data: %d\n\n" % n))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    upstream = make_upstream(read_timeout=0.2)
    async with RawServer(handler) as server:
        response_ = await upstream.send(get(server.url()))
        try:
            received = b"".join([part async for part in response_.chunks()])
        finally:
            response_.release()
    assert received == b"".join(b"data: %d\n\n" % n for n in range(8))


async def test_a_tls_handshake_stall_past_the_connect_timeout_is_unavailable(make_upstream: MakeUpstream):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a plain TCP server: it never answers the TLS hello

    upstream = make_upstream(connect_timeout=0.2)
    async with RawServer(handler) as server:
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(upstream.send(get(server.url().replace("http:", "https:"))), GIVE_UP_AFTER)


async def test_an_untrusted_tls_certificate_is_unavailable(upstream: Upstream):
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_tls)
    async with RawServer(answer_each(lambda _: response(200, b"ok")), tls=server_tls) as server:
        with pytest.raises(UpstreamUnavailable):
            await upstream.send(get(server.url()))


# --- back-pressure -------------------------------------------------------------------------------


async def test_a_slow_reader_holds_back_the_server(upstream: Upstream):
    blaster = Blaster()
    async with RawServer(blaster) as server:
        response_ = await upstream.send(get(server.url()))
        chunks = response_.chunks()
        try:
            received = len(await asyncio.wait_for(anext(chunks), GIVE_UP_AFTER))
            # The client reads nothing more: without back-pressure its adapter would take in all
            # 10 MiB here; with it, the server's writes stall once the buffers on the way are full.
            assert await until_still(lambda: blaster.sent) < BLAST
            async for piece in chunks:
                received += len(piece)
        finally:
            response_.release()
        assert server.accepted == 1
    assert received == BLAST
