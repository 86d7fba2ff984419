"""Blocks, prefix hashes and breakpoints (SPEC §4)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from cachegate.core.blocks import hashed_prompt, parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import strip_markers, validate_markers
from cachegate.core.types import BlockKind, BlockRef, Breakpoint, ParsedPrompt, TtlTier

from .bodies import (
    ALL_TTLS,
    DEFAULT,
    PROPERTY,
    bodies,
    chat,
    marked_bodies,
    marker,
    messages,
    msg,
    text,
    tool,
    tool_call,
)

TOOL, PART, TOOL_CALL, HEADER = (
    BlockKind.TOOL,
    BlockKind.PART,
    BlockKind.TOOL_CALL,
    BlockKind.HEADER,
)


def hashes(body: dict[str, Any]) -> tuple[bytes, ...]:
    return parse_prompt(body, ALL_TTLS).prefix_hashes


def resolve(body: dict[str, Any], ref: BlockRef) -> Any:
    """The JSON value a block stands for, found from its ``BlockRef`` alone."""
    if ref.kind is TOOL:
        return body["tools"][ref.index]
    message = body["messages"][ref.message]
    if ref.kind is HEADER:
        return message
    if ref.kind is TOOL_CALL:
        return message["tool_calls"][ref.index]
    content = message["content"]
    return text(content) if isinstance(content, str) else content[ref.index]


def mutate(body: dict[str, Any], ref: BlockRef) -> None:
    """Change the block at ``ref`` and nothing else."""
    if ref.kind is TOOL:
        body["tools"][ref.index]["function"]["name"] += "x"
    elif ref.kind is TOOL_CALL:
        body["messages"][ref.message]["tool_calls"][ref.index]["function"]["arguments"] += " "
    elif ref.kind is HEADER:
        body["messages"][ref.message]["role"] += "x"
    elif isinstance(content := body["messages"][ref.message]["content"], str):
        body["messages"][ref.message]["content"] = content + "x"
    elif (part := content[ref.index])["type"] == "text":
        part["text"] += "x"
    else:
        part["image_url"]["url"] += "x"


class TestLayout:
    def test_tools_then_parts_then_tool_calls(self) -> None:
        body = chat(
            msg("system", "s"),
            msg("assistant", [text("a"), text("b")], tool_calls=[tool_call("1"), tool_call("2")]),
            msg("tool", "r", tool_call_id="1"),
            tools=[tool("f"), tool("g")],
        )
        assert parse_prompt(body, DEFAULT).blocks == (
            BlockRef(TOOL, None, 0),
            BlockRef(TOOL, None, 1),
            BlockRef(PART, 0, 0),
            BlockRef(PART, 1, 0),
            BlockRef(PART, 1, 1),
            BlockRef(TOOL_CALL, 1, 0),
            BlockRef(TOOL_CALL, 1, 1),
            BlockRef(PART, 2, 0),
        )

    @pytest.mark.parametrize("content", [None, []])
    def test_a_message_without_content_or_tool_calls_is_its_header(self, content: Any) -> None:
        prompt = parse_prompt(chat(msg("user", "u"), msg("assistant", content)), DEFAULT)
        assert prompt.blocks == (BlockRef(PART, 0, 0), BlockRef(HEADER, 1, None))

    def test_absent_null_and_empty_list_content_are_the_same_prompt(self) -> None:
        absent = chat(msg("user", "u"), {"role": "assistant"})
        assert hashes(absent) == hashes(chat(msg("user", "u"), msg("assistant", None)))
        assert hashes(absent) == hashes(chat(msg("user", "u"), msg("assistant", [])))

    def test_empty_string_content_is_an_empty_text_part(self) -> None:
        prompt = parse_prompt(chat(msg("assistant", "", tool_calls=[tool_call("1")])), DEFAULT)
        assert prompt.blocks == (BlockRef(PART, 0, 0), BlockRef(TOOL_CALL, 0, 0))
        assert prompt.prefix_hashes[0] == hashes(chat(msg("assistant", [text("")])))[0]
        assert hashes(chat(msg("assistant", ""))) != hashes(chat(msg("assistant", None)))

    def test_no_markers_no_breakpoints(self) -> None:
        prompt = parse_prompt(chat(msg("user", "hello"), msg("assistant", "hi")), DEFAULT)
        assert len(prompt.blocks) == len(prompt.prefix_hashes) == 2
        assert prompt.breakpoints == ()
        assert prompt.prefix_hashes[0] != prompt.prefix_hashes[1]
        assert all(len(digest) == 32 for digest in prompt.prefix_hashes)

    def test_no_blocks(self) -> None:
        assert parse_prompt({"model": "m"}, DEFAULT) == ParsedPrompt((), (), ())

    @PROPERTY
    @given(bodies)
    def test_a_block_ref_finds_its_block(self, body: dict[str, Any]) -> None:
        prompt = parse_prompt(body, DEFAULT)
        for ref in prompt.blocks:
            found = resolve(body, ref)
            if ref.kind is HEADER:
                assert not found.get("content") and not found.get("tool_calls")
            else:
                assert isinstance(found, dict)


class TestBreakpoints:
    def test_default_ttl(self) -> None:
        prompt = parse_prompt(chat(msg("system", [text("s", marker())]), msg("user", "u")), DEFAULT)
        assert prompt.breakpoints == (Breakpoint(0, TtlTier.FIVE_MINUTES),)

    @pytest.mark.parametrize("tier", list(TtlTier))
    def test_each_tier(self, tier: TtlTier) -> None:
        prompt = parse_prompt(chat(msg("user", [text("u", marker(tier.value))])), ALL_TTLS)
        assert prompt.breakpoints == (Breakpoint(0, tier),)

    def test_every_site_maps_to_its_block(self) -> None:
        body = chat(
            msg("system", "s", cache_control=marker("24h")),
            msg(
                "assistant",
                [text("a", marker("1h")), text("b")],
                tool_calls=[tool_call("1", cache_control=marker("1h"))],
            ),
            msg("tool", "r", tool_call_id="1"),
            tools=[tool("f", cache_control=marker("24h"))],
        )
        assert parse_prompt(body, ALL_TTLS).breakpoints == (
            Breakpoint(0, TtlTier.ONE_DAY),
            Breakpoint(1, TtlTier.ONE_DAY),
            Breakpoint(2, TtlTier.ONE_HOUR),
            Breakpoint(4, TtlTier.ONE_HOUR),
        )

    def test_message_marker_on_a_header_only_message(self) -> None:
        prompt = parse_prompt(chat(msg("user", "u"), msg("assistant", None, cache_control=marker())), DEFAULT)
        assert prompt.breakpoints == (Breakpoint(1, TtlTier.FIVE_MINUTES),)

    def test_automatic_lands_on_the_last_block(self) -> None:
        body = chat(
            msg("system", "s"),
            msg("user", [text("a"), text("b")]),
            msg("assistant", "c"),
            cache_control=marker(),
        )
        assert parse_prompt(body, DEFAULT).breakpoints == (Breakpoint(3, TtlTier.FIVE_MINUTES, automatic=True),)

    def test_automatic_honours_its_ttl_and_combines_with_explicit(self) -> None:
        body = chat(msg("system", [text("s", marker("1h"))]), msg("user", "u"), cache_control=marker("1h"))
        assert parse_prompt(body, DEFAULT).breakpoints == (
            Breakpoint(0, TtlTier.ONE_HOUR),
            Breakpoint(1, TtlTier.ONE_HOUR, automatic=True),
        )

    def test_automatic_is_not_added_on_a_block_marked_alike(self) -> None:
        body = chat(msg("user", [text("u", marker())]), cache_control=marker())
        assert parse_prompt(body, DEFAULT).breakpoints == (Breakpoint(0, TtlTier.FIVE_MINUTES),)

    @pytest.mark.parametrize(
        ("last", "ref"),
        [
            (
                msg("assistant", None, tool_calls=[tool_call("1"), tool_call("2")]),
                BlockRef(TOOL_CALL, 1, 1),
            ),
            (msg("tool", [text("result")], tool_call_id="1"), BlockRef(PART, 1, 0)),
            (
                msg("user", [{"type": "image_url", "image_url": {"url": "data:a"}}]),
                BlockRef(PART, 1, 0),
            ),
            (msg("assistant", None), BlockRef(HEADER, 1, None)),
        ],
    )
    def test_automatic_on_a_trailing(self, last: dict[str, Any], ref: BlockRef) -> None:
        prompt = parse_prompt(chat(msg("user", "u"), last, cache_control=marker()), DEFAULT)
        assert prompt.blocks[prompt.breakpoints[-1].block] == ref

    def test_a_trailing_image_is_part_of_the_automatic_prefix(self) -> None:
        def image(url: str) -> list[bytes]:
            body = chat(
                msg("user", [text("look"), {"type": "image_url", "image_url": {"url": url}}]),
                cache_control=marker(),
            )
            prompt = parse_prompt(body, DEFAULT)
            return [prompt.prefix_hashes[bp.block] for bp in prompt.breakpoints]

        assert image("data:1") != image("data:2")

    def test_automatic_advances_with_the_conversation_and_shares_the_prior_turn(self) -> None:
        turn1 = chat(msg("system", "s"), msg("user", "q1"), cache_control=marker())
        turn2 = chat(
            msg("system", "s"),
            msg("user", "q1"),
            msg("assistant", "a1"),
            msg("user", "q2"),
            cache_control=marker(),
        )
        first, second = parse_prompt(turn1, DEFAULT), parse_prompt(turn2, DEFAULT)
        assert first.breakpoints[-1].block == 1 and second.breakpoints[-1].block == 3
        assert second.prefix_hashes[1] == first.prefix_hashes[first.breakpoints[-1].block]

    @PROPERTY
    @given(marked_bodies())
    def test_parse_and_validate_agree(self, body: dict[str, Any]) -> None:
        for policy in (DEFAULT, ALL_TTLS):
            try:
                breakpoints = validate_markers(body, policy)
            except MarkerError as expected:
                with pytest.raises(MarkerError) as caught:
                    parse_prompt(body, policy)
                assert (caught.value.reason, caught.value.param) == (
                    expected.reason,
                    expected.param,
                )
            else:
                assert parse_prompt(body, policy).breakpoints == breakpoints

    @PROPERTY
    @given(marked_bodies(st.just(marker())))
    def test_markers_are_not_hashed_so_a_stripped_body_hashes_alike(self, body: dict[str, Any]) -> None:
        # The gateway finds the breakpoints, strips the markers, forwards, and only then hashes.
        try:
            breakpoints = validate_markers(body, DEFAULT)
        except MarkerError:
            return
        before = parse_prompt(body, DEFAULT)
        strip_markers(body)

        assert hashed_prompt(body, breakpoints) == before

    @PROPERTY
    @given(marked_bodies(st.just(marker())))
    def test_each_breakpoint_stands_on_a_marked_block(self, body: dict[str, Any]) -> None:
        try:
            prompt = parse_prompt(body, DEFAULT)
        except MarkerError:
            reject()
        last_of_message = {ref.message: block for block, ref in enumerate(prompt.blocks)}
        for breakpoint_ in prompt.breakpoints:
            ref = prompt.blocks[breakpoint_.block]
            if breakpoint_.automatic:
                assert breakpoint_.block == len(prompt.blocks) - 1
                continue
            own = resolve(body, ref).get("cache_control") if ref.kind is not HEADER else None
            message_marked = (
                ref.message is not None
                and last_of_message[ref.message] == breakpoint_.block
                and body["messages"][ref.message].get("cache_control") is not None
            )
            assert own is not None or message_marked


class TestHashes:
    def test_deterministic_and_blind_to_key_order_and_markers(self) -> None:
        body = chat(
            msg("user", [{"type": "text", "text": "hi", "cache_control": marker()}]),
            tools=[tool("f")],
        )
        reordered = {
            "tools": [
                {
                    "function": {"parameters": {"properties": {}, "type": "object"}, "name": "f"},
                    "type": "function",
                }
            ],
            "messages": [{"content": [{"text": "hi", "type": "text"}], "role": "user"}],
            "model": "m",
        }
        assert hashes(body) == hashes(copy.deepcopy(body)) == hashes(reordered)

    def test_different_text_different_hash(self) -> None:
        assert hashes(chat(msg("user", "a"))) != hashes(chat(msg("user", "b")))

    def test_tools_come_first_and_change_everything(self) -> None:
        base = hashes(chat(msg("user", "u"), tools=[tool("f")]))
        other = hashes(chat(msg("user", "u"), tools=[tool("g")]))
        assert all(a != b for a, b in zip(base, other, strict=True))

    def test_a_schema_property_named_cache_control_is_hashed(self) -> None:
        with_property = tool("f")
        with_property["function"]["parameters"]["properties"]["cache_control"] = {"type": "string"}
        assert hashes(chat(msg("user", "u"), tools=[with_property])) != hashes(
            chat(msg("user", "u"), tools=[tool("f")])
        )

    def test_distinct_tool_calls_hash_differently(self) -> None:
        first = chat(msg("assistant", None, tool_calls=[tool_call("1", arguments='{"q": 1}')]))
        second = chat(msg("assistant", None, tool_calls=[tool_call("1", arguments='{"q": 2}')]))
        assert hashes(first) != hashes(second)

    @pytest.mark.parametrize(
        ("field", "a", "b"),
        [("name", "alice", "bob"), ("tool_call_id", "1", "2"), ("role", "user", "system")],
    )
    def test_header_fields_are_hashed(self, field: str, a: str, b: str) -> None:
        def body(value: str) -> dict[str, Any]:
            return chat(
                msg("user", "x"),
                {"role": "user", "content": "same", field: value},
                msg("user", "after"),
            )

        first, second = hashes(body(a)), hashes(body(b))
        assert first[0] == second[0]
        assert first[1] != second[1] and first[2] != second[2]

    def test_junk_content_stays_in_the_hash(self) -> None:
        assert hashes(chat(msg("user", 5))) != hashes(chat(msg("user", 6)))
        assert hashes(chat({"role": "assistant", "tool_calls": {"x": 1}})) != hashes(chat(msg("assistant", None)))

    def test_a_message_that_is_not_an_object_is_hashed(self) -> None:
        assert hashes({"messages": ["a"]}) != hashes({"messages": ["b"]})

    @PROPERTY
    @given(st.text(), st.sampled_from(["system", "user", "assistant", "tool"]), bodies)
    def test_string_content_hashes_like_one_text_part(self, value: str, role: str, body: dict[str, Any]) -> None:
        def ending_with(content: Any) -> ParsedPrompt:
            variant = copy.deepcopy(body)
            variant["messages"].append(msg(role, content))
            return parse_prompt(variant, DEFAULT)

        string = ending_with(value)
        assert string == ending_with([text(value)])
        assert string.prefix_hashes == ending_with([text(value, marker("1h"))]).prefix_hashes

    @PROPERTY
    @given(marked_bodies(st.sampled_from([marker(), None])))
    def test_markers_never_change_hashes(self, body: dict[str, Any]) -> None:
        try:
            marked = parse_prompt(body, DEFAULT)
        except MarkerError:
            reject()
        strip_markers(body)
        plain = parse_prompt(body, DEFAULT)
        assert (marked.blocks, marked.prefix_hashes) == (plain.blocks, plain.prefix_hashes)

    @PROPERTY
    @given(bodies, st.lists(messages, min_size=1, max_size=3))
    def test_appending_never_changes_earlier_hashes(self, body: dict[str, Any], more: list[dict[str, Any]]) -> None:
        before = hashes(body)
        body["messages"].extend(more)
        after = hashes(body)
        assert after[: len(before)] == before
        assert len(after) > len(before)

    @PROPERTY
    @given(bodies, st.data())
    def test_a_changed_block_changes_it_and_every_later_hash(self, body: dict[str, Any], data: st.DataObject) -> None:
        prompt = parse_prompt(body, DEFAULT)
        block = data.draw(st.integers(0, len(prompt.blocks) - 1))
        mutate(body, prompt.blocks[block])
        changed = hashes(body)
        assert changed[:block] == prompt.prefix_hashes[:block]
        assert all(a != b for a, b in zip(changed[block:], prompt.prefix_hashes[block:], strict=True))

    @PROPERTY
    @given(bodies, st.data())
    def test_a_changed_header_changes_every_hash_from_its_message_on(
        self, body: dict[str, Any], data: st.DataObject
    ) -> None:
        prompt = parse_prompt(body, DEFAULT)
        m = data.draw(st.integers(0, len(body["messages"]) - 1))
        field = data.draw(st.sampled_from(["role", "name", "tool_call_id"]))
        body["messages"][m][field] = body["messages"][m].get(field, "") + "!"
        first = next(block for block, ref in enumerate(prompt.blocks) if ref.message == m)
        changed = hashes(body)
        assert changed[:first] == prompt.prefix_hashes[:first]
        assert all(a != b for a, b in zip(changed[first:], prompt.prefix_hashes[first:], strict=True))

    @PROPERTY
    @given(
        bodies,
        st.fixed_dictionaries(
            {},
            optional={
                "model": st.text(),
                "temperature": st.floats(0, 2),
                "max_tokens": st.integers(1, 10_000),
                "stream": st.booleans(),
                "stream_options": st.just({"include_usage": True}),
                "tool_choice": st.just("auto"),
                "response_format": st.just({"type": "json_object"}),
            },
        ),
    )
    def test_request_parameters_are_not_hashed(self, body: dict[str, Any], params: dict[str, Any]) -> None:
        assert hashes({**body, **params}) == hashes(body)
