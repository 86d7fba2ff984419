"""OpenAI clients as they are (SPEC §3.1): no markers, and still cached on a model with automatic caching."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from harness import GatewayHarness
from prompts import MARK_1H, QWEN3_TAIL_TOKENS, system_text

pytestmark = pytest.mark.over_http  # and so against `serve --workers 2` too (conftest.py)


def ask(gateway: GatewayHarness, messages: list[dict[str, Any]], model: str = "automatic", **kw: Any) -> dict[str, Any]:
    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.keys.a, max_retries=0, timeout=30)
    return client.chat.completions.create(model=model, messages=messages, **kw).model_dump()["usage"]


def plain_conversation() -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_text()}, {"role": "user", "content": "What is rule 3?"}]


def test_an_unmodified_client_reads_on_its_second_identical_request(gateway: GatewayHarness) -> None:
    messages = plain_conversation()
    first = ask(gateway, messages)
    second = ask(gateway, messages)
    written = first["prompt_tokens_details"]["cache_write_tokens"]
    # The automatic breakpoint is the last block: everything but the template's generation prompt.
    assert written == first["prompt_tokens"] - QWEN3_TAIL_TOKENS
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] == written
    assert second["prompt_tokens_details"]["cached_tokens"] == written
    assert second["prompt_tokens_details"]["cache_write_tokens"] == 0


def test_a_grown_conversation_reads_what_the_turn_before_wrote(gateway: GatewayHarness) -> None:
    messages = plain_conversation()
    first = ask(gateway, messages)
    messages += [{"role": "assistant", "content": "Rule 3 says so."}, {"role": "user", "content": "And rule 4?"}]
    second = ask(gateway, messages)
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"] > 0


def test_a_24h_retention_falls_back_to_the_models_ttl_where_24h_is_not_accepted(gateway: GatewayHarness) -> None:
    usage = ask(gateway, plain_conversation(), extra_body={"prompt_cache_retention": "24h"})
    assert usage["cache_creation"]["ephemeral_5m_input_tokens"] == usage["cache_creation_input_tokens"] > 0


@pytest.mark.parametrize("retention", ["in_memory", "in-memory"])
def test_the_default_retention_in_either_spelling_is_the_models_ttl(gateway: GatewayHarness, retention: str) -> None:
    usage = ask(gateway, plain_conversation(), extra_body={"prompt_cache_retention": retention})
    assert usage["cache_creation"]["ephemeral_5m_input_tokens"] > 0


def test_an_unknown_retention_is_a_400_naming_it(gateway: GatewayHarness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(gateway, plain_conversation(), extra_body={"prompt_cache_retention": "forever"})
    assert caught.value.body["param"] == "prompt_cache_retention"


def test_markers_win_over_automatic_caching(gateway: GatewayHarness) -> None:
    text = system_text()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": text, "cache_control": MARK_1H}]},
        {"role": "user", "content": "What is rule 3?"},
    ]
    usage = ask(gateway, messages)
    assert usage["cache_creation"]["ephemeral_1h_input_tokens"] == usage["cache_creation_input_tokens"] > 0
    assert usage["cache_creation"]["ephemeral_5m_input_tokens"] == 0


def test_prompt_cache_key_never_widens_the_scope_beyond_the_principal(gateway: GatewayHarness) -> None:
    messages = plain_conversation()
    ask(gateway, messages, extra_body={"prompt_cache_key": "shared"})
    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.keys.b, max_retries=0, timeout=30)
    other = client.chat.completions.create(
        model="automatic", messages=messages, extra_body={"prompt_cache_key": "shared"}
    ).model_dump()["usage"]
    assert other["cache_read_input_tokens"] == 0


def test_models_without_automatic_caching_cache_nothing_unmarked(gateway: GatewayHarness) -> None:
    usage = ask(gateway, plain_conversation(), model="cached")
    assert usage["cache_creation_input_tokens"] == 0 and usage["cache_read_input_tokens"] == 0
