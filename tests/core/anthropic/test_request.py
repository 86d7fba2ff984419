"""An Anthropic Messages request as a chat request (SPEC §9): the mapping, its refusals, its markers."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.anthropic.request import (
    AnthropicRequestError,
    ReasoningSwitch,
    TranslatedRequest,
    client_param,
    translate_request,
)
from cachegate.core.blocks import hashed_prompt, parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import strip_markers, validate_markers
from cachegate.core.sites import marker_param, message_marker_param
from cachegate.core.types import BlockKind, TtlTier

from ..bodies import DEFAULT, PROPERTY
from .conversations import MARK, anthropic, requests, text_block

REFERENCE = Path("/work/shared/reference/claude-code-requests.json")


def chat(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    return translate_request(body, **options).body


def messages(*anthropic_messages: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    return chat(anthropic(*anthropic_messages, **fields))["messages"]


def refusal(body: Any) -> str:
    with pytest.raises(AnthropicRequestError) as caught:
        translate_request(body)
    return caught.value.param


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def tool_use(call_id: str, name: str = "lookup", tool_input: Any = None, **fields: Any) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call_id,
        "name": name,
        "input": {} if tool_input is None else tool_input,
        **fields,
    }


def tool_result(call_id: str, content: Any = None, **fields: Any) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": call_id, **fields}
    if content is not None:
        block["content"] = content
    return block


class TestSystem:
    def test_a_string_is_the_first_message(self) -> None:
        assert messages(user(text_block("hi")), system="be brief")[0] == {"role": "system", "content": "be brief"}

    def test_blocks_are_parts_with_their_markers(self) -> None:
        system = [text_block("a"), text_block("b", marked=True)]
        assert messages(user(text_block("hi")), system=system)[0] == {
            "role": "system",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": MARK}],
        }

    @pytest.mark.parametrize("system", [None, "", []])
    def test_absent_or_empty_is_no_message(self, system: Any) -> None:
        assert messages(user(text_block("hi")), system=system) == [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ]

    def test_a_system_message_mid_conversation_stays_in_place(self) -> None:
        conversation = [
            user(text_block("q")),
            {"role": "system", "content": [text_block("reminder", marked=True)]},
            {"role": "assistant", "content": "a"},
        ]
        assert [message["role"] for message in messages(*conversation)] == ["user", "system", "assistant"]


class TestUserBlocks:
    def test_string_content_stays_a_string(self) -> None:
        assert messages({"role": "user", "content": "hi"}) == [{"role": "user", "content": "hi"}]

    def test_text_drops_citations(self) -> None:
        block = {"type": "text", "text": "t", "citations": [{"type": "char_location"}]}
        assert messages(user(block))[0]["content"] == [{"type": "text", "text": "t"}]

    def test_images(self) -> None:
        base64 = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}
        url = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}, "cache_control": MARK}
        assert messages(user(base64, url))[0]["content"] == [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}, "cache_control": MARK},
        ]

    def test_text_documents(self) -> None:
        plain = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}
        blocks = {
            "type": "document",
            "source": {"type": "content", "content": [text_block("p1"), text_block("p2")]},
            "cache_control": MARK,
        }
        assert messages(user(plain, blocks))[0]["content"] == [
            {"type": "text", "text": "doc"},
            {"type": "text", "text": "p1"},
            {"type": "text", "text": "p2", "cache_control": MARK},
        ]

    @pytest.mark.parametrize(
        "source",
        [
            {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            {"type": "url", "url": "https://x/y.pdf"},
            {"type": "file", "file_id": "f"},
        ],
    )
    def test_pdfs_are_refused(self, source: dict[str, Any]) -> None:
        with pytest.raises(AnthropicRequestError, match="not supported by this gateway") as caught:
            translate_request(anthropic(user({"type": "document", "source": source})))
        assert caught.value.param == "messages[0].content[0].source"

    def test_tool_results_are_tool_messages_in_place(self) -> None:
        turn = user(
            text_block("before"),
            tool_result("t1", "one"),
            tool_result("t2", [text_block("two")]),
            text_block("after"),
        )
        assert messages(turn) == [
            {"role": "user", "content": [{"type": "text", "text": "before"}]},
            {"role": "tool", "tool_call_id": "t1", "content": "one"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": [{"type": "text", "text": "after"}]},
        ]

    def test_a_tool_result_without_content_is_empty(self) -> None:
        assert messages(user(tool_result("t1"))) == [{"role": "tool", "tool_call_id": "t1", "content": ""}]

    def test_errors_are_prefixed(self) -> None:
        assert messages(
            user(tool_result("t1", "boom", is_error=True), tool_result("t2", [text_block("x")], is_error=True))
        ) == [
            {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
            {
                "role": "tool",
                "tool_call_id": "t2",
                "content": [{"type": "text", "text": "Error:"}, {"type": "text", "text": "x"}],
            },
        ]

    def test_a_tool_result_marker_lands_on_its_last_part_or_its_message(self) -> None:
        translated = translate_request(
            anthropic(
                user(
                    tool_result("t1", "s", cache_control=MARK),
                    tool_result("t2", [text_block("a"), text_block("b")], cache_control=MARK),
                )
            )
        )
        first, second = translated.body["messages"]
        assert first["cache_control"] == MARK
        assert second["content"][-1] == {"type": "text", "text": "b", "cache_control": MARK}
        assert translated.marker_params == {
            "messages[0].cache_control": "messages[0].content[0].cache_control",
            "messages[1].content[1].cache_control": "messages[0].content[1].cache_control",
        }


class TestAssistantBlocks:
    def test_tool_use_is_a_tool_call_without_content(self) -> None:
        turn = assistant(tool_use("toolu_1", "grep", {"pattern": "é", "n": 2}, cache_control=MARK))
        assert messages(turn) == [
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "grep", "arguments": '{"pattern":"é","n":2}'},
                        "cache_control": MARK,
                    }
                ],
            }
        ]

    def test_thinking_is_reasoning_and_redacted_thinking_is_dropped(self) -> None:
        turn = assistant(
            {"type": "thinking", "thinking": "first", "signature": "s"},
            {"type": "redacted_thinking", "data": "opaque"},
            text_block("answer"),
            {"type": "thinking", "thinking": "second", "signature": "s"},
        )
        assert messages(turn) == [
            {"role": "assistant", "reasoning": "first\nsecond", "content": [{"type": "text", "text": "answer"}]}
        ]

    @pytest.mark.parametrize("kind", ["thinking", "redacted_thinking"])
    def test_thinking_cannot_be_marked(self, kind: str) -> None:
        block = {"type": kind, "thinking": "t", "data": "d", "signature": "s", "cache_control": MARK}
        assert refusal(anthropic(assistant(block))) == "messages[0].content[0].cache_control"

    def test_an_empty_text_block_cannot_be_marked(self) -> None:
        assert refusal(anthropic(user(text_block("", marked=True)))) == "messages[0].content[0]"
        assert messages(user(text_block(""))) == [{"role": "user", "content": [{"type": "text", "text": ""}]}]


class TestTools:
    def test_custom_tools_are_functions(self) -> None:
        schema = {"type": "object", "properties": {"cache_control": {"type": "string"}}}
        tools = [
            {"name": "a", "description": "d", "input_schema": schema, "defer_loading": True, "strict": True},
            {"type": "custom", "name": "b", "input_schema": schema, "cache_control": MARK},
        ]
        translated = translate_request(anthropic(user(text_block("hi")), tools=tools))
        assert translated.body["tools"] == [
            {"type": "function", "function": {"name": "a", "description": "d", "parameters": schema}},
            {"type": "function", "function": {"name": "b", "parameters": schema}, "cache_control": MARK},
        ]
        assert translated.marker_params == {"tools[1].cache_control": "tools[1].cache_control"}

    @pytest.mark.parametrize("kind", ["web_search_20250305", "bash_20250124", "text_editor_20250728"])
    def test_server_tools_are_refused(self, kind: str) -> None:
        body = anthropic(user(text_block("hi")), tools=[{"type": kind, "name": "x"}])
        assert refusal(body) == "tools[0].type"

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ({"type": "auto"}, {"tool_choice": "auto"}),
            ({"type": "any"}, {"tool_choice": "required"}),
            ({"type": "none"}, {"tool_choice": "none"}),
            ({"type": "tool", "name": "x"}, {"tool_choice": {"type": "function", "function": {"name": "x"}}}),
            (
                {"type": "auto", "disable_parallel_tool_use": True},
                {"tool_choice": "auto", "parallel_tool_calls": False},
            ),
        ],
    )
    def test_tool_choice(self, choice: dict[str, Any], expected: dict[str, Any]) -> None:
        body = chat(anthropic(user(text_block("hi")), tool_choice=choice))
        assert {key: body[key] for key in ("tool_choice", "parallel_tool_calls") if key in body} == expected


class TestParameters:
    def test_sampling_stop_metadata_and_stream(self) -> None:
        translated = translate_request(
            anthropic(
                user(text_block("hi")),
                stop_sequences=["END"],
                temperature=0.5,
                top_p=0.9,
                top_k=40,
                metadata={"user_id": "u1"},
                stream=True,
            )
        )
        assert translated.stream
        assert translated.stop_sequences == ("END",)
        assert {key: value for key, value in translated.body.items() if key != "messages"} == {
            "model": "m",
            "max_tokens": 64,
            "stop": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "user": "u1",
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def test_fields_without_upstream_meaning_are_dropped(self) -> None:
        body = anthropic(
            user(text_block("hi")),
            context_management={"edits": []},
            output_config={"effort": "high"},
            container="c",
            mcp_servers=[],
            service_tier="auto",
            betas=["x"],
            some_future_field={"a": 1},
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
        assert set(chat(body)) == {"model", "messages", "max_tokens"}

    def test_top_level_marker_is_automatic_caching(self) -> None:
        translated = translate_request(anthropic(user(text_block("hi")), cache_control=MARK))
        assert translated.body["cache_control"] == MARK
        assert client_param(translated, "cache_control") == "cache_control"


class TestReasoning:
    QWEN = ReasoningSwitch.template_kwarg("enable_thinking")
    GPT_OSS = ReasoningSwitch.effort()

    @pytest.mark.parametrize(
        ("thinking", "expected"),
        [
            ({"type": "enabled", "budget_tokens": 2048}, {"enable_thinking": True}),
            ({"type": "adaptive", "display": "omitted"}, {"enable_thinking": True}),
            ({"type": "disabled"}, {"enable_thinking": False}),
        ],
    )
    def test_a_template_switch(self, thinking: dict[str, Any], expected: dict[str, bool]) -> None:
        body = chat(anthropic(user(text_block("hi")), thinking=thinking), reasoning=self.QWEN)
        assert body["chat_template_kwargs"] == expected

    def test_no_thinking_leaves_the_template_alone(self) -> None:
        assert "chat_template_kwargs" not in chat(anthropic(user(text_block("hi"))), reasoning=self.QWEN)

    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
            ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "medium"),
            ({"thinking": {"type": "enabled", "budget_tokens": 16384}}, "high"),
            ({"thinking": {"type": "adaptive"}}, "medium"),
            ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, "low"),
            ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "output_config": {"effort": "max"}}, "high"),
            ({"output_config": {"effort": "high"}}, "high"),
            ({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, "low"),
        ],
    )
    def test_an_effort_switch(self, fields: dict[str, Any], expected: str) -> None:
        assert chat(anthropic(user(text_block("hi")), **fields), reasoning=self.GPT_OSS)["reasoning_effort"] == expected

    def test_no_thinking_and_no_effort_leave_the_effort_alone(self) -> None:
        assert "reasoning_effort" not in chat(anthropic(user(text_block("hi"))), reasoning=self.GPT_OSS)


class TestRefusals:
    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ([], "body"),
            ({"max_tokens": 1, "messages": []}, "model"),
            ({"model": "m", "messages": []}, "max_tokens"),
            ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens"),
            ({"model": "m", "max_tokens": True, "messages": []}, "max_tokens"),
            ({"model": "m", "max_tokens": "5", "messages": []}, "max_tokens"),
            (anthropic() | {"messages": {"role": "user"}}, "messages"),
            (anthropic("hi"), "messages[0]"),
            (anthropic({"role": "tool", "content": "x"}), "messages[0].role"),
            (anthropic({"role": "user", "content": 3}), "messages[0].content"),
            (anthropic({"role": "user", "content": []}), "messages[0].content"),
            (anthropic(user({"type": "video"})), "messages[0].content[0].type"),
            (anthropic(user({"text": "no type"})), "messages[0].content[0].type"),
            (anthropic(user(tool_use("t"))), "messages[0].content[0].type"),
            (anthropic(assistant(tool_result("t"))), "messages[0].content[0].type"),
            (anthropic({"role": "system", "content": [tool_result("t")]}), "messages[0].content[0].type"),
            (anthropic(user({"type": "text", "text": None})), "messages[0].content[0].text"),
            (anthropic(user({"type": "image", "source": "x"})), "messages[0].content[0].source"),
            (anthropic(user(tool_result(5))), "messages[0].content[0].tool_use_id"),
            (anthropic(user(tool_result("t", 5))), "messages[0].content[0].content"),
            (anthropic(user(tool_result("t", is_error="yes"))), "messages[0].content[0].is_error"),
            (anthropic(assistant(tool_use("t", tool_input=[1]))), "messages[0].content[0].input"),
            (anthropic(assistant(tool_use("t", name=None))), "messages[0].content[0].name"),
            (anthropic(user(text_block("x")), system=5), "system"),
            (anthropic(user(text_block("x")), system=[{"type": "image"}]), "system[0].type"),
            (anthropic(user(text_block("x")), tools={}), "tools"),
            (anthropic(user(text_block("x")), tools=[{"input_schema": {}}]), "tools[0].name"),
            (anthropic(user(text_block("x")), tools=[{"name": "a"}]), "tools[0].input_schema"),
            (anthropic(user(text_block("x")), tool_choice="auto"), "tool_choice"),
            (anthropic(user(text_block("x")), tool_choice={"type": "some"}), "tool_choice.type"),
            (anthropic(user(text_block("x")), stop_sequences="END"), "stop_sequences"),
            (anthropic(user(text_block("x")), stop_sequences=[1]), "stop_sequences[0]"),
            (anthropic(user(text_block("x")), temperature="hot"), "temperature"),
            (anthropic(user(text_block("x")), top_k=1.5), "top_k"),
            (anthropic(user(text_block("x")), metadata={"user_id": 1}), "metadata.user_id"),
            (anthropic(user(text_block("x")), stream="yes"), "stream"),
            (anthropic(user(text_block("x")), thinking="on"), "thinking"),
            (
                anthropic(user(text_block("x")), thinking={"type": "enabled", "budget_tokens": "x"}),
                "thinking.budget_tokens",
            ),
            (anthropic(user(text_block("x")), output_config={"effort": 3}), "output_config.effort"),
        ],
    )
    def test_wrong_shapes_name_their_param(self, body: Any, param: str) -> None:
        assert refusal(body) == param

    def test_a_marker_inside_a_document_is_refused(self) -> None:
        source = {"type": "content", "content": [text_block("p", marked=True)]}
        assert refusal(anthropic(user({"type": "document", "source": source}))) == (
            "messages[0].content[0].source.content[0].cache_control"
        )

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=3),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["type", "text", "content", "role", "source", "name", "input", "cache_control", "tool_use_id"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        )
    )
    @PROPERTY
    def test_type_confusion_is_always_a_request_error(self, junk: Any) -> None:
        for body in (
            junk,
            anthropic(junk),
            anthropic(user(junk)),
            anthropic(assistant(junk)),
            anthropic(user(text_block("x")), tools=[junk], system=[junk]),
        ):
            with contextlib.suppress(AnthropicRequestError):
                translate_request(body)


class TestMarkers:
    def test_a_marker_error_names_the_clients_path(self) -> None:
        body = anthropic(
            user(text_block("a"), tool_result("t", "r")),
            assistant(tool_use("t2", cache_control={"type": "ephemeral", "ttl": "2h"})),
            system=[text_block("s", marked=True)],
        )
        translated = translate_request(body)
        with pytest.raises(MarkerError) as caught:
            validate_markers(translated.body, DEFAULT)
        assert caught.value.param == "messages[3].tool_calls[0].cache_control"
        assert client_param(translated, caught.value.param) == "messages[1].content[0].cache_control"

    def test_the_ttl_order_rule_holds_across_dialects(self) -> None:
        body = anthropic(
            user(text_block("a", marked=True), text_block("b") | {"cache_control": {"type": "ephemeral", "ttl": "1h"}})
        )
        translated = translate_request(body)
        with pytest.raises(MarkerError) as caught:
            validate_markers(translated.body, DEFAULT)
        assert caught.value.reason == "ttl_order"
        assert client_param(translated, caught.value.param) == "messages[0].content[1].cache_control"

    def test_an_unknown_param_maps_to_itself(self) -> None:
        assert (
            client_param(TranslatedRequest({}, False, ()), "messages[9].cache_control") == "messages[9].cache_control"
        )


class TestClaudeCode:
    """The requests Claude Code 2.1 sent (texts and schemas elided in the reference file)."""

    @pytest.fixture(params=[0, 1], ids=["turn1", "turn2"])
    def request_body(self, request: pytest.FixtureRequest) -> dict[str, Any]:
        body = json.loads(REFERENCE.read_text())[request.param]["body"]
        for tool in body["tools"]:
            tool["input_schema"] = {"type": "object", "properties": {}}
        return body

    def test_translates_with_its_markers_in_place(self, request_body: dict[str, Any]) -> None:
        translated = translate_request(request_body, reasoning=ReasoningSwitch.template_kwarg("enable_thinking"))
        body = translated.body
        assert translated.stream
        assert len(body["tools"]) == 12
        assert all(set(tool["function"]) == {"name", "description", "parameters"} for tool in body["tools"])
        assert body["chat_template_kwargs"] == {"enable_thinking": True}
        assert body["user"] == request_body["metadata"]["user_id"]
        assert not {"context_management", "output_config", "thinking", "metadata", "system"} & set(body)
        breakpoints = validate_markers(body, DEFAULT)
        assert len(breakpoints) == 3
        clients = {client_param(translated, param) for param in translated.marker_params}
        assert {"system[1].cache_control", "system[2].cache_control"} < clients
        assert [message["role"] for message in body["messages"]][:2] == ["system", "user"]

    def test_turn_two_extends_turn_one(self) -> None:
        turns = json.loads(REFERENCE.read_text())
        for turn in turns:
            for tool in turn["body"]["tools"]:
                tool["input_schema"] = {"type": "object", "properties": {}}
        first, second = (hashed_prompt(chat(turn["body"]), ()).prefix_hashes for turn in turns)
        # the mid-conversation system message was a marked block, then a string: the same block
        assert second[: len(first)] == first


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(body)
    strip_markers(stripped)
    return stripped


def _without_anthropic_markers(value: Any) -> Any:
    """``value`` without the markers the strategies write (a schema's ``cache_control`` property stays)."""
    if isinstance(value, dict):
        return {
            key: _without_anthropic_markers(item)
            for key, item in value.items()
            if not (key == "cache_control" and item == MARK)
        }
    if isinstance(value, list):
        return [_without_anthropic_markers(item) for item in value]
    return value


@given(requests(), st.data())
@PROPERTY
def test_translation_is_prefix_stable(longer: dict[str, Any], data: st.DataObject) -> None:
    """A conversation grown by more turns (its markers moved) keeps its chat messages and prefix hashes."""
    cut = data.draw(st.integers(0, len(longer["messages"])))
    shorter = {**longer, "messages": longer["messages"][:cut]}
    moved = {**_without_anthropic_markers(longer), "messages": longer["messages"][cut:]}
    moved["messages"] = _without_anthropic_markers(longer["messages"][:cut]) + moved["messages"]
    short_chat = chat(shorter)
    long_chat = chat(moved)
    common = len(short_chat["messages"])
    assert _strip(long_chat)["messages"][:common] == _strip(short_chat)["messages"]
    short_hashes = hashed_prompt(short_chat, ()).prefix_hashes
    assert hashed_prompt(long_chat, ()).prefix_hashes[: len(short_hashes)] == short_hashes


def _expected_blocks(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """Each client marker's path and the chat value of the block holding its content, in prompt order."""
    expected: list[tuple[str, Any]] = []
    for i, tool in enumerate(body.get("tools", [])):
        if "cache_control" in tool:
            function = {"name": tool["name"], "parameters": tool["input_schema"]}
            if "description" in tool:
                function["description"] = tool["description"]
            expected.append((f"tools[{i}]", {"type": "function", "function": function}))
    system = body.get("system")
    for j, block in enumerate(system if isinstance(system, list) else []):
        if "cache_control" in block:
            expected.append((f"system[{j}]", {"type": "text", "text": block["text"]}))
    for i, message in enumerate(body["messages"]):
        blocks = list(enumerate(message["content"])) if isinstance(message["content"], list) else []
        # chat has no interleaving: an assistant's text parts come before its tool calls
        for j, block in sorted(blocks, key=lambda item: item[1]["type"] == "tool_use"):
            for n, inner in enumerate(block.get("content") or []) if block["type"] == "tool_result" else ():
                if "cache_control" in inner:
                    expected.append((f"messages[{i}].content[{j}].content[{n}]", _without_anthropic_markers(inner)))
            if "cache_control" in block:
                expected.append((f"messages[{i}].content[{j}]", _chat_value(block)))
    return expected


def _chat_value(block: dict[str, Any]) -> Any:
    """What the chat block holding a marked client block's content must be (the marked part of it)."""
    if block["type"] == "text":
        return {"type": "text", "text": block["text"]}
    if block["type"] == "image":
        source = block["source"]
        url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
        return {"type": "image_url", "image_url": {"url": url}}
    if block["type"] == "document":
        return {"type": "text", "text": block["source"]["data"]}
    if block["type"] == "tool_use":
        arguments = json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False)
        return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
    content = block.get("content")
    if isinstance(content, list):
        return _chat_value(content[-1])
    text = content or ""
    return {"type": "text", "text": f"Error: {text}" if block.get("is_error") else text}


def _chat_block(body: dict[str, Any], kind: BlockKind, message: int | None, index: int | None) -> Any:
    """The value a block hashes (string content is one text part)."""
    if kind is BlockKind.TOOL:
        return body["tools"][index]
    owner = body["messages"][message]
    if kind is BlockKind.TOOL_CALL:
        return owner["tool_calls"][index]
    content = owner["content"]
    return {"type": "text", "text": content} if isinstance(content, str) else content[index]


@given(requests(marker_budget=4))
@PROPERTY
def test_every_marker_lands_on_the_block_holding_its_content(body: dict[str, Any]) -> None:
    translated = translate_request(body)
    prompt = parse_prompt(translated.body, DEFAULT)
    landed: list[tuple[str, Any]] = []
    for breakpoint in prompt.breakpoints:
        assert breakpoint.ttl is TtlTier.FIVE_MINUTES
        ref = prompt.blocks[breakpoint.block]
        value = _chat_block(translated.body, ref.kind, ref.message, ref.index)
        own = isinstance(value, dict) and "cache_control" in value
        param = marker_param(ref.kind, ref.message, ref.index) if own else message_marker_param(ref.message)
        client = client_param(translated, param)
        assert client.endswith(".cache_control"), param
        landed.append((client.removesuffix(".cache_control"), _without_anthropic_markers(value)))
    assert landed == _expected_blocks(body)
