"""Why a deepest breakpoint did not read (SPEC §14), as clients see it: the official SDKs over real HTTP.

Each test scripts a conversation of its own (a fresh system prompt and first message), so the
reasons it sees come from its own requests: ``x-cachegate-cache-miss`` on every response, the body's
``diagnostics`` when asked (``x-cachegate-diagnostics: 1`` for OpenAI clients, Anthropic's
``diagnostics`` field), the ledger's ``miss_reason`` and ``cachegate_cache_misses_total``.
"""

from __future__ import annotations

import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import anthropic
import orjson
import pytest
from anthropic import Anthropic
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from harness import GatewayHarness
from prompts import MARK_5M, marked_system, system_text

pytestmark = pytest.mark.over_http  # and so against `serve --workers 2` too (conftest.py)

MISS_HEADER = "x-cachegate-cache-miss"
ASK = {"x-cachegate-diagnostics": "1"}
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}
OTHER_TOOL = {"type": "function", "function": {"name": "fetch", "parameters": {"type": "object", "properties": {}}}}


@dataclass
class Answer:
    miss: str | None  # the header
    body: Any  # the body's diagnostics, when asked
    usage: dict[str, Any]


def openai_client(gateway: GatewayHarness, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key or gateway.keys.a, max_retries=0, timeout=30)


def chat(gateway: GatewayHarness, messages: list[dict[str, Any]], *, key: str | None = None, **kw: Any) -> Answer:
    kw.setdefault("model", "cached")
    raw = openai_client(gateway, key).chat.completions.with_raw_response.create(
        messages=messages, extra_headers=ASK, **kw
    )
    completion = raw.parse()
    return Answer(raw.headers.get(MISS_HEADER), completion.model_dump()["diagnostics"], completion.usage.model_dump())


def reason(answer: Answer) -> str | None:
    """The body's reason, spelt as the header spells it."""
    if answer.body is None:
        return None
    miss = answer.body["cache_miss_reason"]
    return miss["type"] if "block" not in miss else f"{miss['type']};block={miss['block']}"


def user(text: str, mark: dict[str, str] | None = MARK_5M) -> dict[str, Any]:
    if mark is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": mark}]}


def opening(system: str | None = None, mark: dict[str, str] = MARK_5M) -> list[dict[str, Any]]:
    """A conversation's first request, a system prompt and a first question of its own."""
    return [marked_system(system or system_text(), mark), user(f"[{uuid.uuid4()}] What is rule 3?", mark)]


def grown(messages: list[dict[str, Any]], reply: str = "Rule 3 says so.") -> list[dict[str, Any]]:
    unmarked = [messages[0], {"role": "user", "content": messages[1]["content"][0]["text"]}, *messages[2:]]
    return [*unmarked, {"role": "assistant", "content": reply}, user("And rule 4?")]


def metric(gateway: GatewayHarness, reason_: str, model: str = "cached") -> float:
    request = urllib.request.Request(
        f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {gateway.keys.admin}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cachegate_cache_misses_total" and sample.labels == {"model": model, "reason": reason_}:
                return sample.value
    return 0.0


# -- OpenAI clients: header always, body when asked ------------------------------------------------


def test_a_first_write_then_a_read_then_a_grown_conversation(gateway: GatewayHarness) -> None:
    messages = opening()
    before = metric(gateway, "first_write")

    first = chat(gateway, messages)
    again = chat(gateway, messages)
    longer = chat(gateway, grown(messages))

    assert first.miss == "first_write" and reason(first) == "first_write"
    assert again.miss is None and again.body is None and again.usage["cache_read_input_tokens"] > 0
    # The conversation grew: its earlier breakpoint read, its new deepest one is written for the first time.
    assert longer.miss == "first_write" and longer.usage["cache_read_input_tokens"] > 0
    assert metric(gateway, "first_write") - before == 2


def test_the_ledger_row_carries_the_reason(gateway: GatewayHarness) -> None:
    messages = opening()
    chat(gateway, messages)
    assert gateway.ledger_rows("chat")[-1].miss_reason == "first_write"
    chat(gateway, messages)
    assert gateway.ledger_rows("chat")[-1].miss_reason is None


@pytest.mark.in_process_only("moves the index's clock ahead")
def test_an_expired_entry_is_expired(gateway: GatewayHarness) -> None:
    messages = opening()
    chat(gateway, messages)
    gateway.index.ahead = 400.0  # past the 5m entries' expiry

    answer = chat(gateway, messages)

    assert answer.miss == "expired" and reason(answer) == "expired"
    assert gateway.ledger_rows("chat")[-1].miss_reason == "expired"


def test_changed_tools_are_named(gateway: GatewayHarness) -> None:
    messages = opening()
    chat(gateway, messages, tools=[TOOL])

    answer = chat(gateway, messages, tools=[TOOL, OTHER_TOOL])

    assert answer.miss == "prefix_changed;block=tools" and reason(answer) == "prefix_changed;block=tools"


def test_a_changed_system_prompt_is_named(gateway: GatewayHarness) -> None:
    messages = opening()
    chat(gateway, messages)
    changed = [marked_system(system_text(), MARK_5M), messages[1]]

    answer = chat(gateway, changed)

    assert answer.miss == "prefix_changed;block=system"
    assert gateway.ledger_rows("chat")[-1].miss_reason == "prefix_changed"  # the reason; reports group by it


def test_a_changed_message_is_named_by_its_index(gateway: GatewayHarness) -> None:
    messages = grown(opening())
    chat(gateway, messages)
    edited = [*messages[:2], {"role": "assistant", "content": "Rule 3 says otherwise."}, *messages[3:]]

    answer = chat(gateway, edited)

    assert answer.miss == "prefix_changed;block=2" and reason(answer) == "prefix_changed;block=2"
    assert answer.usage["cache_read_input_tokens"] > 0  # the system prompt still reads


def test_below_the_floor(gateway: GatewayHarness) -> None:
    answer = chat(gateway, opening(), model="floored")
    assert answer.miss == "below_floor" and reason(answer) == "below_floor"


@pytest.mark.in_process_only("switches the index and the counter off")
def test_an_outage_is_degraded(gateway: GatewayHarness) -> None:
    gateway.index.down = True
    by_index = chat(gateway, opening())
    gateway.index.down = False
    gateway.counter.failing = True
    by_counter = chat(gateway, opening())

    assert by_index.miss == by_counter.miss == "degraded"
    assert reason(by_index) == "degraded" and by_index.usage["cache_degraded"] is True


@pytest.mark.in_process_only("switches the index's recall off")
def test_a_miss_the_index_cannot_explain_says_so_and_is_still_cached(gateway: GatewayHarness) -> None:
    gateway.index.recall_down = True

    answer = chat(gateway, opening())

    assert answer.miss is None and answer.body == {"cache_miss_reason": None}  # not known, not a read
    assert answer.usage["cache_creation_input_tokens"] > 0 and not answer.usage.get("cache_degraded")
    assert gateway.ledger_rows("chat")[-1].miss_reason is None


def test_no_body_unless_asked_and_no_header_without_caching(gateway: GatewayHarness) -> None:
    messages = opening()
    raw = openai_client(gateway).chat.completions.with_raw_response.create(model="cached", messages=messages)
    plain = chat(gateway, messages, model="plain")

    assert raw.headers.get(MISS_HEADER) == "first_write"
    assert "diagnostics" not in raw.parse().model_dump()
    assert plain.miss is None and plain.body is None


def test_another_tenant_sending_the_same_prompt_learns_nothing(gateway: GatewayHarness) -> None:
    messages = grown(opening())
    chat(gateway, messages)  # tenant A's conversation, cached
    chat(gateway, messages)

    theirs = chat(gateway, messages, key=gateway.keys.b)
    edited = [*messages[:2], {"role": "assistant", "content": "Something else."}, *messages[3:]]
    theirs_edited = chat(gateway, edited, key=gateway.keys.b)

    assert theirs.miss == "first_write" and reason(theirs) == "first_write"
    assert theirs.usage["cache_read_input_tokens"] == 0
    # B's own first write is all B's scope remembers: B's edit is measured against it, never against A's.
    assert theirs_edited.miss == "prefix_changed;block=2"


def test_a_stream_carries_the_reason_in_its_usage_frame(gateway: GatewayHarness) -> None:
    messages = opening()
    chat(gateway, messages)
    stream = openai_client(gateway).chat.completions.create(
        model="cached",
        messages=[marked_system(system_text(), MARK_5M), messages[1]],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=ASK,
    )
    frames = [chunk.model_dump() for chunk in stream if chunk.usage is not None]

    assert frames[-1]["diagnostics"] == {"cache_miss_reason": {"type": "prefix_changed", "block": "system"}}


@pytest.mark.in_process_only("slows the index down")
def test_a_streams_headers_never_wait_for_the_reason(gateway: GatewayHarness) -> None:
    gateway.index.delay = 0.3  # the classification is still running when the upstream's headers arrive
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="cached", messages=opening(), stream=True, stream_options={"include_usage": True}, extra_headers=ASK
    )
    frames = [chunk.model_dump() for chunk in raw.parse() if chunk.usage is not None]

    assert raw.headers.get(MISS_HEADER) is None
    assert frames[-1]["diagnostics"] == {"cache_miss_reason": {"type": "first_write"}}


def test_an_upstream_cachegates_miss_header_never_reaches_the_client(gateway: GatewayHarness) -> None:
    """A cachegate behind this one shares one scope among all of this one's tenants: its reasons are not theirs."""
    messages = opening()
    upstream = {**ASK, "x-fake-behavior": "miss-header"}
    cached = openai_client(gateway).chat.completions.with_raw_response.create(
        model="cached", messages=messages, extra_headers=upstream
    )
    plain = openai_client(gateway).chat.completions.with_raw_response.create(
        model="plain", messages=messages, extra_headers=upstream
    )
    stream = openai_client(gateway).chat.completions.with_raw_response.create(
        model="plain", messages=messages, extra_headers=upstream, stream=True
    )
    list(stream.parse())
    with urllib.request.urlopen(f"{gateway.fake_url}/_fake/last-headers", timeout=10) as response:
        forwarded = orjson.loads(response.read())

    assert cached.headers.get_list(MISS_HEADER) == ["first_write"]  # ours alone
    assert plain.headers.get(MISS_HEADER) is None and stream.headers.get(MISS_HEADER) is None
    assert "x-cachegate-diagnostics" not in forwarded  # the client's question is for this gateway


# -- Anthropic clients: the diagnostics field --------------------------------------------------------


def anthropic_client(gateway: GatewayHarness) -> Anthropic:
    return Anthropic(base_url=gateway.base_url, api_key=gateway.keys.a, max_retries=0, timeout=30)


def anthropic_request(system: str, *turns: str, tools: bool = False) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        block: dict[str, Any] = {"type": "text", "text": turn}
        if i == len(turns) - 1:
            block["cache_control"] = MARK_5M
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": [block]})
    request: dict[str, Any] = {
        "model": "cached",
        "max_tokens": 32,
        "system": [{"type": "text", "text": system, "cache_control": MARK_5M}],
        "messages": messages,
    }
    if tools:
        request["tools"] = [{"name": "search", "input_schema": {"type": "object"}}]
    return request


def test_anthropic_json_names_the_changed_message_by_the_clients_index(gateway: GatewayHarness) -> None:
    system, question = system_text(), f"[{uuid.uuid4()}] What is rule 3?"
    client = anthropic_client(gateway)
    conversation = anthropic_request(system, question, "Rule 3 says so.", "And rule 4?")
    first = client.messages.with_raw_response.create(**conversation, diagnostics={"previous_message_id": None})
    same = client.messages.create(**conversation, diagnostics={})
    edited = client.messages.with_raw_response.create(
        **anthropic_request(system, question, "Rule 3 says no.", "And rule 4?"),
        diagnostics={"previous_message_id": same.id},
    )
    unasked = client.messages.create(**conversation)

    assert first.headers.get(MISS_HEADER) == "first_write"
    assert first.parse().diagnostics.cache_miss_reason.type == "first_write"
    assert same.diagnostics is None  # it read: no divergence
    assert edited.headers.get(MISS_HEADER) == "prefix_changed;block=1"  # the client's messages[1]
    reason_ = edited.parse().diagnostics.cache_miss_reason
    assert (reason_.type, reason_.model_extra["block"]) == ("prefix_changed", 1)
    assert unasked.diagnostics is None


def test_anthropic_tools_and_system_are_named(gateway: GatewayHarness) -> None:
    system, question = system_text(), f"[{uuid.uuid4()}] What is rule 3?"
    client = anthropic_client(gateway)
    client.messages.create(**anthropic_request(system, question))

    with_tools = client.messages.with_raw_response.create(**anthropic_request(system, question, tools=True))
    new_system = client.messages.with_raw_response.create(**anthropic_request(system_text(), question, tools=True))

    assert with_tools.headers.get(MISS_HEADER) == "prefix_changed;block=tools"
    assert new_system.headers.get(MISS_HEADER) == "prefix_changed;block=system"
    assert gateway.ledger_rows("messages")[-1].miss_reason == "prefix_changed"


def test_anthropic_stream_carries_the_reason_in_its_final_message_delta(gateway: GatewayHarness) -> None:
    request = anthropic_request(system_text(), f"[{uuid.uuid4()}] What is rule 3?")
    events = list(anthropic_client(gateway).messages.create(**request, stream=True, diagnostics={}))

    start = next(event for event in events if event.type == "message_start")
    delta = next(event for event in events if event.type == "message_delta")
    # message_start goes out with the first chunk: the reason if already known, else pending (null).
    pending_or_known = start.message.diagnostics.cache_miss_reason
    assert pending_or_known is None or pending_or_known.type == "first_write"
    assert delta.model_extra["diagnostics"] == {"cache_miss_reason": {"type": "first_write"}}


def test_anthropic_diagnostics_of_the_wrong_shape_is_a_400(gateway: GatewayHarness) -> None:
    request = anthropic_request(system_text(), "hello")
    client = anthropic_client(gateway)
    for wrong in ([], {"previous_message_id": 3}):
        try:
            client.messages.create(**request, diagnostics=wrong)  # type: ignore[arg-type]
        except anthropic.BadRequestError as exc:
            assert exc.status_code == 400
        else:
            raise AssertionError(f"diagnostics={wrong!r} was accepted")
