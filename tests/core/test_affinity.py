"""Prefix affinity (SPEC §15): the routing key and the rendezvous order, as pure functions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.core.affinity import (
    affinity_key,
    opening_message,
    preference,
    rendezvous_order,
    tenant_key,
)
from cachegate.core.blocks import hashed_prompt, prefix_hash_through

ENDPOINTS = ["r0", "r1", "r2", "r3"]
keys = st.binary(min_size=1, max_size=64)


def conversation(turns: int, opening: str = "Fix the failing test.") -> dict[str, Any]:
    """An agent conversation after ``turns`` user turns: tools, a system prompt, then the turns."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": opening if turn == 0 else f"Turn {turn}: go on."})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"Done with step {turn}."})
    last = messages[-1]
    last["content"] = [{"type": "text", "text": last["content"], "cache_control": {"type": "ephemeral"}}]
    return {"model": "m", "tools": [{"type": "function", "function": {"name": "run"}}], "messages": messages}


@given(keys)
def test_the_order_is_stable_and_a_permutation(key: bytes) -> None:
    order = rendezvous_order(key, ENDPOINTS)
    assert sorted(order) == sorted(ENDPOINTS)
    assert rendezvous_order(key, list(reversed(ENDPOINTS))) == order  # the listing order does not matter
    assert rendezvous_order(key, ENDPOINTS) == order


def test_keys_spread_evenly_over_the_endpoints() -> None:
    firsts = Counter(rendezvous_order(i.to_bytes(8, "big"), ENDPOINTS)[0] for i in range(8000))
    assert set(firsts) == set(ENDPOINTS)
    for count in firsts.values():  # 2000 expected each; 5 standard deviations is about ±200
        assert 1750 < count < 2250, firsts


@settings(max_examples=200)
@given(keys, st.sampled_from(ENDPOINTS))
def test_removing_an_endpoint_moves_only_its_own_keys(key: bytes, removed: str) -> None:
    before = rendezvous_order(key, ENDPOINTS)
    after = rendezvous_order(key, [name for name in ENDPOINTS if name != removed])
    assert after == [name for name in before if name != removed]  # everyone else keeps its rank


def test_the_keys_of_a_removed_endpoint_spread_over_the_others() -> None:
    moved = Counter()
    for i in range(4000):
        key = i.to_bytes(8, "big")
        if rendezvous_order(key, ENDPOINTS)[0] == "r0":
            moved[rendezvous_order(key, ENDPOINTS[1:])[0]] += 1
    assert set(moved) == {"r1", "r2", "r3"}
    assert min(moved.values()) > max(moved.values()) / 2  # not all to one neighbour


def test_a_growing_conversation_keeps_its_key_turn_after_turn() -> None:
    keys_by_turn = {affinity_key("p", "m", conversation(turns)) for turns in range(1, 12)}
    assert len(keys_by_turn) == 1


def test_the_key_is_the_prefix_hash_of_the_opening_message() -> None:
    body = conversation(3)
    prompt = hashed_prompt(body, ())
    opening_blocks = [i for i, block in enumerate(prompt.blocks) if block.message == 1]
    assert prefix_hash_through(body, 1) == prompt.prefix_hashes[opening_blocks[-1]]
    assert affinity_key("p", "m", body).endswith(prompt.prefix_hashes[opening_blocks[-1]])


def test_conversations_sharing_a_marked_system_prompt_share_its_key() -> None:
    """The second conversation reads the system prompt the first one wrote: it goes where that was computed."""
    first, second = conversation(3), conversation(1, "Write the docs.")
    for body in (first, second):
        body["messages"][0]["content"] = [
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}
        ]
    system_end = [i for i, block in enumerate(hashed_prompt(first, ()).blocks) if block.message == 0][-1]
    assert affinity_key("p", "m", first, system_end) == affinity_key("p", "m", second, system_end)
    assert affinity_key("p", "m", first, system_end).endswith(prefix_hash_through(first, 0) or b"-")
    # Unmarked, the system prompt does not end the routing prefix: the openings differ, and so do the keys.
    assert affinity_key("p", "m", first) != affinity_key("p", "m", second)


def test_a_first_breakpoint_past_the_opening_leaves_the_opening_the_routing_prefix() -> None:
    body = conversation(3)
    last_block = len(hashed_prompt(body, ()).blocks) - 1
    assert affinity_key("p", "m", body, last_block) == affinity_key("p", "m", body)


def test_conversations_with_other_openings_or_tenants_have_other_keys() -> None:
    one = conversation(2)
    assert affinity_key("p", "m", one) != affinity_key("p", "m", conversation(2, "Write the docs."))
    assert affinity_key("p", "m", one) != affinity_key("q", "m", one)  # another principal
    assert affinity_key("p", "m", one) != affinity_key("p", "n", one)  # another model
    assert tenant_key("ab", "c") != tenant_key("a", "bc")


def test_the_opening_message_skips_system_and_developer_messages() -> None:
    assert opening_message({"messages": [{"role": "system"}, {"role": "developer"}, {"role": "user"}]}) == 2
    assert opening_message({"messages": [{"role": "system"}, {"role": "system"}]}) == 1
    assert opening_message({"messages": []}) is None
    assert opening_message({}) is None
    assert affinity_key("p", "m", {"messages": []}) == tenant_key("p", "m")


def test_preference_moves_down_then_overloaded_endpoints_back_in_rendezvous_order() -> None:
    ranked = ["r2", "r0", "r3", "r1"]
    assert preference(ranked, {}, None, ()) == ranked
    assert preference(ranked, {"r2": 5}, 4, ()) == ["r0", "r3", "r1", "r2"]
    assert preference(ranked, {"r2": 4}, 4, ()) == ranked  # at the threshold, not over it
    assert preference(ranked, {}, 4, {"r2", "r3"}) == ["r0", "r1", "r2", "r3"]
    assert preference(ranked, {"r0": 9}, 4, {"r2"}) == ["r3", "r1", "r0", "r2"]
    everyone_busy = {name: 9 for name in ranked}
    assert preference(ranked, everyone_busy, 4, ())[0] == "r2"  # stays with its own
