"""Why the deepest breakpoint did not read (SPEC §14): the pure rules of core/diagnosis.py."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.blocks import parse_prompt
from cachegate.core.diagnosis import (
    DIGEST_BYTES,
    LATEST_KEY,
    MAX_SECTIONS,
    Outline,
    diagnose,
    diagnostics_body,
    outline,
    section_digests,
    trails_to_write,
)
from cachegate.core.types import CacheMiss, CacheScope, MissReason, ParsedPrompt, Trail

from .bodies import DEFAULT, PROPERTY, chat, marker, msg, text, tool

SCOPE = CacheScope("principal-1", "cache-model", "sha256:v1")
NOW = 1_000_000.0
FIRST_WRITE = CacheMiss(MissReason.FIRST_WRITE)
EXPIRED = CacheMiss(MissReason.EXPIRED)


def changed(block: str | int) -> CacheMiss:
    return CacheMiss(MissReason.PREFIX_CHANGED, block)


def request(*turns: str, system: str = "You are terse.", tools: tuple[str, ...] = ("search",)) -> dict[str, Any]:
    """A system prompt, alternating user/assistant turns, the last one marked: a conversation's request."""
    messages = [msg("system", system)] if system else []
    for i, turn in enumerate(turns):
        last = i == len(turns) - 1
        messages.append(msg("user" if i % 2 == 0 else "assistant", [text(turn, marker() if last else None)]))
    body = chat(*messages)
    if tools:
        body["tools"] = [tool(name) for name in tools]
    return body


def parsed(body: dict[str, Any]) -> tuple[ParsedPrompt, Outline]:
    prompt = parse_prompt(body, DEFAULT)
    return prompt, outline(prompt, body["messages"])


def trails_of(body: dict[str, Any]) -> list[Trail]:
    prompt, sections = parsed(body)
    return trails_to_write(SCOPE, prompt, sections, NOW + 300)


def diagnosed(body: dict[str, Any], earlier: dict[str, Any] | None = None, **facts: Any) -> CacheMiss:
    prompt, sections = parsed(body)
    trails = trails_of(earlier) if earlier is not None else []
    return diagnose(prompt, sections, facts.pop("read_block", None), trails=trails, **facts)


# Sections: what a changed block is called.


def test_sections_are_the_tools_the_system_prompt_and_each_message() -> None:
    body = request("hello", "hi", "how are you?")
    body["messages"].insert(1, msg("developer", "Be brief."))
    prompt, sections = parsed(body)
    assert sections.labels == ("tools", "system", 2, 3, 4)
    assert sections.ends == (0, 2, 3, 4, 5)
    assert len(prompt.blocks) == 6


def test_a_system_message_later_in_the_conversation_is_a_message() -> None:
    body = chat(msg("user", "a"), msg("system", "b"), msg("user", [text("c", marker())]))
    assert parsed(body)[1].labels == ("tools", "system", 0, 1, 2)


def test_a_translated_request_is_named_by_the_clients_messages() -> None:
    # An Anthropic request: its system prompt, then one user turn that became a user and a tool message.
    body = chat(msg("system", "s"), msg("user", "question"), msg("tool", "result", tool_call_id="t"))
    prompt = parse_prompt(body, DEFAULT)
    assert outline(prompt, body["messages"], (None, 0, 0)).labels == ("tools", "system", 0)


def test_the_anchor_is_the_first_message_after_the_system_prompt() -> None:
    first = parsed(request("hello", "hi"))[1].anchor
    assert len(first) == DIGEST_BYTES
    assert parsed(request("hello", "hi", "more", system="Another system prompt"))[1].anchor == first
    assert parsed(request("hello", tools=()))[1].anchor == first
    assert parsed(request("good morning", "hi"))[1].anchor != first
    assert parsed(chat(msg("system", [text("only a system prompt", marker())])))[1].anchor == b""


def test_a_trail_is_stored_under_its_anchor_and_the_scopes_latest() -> None:
    body = request("hello", "hi", "more")
    prompt, sections = parsed(body)
    trails = trails_to_write(SCOPE, prompt, sections, NOW + 300)
    assert [trail.key for trail in trails] == [b"anchor:" + sections.anchor, LATEST_KEY]
    assert all(trail.sections == b"".join(section_digests(prompt, sections)) for trail in trails)
    assert len(trails[0].sections) == DIGEST_BYTES * 5  # tools, system, three messages


def test_a_trail_ends_with_the_deepest_breakpoints_section_and_is_bounded() -> None:
    body = request("hello", "hi", "more")
    body["messages"][1]["content"] = [text("hello", marker())]  # the deepest marker becomes message 1's
    body["messages"][3]["content"] = [text("more")]
    prompt, sections = parsed(body)
    assert len(section_digests(prompt, sections)) == 3  # tools, system, message 1
    long = request(*(f"turn {i}" for i in range(MAX_SECTIONS + 10)))
    prompt, sections = parsed(long)
    assert len(section_digests(prompt, sections)) == MAX_SECTIONS


# The reasons.


def test_nothing_remembered_is_a_first_write() -> None:
    assert diagnosed(request("hello")) == FIRST_WRITE


def test_a_conversation_that_grew_writes_its_new_part_first() -> None:
    assert diagnosed(request("hello", "hi", "more"), earlier=request("hello")) == FIRST_WRITE


def test_a_request_that_stops_inside_an_earlier_one_is_a_first_write_there() -> None:
    assert diagnosed(request("hello"), earlier=request("hello", "hi", "more")) == FIRST_WRITE


def test_changed_tools_are_named() -> None:
    now = request("hello", "hi", "more", tools=("search", "fetch"))
    assert diagnosed(now, earlier=request("hello", "hi", "more")) == changed("tools")
    assert diagnosed(request("hello", tools=()), earlier=request("hello")) == changed("tools")
    assert diagnosed(request("hello"), earlier=request("hello", tools=())) == changed("tools")


def test_a_system_prompt_added_or_removed_is_named() -> None:
    assert diagnosed(request("hello", system=""), earlier=request("hello")) == changed("system")
    assert diagnosed(request("hello"), earlier=request("hello", system="")) == changed("system")


def test_a_changed_system_prompt_is_named() -> None:
    now = request("hello", "hi", "more", system="You are verbose.")
    assert diagnosed(now, earlier=request("hello", "hi", "more")) == changed("system")


def test_a_changed_message_is_named_by_its_index() -> None:
    now = request("hello", "hi there", "more", "and more")
    assert diagnosed(now, earlier=request("hello", "hi", "more")) == changed(2)  # messages[2]: "hi"


def test_another_conversation_is_a_first_write_even_with_the_same_tools_and_system() -> None:
    assert diagnosed(request("good morning", "hi"), earlier=request("hello", "hi")) == FIRST_WRITE


def test_the_trail_sharing_the_longest_prefix_is_the_one_compared() -> None:
    prompt, sections = parsed(request("hello", "hi", "more", "edited"))
    near = trails_of(request("hello", "hi", "more", "original"))[0]
    far = trails_of(request("hello", "different"))[1]
    assert diagnose(prompt, sections, None, trails=[far, near]) == changed(4)
    assert diagnose(prompt, sections, None, trails=[near, far]) == changed(4)


def test_an_expired_entry_deeper_than_the_read_one_is_expired() -> None:
    assert diagnosed(request("hello", "hi"), expired=[2]) == EXPIRED
    assert diagnosed(request("hello", "hi"), read_block=2, expired=[1]) == FIRST_WRITE


def test_expired_comes_before_a_change_later_in_the_prompt() -> None:
    now = request("hello", "hi there", "more")
    assert diagnosed(now, earlier=request("hello", "hi", "more"), expired=[1]) == EXPIRED


def test_a_match_the_count_refused_is_a_change_there() -> None:
    body = request("hello", "hi", "more")
    assert diagnosed(body, read_block=1, refused=[3, 4]) == changed(2)
    assert diagnosed(body, read_block=3, refused=[1], expired=[4]) == EXPIRED


# What goes out.


def test_the_header_value_is_a_structured_field_item() -> None:
    assert str(FIRST_WRITE) == "first_write"
    assert str(changed("tools")) == "prefix_changed;block=tools"
    assert str(changed(3)) == "prefix_changed;block=3"


def test_the_body_has_anthropics_shape() -> None:
    assert diagnostics_body(None) is None
    assert diagnostics_body(EXPIRED) == {"cache_miss_reason": {"type": "expired"}}
    assert diagnostics_body(changed(2)) == {"cache_miss_reason": {"type": "prefix_changed", "block": 2}}


# Properties: a conversation and its successor, with any one message edited, added or left alone.

turns = st.lists(st.text(alphabet="abc ", min_size=1, max_size=6), min_size=1, max_size=8)


@PROPERTY
@given(turns, st.data())
def test_the_first_changed_message_is_the_one_reported(earlier: list[str], data: st.DataObject) -> None:
    later = list(earlier) + data.draw(st.lists(st.text(alphabet="abc ", min_size=1, max_size=6), max_size=3))
    edited = data.draw(st.none() | st.integers(1, len(later) - 1)) if len(later) > 1 else None
    if edited is not None:
        later[edited] = later[edited] + "!"
    result = diagnosed(request(*later), earlier=request(*earlier))
    if edited is None or edited >= len(earlier):
        assert result == FIRST_WRITE  # the conversation only grew
    else:
        assert result == changed(edited + 1)  # messages[0] is the system prompt


@PROPERTY
@given(turns, turns)
def test_another_conversation_is_never_a_change(mine: list[str], theirs: list[str]) -> None:
    """Requests whose first message differs share at most tools and system: a first write, whatever follows."""
    theirs = [theirs[0] + "?", *theirs[1:]] if theirs[0] == mine[0] else theirs
    assert diagnosed(request(*mine), earlier=request(*theirs)) == FIRST_WRITE


@PROPERTY
@given(turns)
def test_a_prompt_against_its_own_trail_is_never_a_change(mine: list[str]) -> None:
    assert diagnosed(request(*mine), earlier=request(*mine)) == FIRST_WRITE
