"""The gateway as users meet it: the official ``openai`` SDK over real HTTP, JSON and streaming."""

from __future__ import annotations

import urllib.request
from typing import Any

import openai
import pytest
from openai import OpenAI

from harness import GatewayHarness
from prompts import MARK_1H, MARK_5M, QWEN3_TAIL_TOKENS, marked_system, system_text

pytestmark = pytest.mark.over_http(postgres=True)  # and so against `serve --workers 2` too (conftest.py)


def client(gateway: GatewayHarness, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key or gateway.keys.a, max_retries=0, timeout=30)


def usage_of(response: Any) -> dict[str, Any]:
    return response.model_dump()["usage"]


def ask(
    gateway: GatewayHarness, messages: list[dict[str, Any]], *, key: str | None = None, model: str = "cached", **kw: Any
) -> dict[str, Any]:
    return usage_of(client(gateway, key).chat.completions.create(model=model, messages=messages, **kw))


def stream_usage(
    gateway: GatewayHarness, messages: list[dict[str, Any]], *, key: str | None = None, **kw: Any
) -> tuple[str, dict[str, Any] | None]:
    chunks = client(gateway, key).chat.completions.create(
        model="cached", messages=messages, stream=True, stream_options={"include_usage": True}, **kw
    )
    text, usage = "", None
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    return text, usage


def conversation(text: str, mark: dict[str, str] = MARK_1H) -> list[dict[str, Any]]:
    return [marked_system(text, mark), {"role": "user", "content": "What is rule 3?"}]


# -- write, then read ---------------------------------------------------------------------------


def test_write_then_read_with_exact_counts(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    first = ask(gateway, messages)
    # An independent check of the count: the same system prompt as the whole request, marked on
    # its last block, makes the breakpoint count the upstream's prompt_tokens less the template tail.
    alone = ask(
        gateway,
        [{"role": "system", "content": messages[0]["content"][0]["text"]}],
        extra_body={"cache_control": {"type": "ephemeral", "ttl": "1h"}},
    )
    assert (
        alone["cache_creation_input_tokens"] + alone["cache_read_input_tokens"]
        == alone["prompt_tokens"] - QWEN3_TAIL_TOKENS
    )

    assert first["cache_read_input_tokens"] == 0
    created = first["cache_creation_input_tokens"]
    assert 64 <= created < first["prompt_tokens"]
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": created,
        "ephemeral_24h_input_tokens": 0,
    }
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert first["prompt_tokens_details"]["cache_write_tokens"] == created

    second = ask(gateway, messages)  # immediately after: read-your-writes
    assert second["cache_read_input_tokens"] == created
    assert second["cache_creation_input_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] == created
    assert second["prompt_tokens"] == first["prompt_tokens"]
    assert "cache_degraded" not in second


def test_streaming_write_then_read(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    text, first = stream_usage(gateway, messages)
    assert text  # content arrived through the gateway
    assert first is not None and first["cache_creation_input_tokens"] > 0
    _, second = stream_usage(gateway, messages)
    assert second is not None
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0


def test_stream_and_json_agree(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    _, streamed = stream_usage(gateway, messages)
    again = ask(gateway, messages)
    assert streamed is not None
    assert again["cache_read_input_tokens"] == streamed["cache_creation_input_tokens"]


def test_two_breakpoints_one_hour_before_five_minutes(gateway: GatewayHarness) -> None:
    system = system_text()
    messages = [
        marked_system(system, MARK_1H),
        {"role": "user", "content": [{"type": "text", "text": system_text(120), "cache_control": MARK_5M}]},
        {"role": "user", "content": "and then?"},
    ]
    first = ask(gateway, messages)
    tiers = first["cache_creation"]
    assert tiers["ephemeral_1h_input_tokens"] > 0 and tiers["ephemeral_5m_input_tokens"] > 0
    assert (
        first["cache_creation_input_tokens"] == tiers["ephemeral_1h_input_tokens"] + tiers["ephemeral_5m_input_tokens"]
    )

    # The same system prompt alone reads exactly the 1h segment.
    only_system = ask(gateway, [marked_system(system, MARK_1H), {"role": "user", "content": "other question"}])
    assert only_system["cache_read_input_tokens"] == tiers["ephemeral_1h_input_tokens"]
    assert only_system["cache_creation_input_tokens"] == 0

    again = ask(gateway, messages)
    assert again["cache_read_input_tokens"] == first["cache_creation_input_tokens"]


def test_lookback_reads_an_earlier_breakpoint(gateway: GatewayHarness) -> None:
    system = system_text()
    turns: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i in range(4):
        turns += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    # turns[-2] is "question 3": first sent as the last, marked message.
    first_turns = [
        *turns[:-2],
        {"role": "user", "content": [{"type": "text", "text": "question 3", "cache_control": MARK_5M}]},
    ]
    first = ask(gateway, first_turns)
    created = first["cache_creation_input_tokens"]
    assert created > 0
    # The next turn moves its breakpoint three blocks further: the earlier prefix is found by lookback.
    later = [
        *turns,
        {"role": "user", "content": "question 4"},
        {"role": "assistant", "content": "answer 4"},
        {"role": "user", "content": [{"type": "text", "text": "question 5", "cache_control": MARK_5M}]},
    ]
    second = ask(gateway, later)
    assert second["cache_read_input_tokens"] == created
    assert second["cache_creation_input_tokens"] > 0


def test_below_floor_is_all_zeros(gateway: GatewayHarness) -> None:
    usage = ask(gateway, conversation(system_text()), model="floored")
    again = ask(gateway, conversation(system_text()), model="floored")
    for u in (usage, again):
        assert u["cache_read_input_tokens"] == 0 and u["cache_creation_input_tokens"] == 0
        assert u["prompt_tokens_details"]["cached_tokens"] == 0


def test_tenants_never_share_a_prefix(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    a = ask(gateway, messages, key=gateway.keys.a)
    b = ask(gateway, messages, key=gateway.keys.b)
    assert a["cache_creation_input_tokens"] > 0
    assert b["cache_read_input_tokens"] == 0
    assert b["cache_creation_input_tokens"] == a["cache_creation_input_tokens"]


def test_unmarked_request_to_cached_model_reports_zeros(gateway: GatewayHarness) -> None:
    usage = ask(gateway, [{"role": "user", "content": "hi"}])
    assert usage["cache_read_input_tokens"] == 0 and usage["cache_creation_input_tokens"] == 0


# -- what the upstream sees and says ------------------------------------------------------------


def test_markers_are_stripped_and_model_rewritten_upstream(gateway: GatewayHarness) -> None:
    import json
    import urllib.request

    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"type": "object", "properties": {"cache_control": {"type": "string"}}},
            },
            "cache_control": MARK_1H,
        }
    ]
    client(gateway).chat.completions.create(model="cached", messages=conversation(system_text()), tools=tools)
    with urllib.request.urlopen(f"{gateway.fake_url}/_fake/last-request") as response:
        forwarded = json.load(response)
    assert forwarded["model"] == "qwen3-fake"
    assert "cache_control" not in forwarded["messages"][0]["content"][0]
    assert "cache_control" not in forwarded["tools"][0]
    assert "cache_control" in forwarded["tools"][0]["function"]["parameters"]["properties"]


def test_upstream_cache_counts_are_replaced(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    cached = ask(gateway, messages, extra_headers={"x-fake-behavior": "cached=777"})
    assert cached["prompt_tokens_details"]["cached_tokens"] == 0  # a first write, whatever the engine says
    plain = ask(gateway, messages, model="plain", extra_headers={"x-fake-behavior": "cached=777"})
    assert "cache_read_input_tokens" not in plain
    assert (plain.get("prompt_tokens_details") or {}).get("cached_tokens") in (None, 0)


def test_client_that_did_not_ask_for_usage_never_receives_it(gateway: GatewayHarness) -> None:
    chunks = list(
        client(gateway).chat.completions.create(model="cached", messages=conversation(system_text()), stream=True)
    )
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        (
            [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "persistent"}}]}],
            {},
            "messages[0].content[0].cache_control",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "2h"}}],
                }
            ],
            {},
            "messages[0].content[0].cache_control",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "24h"}}],
                }
            ],
            {},
            "messages[0].content[0].cache_control",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": str(i), "cache_control": MARK_5M} for i in range(5)],
                }
            ],
            {},
            None,
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": MARK_5M},
                        {"type": "text", "text": "b", "cache_control": MARK_1H},
                    ],
                }
            ],
            {},
            None,
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": MARK_5M}]}],
            {"cache_control": MARK_1H},
            None,
        ),
    ],
    ids=["bad-type", "unknown-ttl", "ttl-not-accepted", "five-breakpoints", "5m-before-1h", "automatic-ttl-conflict"],
)
@pytest.mark.parametrize("model", ["cached", "plain"])
def test_invalid_markers_are_refused_before_forwarding(
    gateway: GatewayHarness, model: str, messages: list[dict[str, Any]], extra: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model=model, messages=messages, extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_cache_control"
    assert error["param"]
    if param is not None:
        assert error["param"] == param


def test_unknown_key_is_401_and_unknown_model_404(gateway: GatewayHarness) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "cg-not-a-key").chat.completions.create(
            model="cached", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"


def test_unreachable_upstream_is_502(gateway: GatewayHarness) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway).chat.completions.create(model="unreachable", messages=conversation(system_text()))
    assert caught.value.status_code == 502


# -- responses that did not succeed never commit ----------------------------------------------


def test_upstream_error_is_passed_through_and_never_commits(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway).chat.completions.create(
            model="cached", messages=messages, extra_headers={"x-fake-behavior": "status=500"}
        )
    assert "told to fail" in str(caught.value)
    after = ask(gateway, messages)
    assert after["cache_read_input_tokens"] == 0 and after["cache_creation_input_tokens"] > 0


def test_cut_stream_reaches_the_client_as_an_error_and_never_commits(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    with pytest.raises(openai.APIError):
        for _ in client(gateway).chat.completions.create(
            model="cached",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-behavior": "cut=3"},
        ):
            pass
    after = ask(gateway, messages)
    assert after["cache_read_input_tokens"] == 0


def test_error_frame_never_commits(gateway: GatewayHarness) -> None:
    messages = conversation(system_text())
    try:
        for _ in client(gateway).chat.completions.create(
            model="cached",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-behavior": "error-frame"},
        ):
            pass
    except openai.APIError:
        pass  # the SDK raises on an error frame: that is the upstream's error, passed through
    after = ask(gateway, messages)
    assert after["cache_read_input_tokens"] == 0


# -- degraded paths (SPEC §11) ------------------------------------------------------------------


def _assert_degraded(response: Any) -> None:
    usage = usage_of(response.parse())
    assert response.headers.get("x-cachegate-cache") == "degraded"
    assert usage["cache_degraded"] is True
    assert usage["cache_read_input_tokens"] == 0 and usage["cache_creation_input_tokens"] == 0


@pytest.mark.in_process_only("switches the index off")
def test_index_down_serves_uncached(gateway: GatewayHarness) -> None:
    gateway.index.down = True
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="cached", messages=conversation(system_text())
    )
    _assert_degraded(raw)


@pytest.mark.in_process_only("switches the token counter off")
def test_token_counter_failing_serves_uncached(gateway: GatewayHarness) -> None:
    gateway.counter.failing = True
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="cached", messages=conversation(system_text())
    )
    _assert_degraded(raw)


@pytest.mark.in_process_only("slows the token counter down")
def test_deadline_passed_serves_uncached(gateway: GatewayHarness) -> None:
    gateway.counter.delay = 2.0  # the harness's classify deadline is 1 s
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="cached", messages=conversation(system_text())
    )
    _assert_degraded(raw)


@pytest.mark.in_process_only("switches the index off")
def test_degraded_stream_says_so_in_its_usage(gateway: GatewayHarness) -> None:
    gateway.index.down = True
    _, usage = stream_usage(gateway, conversation(system_text()))
    assert usage is not None and usage["cache_degraded"] is True


# -- other paths ------------------------------------------------------------------------------


def test_models_are_the_catalogs_aliases(gateway: GatewayHarness) -> None:
    models = {m.id for m in client(gateway).models.list()}
    assert {"cached", "plain", "floored"} <= models
    assert client(gateway).models.retrieve("cached").id == "cached"
    with pytest.raises(openai.NotFoundError) as refused:
        client(gateway).models.retrieve("qwen3-fake")  # the upstream's name is not a model clients may use
    assert refused.value.code == "model_not_found"


def test_our_prompt_count_equals_the_upstreams(gateway: GatewayHarness) -> None:
    """The drift metric (SPEC §6.6): the fake upstream counts the forwarded body with the same
    tokenizer and template, so any drift means markers or rewriting changed what is counted."""
    ask(gateway, conversation(system_text()))  # a write: the whole prompt is rendered and counted
    values = metric_values(gateway, "cachegate_token_count_drift")
    count = values['cachegate_token_count_drift_tokens_count{model="cached"}']
    assert count >= 1
    # Integer drifts: none at or below -1, all at or below 0, so every one was exactly 0.
    assert values['cachegate_token_count_drift_tokens_bucket{le="-1.0",model="cached"}'] == 0
    assert values['cachegate_token_count_drift_tokens_bucket{le="0.0",model="cached"}'] == count


READ_TOOL = {
    "type": "function",
    "function": {
        "name": "read",
        "description": "Read a file of the repository.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}


@pytest.mark.in_process_only(
    "counts resume from checkpoints in each process's memory: a turn on the other worker counts from the start"
)
def test_an_agent_loop_is_counted_from_its_new_turn_on(gateway: GatewayHarness) -> None:
    """Each request of an agent loop is counted from where the one before left off
    (tokens/resume.py), and as exactly: a turn reads what the turn before wrote, and our count
    of every whole prompt is the upstream's."""
    messages: list[dict[str, Any]] = [marked_system(system_text()), {"role": "user", "content": "Fix the parser."}]
    resumed_before = metric_values(gateway, "cachegate_token_counts_total").get(
        'cachegate_token_counts_total{method="resumed"}', 0.0
    )
    written_up_to = 0
    for turn in range(4):
        for message in messages[2:]:  # the breakpoint moves to the newest result
            if isinstance(message["content"], list):
                message["content"] = message["content"][0]["text"]
        call = {
            "id": f"call_{turn}",
            "type": "function",
            "function": {"name": "read", "arguments": f'{{"path": "m{turn}.py"}}'},
        }
        result = f"def parse_{turn}(lines):\n    return lines[:-1]  # drops the last line\n" * 20
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": f"call_{turn}",
                "content": [{"type": "text", "text": result, "cache_control": MARK_5M}],
            },
        ]
        usage = ask(gateway, messages, tools=[READ_TOOL])
        if turn:
            assert usage["cache_read_input_tokens"] == written_up_to
        written_up_to = usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
        assert usage["cache_creation_input_tokens"] > 0

    counts = metric_values(gateway, "cachegate_token_counts_total")
    assert counts['cachegate_token_counts_total{method="resumed"}'] >= resumed_before + 3
    drift = metric_values(gateway, "cachegate_token_count_drift")
    every = drift['cachegate_token_count_drift_tokens_count{model="cached"}']
    assert drift['cachegate_token_count_drift_tokens_bucket{le="-1.0",model="cached"}'] == 0
    assert drift['cachegate_token_count_drift_tokens_bucket{le="0.0",model="cached"}'] == every


def metric_values(gateway: GatewayHarness, prefix: str) -> dict[str, float]:
    scrape = urllib.request.Request(
        f"{gateway.base_url}/metrics", headers={"authorization": f"Bearer {gateway.keys.admin}"}
    )
    with urllib.request.urlopen(scrape) as response:
        lines = response.read().decode().splitlines()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line.startswith(prefix)}
