"""Server limits, keys, and clients that leave early (SPEC §11, §12), against a running gateway.

A gateway of its own with tight limits: a request must arrive within a second, headers hold at
most 16 KiB, a key may have two requests in flight, an address may fail to authenticate five
times a minute, and a response whose client left is drained for its usage for at most a second.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from conftest import TEST_CONFIG
from openai import OpenAI

from cachegate.gateway.auth import FailureLimiter
from cachegate.store.base import LedgerRow
from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness
from prompts import MARK_1H, marked_system, system_text

DRAIN_SECONDS = 1.0
FAILURES = 5
LIMITS_CONFIG: dict[str, Any] = {
    **TEST_CONFIG,
    "deadlines": {**TEST_CONFIG["deadlines"], "disconnect_drain_seconds": DRAIN_SECONDS},
    "catalog_refresh_seconds": 0.2,
    "server": {"max_header_bytes": 16 * 1024, "request_receive_seconds": 1.0, "per_key_concurrency": 2},
    "auth": {"failures_per_minute": FAILURES},
}
FAST_STREAM = "chunks=20,pace=0.03"  # over well within the drain deadline
SLOW_STREAM = "chunks=20,pace=0.5"  # goes on long past it
CHAT = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    folder = tmp_path_factory.mktemp("limits")
    harness = GatewayHarness(qwen3, f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db", LIMITS_CONFIG)
    yield harness.start()
    harness.stop()


@pytest.fixture
def key(gateway: GatewayHarness) -> tuple[str, str]:
    """A key of its own for one test (its id, its secret): the ledger rows of a test are told apart by it."""

    async def create() -> tuple[str, str]:
        principal = await gateway.store.inner.create_principal(f"tenant-{time.monotonic_ns()}")
        created, secret = await gateway.store.inner.create_api_key(principal.id)
        return created.id, secret

    return gateway.call(create())


@pytest.fixture(autouse=True)
def _fresh_failure_counts(gateway: GatewayHarness) -> Iterator[None]:
    """Every test comes from the same address: one test's failed attempts must not limit the next."""
    yield
    gateway.gateway.keys.failures = FailureLimiter(FAILURES)


def openai_client(gateway: GatewayHarness, secret: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0, timeout=30)


def anthropic_client(gateway: GatewayHarness, secret: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=secret, max_retries=0, timeout=30)


def rows_of(gateway: GatewayHarness, key_id: str, count: int = 1) -> list[LedgerRow]:
    """The ledger rows of ``key_id`` once ``count`` of them are in the store (a client that left is
    billed after the drain, so its row may come a moment after the client has gone). The ledger
    writer's own rounds store them: a flush from here would race them for one journal segment."""
    deadline = time.monotonic() + 15
    while True:
        rows = [row for row in gateway.store.stored if row.key_id == key_id]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def prompt_count(gateway: GatewayHarness, secret: str, messages: list[dict[str, Any]]) -> int:
    """The prompt's tokens as the fake upstream counts them (with the gateway's own counter)."""
    usage = openai_client(gateway, secret).chat.completions.create(model="plain", messages=messages).usage
    assert usage is not None
    return usage.prompt_tokens


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    gateway: GatewayHarness,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 30,
) -> Answer:
    """One request on a connection of its own, as a plain HTTP client sends it."""
    host, port = gateway.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"content-type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def streams_cut(gateway: GatewayHarness, more_than: int | None = None) -> int:
    """How many streams the fake upstream stopped because the gateway closed the connection; with
    ``more_than``, waits (a while) for more than that many (the fake notices at its next write)."""
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{gateway.fake_url}/_fake/streams-cut") as answer:
            count = int(json.load(answer)["streams_cut"])
        if more_than is None or count > more_than or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def user_messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{system_text(60)} What is rule 3?"}]


# --- clients that leave ---------------------------------------------------------------------------


def leave_a_chat_stream_after(gateway: GatewayHarness, secret: str, body: dict[str, Any], behavior: str) -> int:
    """Read a chat stream's first three chunks, then close the connection; returns how many were read."""
    stream = openai_client(gateway, secret).chat.completions.create(
        **body, stream=True, extra_headers={"x-fake-behavior": behavior}
    )
    read = 0
    for _ in stream:
        read += 1
        if read == 3:
            break
    stream.close()
    return read


def test_a_chat_client_that_leaves_mid_stream_is_billed_the_upstreams_final_usage(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = user_messages()
    expected_prompt = prompt_count(gateway, secret, messages)

    leave_a_chat_stream_after(gateway, secret, {"model": "plain", "messages": messages}, FAST_STREAM)

    _, left = rows_of(gateway, key_id, 2)
    assert (left.disconnect, left.status, left.streaming) == ("drained", 499, True)
    assert (left.prompt_tokens, left.completion_tokens) == (expected_prompt, 20)


def test_a_chat_client_that_leaves_a_long_stream_is_billed_our_counts_and_the_upstream_is_cut(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = user_messages()
    expected_prompt = prompt_count(gateway, secret, messages)
    cut_before = streams_cut(gateway)

    read = leave_a_chat_stream_after(gateway, secret, {"model": "plain", "messages": messages}, SLOW_STREAM)

    _, left = rows_of(gateway, key_id, 2)
    assert streams_cut(gateway, more_than=cut_before) == cut_before + 1  # the upstream stream was closed
    assert (left.disconnect, left.status) == ("counted", 499)
    assert left.prompt_tokens == expected_prompt  # our own count: the upstream never said
    # Relayed content frames: at least those the client read (its first was the role frame), not all 20.
    assert read - 1 <= left.completion_tokens < 20


def test_a_client_that_leaves_commits_no_cache_entry_and_is_billed_no_write(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = [marked_system(system_text(), MARK_1H), {"role": "user", "content": "What is rule 3?"}]

    leave_a_chat_stream_after(gateway, secret, {"model": "cached", "messages": messages}, FAST_STREAM)
    (left,) = rows_of(gateway, key_id)
    again = openai_client(gateway, secret).chat.completions.create(model="cached", messages=messages).model_dump()

    assert left.disconnect == "drained"
    assert left.cache_creation_1h_tokens == 0 and left.cache_read_tokens == 0
    assert again["usage"]["cache_read_input_tokens"] == 0  # nothing was committed for the client that left
    assert again["usage"]["cache_creation_input_tokens"] > 0


def test_an_anthropic_client_that_leaves_mid_stream_is_billed_the_upstreams_final_usage(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    with anthropic_client(gateway, secret).messages.stream(
        model="plain",
        max_tokens=100,
        messages=[{"role": "user", "content": "What is rule 3?"}],
        extra_headers={"x-fake-behavior": FAST_STREAM},
    ) as stream:
        for number, _ in enumerate(stream):
            if number == 3:
                break

    (left,) = rows_of(gateway, key_id)
    assert (left.disconnect, left.route, left.completion_tokens) == ("drained", "messages", 20)
    assert left.prompt_tokens > 0


def test_an_anthropic_client_that_leaves_a_long_stream_is_billed_our_counts(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    with anthropic_client(gateway, secret).messages.stream(
        model="plain",
        max_tokens=100,
        messages=[{"role": "user", "content": "What is rule 3?"}],
        extra_headers={"x-fake-behavior": SLOW_STREAM},
    ) as stream:
        for number, _ in enumerate(stream):
            if number == 3:
                break

    (left,) = rows_of(gateway, key_id)
    assert (left.disconnect, left.route) == ("counted", "messages")
    assert left.prompt_tokens > 0 and 0 < left.completion_tokens < 20


def test_a_json_client_that_leaves_before_the_answer_is_billed_for_it(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    messages = user_messages()
    expected_prompt = prompt_count(gateway, secret, messages)

    with pytest.raises(TimeoutError):  # the client gives up and closes its connection
        request(
            gateway,
            "POST",
            "/v1/chat/completions",
            {**bearer(secret), "x-fake-behavior": "stall=0.6"},
            {"model": "plain", "messages": messages},
            timeout=0.2,
        )

    _, left = rows_of(gateway, key_id, 2)
    assert (left.disconnect, left.status, left.streaming) == ("drained", 499, False)
    assert (left.prompt_tokens, left.completion_tokens) == (expected_prompt, 20)


# --- server limits --------------------------------------------------------------------------------


def gateway_socket(gateway: GatewayHarness) -> socket.socket:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_client_that_sends_its_headers_a_byte_at_a_time_is_cut_with_408(gateway: GatewayHarness) -> None:
    sock = gateway_socket(gateway)
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200
    sent = 0
    for byte in request:  # far slower than a second for the whole request
        if select.select([sock], [], [], 0.05)[0]:
            break  # the gateway has answered (and closed): stop sending
        sock.sendall(bytes([byte]))
        sent += 1
    answer = read_all(sock)
    sock.close()

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert sent < len(request)  # cut before it was done


def test_a_client_that_stalls_in_its_body_is_disconnected(gateway: GatewayHarness, key: tuple[str, str]) -> None:
    _, secret = key
    sock = gateway_socket(gateway)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {secret}\r\ncontent-length: 1000\r\n\r\n".encode()
        + b'{"model": "plain", '
    )
    answer = read_all(sock)  # the gateway closes the connection; the rest of the body never comes
    sock.close()

    assert b"HTTP/1.1 5" not in answer


def test_oversized_headers_get_431_and_the_application_never_sees_them(gateway: GatewayHarness) -> None:
    answer = request(gateway, "GET", "/v1/models", {"x-big": "a" * 32 * 1024})

    assert answer.status_code == 431
    assert answer.json()["error"]["code"] == "request_too_large"


def test_headers_under_the_limit_pass(gateway: GatewayHarness, key: tuple[str, str]) -> None:
    _, secret = key
    answer = request(gateway, "GET", "/v1/models", {**bearer(secret), "x-big": "a" * 8 * 1024})

    assert answer.status_code == 200


def test_a_key_past_its_concurrency_limit_gets_429_in_its_clients_dialect(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    _, secret = key
    client = openai_client(gateway, secret)
    open_streams = [
        client.chat.completions.create(
            model="plain",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-fake-behavior": "chunks=40,pace=0.25"},
        )
        for _ in range(2)
    ]
    try:
        for stream in open_streams:
            next(iter(stream))  # both are in flight
        chat = request(gateway, "POST", "/v1/chat/completions", bearer(secret), CHAT)
        messages = request(gateway, "POST", "/v1/messages", {"x-api-key": secret}, {**CHAT, "max_tokens": 10})
    finally:
        for stream in open_streams:
            stream.close()

    assert chat.status_code == 429
    assert chat.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert messages.status_code == 429
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "rate_limit_error"
    other_key = request(gateway, "POST", "/v1/chat/completions", bearer(gateway.keys.a), CHAT)
    assert other_key.status_code == 200  # another key is not limited by this one's streams


# --- keys -----------------------------------------------------------------------------------------


def test_a_flood_of_random_keys_costs_one_lookup_each_then_none_and_evicts_no_real_key(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    _, secret = key
    assert request(gateway, "GET", "/v1/models", bearer(secret)).status_code == 200
    lookups = gateway.store.key_lookups

    statuses = [request(gateway, "GET", "/v1/models", bearer(f"cg-guess-{number}")).status_code for number in range(50)]

    assert statuses == [401] * FAILURES + [429] * (50 - FAILURES)
    assert gateway.store.key_lookups - lookups == FAILURES  # refused from memory past the limit
    gateway.store.down = True
    # The real key is answered from its cache (the flood did not evict it), even from the limited address.
    assert request(gateway, "GET", "/v1/models", bearer(secret)).status_code == 200


def test_a_repeated_unknown_key_costs_no_store_lookup(gateway: GatewayHarness) -> None:
    guess = bearer("cg-the-same-guess")
    assert request(gateway, "GET", "/v1/models", guess).status_code == 401
    lookups = gateway.store.key_lookups

    assert [request(gateway, "GET", "/v1/models", guess).status_code for _ in range(3)] == [401] * 3
    assert gateway.store.key_lookups == lookups


def test_a_key_revoked_by_this_process_is_refused_at_once(gateway: GatewayHarness, key: tuple[str, str]) -> None:
    key_id, secret = key
    client = openai_client(gateway, secret)
    assert client.models.list().data

    gateway.call(gateway.gateway.keys.revoke(key_id))

    assert request(gateway, "GET", "/v1/models", bearer(secret)).status_code == 401


def test_a_key_revoked_elsewhere_is_refused_after_the_next_catalog_refresh(
    gateway: GatewayHarness, key: tuple[str, str]
) -> None:
    key_id, secret = key
    assert request(gateway, "GET", "/v1/models", bearer(secret)).status_code == 200

    gateway.call(gateway.store.inner.revoke_api_key(key_id))  # as the CLI or another replica does

    statuses = []
    deadline = time.monotonic() + 10  # the refresh runs every 0.2 s here; the key cache lives 30 s
    while not statuses or (statuses[-1] == 200 and time.monotonic() < deadline):
        statuses.append(request(gateway, "GET", "/v1/models", bearer(secret)).status_code)
        time.sleep(0.05)
    assert statuses[-1] == 401
    assert set(statuses) <= {200, 401}
