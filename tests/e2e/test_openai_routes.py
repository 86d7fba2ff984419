"""The OpenAI routes beside chat, as users call them (SPEC §2 other routes, §8, §12).

Completions, Responses and embeddings through the official SDK: each billed in the ledger under
its own route with the upstream's usage, the upstream's cache counts and llama.cpp's ``timings``
never reaching the client. Then what is not a route: dot segments, unknown paths, methods.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai import OpenAI

from harness import GatewayHarness
from prompts import marked_system, system_text

pytestmark = pytest.mark.over_http  # and so against `serve --workers 2` too (conftest.py)

CACHED = 4321  # what the fake upstream says its own prefix cache held: never shown to a client
PRICE_IN, PRICE_OUT = Decimal("0.000001"), Decimal("0.000002")  # model "cached" in conftest


def client(gateway: GatewayHarness, behavior: str | None = None, key: str | None = None) -> OpenAI:
    headers = {"x-fake-behavior": behavior} if behavior else None
    return OpenAI(
        base_url=f"{gateway.base_url}/v1",
        api_key=key or gateway.keys.a,
        max_retries=0,
        timeout=30,
        default_headers=headers,
    )


def forwarded(gateway: GatewayHarness) -> dict[str, Any]:
    """The body the fake upstream received last."""
    with urllib.request.urlopen(f"{gateway.fake_url}/_fake/last-request") as response:
        return json.loads(response.read())


def leaks(value: Any) -> list[str]:
    """Where a parsed JSON value carries engine telemetry or the upstream's cache count."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                if name in ("timings", "cache_n", "prompt_progress"):
                    found.append(f"{path}.{name}")
                if name == "cached_tokens" and child == CACHED:
                    found.append(f"{path}.{name}")
                walk(child, f"{path}.{name}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}[{index}]")

    walk(value, "$")
    return found


def sse_payloads(raw: bytes) -> list[Any]:
    return [
        json.loads(line[len(b"data: ") :])
        for line in raw.splitlines()
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


def new_rows(gateway: GatewayHarness, route: str, before: int, expected: int = 1) -> list[Any]:
    rows = gateway.ledger_rows(route)[before:]
    assert len(rows) == expected, rows
    return rows


def cost_of(prompt: int, completion: int) -> Decimal:
    return prompt * PRICE_IN + completion * PRICE_OUT


# -- completions ----------------------------------------------------------------------------


def test_a_completion_is_billed_from_its_usage_and_scrubbed(gateway: GatewayHarness) -> None:
    before = len(gateway.ledger_rows("completions"))
    raw = client(gateway, f"cached={CACHED},timings").completions.with_raw_response.create(
        model="cached", prompt="Write a haiku about the sea.", max_tokens=6
    )
    body = json.loads(raw.text)
    assert leaks(body) == []
    completion = raw.parse()
    assert completion.choices[0].text and completion.usage is not None
    assert forwarded(gateway)["model"] == "qwen3-fake"

    (row,) = new_rows(gateway, "completions", before)
    assert (row.principal_id, row.model, row.status, row.streaming) == (gateway.keys.principal_a, "cached", 200, False)
    assert (row.prompt_tokens, row.completion_tokens) == (completion.usage.prompt_tokens, 6)
    assert row.upstream_cached_tokens == CACHED  # kept for reconciliation, never shown
    assert row.cost == row.list_cost == cost_of(row.prompt_tokens, 6)


def test_a_completion_stream_is_scrubbed_chunk_by_chunk_and_billed_from_its_usage(gateway: GatewayHarness) -> None:
    before = len(gateway.ledger_rows("completions"))
    chunks = list(
        client(gateway, f"cached={CACHED},timings").completions.create(
            model="cached",
            prompt="Count to five.",
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"timings_per_token": True, "return_progress": True},
        )
    )
    assert [leaks(chunk.model_dump()) for chunk in chunks] == [[]] * len(chunks)
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    sent = forwarded(gateway)
    assert "timings_per_token" not in sent and "return_progress" not in sent  # never asked of the engine

    (row,) = new_rows(gateway, "completions", before)
    assert row.streaming and (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, 20)
    assert row.upstream_cached_tokens == CACHED


def test_a_stream_that_did_not_ask_for_usage_sees_none_and_is_billed_all_the_same(
    gateway: GatewayHarness, qwen3: Any
) -> None:
    before = len(gateway.ledger_rows("completions"))
    prompt = "Name three rivers."
    chunks = list(client(gateway, "timings=every").completions.create(model="cached", prompt=prompt, stream=True))
    assert all(chunk.usage is None and leaks(chunk.model_dump()) == [] for chunk in chunks)
    assert forwarded(gateway)["stream_options"] == {"include_usage": True}  # asked by the gateway, for the bill

    (row,) = new_rows(gateway, "completions", before)
    assert (row.prompt_tokens, row.completion_tokens) == (qwen3.count_texts_blocking([prompt])[0], 20)


def test_a_completion_without_usage_is_billed_from_our_own_count(gateway: GatewayHarness, qwen3: Any) -> None:
    before = len(gateway.ledger_rows("completions"))
    prompt = "Summarise the plot of Hamlet."
    completion = client(gateway, "no-usage").completions.create(model="cached", prompt=prompt, max_tokens=4)
    assert completion.usage is None

    (row,) = new_rows(gateway, "completions", before)
    counted = qwen3.count_texts_blocking([prompt])[0]
    assert row.prompt_tokens == row.counted_prompt_tokens == counted
    assert row.completion_tokens == qwen3.count_texts_blocking([completion.choices[0].text])[0]


def test_a_crlf_framed_completion_stream_is_scrubbed_too(gateway: GatewayHarness) -> None:
    chunks = list(
        client(gateway, f"cached={CACHED},timings=every,crlf").completions.create(
            model="cached", prompt="Hi", stream=True, stream_options={"include_usage": True}
        )
    )
    assert [leaks(chunk.model_dump()) for chunk in chunks] == [[]] * len(chunks)
    assert chunks[-1].usage is not None


def test_upstream_failures_on_a_metered_route_reach_the_client_and_are_billed(gateway: GatewayHarness) -> None:
    before = len(gateway.ledger_rows("completions"))
    with pytest.raises(openai.InternalServerError) as failed:
        client(gateway, "status=503").completions.create(model="cached", prompt="Hi")
    assert failed.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as unreachable:
        client(gateway).completions.create(model="unreachable", prompt="Hi")
    assert unreachable.value.status_code == 502 and unreachable.value.code == "upstream_unreachable"
    with pytest.raises(openai.APIError):  # the stream breaks off: the client's library sees it
        list(client(gateway, "cut=3").completions.create(model="cached", prompt="Hi", stream=True))
    with pytest.raises(openai.NotFoundError) as unknown:
        client(gateway).completions.create(model="no-such-model", prompt="Hi")
    assert unknown.value.code == "model_not_found"
    rows = new_rows(gateway, "completions", before, expected=3)  # the unknown model went nowhere: no row
    assert sorted(row.status for row in rows) == [200, 502, 503]


# -- embeddings -----------------------------------------------------------------------------


def test_embeddings_are_billed_and_scrubbed(gateway: GatewayHarness) -> None:
    before = len(gateway.ledger_rows("embeddings"))
    raw = client(gateway, f"cached={CACHED},timings").embeddings.with_raw_response.create(
        model="cached", input=["first text", "second text"]
    )
    assert leaks(json.loads(raw.text)) == []
    result = raw.parse()
    assert result.data[0].embedding == [0.0, 0.5, 1.0]

    (row,) = new_rows(gateway, "embeddings", before)
    assert (row.prompt_tokens, row.completion_tokens) == (result.usage.prompt_tokens, 0)
    assert row.cost == cost_of(result.usage.prompt_tokens, 0)


# -- responses ------------------------------------------------------------------------------


def test_a_response_is_billed_from_its_usage_and_scrubbed(gateway: GatewayHarness) -> None:
    before = len(gateway.ledger_rows("responses"))
    raw = client(gateway, f"cached={CACHED},timings").responses.with_raw_response.create(
        model="cached", input="Tell me about tides.", instructions="Be brief.", max_output_tokens=5
    )
    assert leaks(json.loads(raw.text)) == []
    response = raw.parse()
    assert response.output_text and response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 0  # cachegate's count: no cache on this route

    (row,) = new_rows(gateway, "responses", before)
    assert (row.prompt_tokens, row.completion_tokens) == (response.usage.input_tokens, response.usage.output_tokens)
    assert row.upstream_cached_tokens == CACHED


def test_a_response_stream_is_scrubbed_event_by_event_and_billed_from_response_completed(
    gateway: GatewayHarness,
) -> None:
    before = len(gateway.ledger_rows("responses"))
    events = list(
        client(gateway, f"cached={CACHED},timings=every").responses.create(
            model="cached", input="Tell me about waves.", stream=True
        )
    )
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [leaks(event.model_dump()) for event in events] == [[]] * len(events)
    usage = events[-1].response.usage
    assert usage is not None and usage.input_tokens_details.cached_tokens == 0

    (row,) = new_rows(gateway, "responses", before)
    assert row.streaming and (row.prompt_tokens, row.completion_tokens) == (usage.input_tokens, usage.output_tokens)


# -- chat completions: telemetry --------------------------------------------------------------


def test_chat_answers_lose_llama_cpp_timings_and_the_flag_that_asks_for_them(gateway: GatewayHarness) -> None:
    messages = [marked_system(system_text()), {"role": "user", "content": "Hi"}]
    raw = client(gateway, f"cached={CACHED},timings").chat.completions.with_raw_response.create(
        model="cached", messages=messages, extra_body={"timings_per_token": True}
    )
    assert leaks(json.loads(raw.text)) == []
    assert "timings_per_token" not in forwarded(gateway)
    for behavior in ("timings=every", "timings=every,crlf", "timings,chunk-usage"):
        chunks = list(
            client(gateway, f"cached={CACHED},{behavior}").chat.completions.create(
                model="plain", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        assert [leaks(chunk.model_dump()) for chunk in chunks] == [[]] * len(chunks), behavior


# -- cache_salt -------------------------------------------------------------------------------


def test_a_salted_endpoint_gets_one_secret_salt_per_principal(gateway: GatewayHarness) -> None:
    messages = [{"role": "user", "content": "Hello"}]

    def salt_sent(key: str, route: str = "chat", **extra: Any) -> str | None:
        if route == "chat":
            client(gateway, key=key).chat.completions.create(model="salted", messages=messages, extra_body=extra)
        else:
            client(gateway, key=key).completions.create(model="salted", prompt="Hello", extra_body=extra)
        return forwarded(gateway).get("cache_salt")

    salt_a = salt_sent(gateway.keys.a)
    assert salt_a is not None and gateway.keys.principal_a not in salt_a
    assert salt_sent(gateway.keys.a, "completions") == salt_a  # stable, whatever the route
    assert salt_sent(gateway.keys.a, cache_salt="chosen by the client") == salt_a  # never the client's
    salt_b = salt_sent(gateway.keys.b)
    assert salt_b is not None and salt_b != salt_a
    client(gateway).chat.completions.create(model="plain", messages=messages)
    assert "cache_salt" not in forwarded(gateway)  # an endpoint without the setting gets none


# -- what is not a route ----------------------------------------------------------------------


def request(
    gateway: GatewayHarness, method: str, path: str, body: bytes | None = b"{}", key: str | None = "A"
) -> tuple[int, dict[str, Any]]:
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {gateway.keys.a if key == 'A' else key}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_a_trailing_slash_is_the_same_route(gateway: GatewayHarness) -> None:
    before = len(gateway.ledger_rows("completions"))
    body = json.dumps({"model": "cached", "prompt": "Hi", "max_tokens": 2}).encode()
    status, answer = request(gateway, "POST", "/v1/completions/", body)
    assert status == 200 and answer["object"] == "text_completion"
    new_rows(gateway, "completions", before)
    chats = len(gateway.ledger_rows("chat"))
    chat = json.dumps({"model": "plain", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    assert request(gateway, "POST", "/v1/chat/completions/", chat)[0] == 200
    new_rows(gateway, "chat", chats)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../v1/completions",
        "/v1/%2e%2e/completions",
        "/v1/%2E%2E/x",
        "/v1/./completions",
        "/v1/%2e/completions",
        "/v1/chat/completions/..",
        "/v1/models/%2e%2e",
    ],
)
def test_dot_segments_are_refused_locally(gateway: GatewayHarness, path: str) -> None:
    last = forwarded(gateway)
    status, answer = request(gateway, "POST", path)
    assert status == 400 and answer["error"]["code"] == "invalid_path"
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert forwarded(gateway) == last  # nothing went upstream


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/files"),
        ("GET", "/v1/responses/resp_123"),  # the engine's stored responses are nobody's to read here
        ("POST", "/v1/chat/completions/extra"),
        ("GET", "/v1/completions"),
        ("DELETE", "/v1/models/cached"),
        ("POST", "/v1//completions"),
        ("GET", "/slots"),  # llama.cpp's slots hold every tenant's prompts
        ("POST", "/tokenize"),
    ],
)
def test_anything_off_the_allowlist_is_a_local_404(gateway: GatewayHarness, method: str, path: str) -> None:
    last = forwarded(gateway)
    status, answer = request(gateway, method, path)
    assert status == 404 and answer["error"]["code"] == "not_found"
    assert answer["error"]["type"] == "invalid_request_error"
    assert forwarded(gateway) == last


def test_every_route_needs_a_key(gateway: GatewayHarness) -> None:
    for path in ("/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models/cached"):
        method = "GET" if path.startswith("/v1/models") else "POST"
        status, answer = request(gateway, method, path, key=None)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key", path
    with pytest.raises(openai.AuthenticationError):
        client(gateway, key="cg-not-a-key").completions.create(model="cached", prompt="Hi")


# -- /metrics ---------------------------------------------------------------------------------


def scrape(gateway: GatewayHarness, key: str | None) -> tuple[int, bytes]:
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers={"authorization": f"Bearer {key}"} if key else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_metrics_need_an_admin_key(gateway: GatewayHarness) -> None:
    status, body = scrape(gateway, None)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, body = scrape(gateway, gateway.keys.a)
    assert status == 403 and json.loads(body)["error"]["code"] == "admin_key_required"
    status, body = scrape(gateway, gateway.keys.admin)
    assert status == 200 and b"cachegate_requests_total" in body


def test_a_body_nested_past_what_can_be_forwarded_is_a_400(gateway: GatewayHarness) -> None:
    deep = b"[" * 300 + b"]" * 300
    for path in ("/v1/completions", "/v1/responses", "/v1/embeddings"):
        status, answer = request(gateway, "POST", path, b'{"model": "cached", "input": ' + deep + b', "prompt": "x"}')
        assert status == 400 and answer["error"]["type"] == "invalid_request_error", path
