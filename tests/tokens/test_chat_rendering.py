"""Rendering parity: the Qwen3 template renders requests as vLLM would (expected texts written by hand
from the template), and the total is the token count of exactly that text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tokenizers import Tokenizer

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.counter import ChatTokenCounter

PromptOf = Callable[[dict[str, Any]], ParsedPrompt]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_EPILOGUE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)

CASES: dict[str, tuple[dict[str, Any], str]] = {
    "system and user": (
        {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}]},
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "tools and a system message": (
        {
            "tools": [WEATHER_TOOL],
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
        },
        "<|im_start|>system\nBe brief.\n\n"
        + TOOLS_PREAMBLE
        + "\n"
        + WEATHER_TOOL_JSON
        + TOOLS_EPILOGUE
        + "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n",
    ),
    "tools shaped as vLLM validates them": (
        {
            # Keys out of order, no description: vLLM's model gives type first and a null description.
            "tools": [{"function": {"parameters": {"type": "object"}, "name": "now"}, "type": "function"}],
            "messages": [{"role": "user", "content": "Time?"}],
        },
        "<|im_start|>system\n"
        + TOOLS_PREAMBLE
        + '\n{"type": "function", "function": {"name": "now", "description": null, "parameters": {"type": "object"}}}'
        + TOOLS_EPILOGUE
        + "<|im_start|>user\nTime?<|im_end|>\n<|im_start|>assistant\n",
    ),
    "assistant tool calls and tool results": (
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        # openai-python's model_dump order: id, function (arguments before name), type.
                        {
                            "id": "c1",
                            "function": {"arguments": '{"city": "Paris"}', "name": "get_weather"},
                            "type": "function",
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "rainy"}]},
            ]
        },
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrainy\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "multi-part content, images and null content": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "text", "text": "what is it? 🙂"},
                    ],
                },
                {"role": "assistant", "content": None},
                {"role": "user", "content": "Well?"},
            ]
        },
        "<|im_start|>user\nLook:\nwhat is it? 🙂<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>user\nWell?<|im_end|>\n<|im_start|>assistant\n",
    ),
    "reasoning of the last assistant turn": (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!", "reasoning": "Greet back."},
            ]
        },
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "request chat_template_kwargs": (
        {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"enable_thinking": False}},
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_rendering_equals_the_hand_written_text(case: str, qwen3: ChatTokenCounter, prompt_of: PromptOf) -> None:
    body, expected = CASES[case]
    prompt = prompt_of(body)

    rendering = qwen3.render(body, prompt, range(len(prompt.blocks)))

    assert rendering.text == expected


@pytest.mark.parametrize("case", CASES)
async def test_total_is_the_token_count_of_the_rendering(
    case: str, qwen3: ChatTokenCounter, qwen3_tokenizer: Tokenizer, prompt_of: PromptOf
) -> None:
    body, expected = CASES[case]
    prompt = prompt_of(body)

    counts = await qwen3.count(body, prompt, range(len(prompt.blocks)))

    assert counts.total == len(qwen3_tokenizer.encode(expected, add_special_tokens=False).ids)


def test_markers_never_reach_the_template(qwen3: ChatTokenCounter, prompt_of: PromptOf) -> None:
    marker = {"type": "ephemeral", "ttl": "1h"}
    schema = {"type": "object", "properties": {"cache_control": {"type": "string"}}}  # user data, kept
    body = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}, "cache_control": marker}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "S", "cache_control": marker}]},
            {"role": "user", "content": "U", "cache_control": marker},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                        "cache_control": marker,
                    }
                ],
            },
        ],
        "cache_control": marker,
    }
    prompt = prompt_of(body)

    text = qwen3.render(body, prompt, range(len(prompt.blocks))).text

    assert "ephemeral" not in text
    assert '"properties": {"cache_control": {"type": "string"}}' in text
