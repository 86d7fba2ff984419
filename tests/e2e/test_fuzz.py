"""Whatever a client sends, cachegate answers it without a 5xx of its own, and what it forwards is the
client's body but for markers and ``model`` (issue 10; SPEC §2.4, §3.4, §11).

Bodies are drawn valid, type-confused (a field replaced by a value of another type), deeply
nested, large, with invalid UTF-8 or cut short, with markers where §3.1 puts them and look-alikes
where it does not (a tool schema's property, a value, a string), with TTLs of the wrong type,
with integers beyond 64 bits and escaped keys. They go over real HTTP to a running gateway in
front of the fake upstream, which records what it received; a request is known to have been
forwarded when the fake saw its ``x-fuzz-id``. Headers are drawn too (keys in either header or
none, any Latin-1 text in the headers cachegate reads). The examples are derandomized and few, so
that the suite stays fast and a failure in CI replays on any machine.
"""

from __future__ import annotations

import http.client
import itertools
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from chat_strategies import TEXT, TOOL, agent_conversation, chat_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarded import exact, exact_bodies, expected_forward, write
from harness import GatewayHarness

UPSTREAM_MODEL = "qwen3-fake"  # every test model's upstream name
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,  # the same bodies on every run: a CI failure replays locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


# One gateway, on SQLite: the stores play no part in what a body does.
pytestmark = pytest.mark.parametrize("gateway", ["sqlite"], indirect=True)


_ids = itertools.count()


class Exchange:
    """One request and what came of it: the gateway's answer, and the body the upstream got, if any."""

    def __init__(self, gateway: GatewayHarness, path: str, body: bytes) -> None:
        fuzz_id = str(next(_ids))
        self.status, self.headers, self.answer = request(
            gateway.base_url,
            "POST",
            path,
            body,
            {"authorization": f"Bearer {gateway.keys.a}", "content-type": "application/json", "x-fuzz-id": fuzz_id},
        )
        _, _, seen = request(gateway.fake_url, "GET", "/_fake/last-headers")
        self.forwarded: bytes | None = None
        if json.loads(seen).get("x-fuzz-id") == fuzz_id:
            self.forwarded = request(gateway.fake_url, "GET", "/_fake/last-request")[2]

    def assert_no_server_error(self) -> None:
        assert self.status < 500, (self.status, self.answer[:500])
        assert self.headers.get("content-type", "").startswith(("application/json", "text/event-stream")), self.headers


def request(
    base_url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


# -- chat bodies ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=False, allow_infinity=False),
        TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)
MARKERS = st.one_of(
    st.just({"type": "ephemeral"}),
    st.builds(
        lambda ttl: {"type": "ephemeral", "ttl": ttl},
        st.one_of(st.sampled_from(["5m", "1h", "24h", "2h"]), JSON_VALUES),
    ),
    JSON_VALUES,
)
MODELS = st.sampled_from(["cached", "automatic", "plain", "floored"])


@st.composite
def valid_chat(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(st.one_of(agent_conversation(), st.lists(chat_message(), min_size=1, max_size=4)))
    body: dict[str, Any] = {"model": draw(MODELS), "messages": messages, "max_tokens": draw(st.integers(1, 8))}
    if draw(st.booleans()):
        body["tools"] = draw(st.lists(TOOL, min_size=1, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        body["stream"] = True
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


@st.composite
def marked_chat(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with markers at §3.1's sites, some of them malformed, and look-alikes elsewhere."""
    body = draw(valid_chat())
    sites: list[dict[str, Any]] = [body]
    for message in body["messages"]:
        sites.append(message)
        if isinstance(message.get("content"), list):
            sites.extend(part for part in message["content"] if isinstance(part, dict))
        sites.extend(message.get("tool_calls") or [])
    sites.extend(body.get("tools") or [])
    for site in draw(st.lists(st.sampled_from(sites), max_size=3)):
        site["cache_control"] = draw(MARKERS)
    for tool in body.get("tools") or []:  # look-alikes: user data that must survive
        if draw(st.booleans()):
            tool["function"]["parameters"]["properties"]["cache_control"] = {"type": "string"}
        if draw(st.booleans()):
            tool["function"]["cache_control"] = {"type": "ephemeral"}
    if draw(st.booleans()):
        body["metadata"] = {"cache_control": {"type": "ephemeral"}, "note": '"cache_control": {"ttl": "1h"}'}
    return body


@st.composite
def confused_chat(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with one field, anywhere in its layout, replaced by a value of any type."""
    body = draw(valid_chat())
    containers: list[dict[str, Any] | list[Any]] = [body, body["messages"]]
    for message in body["messages"]:
        if isinstance(message, dict):
            containers.append(message)
            for key in ("content", "tool_calls"):
                inner = message.get(key)
                if isinstance(inner, list):
                    containers.append(inner)
                    containers.extend(item for item in inner if isinstance(item, dict))
    for tool in body.get("tools") or []:
        containers.extend([tool, tool["function"]])
    container = draw(st.sampled_from(containers))
    value = draw(JSON_VALUES)
    if isinstance(container, list):
        if container:
            container[draw(st.integers(0, len(container) - 1))] = value
    else:
        keys = [*container, "role", "content", "tool_calls", "tools", "stream", "stream_options", "messages"]
        container[draw(st.sampled_from(keys))] = value
    body["model"] = draw(MODELS)  # the model stays a string: without one the body is refused first
    return body


def nested(depth: int) -> Any:
    value: Any = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@st.composite
def deep_chat(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(valid_chat())
    deep = nested(draw(st.sampled_from([10, 60, 63, 64, 100, 300])))
    where = draw(st.sampled_from(["extra", "content", "tool"]))
    if where == "extra":
        body["extra"] = deep
    elif where == "content":
        body["messages"][-1] = {"role": "user", "content": [{"type": "text", "text": "x", "extra": deep}]}
    else:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    return body


@st.composite
def huge_chat(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.sampled_from([1, 1000, 10_001]))
    messages = [{"role": "user", "content": "hi"}] * size
    if draw(st.booleans()):
        messages = [{"role": "user", "content": "x" * 300_000}]
    body: dict[str, Any] = {"model": draw(MODELS), "messages": messages, "max_tokens": 1}
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": "f"}}] * draw(st.sampled_from([3, 1001]))
    return body


def serialised(body: Any) -> st.SearchStrategy[bytes]:
    return st.sampled_from([json.dumps(body).encode(), json.dumps(body, ensure_ascii=False, indent=1).encode()])


@st.composite
def spelt_chat(draw: st.DrawFn) -> bytes:
    """Bodies written as no JSON library writes them: escaped keys, duplicates, big integers, numbers as typed."""
    value = draw(exact_bodies())
    text = write(value, draw(st.sampled_from(["", " ", "\n "])), draw(st.booleans()))
    model = draw(MODELS)
    return text.replace('"alias"', json.dumps(model), 1).replace('"alias"', json.dumps(model)).encode()


@st.composite
def broken_bytes(draw: st.DrawFn) -> bytes:
    """A body's bytes damaged: invalid UTF-8 inside a string, cut short, or not JSON at all."""
    raw = draw(valid_chat().flatmap(serialised))
    damage = draw(st.sampled_from(["utf8", "cut", "junk"]))
    if damage == "utf8":
        at = raw.index(b'"content"') if b'"content"' in raw else len(raw) // 2
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"])) + raw[at:]
    if damage == "cut":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    return draw(st.binary(max_size=64))


CHAT_BODIES = st.one_of(
    valid_chat().flatmap(serialised),
    marked_chat().flatmap(serialised),
    confused_chat().flatmap(serialised),
    deep_chat().map(lambda body: json.dumps(body).encode()),
    huge_chat().map(lambda body: json.dumps(body).encode()),
    spelt_chat(),
    broken_bytes(),
)


@FUZZ
@given(raw=CHAT_BODIES)
def test_no_chat_body_makes_a_5xx_and_the_upstream_gets_the_clients_body(gateway: GatewayHarness, raw: bytes) -> None:
    exchange = Exchange(gateway, "/v1/chat/completions", raw)
    exchange.assert_no_server_error()
    if exchange.forwarded is None:
        assert exchange.status >= 400
        assert set(json.loads(exchange.answer)["error"]) == {"message", "type", "param", "code"}
        return
    body = json.loads(raw)
    force_usage = body.get("stream") is True and (body.get("stream_options") or {}).get("include_usage") is not True
    assert exact(exchange.forwarded) == expected_forward(raw, UPSTREAM_MODEL, force_usage)


@pytest.mark.parametrize("depth", [300, 1100])  # past what orjson writes (254), past what it parses (1024)
def test_a_body_nested_deeper_than_json_libraries_go_is_a_400_naming_the_limit(
    gateway: GatewayHarness, depth: int
) -> None:
    deep = "[" * depth + "]" * depth  # as text: Python's own json stops at its recursion limit
    raw = f'{{"model": "cached", "messages": [{{"role": "user", "content": "hi"}}], "x": {deep}}}'
    exchange = Exchange(gateway, "/v1/chat/completions", raw.encode())
    assert exchange.status == 400 and exchange.forwarded is None
    assert json.loads(exchange.answer)["error"]["code"] == "nesting_too_deep"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, 7]}, "messages[1]"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "user", "content": 3},
                ]
            },
            "messages[2].content",
        ),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": "call it"}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "user", "content": "a"}], "tools": ["f"]}, "tools[0]"),
    ],
)
def test_a_type_confused_body_is_a_400_naming_the_field_and_is_not_forwarded(
    gateway: GatewayHarness, body: dict[str, Any], param: str
) -> None:
    exchange = Exchange(gateway, "/v1/chat/completions", json.dumps({"model": "cached", **body}).encode())
    error = json.loads(exchange.answer)["error"]
    assert (exchange.status, error["type"], error["param"]) == (400, "invalid_request_error", param)
    assert exchange.forwarded is None


def test_integers_beyond_64_bits_and_key_order_reach_the_upstream_as_sent(gateway: GatewayHarness) -> None:
    raw = (
        b'{"seed": 340282366920938463463374607431768211457, "messages": [{"content": [{"text": "hi", "type": "text",'
        b' "cache_control": {"type": "ephemeral"}}], "role": "user"}], "logit_bias": {"9": -1e2}, "model": "cached"}'
    )
    exchange = Exchange(gateway, "/v1/chat/completions", raw)
    assert exchange.status == 200
    assert exchange.forwarded == (
        b'{"seed": 340282366920938463463374607431768211457, "messages": [{"content": [{"text": "hi", "type": "text"}],'
        b' "role": "user"}], "logit_bias": {"9": -1e2}, "model": "qwen3-fake"}'
    )


# -- Anthropic Messages bodies --------------------------------------------------------------------


TEXT_BLOCK = st.builds(
    lambda text, marker: {"type": "text", "text": f"t{text}", **marker},  # Anthropic refuses an empty one
    TEXT,
    st.one_of(st.just({}), MARKERS.map(lambda marker: {"cache_control": marker})),
)
BLOCKS = st.lists(TEXT_BLOCK, min_size=1, max_size=2)
ANTHROPIC_TOOL = st.fixed_dictionaries(
    {"name": st.sampled_from(["read", "run"]), "input_schema": st.just({"type": "object"})},
    optional={"cache_control": MARKERS, "description": TEXT},
)


@st.composite
def valid_anthropic(draw: st.DrawFn) -> dict[str, Any]:
    """A Messages request as the SDK sends one: alternating turns, a tool round, markers here and there."""
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        messages.append(
            {"role": "user", "content": draw(st.one_of(TEXT, st.lists(TEXT_BLOCK, min_size=1, max_size=2)))}
        )
        if draw(st.booleans()):
            call = {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": draw(TEXT)}}
            messages.append({"role": "assistant", "content": [{"type": "text", "text": "Reading."}, call]})
            messages.append(
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}
            )
        else:
            messages.append({"role": "assistant", "content": draw(TEXT)})
    messages.append({"role": "user", "content": draw(st.lists(TEXT_BLOCK, min_size=1, max_size=2))})
    body: dict[str, Any] = {"model": draw(MODELS), "max_tokens": draw(st.integers(1, 8)), "messages": messages}
    if draw(st.booleans()):
        body["system"] = draw(st.one_of(TEXT, st.lists(TEXT_BLOCK, min_size=1, max_size=2)))
    if draw(st.booleans()):
        body["tools"] = draw(st.lists(ANTHROPIC_TOOL, min_size=1, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        body["stream"] = True
    if draw(st.integers(0, 7)) == 0:
        body["metadata"] = {"deep": nested(draw(st.sampled_from([60, 300])))}
    return body


ANTHROPIC_FIELDS = ["messages", "system", "tools", "tool_choice", "thinking", "stream", "stop_sequences", "max_tokens"]
BLOCK_LOOKALIKES = st.sampled_from(
    [
        {"type": "tool_use", "id": "t9", "name": "read", "input": "not an object"},
        {"type": "tool_result", "tool_use_id": "nowhere", "content": [{"type": "image"}]},
        {"type": "thinking", "thinking": "hm"},
        {"type": "image", "source": {"type": "url"}},
        {"type": "nope"},
        {"type": "text"},
    ]
)


@st.composite
def anthropic_body(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Messages request, or one with a few fields, anywhere in it, replaced by anything."""
    body = draw(valid_anthropic())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        containers: list[dict[str, Any] | list[Any]] = [body]
        for message in body["messages"] if isinstance(body.get("messages"), list) else []:
            if isinstance(message, dict):
                containers.append(message)
                if isinstance(message.get("content"), list):
                    containers.append(message["content"])
                    containers.extend(block for block in message["content"] if isinstance(block, dict))
        container = draw(st.sampled_from(containers))
        value = draw(st.one_of(JSON_VALUES, BLOCK_LOOKALIKES))
        if isinstance(container, list):
            container[draw(st.integers(0, len(container) - 1))] = value
        else:
            keys = [*container, *ANTHROPIC_FIELDS, "role", "content", "cache_control"]
            container[draw(st.sampled_from([key for key in keys if key != "model"]))] = value
    return body


@FUZZ
@given(raw=st.one_of(*[anthropic_body().flatmap(serialised)] * 6, broken_bytes()), count=st.booleans())
def test_no_messages_body_makes_a_5xx(gateway: GatewayHarness, raw: bytes, count: bool) -> None:
    exchange = Exchange(gateway, "/v1/messages/count_tokens" if count else "/v1/messages", raw)
    exchange.assert_no_server_error()
    if exchange.status >= 400 and exchange.forwarded is None:
        assert json.loads(exchange.answer)["type"] == "error"


# -- headers ---------------------------------------------------------------------------------------

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
HEADER_NAMES = st.sampled_from(
    ["authorization", "x-api-key", "content-type", "accept", "accept-encoding", "cookie", "x-request-id", "x-cachegate"]
)


@st.composite
def header_sets(draw: st.DrawFn, key: str) -> dict[str, str]:
    headers = draw(st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=4))
    choice = draw(st.sampled_from(["bearer", "x-api-key", "both", "garbage"]))
    if choice in ("bearer", "both"):
        headers["authorization"] = f"Bearer {key}"
    if choice in ("x-api-key", "both"):
        headers["x-api-key"] = key
    return headers


@FUZZ
@given(data=st.data(), path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"]))
def test_no_headers_make_a_5xx(gateway: GatewayHarness, data: st.DataObject, path: str) -> None:
    headers = data.draw(header_sets(gateway.keys.a))
    body = {"model": "cached", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    status, response_headers, answer = request(
        gateway.base_url, "POST", path, json.dumps(body).encode(), {k: v.encode("latin-1") for k, v in headers.items()}
    )
    assert status < 500, (status, answer[:300])
    assert response_headers.get("content-type", "").startswith(("application/json", "text/event-stream"))


# -- a failure of cachegate's own ------------------------------------------------------------------


def test_a_bug_is_a_json_500_with_a_request_id_a_metric_and_a_ledger_row(gateway: GatewayHarness) -> None:
    gateway.upstream.buggy = True
    raw = json.dumps({"model": "cached", "messages": [{"role": "user", "content": "hi"}]}).encode()
    chat = Exchange(gateway, "/v1/chat/completions", raw)
    messages = Exchange(
        gateway,
        "/v1/messages",
        json.dumps({"model": "plain", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode(),
    )
    gateway.upstream.buggy = False

    error = json.loads(chat.answer)["error"]
    request_id = chat.headers["x-request-id"]
    assert (chat.status, error["type"], error["code"]) == (500, "server_error", "internal_error")
    assert request_id in error["message"]
    anthropic_error = json.loads(messages.answer)
    assert messages.status == 500 and anthropic_error["type"] == "error"
    assert messages.headers["x-request-id"] in anthropic_error["error"]["message"]

    _, _, metrics = request(
        gateway.base_url, "GET", "/metrics", headers={"authorization": f"Bearer {gateway.keys.admin}"}
    )
    assert b'cachegate_internal_errors_total{route="chat"}' in metrics
    gateway.call(gateway.gateway.ledger.flush())
    failed = [row for row in gateway.store.stored if row.status == 500]
    assert [(row.model, row.route) for row in failed[-2:]] == [("cached", "chat"), ("plain", "messages")]
