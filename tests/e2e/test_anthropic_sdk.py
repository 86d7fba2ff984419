"""The Anthropic dialect as its users meet it: the official ``anthropic`` SDK over real HTTP (SPEC §9).

The same gateway, the same fake upstream and the same cache as the ``openai`` SDK tests: an
Anthropic conversation is translated to chat completions, so its breakpoints, counts, ledger
rows and cache entries are those of the equivalent chat request.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anthropic
import pytest
from anthropic import Anthropic
from openai import OpenAI

from harness import GatewayHarness
from prompts import MARK_1H, MARK_5M, QWEN3_TAIL_TOKENS, system_text
from store.rawdb import query

pytestmark = pytest.mark.over_http  # and so against `serve --workers 2` too (conftest.py)


def client(gateway: GatewayHarness, key: str | None = None, **headers: str) -> Anthropic:
    return Anthropic(
        base_url=gateway.base_url, api_key=key or gateway.keys.a, max_retries=0, timeout=30, default_headers=headers
    )


def system_blocks(text: str, mark: dict[str, str] | None = MARK_1H) -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if mark is not None:
        block["cache_control"] = mark
    return [{"type": "text", "text": "You are cachegate's test assistant."}, block]


def usage_of(message: Any) -> dict[str, Any]:
    return message.usage.model_dump()


def create(gateway: GatewayHarness, *, key: str | None = None, model: str = "cached", **kw: Any) -> Any:
    kw.setdefault("max_tokens", 64)
    kw.setdefault("messages", [{"role": "user", "content": "What is rule 3?"}])
    return client(gateway, key).messages.create(model=model, **kw)


def prompt_tokens(usage: dict[str, Any]) -> int:
    return usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]


# -- write, then read --------------------------------------------------------------------------------


def test_first_request_writes_and_the_second_reads_exactly_what_was_written(gateway: GatewayHarness) -> None:
    system = system_blocks(system_text())
    first = usage_of(create(gateway, system=system))
    second = usage_of(create(gateway, system=system))
    written = first["cache_creation_input_tokens"]
    assert written > 0 and first["cache_read_input_tokens"] == 0
    assert first["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": written}
    assert second["cache_read_input_tokens"] == written and second["cache_creation_input_tokens"] == 0
    assert prompt_tokens(first) == prompt_tokens(second)
    # What follows the breakpoint: the user turn and the template's tail.
    assert second["input_tokens"] == prompt_tokens(second) - written > QWEN3_TAIL_TOKENS


def test_one_conversation_has_one_set_of_hashes_whichever_dialect_sends_it(gateway: GatewayHarness) -> None:
    text = system_text()
    written = usage_of(create(gateway, system=system_blocks(text)))["cache_creation_input_tokens"]
    chat = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.keys.a, max_retries=0, timeout=30)
    system_message = {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are cachegate's test assistant."},
            {"type": "text", "text": text, "cache_control": MARK_1H},
        ],
    }
    usage = chat.chat.completions.create(
        model="cached", messages=[system_message, {"role": "user", "content": "Another question."}], max_tokens=8
    ).model_dump()["usage"]
    assert usage["cache_read_input_tokens"] == written


def test_markers_on_tools_and_blocks_of_every_kind_are_honoured_in_ttl_order(gateway: GatewayHarness) -> None:
    tools = [
        {
            "name": "lookup",
            "description": system_text(120),
            "input_schema": {"type": "object", "properties": {"rule": {"type": "integer"}}, "required": ["rule"]},
            "cache_control": MARK_1H,
        }
    ]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": system_text(60), "cache_control": MARK_5M}]},
    ]
    usage = usage_of(create(gateway, tools=tools, messages=messages))
    split = usage["cache_creation"]
    assert split["ephemeral_1h_input_tokens"] > 0 and split["ephemeral_5m_input_tokens"] > 0
    assert (
        usage["cache_creation_input_tokens"] == split["ephemeral_1h_input_tokens"] + split["ephemeral_5m_input_tokens"]
    )
    again = usage_of(create(gateway, tools=tools, messages=messages))
    assert again["cache_read_input_tokens"] == usage["cache_creation_input_tokens"]


def test_top_level_cache_control_caches_the_last_block(gateway: GatewayHarness) -> None:
    messages = [{"role": "user", "content": system_text()}]
    first = usage_of(create(gateway, messages=messages, extra_body={"cache_control": {"type": "ephemeral"}}))
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] == first["cache_creation_input_tokens"] > 0
    second = usage_of(create(gateway, messages=messages, extra_body={"cache_control": {"type": "ephemeral"}}))
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]


def test_a_tenant_never_reads_another_tenants_entries(gateway: GatewayHarness) -> None:
    system = system_blocks(system_text())
    create(gateway, system=system, key=gateway.keys.a)
    other = usage_of(create(gateway, system=system, key=gateway.keys.b))
    assert other["cache_read_input_tokens"] == 0 and other["cache_creation_input_tokens"] > 0


# -- streaming ----------------------------------------------------------------------------------------


def test_a_stream_carries_text_as_it_comes_and_ends_with_the_exact_usage(gateway: GatewayHarness) -> None:
    system = system_blocks(system_text())
    written = usage_of(create(gateway, system=system))["cache_creation_input_tokens"]
    events: list[Any] = []
    with client(gateway).messages.stream(
        model="cached", max_tokens=64, system=system, messages=[{"role": "user", "content": "What is rule 3?"}]
    ) as stream:
        for event in stream:
            events.append(event)
        message = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert message.content[0].type == "text" and message.content[0].text.startswith("The quick brown fox")
    assert message.stop_reason == "end_turn"
    final = next(event for event in events if event.type == "message_delta").usage.model_dump()
    assert final["cache_read_input_tokens"] == written and final["cache_creation_input_tokens"] == 0
    assert message.usage.cache_read_input_tokens == written
    assert message.usage.input_tokens == final["input_tokens"] > 0


def test_a_streamed_tool_call_arrives_as_a_tool_use_block_with_its_input(gateway: GatewayHarness) -> None:
    tools = [
        {
            "name": "lookup",
            "description": "Look a rule up.",
            "input_schema": {"type": "object", "properties": {"rule": {"type": "integer"}}, "required": ["rule"]},
        }
    ]
    with client(gateway, **{"x-fake-behavior": "tool-call=lookup"}).messages.stream(
        model="cached", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "Rule 3?"}]
    ) as stream:
        message = stream.get_final_message()
    calls = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use"
    assert [call.name for call in calls] == ["lookup"] and isinstance(calls[0].input, dict)
    assert "rule" in calls[0].input


def test_a_ten_turn_tool_loop_reads_every_earlier_turn(gateway: GatewayHarness) -> None:
    """The breakpoint moves to the last block each turn (as Claude Code's does); the lookback of
    SPEC §6 finds the previous turn's entry, so each turn reads exactly what the one before wrote."""
    tools = [
        {
            "name": "lookup",
            "description": "Look a rule up.",
            "input_schema": {"type": "object", "properties": {"rule": {"type": "integer"}}, "required": ["rule"]},
        }
    ]
    system = system_blocks(system_text(), MARK_1H)
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "Start."}]}]
    previous_total = None
    for turn in range(10):
        last = messages[-1]["content"][-1]
        last["cache_control"] = MARK_5M
        reply = client(gateway, **{"x-fake-behavior": "tool-call=lookup"}).messages.create(
            model="cached", max_tokens=64, system=system, tools=tools, messages=messages
        )
        usage = usage_of(reply)
        if previous_total is not None:
            assert usage["cache_read_input_tokens"] == previous_total, f"turn {turn}"
        previous_total = usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
        del last["cache_control"]
        call = next(block for block in reply.content if block.type == "tool_use")
        messages.append({"role": "assistant", "content": [block.model_dump() for block in reply.content]})
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": f"rule {turn}"}]}
        )


# -- count_tokens ---------------------------------------------------------------------------------------


def test_count_tokens_is_the_prompt_the_upstream_sees_and_says_what_would_be_read_and_written(
    gateway: GatewayHarness,
) -> None:
    system = system_blocks(system_text())
    messages = [{"role": "user", "content": "What is rule 3?"}]
    before = client(gateway).messages.count_tokens(model="cached", system=system, messages=messages).model_dump()
    written = usage_of(create(gateway, system=system, messages=messages))
    after = client(gateway).messages.count_tokens(model="cached", system=system, messages=messages).model_dump()
    assert before["input_tokens"] == after["input_tokens"] == prompt_tokens(written)
    assert before["cache_creation_input_tokens"] == written["cache_creation_input_tokens"] > 0
    assert before["cache_read_input_tokens"] == 0
    assert after["cache_read_input_tokens"] == written["cache_creation_input_tokens"]
    assert after["cache_creation_input_tokens"] == 0


def test_count_tokens_writes_nothing(gateway: GatewayHarness) -> None:
    system = system_blocks(system_text())
    client(gateway).messages.count_tokens(model="cached", system=system, messages=[{"role": "user", "content": "Hi"}])
    usage = usage_of(create(gateway, system=system, messages=[{"role": "user", "content": "Hi"}]))
    assert usage["cache_read_input_tokens"] == 0 and usage["cache_creation_input_tokens"] > 0


# -- errors ---------------------------------------------------------------------------------------------


def error_body(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


def test_an_invalid_marker_is_a_400_naming_the_clients_own_field(gateway: GatewayHarness) -> None:
    system = system_blocks("x", {"type": "ephemeral", "ttl": "7m"})
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(gateway, system=system)
    error = error_body(caught.value)
    assert error["type"] == "invalid_request_error" and "system[1].cache_control" in error["message"]


def test_a_5m_breakpoint_before_a_1h_one_is_refused(gateway: GatewayHarness) -> None:
    system = [
        {"type": "text", "text": "a", "cache_control": MARK_5M},
        {"type": "text", "text": "b", "cache_control": MARK_1H},
    ]
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(gateway, system=system)
    assert "system[1].cache_control" in error_body(caught.value)["message"]


def test_a_request_anthropic_would_refuse_is_a_400_in_anthropics_shape(gateway: GatewayHarness) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(gateway, messages=[{"role": "user", "content": [{"type": "hologram"}]}])
    assert error_body(caught.value)["type"] == "invalid_request_error"


def test_a_bad_key_is_a_401_authentication_error(gateway: GatewayHarness) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        create(gateway, key="cg-" + uuid.uuid4().hex)
    assert error_body(caught.value)["type"] == "authentication_error"


def test_an_unknown_model_is_a_404_not_found_error(gateway: GatewayHarness) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        create(gateway, model="no-such-model")
    assert error_body(caught.value)["type"] == "not_found_error"


def test_a_dead_upstream_is_an_anthropic_shaped_error(gateway: GatewayHarness) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        create(gateway, model="unreachable")
    assert caught.value.status_code == 502
    assert error_body(caught.value)["type"] == "api_error"


def test_an_upstream_error_is_mapped_never_passed_on_raw(gateway: GatewayHarness) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client(gateway, **{"x-fake-behavior": "status=500"}).messages.create(
            model="cached", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert error_body(caught.value)["type"] == "api_error"


@pytest.mark.parametrize("behavior", ["cut=3", "error-frame"])
def test_a_stream_whose_upstream_fails_ends_with_an_error_event_and_commits_nothing(
    gateway: GatewayHarness, behavior: str
) -> None:
    system = system_blocks(system_text())
    events: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError),
        client(gateway, **{"x-fake-behavior": behavior}).messages.stream(
            model="cached", max_tokens=64, system=system, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        events.extend(event.type for event in stream)
    assert "message_stop" not in events
    usage = usage_of(create(gateway, system=system, messages=[{"role": "user", "content": "Hi"}]))
    assert usage["cache_read_input_tokens"] == 0 and usage["cache_creation_input_tokens"] > 0


def test_every_messages_request_is_billed_like_a_chat_request(gateway: GatewayHarness) -> None:
    def totals() -> tuple[int, int, int]:
        gateway.ledger_rows("messages")  # waits until the writer's rounds have stored every row
        [(requests, reads, writes)] = gateway.call(  # what the database holds, not what was sent to it
            query(
                gateway.config.store_url,
                "SELECT count(*), coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_creation_5m_tokens"
                " + cache_creation_1h_tokens + cache_creation_24h_tokens), 0) FROM ledger WHERE route = 'messages'",
            )
        )
        return int(requests), int(reads), int(writes)  # type: ignore[call-overload]  # PostgreSQL sums are NUMERIC

    before = totals()
    system = system_blocks(system_text())
    first = usage_of(create(gateway, system=system))
    with client(gateway).messages.stream(
        model="cached", max_tokens=64, system=system, messages=[{"role": "user", "content": "What is rule 3?"}]
    ) as stream:
        second = usage_of(stream.get_final_message())
    after = totals()
    assert after[0] - before[0] == 2
    assert after[1] - before[1] == second["cache_read_input_tokens"]
    assert after[2] - before[2] == first["cache_creation_input_tokens"]


def test_a_client_that_leaves_mid_stream_vetoes_the_commit(gateway: GatewayHarness) -> None:
    system = system_blocks(system_text())
    with client(gateway, **{"x-fake-behavior": "pace=0.05,chunks=60"}).messages.stream(
        model="cached", max_tokens=64, system=system, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break  # leave: the context manager closes the connection
    time.sleep(0.5)  # the gateway notices the disconnect at its next chunk
    usage = usage_of(create(gateway, system=system, messages=[{"role": "user", "content": "Hi"}]))
    assert usage["cache_read_input_tokens"] == 0 and usage["cache_creation_input_tokens"] > 0
