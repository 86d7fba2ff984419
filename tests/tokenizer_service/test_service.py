"""The tokenizer service over real HTTP: its routes, its counts, and its refusals."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from cachegate.core.blocks import parse_prompt
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.shipped import qwen3_files

from .chats import ALL_TTLS, FIVE_MINUTES, TWO_BREAKPOINTS, gateway_view
from .servers import SERVICE_BODY_LIMIT


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """An independent instance of the shipped tokenizer, for expected raw counts."""
    return Tokenizer.from_buffer(qwen3_files().tokenizer_json)


def call(base_url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post(base_url: str, path: str, payload: Any) -> tuple[int, Any]:
    return call(base_url, "POST", path, json.dumps(payload).encode())


def assert_error(answer: tuple[int, Any], status: int, code: str, param: str | None = None) -> None:
    got_status, body = answer
    assert got_status == status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param


def test_healthz(service_url: str) -> None:
    assert call(service_url, "GET", "/healthz") == (200, {"status": "ok"})


def test_models_lists_each_tokenizer_with_its_source_and_version(service_url: str, qwen3: ChatTokenCounter) -> None:
    status, body = call(service_url, "GET", "/v1/models")

    assert status == 200
    assert body == {"models": [{"alias": "qwen3", "hf_repo": "qwen3", "tokenizer_version": qwen3.tokenizer_version}]}


def test_tokenize_counts_each_segment_as_the_tokenizer_encodes_it_alone(
    service_url: str, tokenizer: Tokenizer, qwen3: ChatTokenCounter
) -> None:
    segments = ["You are a careful assistant.", "", "第一部分 🙂 Übung", "<|im_start|>user\nhi"]
    expected = [len(tokenizer.encode(text, add_special_tokens=False).ids) for text in segments]

    status, body = post(service_url, "/v1/tokenize", {"virtual_model": "qwen3", "segments": segments})

    assert status == 200
    assert body == {
        "virtual_model": "qwen3",
        "tokenizer_version": qwen3.tokenizer_version,
        "segment_counts": expected,
        "cumulative": [sum(expected[: i + 1]) for i in range(len(expected))],
        "total": sum(expected),
    }


@settings(deadline=None, max_examples=30)
@given(segments=st.lists(st.text(max_size=40), max_size=6))
def test_tokenize_counts_any_text_raw(segments: list[str], service_url: str, tokenizer: Tokenizer) -> None:
    status, body = post(service_url, "/v1/tokenize", {"virtual_model": "qwen3", "segments": segments})

    assert status == 200
    assert body["segment_counts"] == [len(tokenizer.encode(text, add_special_tokens=False).ids) for text in segments]
    assert body["total"] == sum(body["segment_counts"])


def test_render_counts_every_breakpoint_as_the_in_process_counter_does(
    service_url: str, qwen3: ChatTokenCounter
) -> None:
    prompt = parse_prompt(TWO_BREAKPOINTS, ALL_TTLS)
    blocks = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
    expected = qwen3.count_blocking(TWO_BREAKPOINTS, prompt, blocks)

    status, body = post(service_url, "/v1/render", {"virtual_model": "qwen3", "request": TWO_BREAKPOINTS})

    assert status == 200
    assert blocks == [1, 2]
    assert body == {
        "virtual_model": "qwen3",
        "tokenizer_version": qwen3.tokenizer_version,
        "total": expected.total,
        "breakpoints": [{"block": block, "cumulative": expected.cumulative[block]} for block in blocks],
        "dropped": [],
    }
    assert 0 < body["breakpoints"][0]["cumulative"] < body["breakpoints"][1]["cumulative"] < body["total"]


def test_render_counts_the_blocks_a_gateway_names_in_a_body_without_markers(
    service_url: str, qwen3: ChatTokenCounter
) -> None:
    """A gateway counts the forwarded body, whose markers are gone; it names the blocks by index and hash."""
    prompt, forwarded = gateway_view(TWO_BREAKPOINTS)
    asked = [{"block": block, "prefix_hash": prompt.prefix_hashes[block].hex()} for block in (1, 3)]
    expected = qwen3.count_blocking(TWO_BREAKPOINTS, prompt, [1, 3])

    status, body = post(service_url, "/v1/render", {"virtual_model": "qwen3", "request": forwarded, "blocks": asked})

    assert status == 200
    assert body["breakpoints"] == [{"block": b, "cumulative": expected.cumulative[b]} for b in (1, 3)]
    assert body["total"] == expected.total


def test_render_with_no_block_asked_gives_the_total(service_url: str, qwen3: ChatTokenCounter) -> None:
    prompt = parse_prompt(TWO_BREAKPOINTS, ALL_TTLS)

    status, body = post(service_url, "/v1/render", {"virtual_model": "qwen3", "request": TWO_BREAKPOINTS, "blocks": []})

    assert status == 200
    assert body["breakpoints"] == []
    assert body["total"] == qwen3.count_blocking(TWO_BREAKPOINTS, prompt, []).total


@pytest.mark.parametrize(
    "asked",
    [
        pytest.param({"block": 1, "prefix_hash": "00" * 32}, id="another prefix"),
        pytest.param({"block": 9, "prefix_hash": "00" * 32}, id="a block the request does not have"),
    ],
)
def test_render_refuses_blocks_that_are_not_the_gateways(service_url: str, asked: dict[str, Any]) -> None:
    payload = {"virtual_model": "qwen3", "request": TWO_BREAKPOINTS, "blocks": [asked]}

    assert_error(post(service_url, "/v1/render", payload), 422, "BLOCK_MISMATCH", "blocks")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/tokenize", {"virtual_model": "llama-9000", "segments": ["hi"]}),
        ("/v1/render", {"virtual_model": "llama-9000", "request": TWO_BREAKPOINTS}),
    ],
)
def test_an_unknown_model_is_unmapped(service_url: str, path: str, payload: dict[str, Any]) -> None:
    assert_error(post(service_url, path, payload), 422, "UNMAPPED_MODEL", "virtual_model")


@pytest.mark.parametrize("path", ["/v1/tokenize", "/v1/render"])
def test_a_body_that_is_not_json_is_400(service_url: str, path: str) -> None:
    assert_error(call(service_url, "POST", path, b'{"virtual_model": "qwen3", "segments": ['), 400, "invalid_json")


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/tokenize", {"segments": ["hi"]}, "virtual_model"),
        ("/v1/tokenize", {"virtual_model": "qwen3", "segments": ["hi", 7]}, "segments.1"),
        ("/v1/tokenize", {"virtual_model": "qwen3", "segments": "hi"}, "segments"),
        ("/v1/render", {"virtual_model": "qwen3", "request": [TWO_BREAKPOINTS]}, "request"),
        ("/v1/render", {"virtual_model": "qwen3", "request": {}, "blocks": [{"block": "1"}]}, "blocks.0.block"),
        ("/v1/tokenize", ["qwen3", "hi"], None),
    ],
)
def test_a_request_of_the_wrong_shape_is_400_naming_the_field(
    service_url: str, path: str, payload: Any, param: str | None
) -> None:
    status, body = post(service_url, path, payload)

    assert_error((status, body), 400, "invalid_request")
    assert body["error"]["param"] == param


def test_invalid_markers_are_400_with_their_path(service_url: str) -> None:
    request = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": "soon"}]}]}

    answer = post(service_url, "/v1/render", {"virtual_model": "qwen3", "request": request})

    assert_error(answer, 400, "invalid_cache_control", "request.messages[0].content[0].cache_control")


def test_a_request_the_counter_cannot_count_is_422(service_url: str) -> None:
    call_without_function = {"id": "1", "type": "function", "cache_control": FIVE_MINUTES}
    request = {"messages": [{"role": "assistant", "content": "", "tool_calls": [call_without_function]}]}

    status, body = post(service_url, "/v1/render", {"virtual_model": "qwen3", "request": request})

    assert_error((status, body), 422, "COUNT_UNAVAILABLE")
    assert "a tool call is not an object with a function" in body["error"]["message"]


def test_a_body_over_the_limit_is_413(service_url: str) -> None:
    payload = {"virtual_model": "qwen3", "segments": ["x" * SERVICE_BODY_LIMIT]}

    assert_error(post(service_url, "/v1/tokenize", payload), 413, "body_too_large")


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/render"), ("POST", "/v1/models"), ("DELETE", "/healthz")])
def test_a_route_asked_with_the_wrong_method_is_405(service_url: str, method: str, path: str) -> None:
    assert_error(call(service_url, method, path), 405, "method_not_allowed")


def test_an_unknown_path_is_404(service_url: str) -> None:
    assert_error(call(service_url, "GET", "/v1/chat/completions"), 404, "not_found")
