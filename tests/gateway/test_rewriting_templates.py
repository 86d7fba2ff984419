"""Templates that rewrite earlier turns, with the real Qwen3 counter and a real index.

Qwen3 renders the reasoning of assistant turns after the last user query, and drops it from
the turns before. In an agent loop the reasoning stays (only tool results follow the query);
a new user query rewrites every earlier turn. The prefix the index remembers for the tool
result then no longer exists in the rendered prompt: it must not be read, as Anthropic
invalidates the cache from the rewritten turn on.
"""

from __future__ import annotations

from typing import Any

from cachegate.core.types import CacheScope, CacheTariff
from cachegate.gateway.classifier import CacheClassifier
from cachegate.index.memory import MemoryIndex
from cachegate.tokens.registry import load_qwen3

from .doubles import metric, prompt_of

TARIFF = CacheTariff(min_prefix_tokens=1)
NOW = 1_750_000_000.0
MARK = {"type": "ephemeral"}

SYSTEM = {"role": "system", "content": [{"type": "text", "text": "You fix bugs. " * 40, "cache_control": MARK}]}
QUERY = {"role": "user", "content": "The parser drops the last line; fix it."}
REASONED_CALL = {
    "role": "assistant",
    "content": "",
    "reasoning": "The bug is likely in the loop bound. I should read parser.py first. " * 5,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": '{"path": "parser.py"}'}}
    ],
}
RESULT = {
    "role": "tool",
    "tool_call_id": "call_1",
    "content": [
        {"type": "text", "text": "for i in range(len(lines) - 1):\n    emit(lines[i])\n", "cache_control": MARK}
    ],
}


def agent_turn() -> dict[str, Any]:
    return {"model": "qwen3", "messages": [SYSTEM, QUERY, REASONED_CALL, RESULT]}


def after_a_new_query() -> dict[str, Any]:
    follow_up = {
        "role": "user",
        "content": [{"type": "text", "text": "Thanks. Now add a test.", "cache_control": MARK}],
    }
    return {"model": "qwen3", "messages": [SYSTEM, QUERY, REASONED_CALL, RESULT, follow_up]}


async def classify(classifier: CacheClassifier, body: dict[str, Any]) -> Any:
    counter = load_qwen3()
    scope = CacheScope("prn_a", "qwen3", counter.tokenizer_version)
    return await classifier.classify(scope, prompt_of(body), body, TARIFF, counter, NOW)


async def test_a_rewritten_turn_is_not_read_but_the_prefix_before_it_is() -> None:
    classifier = CacheClassifier(MemoryIndex(), commit_deadline=1.0)
    counter = load_qwen3()
    first = await classify(classifier, agent_turn())
    assert await classifier.commit(first.writes)
    system_tokens, through_result = (entry.cumulative_tokens for entry in first.writes)
    stale_before = metric("cachegate_cache_stale_hits_total")

    second = await classify(classifier, after_a_new_query())

    body = after_a_new_query()
    prompt = prompt_of(body)
    now_counted = counter.count_blocking(body, prompt, [bp.block for bp in prompt.breakpoints]).cumulative
    result_block = prompt.breakpoints[1].block
    # The reasoning is gone from the rendered prompt, so the tool result's prefix is shorter now.
    assert now_counted[result_block] < through_result
    # Only the system prompt, which the template did not rewrite, is read.
    assert second.stats.read == system_tokens
    assert [entry.cumulative_tokens for entry in second.writes] == [
        now_counted[result_block],
        now_counted[prompt.breakpoints[2].block],
    ]
    assert metric("cachegate_cache_stale_hits_total") - stale_before == 1


async def test_while_the_agent_loop_runs_the_reasoning_stays_and_is_read() -> None:
    classifier = CacheClassifier(MemoryIndex(), commit_deadline=1.0)
    first = await classify(classifier, agent_turn())
    assert await classifier.commit(first.writes)
    next_call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "write", "arguments": '{"path": "parser.py"}'}}
        ],
    }
    next_result = {
        "role": "tool",
        "tool_call_id": "call_2",
        "content": [{"type": "text", "text": "ok", "cache_control": MARK}],
    }
    body = agent_turn()
    body["messages"] += [next_call, next_result]

    second = await classify(classifier, body)

    assert second.stats.read == first.writes[-1].cumulative_tokens
