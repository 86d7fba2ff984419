"""Marker grammar, limits and placement (SPEC §3), and stripping (§3.4)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.errors import MARKER_REJECTIONS, MarkerError, openai_error
from cachegate.core.markers import TtlPolicy, automatic_marker, parse_marker, strip_markers, validate_markers
from cachegate.core.types import TtlTier

from .bodies import (
    ALL_TTLS,
    DEFAULT,
    PROPERTY,
    bodies,
    chat,
    marked_bodies,
    marker,
    marker_holders,
    msg,
    text,
    tool,
    tool_call,
    valid_markers,
)


def rejection(body: dict[str, Any], policy: TtlPolicy = DEFAULT) -> tuple[str, str]:
    with pytest.raises(MarkerError) as caught:
        validate_markers(body, policy)
    assert caught.value.reason in MARKER_REJECTIONS
    return caught.value.reason, caught.value.param


class TestGrammar:
    def test_absent_and_null_are_no_marker(self) -> None:
        assert parse_marker(None, DEFAULT, "cache_control") is None

    def test_ttl_defaults_to_the_policy_default(self) -> None:
        assert parse_marker(marker(), DEFAULT, "p") is TtlTier.FIVE_MINUTES
        assert parse_marker({"type": "ephemeral", "ttl": None}, DEFAULT, "p") is TtlTier.FIVE_MINUTES
        hourly = TtlPolicy(frozenset({TtlTier.ONE_HOUR}), default=TtlTier.ONE_HOUR)
        assert parse_marker(marker(), hourly, "p") is TtlTier.ONE_HOUR

    @pytest.mark.parametrize("tier", list(TtlTier))
    def test_every_tier_parses(self, tier: TtlTier) -> None:
        assert parse_marker(marker(tier.value), ALL_TTLS, "p") is tier

    def test_unknown_keys_are_ignored(self) -> None:
        assert parse_marker({"type": "ephemeral", "ttl": "1h", "scope": "x"}, DEFAULT, "p") is TtlTier.ONE_HOUR

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (True, "malformed"),
            ("ephemeral", "malformed"),
            ([], "malformed"),
            (1, "malformed"),
            ({}, "malformed"),
            ({"ttl": "5m"}, "malformed"),
            ({"type": None}, "malformed"),
            ({"type": 1}, "malformed"),
            ({"type": "persistent"}, "unsupported_type"),
            ({"type": "ephemeral", "ttl": 5}, "malformed"),
            ({"type": "ephemeral", "ttl": True}, "malformed"),
            ({"type": "ephemeral", "ttl": "2h"}, "invalid_ttl"),
            ({"type": "ephemeral", "ttl": "1H"}, "invalid_ttl"),
            ({"type": "ephemeral", "ttl": "24h"}, "ttl_not_accepted"),
        ],
    )
    def test_rejections(self, value: object, reason: str) -> None:
        with pytest.raises(MarkerError) as caught:
            parse_marker(value, DEFAULT, "messages[0].content[0].cache_control")
        assert caught.value.reason == reason
        assert caught.value.param == "messages[0].content[0].cache_control"

    def test_the_message_names_the_accepted_ttls(self) -> None:
        with pytest.raises(MarkerError, match="available ttls: 5m, 1h"):
            parse_marker(marker("24h"), DEFAULT, "p")

    def test_a_long_client_value_is_shortened_in_the_message(self) -> None:
        with pytest.raises(MarkerError) as caught:
            parse_marker({"type": "ephemeral", "ttl": "x" * 10_000}, DEFAULT, "p")
        assert len(caught.value.message) < 200

    def test_a_policy_must_accept_its_default(self) -> None:
        with pytest.raises(ValueError, match="default ttl"):
            TtlPolicy(frozenset({TtlTier.ONE_HOUR}))

    def test_default_policy_accepts_5m_and_1h(self) -> None:
        assert DEFAULT.accepted == {TtlTier.FIVE_MINUTES, TtlTier.ONE_HOUR}
        assert DEFAULT.default is TtlTier.FIVE_MINUTES


class TestLimits:
    def test_counts_breakpoints_at_every_site(self) -> None:
        body = chat(
            msg("system", [text("s", marker("1h"))]),
            msg("assistant", None, tool_calls=[tool_call("c1", cache_control=marker())]),
            msg("user", "q", cache_control=marker()),
            tools=[tool("f", cache_control=marker("1h"))],
        )
        assert len(validate_markers(body, DEFAULT)) == 4

    def test_no_markers_no_breakpoints(self) -> None:
        assert len(validate_markers(chat(msg("user", "a"), msg("assistant", "b")), DEFAULT)) == 0

    def test_null_markers_count_nothing(self) -> None:
        body = chat(msg("user", [text("a", None)], cache_control=None), cache_control=None)
        body["messages"][0]["content"][0]["cache_control"] = None
        assert len(validate_markers(body, DEFAULT)) == 0

    def test_more_than_four_breakpoints_names_the_fifth(self) -> None:
        body = chat(msg("user", [text(str(i), marker()) for i in range(5)]))
        assert rejection(body) == ("too_many_breakpoints", "messages[0].content[4].cache_control")

    def test_tool_markers_count_toward_the_cap(self) -> None:
        body = chat(
            msg("user", [text("a", marker()), text("b", marker())]),
            tools=[tool(str(i), cache_control=marker()) for i in range(3)],
        )
        assert rejection(body) == ("too_many_breakpoints", "messages[0].content[1].cache_control")

    def test_tool_call_markers_count_toward_the_cap(self) -> None:
        calls = [tool_call(f"c{k}", cache_control=marker()) for k in range(5)]
        body = chat(msg("assistant", None, tool_calls=calls))
        assert rejection(body) == (
            "too_many_breakpoints",
            "messages[0].tool_calls[4].cache_control",
        )

    def test_longer_ttl_may_not_follow_a_shorter_one(self) -> None:
        body = chat(msg("system", [text("s", marker("5m"))]), msg("user", [text("u", marker("1h"))]))
        assert rejection(body) == ("ttl_order", "messages[1].content[0].cache_control")

    def test_order_is_checked_against_the_previous_breakpoint(self) -> None:
        body = chat(msg("user", [text("a", marker("24h")), text("b", marker("5m")), text("c", marker("1h"))]))
        assert rejection(body, ALL_TTLS) == ("ttl_order", "messages[0].content[2].cache_control")

    def test_ttls_may_shorten_along_the_prompt(self) -> None:
        body = chat(
            msg("system", [text("s", marker("24h")), text("t", marker("1h"))]),
            msg("user", [text("u", marker("1h")), text("v", marker("5m"))]),
        )
        assert len(validate_markers(body, ALL_TTLS)) == 4

    def test_ttl_order_spans_tools_and_messages(self) -> None:
        body = chat(msg("user", "u", cache_control=marker("1h")), tools=[tool("f", cache_control=marker())])
        assert rejection(body) == ("ttl_order", "messages[0].cache_control")


class TestMessageLevelMarker:
    def test_marks_the_last_block_of_a_string_message(self) -> None:
        assert len(validate_markers(chat(msg("system", "s", cache_control=marker())), DEFAULT)) == 1

    def test_on_a_message_without_content_marks_its_header_block(self) -> None:
        body = chat(msg("user", "u"), msg("assistant", None, cache_control=marker()))
        assert len(validate_markers(body, DEFAULT)) == 1

    def test_same_ttl_as_the_last_part_is_one_breakpoint(self) -> None:
        body = chat(msg("user", [text("a"), text("b", marker("1h"))], cache_control=marker("1h")))
        assert len(validate_markers(body, DEFAULT)) == 1

    def test_other_ttl_than_the_last_part_is_rejected(self) -> None:
        body = chat(msg("user", [text("a"), text("b", marker("1h"))], cache_control=marker()))
        assert rejection(body) == ("ttl_conflict", "messages[0].cache_control")

    def test_a_marker_on_an_earlier_part_is_its_own_breakpoint(self) -> None:
        body = chat(msg("user", [text("a", marker("1h")), text("b")], cache_control=marker()))
        assert len(validate_markers(body, DEFAULT)) == 2

    def test_lands_after_the_tool_calls(self) -> None:
        body = chat(
            msg(
                "assistant",
                [text("thinking", marker("1h"))],
                tool_calls=[tool_call("c1", cache_control=marker())],
                cache_control=marker("1h"),
            )
        )
        assert rejection(body) == ("ttl_conflict", "messages[0].cache_control")


class TestAutomatic:
    def test_takes_a_slot_on_the_last_block(self) -> None:
        body = chat(msg("system", [text("s", marker())]), msg("user", "u"), cache_control=marker())
        assert len(validate_markers(body, DEFAULT)) == 2

    def test_no_op_when_the_last_block_has_the_same_ttl(self) -> None:
        body = chat(msg("user", [text("u", marker("1h"))]), cache_control=marker("1h"))
        assert len(validate_markers(body, DEFAULT)) == 1

    def test_conflicts_with_another_ttl_on_the_last_block(self) -> None:
        body = chat(msg("user", [text("u", marker("1h"))]), cache_control=marker())
        assert rejection(body) == ("automatic_ttl_conflict", "cache_control")

    def test_no_slot_when_four_explicit_and_the_last_block_unmarked(self) -> None:
        body = chat(
            msg("user", [text(str(i), marker()) for i in range(4)] + [text("tail")]),
            cache_control=marker(),
        )
        assert rejection(body) == ("automatic_no_slot", "cache_control")

    def test_fits_when_the_last_of_four_explicit_has_its_ttl(self) -> None:
        body = chat(msg("user", [text(str(i), marker()) for i in range(4)]), cache_control=marker())
        assert len(validate_markers(body, DEFAULT)) == 4

    def test_skipped_without_blocks_but_still_validated(self) -> None:
        assert len(validate_markers({"model": "m", "messages": [], "cache_control": marker()}, DEFAULT)) == 0
        assert rejection({"model": "m", "cache_control": {"type": "ephemeral", "ttl": "2h"}}) == (
            "invalid_ttl",
            "cache_control",
        )

    def test_null_is_no_marker(self) -> None:
        assert len(validate_markers(chat(msg("user", "u"), cache_control=None), DEFAULT)) == 0

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("x", "malformed"),
            ({"type": "persistent"}, "unsupported_type"),
            (marker("24h"), "ttl_not_accepted"),
        ],
    )
    def test_malformed_or_unaccepted_is_rejected(self, value: object, reason: str) -> None:
        assert rejection(chat(msg("user", "u"), cache_control=value)) == (reason, "cache_control")

    def test_obeys_the_ttl_order(self) -> None:
        body = chat(msg("system", [text("s", marker("5m"))]), msg("user", "u"), cache_control=marker("1h"))
        assert rejection(body) == ("ttl_order", "cache_control")

    def test_grammar_is_checked_before_the_blocks(self) -> None:
        body = chat(msg("user", [text(str(i), marker()) for i in range(5)]), cache_control="bad")
        assert rejection(body) == ("malformed", "cache_control")


class TestParams:
    @pytest.mark.parametrize(
        ("body", "param"),
        [
            (
                chat(msg("system", "a"), msg("user", "b"), msg("user", [text("c", marker("2h"))])),
                "messages[2].content[0].cache_control",
            ),
            (
                chat(msg("user", "a"), tools=[tool("f"), tool("g", cache_control={})]),
                "tools[1].cache_control",
            ),
            (
                chat(
                    msg("user", "a"),
                    msg("assistant", "b"),
                    msg("user", "c"),
                    msg("assistant", None, tool_calls=[tool_call("1", cache_control=1)]),
                ),
                "messages[3].tool_calls[0].cache_control",
            ),
            (
                chat(msg("user", "a"), msg("user", "b", cache_control={"type": "x"})),
                "messages[1].cache_control",
            ),
            (chat(msg("user", "a"), cache_control=[]), "cache_control"),
        ],
    )
    def test_the_offending_path_is_named(self, body: dict[str, Any], param: str) -> None:
        assert rejection(body)[1] == param

    def test_error_body_has_openais_shape(self) -> None:
        error = MarkerError("bad ttl", param="cache_control", reason="invalid_ttl")
        body = orjson.loads(openai_error(error.message, "invalid_request_error", "invalid_cache_control", error.param))
        assert body == {
            "error": {
                "message": "bad ttl",
                "type": "invalid_request_error",
                "param": "cache_control",
                "code": "invalid_cache_control",
            }
        }
        assert orjson.loads(openai_error("x", "server_error")) == {
            "error": {"message": "x", "type": "server_error", "param": None, "code": None}
        }


class TestMalformedBodies:
    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"messages": None},
            {"messages": "hello"},
            {"messages": {"role": "user"}},
            {"messages": [1, "x", None, []]},
            {"messages": [{"role": "user", "content": 5}]},
            {"messages": [{"role": "user", "content": [1, "x", None]}]},
            {"messages": [{"role": "assistant", "tool_calls": {"cache_control": marker()}}]},
            {"messages": [{"role": "user", "content": {"cache_control": "junk"}}]},
            {"tools": "x", "messages": []},
            {"tools": [None, 3], "messages": []},
        ],
    )
    def test_junk_is_the_upstreams_business(self, body: dict[str, Any]) -> None:
        assert len(validate_markers(body, DEFAULT)) == 0
        assert not strip_markers(body)

    def test_a_schema_property_named_cache_control_is_not_a_marker(self) -> None:
        item = tool("f")
        item["function"]["parameters"]["properties"]["cache_control"] = {"type": "string"}
        assert len(validate_markers(chat(msg("user", "u"), tools=[item]), DEFAULT)) == 0


class TestStrip:
    def test_removes_every_site_and_nothing_else(self) -> None:
        plain_tool = tool("f")
        plain_tool["function"]["parameters"]["properties"]["cache_control"] = {"type": "string"}
        item = {**copy.deepcopy(plain_tool), "cache_control": marker("1h")}
        body = chat(
            msg("system", [text("s", marker("1h"))], cache_control=None),
            msg(
                "assistant",
                None,
                tool_calls=[tool_call("c1", arguments='{"cache_control": 1}', cache_control=marker())],
            ),
            msg("user", "u", cache_control=marker()),
            tools=[item],
            cache_control=marker(),
            metadata={"cache_control": "kept"},
        )
        assert strip_markers(body)
        assert body == chat(
            msg("system", [text("s")]),
            msg("assistant", None, tool_calls=[tool_call("c1", arguments='{"cache_control": 1}')]),
            msg("user", "u"),
            tools=[plain_tool],
            metadata={"cache_control": "kept"},
        )

    def test_null_markers_are_removed(self) -> None:
        body = chat(msg("user", [text("u")]), cache_control=None)
        body["messages"][0]["content"][0]["cache_control"] = None
        assert strip_markers(body)
        assert body == chat(msg("user", [text("u")]))

    def test_a_top_level_null_marker_alone_is_removed(self) -> None:
        body = chat(msg("user", "u"), cache_control=None)
        assert strip_markers(body)
        assert body == chat(msg("user", "u"))

    def test_a_body_without_markers_is_left_alone(self) -> None:
        body = chat(msg("user", "u"), tools=[tool("f")], stream=True)
        assert not strip_markers(body)
        assert body == chat(msg("user", "u"), tools=[tool("f")], stream=True)

    @PROPERTY
    @given(bodies, st.data())
    def test_strip_undoes_marking(self, body: dict[str, Any], data: st.DataObject) -> None:
        plain = copy.deepcopy(body)
        holders = [holder for _, holder in marker_holders(body)] + [body]
        chosen = data.draw(st.lists(st.sampled_from(holders), min_size=1, unique_by=id))
        for holder in chosen:
            holder["cache_control"] = copy.deepcopy(data.draw(valid_markers | st.none()))
        assert strip_markers(body)
        assert body == plain
        assert not strip_markers(body)

    @PROPERTY
    @given(marked_bodies())
    def test_nothing_is_left_to_validate_after_strip(self, body: dict[str, Any]) -> None:
        strip_markers(body)
        assert len(validate_markers(body, DEFAULT)) == 0
        assert "cache_control" not in body
        assert all("cache_control" not in holder for _, holder in marker_holders(body))


# -- automatic caching per model (§3.1) -------------------------------------------------------------

WITH_24H = TtlPolicy(frozenset(TtlTier))


def unmarked(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("retention", "policy", "ttl"),
    [
        (None, TtlPolicy.default_policy(), "1h"),
        ("in_memory", TtlPolicy.default_policy(), "1h"),
        ("in-memory", TtlPolicy.default_policy(), "1h"),
        ("24h", WITH_24H, "24h"),
        ("24h", TtlPolicy.default_policy(), "1h"),  # 24h not accepted: the model's TTL
    ],
)
def test_a_request_without_markers_gets_a_top_level_one(retention: str | None, policy: TtlPolicy, ttl: str) -> None:
    body = unmarked() if retention is None else unmarked(prompt_cache_retention=retention)
    assert automatic_marker(body, TtlTier.ONE_HOUR, policy)
    assert body["cache_control"] == {"type": "ephemeral", "ttl": ttl}
    assert [bp.ttl.value for bp in validate_markers(body, policy)] == [ttl]


@pytest.mark.parametrize(
    "body",
    [
        unmarked(cache_control=None),
        {"model": "m", "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}]},
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": None}]}],
        },
        {"model": "m", "tools": [{"type": "function", "cache_control": {"type": "ephemeral"}}], "messages": []},
    ],
)
def test_any_marker_even_a_null_one_keeps_the_request_as_it_is(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert not automatic_marker(body, TtlTier.FIVE_MINUTES, TtlPolicy.default_policy())
    assert body == before


def test_an_unknown_retention_is_refused_whatever_the_markers() -> None:
    with pytest.raises(ValueError, match="prompt_cache_retention"):
        automatic_marker(unmarked(prompt_cache_retention="forever"), TtlTier.FIVE_MINUTES, TtlPolicy.default_policy())
