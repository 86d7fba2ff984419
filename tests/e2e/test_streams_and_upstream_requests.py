"""Stream shapes engines produce, and what the gateway sends upstream (SPEC §8, §12)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import pytest
from openai import OpenAI

from harness import GatewayHarness
from prompts import MARK_1H, marked_system, system_text

pytestmark = pytest.mark.over_http  # and so against `serve --workers 2` too (conftest.py)


def client(gateway: GatewayHarness, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key or gateway.keys.a, max_retries=0, timeout=30)


def conversation() -> list[dict[str, Any]]:
    return [marked_system(system_text(), MARK_1H), {"role": "user", "content": "What is rule 3?"}]


def fake(gateway: GatewayHarness, what: str) -> Any:
    with urllib.request.urlopen(f"{gateway.fake_url}/_fake/{what}") as response:
        return json.load(response)


def stream_usages(gateway: GatewayHarness, messages: list[dict[str, Any]], behavior: str) -> list[dict[str, Any]]:
    chunks = client(gateway).chat.completions.create(
        model="cached",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-behavior": behavior},
    )
    return [chunk.usage.model_dump() for chunk in chunks if chunk.usage is not None]


def raw_stream(gateway: GatewayHarness, body: dict[str, Any], behavior: str) -> http.client.HTTPResponse:
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body).encode(),
        headers={
            "authorization": f"Bearer {gateway.keys.a}",
            "content-type": "application/json",
            "x-fake-behavior": behavior,
        },
    )
    return connection.getresponse()


def test_crlf_framed_stream_keeps_its_framing_and_gets_the_fields(gateway: GatewayHarness) -> None:
    body = {"model": "cached", "messages": conversation(), "stream": True, "stream_options": {"include_usage": True}}
    response = raw_stream(gateway, body, "crlf")
    data = response.read()
    assert response.status == 200
    events = [event for event in data.split(b"\r\n\r\n") if event]
    assert events[-1] == b"data: [DONE]"
    usage_events = [json.loads(event[len(b"data: ") :]) for event in events if b'"usage":{' in event]
    assert usage_events and usage_events[-1]["usage"]["cache_creation_input_tokens"] > 0
    assert b"\n\n" not in data.replace(b"\r\n\r\n", b"")  # every frame kept CRLF


def test_per_chunk_usage_without_a_usage_frame_gets_one_from_the_gateway(gateway: GatewayHarness) -> None:
    messages = conversation()
    usages = stream_usages(gateway, messages, "chunk-usage,no-usage,cached=50")
    final = usages[-1]
    assert len(usages) > 1
    assert final["cache_creation_input_tokens"] > 0 and final["prompt_tokens_details"]["cached_tokens"] == 0
    for earlier in usages[:-1]:  # frames mid-stream never wait: spliced or scrubbed, never the engine's count
        assert (earlier.get("prompt_tokens_details") or {}).get("cached_tokens") != 50
    again = stream_usages(gateway, messages, "")
    assert again[-1]["cache_read_input_tokens"] == final["cache_creation_input_tokens"]


def test_client_disconnect_before_the_end_vetoes_the_commit(gateway: GatewayHarness) -> None:
    messages = conversation()
    body = {"model": "cached", "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    response = raw_stream(gateway, body, "pace=0.05")
    assert response.status == 200
    response.fp.readline()  # the first frame arrived; then the client goes away
    response.close()
    time.sleep(1.5)  # the upstream stream (20 x 50 ms) is over by now, on the gateway's side too
    after = client(gateway).chat.completions.create(model="cached", messages=messages).model_dump()["usage"]
    assert after["cache_read_input_tokens"] == 0
    assert after["cache_creation_input_tokens"] > 0


def test_client_key_never_goes_upstream_and_endpoint_key_does(gateway: GatewayHarness) -> None:
    client(gateway).chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    assert "authorization" not in fake(gateway, "last-headers")
    client(gateway).chat.completions.create(model="keyed", messages=[{"role": "user", "content": "hi"}])
    assert fake(gateway, "last-headers")["authorization"] == "Bearer upstream-secret"
    client(gateway).embeddings.create(model="keyed", input="hi")
    assert fake(gateway, "last-headers")["authorization"] == "Bearer upstream-secret"


def test_an_upstream_cookie_never_reaches_another_request(gateway: GatewayHarness) -> None:
    client(gateway, gateway.keys.a).chat.completions.create(
        model="keyed", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-fake-behavior": "set-cookie"}
    )
    client(gateway, gateway.keys.b).chat.completions.create(model="keyed", messages=[{"role": "user", "content": "hi"}])
    assert "cookie" not in fake(gateway, "last-headers")
