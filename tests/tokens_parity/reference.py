"""The reference rendering: transformers' ``apply_chat_template`` over messages prepared as vLLM prepares them.

cachegate claims that it renders a chat request exactly as a vLLM upstream does. vLLM
(``vllm/entrypoints/chat_utils.py``, content format "string") hands ``apply_chat_template``:

- messages with ``role`` and a string ``content``: the text parts joined with ``"\\n"``, null
  content as ``""``;
- on assistant messages, ``tool_calls`` as sent but with each ``function.arguments`` parsed
  from its JSON string into an object, and ``reasoning`` also offered as ``reasoning_content``;
- on tool messages, ``tool_call_id``;
- tools as its validated model dumps them: ``{"type", "function": {"name", "description",
  "parameters"}}``, a missing description as null.

The upstream never sees ``cache_control`` markers: the gateway removes them before forwarding.
The preparation is written out here on its own, not borrowed from ``cachegate.tokens``, so that
the tests compare cachegate against the claim and not against itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

VLLM_CONTENT_JOIN = "\n"


def vllm_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages of ``body`` as vLLM passes them to the chat template."""
    return [_vllm_message(message) for message in body["messages"]]


def vllm_tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The tools of ``body`` as vLLM's request model dumps them."""
    if "tools" not in body:
        return None
    return [
        {
            "type": tool.get("type", "function"),
            "function": {
                "name": tool["function"]["name"],
                "description": tool["function"].get("description"),
                "parameters": tool["function"].get("parameters"),
            },
        }
        for tool in body["tools"]
    ]


def _vllm_message(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = VLLM_CONTENT_JOIN.join(part["text"] for part in content if part["type"] == "text")
    prepared: dict[str, Any] = {"role": message["role"], "content": text}
    if message["role"] == "assistant":
        if message.get("tool_calls"):
            prepared["tool_calls"] = [
                {
                    **call,
                    "function": {**call["function"], "arguments": json.loads(call["function"]["arguments"])},
                }
                for call in message["tool_calls"]
            ]
        if message.get("reasoning") is not None:
            prepared["reasoning"] = prepared["reasoning_content"] = message["reasoning"]
    if message["role"] == "tool":
        prepared["tool_call_id"] = message["tool_call_id"]
    return prepared


class TransformersReference:
    """``apply_chat_template`` of a transformers tokenizer built on the same ``tokenizer.json``.

    The tokenizer carries Qwen3's own special tokens only. The special-token strings another
    model's template reads (``bos_token`` …) are passed as template variables, which is how
    transformers hands its special tokens to a template: declaring them on the tokenizer would
    also make them added tokens, and then the ids would no longer be the Qwen3 tokenizer's.
    """

    def __init__(self, tokenizer_json: bytes) -> None:
        self._tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_buffer(tokenizer_json),
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
        )

    def text(self, body: Mapping[str, Any], template: str, variables: Mapping[str, Any]) -> str:
        rendered = self._apply(body, template, variables, tokenize=False)
        assert isinstance(rendered, str)
        return rendered

    def ids(self, body: Mapping[str, Any], template: str, variables: Mapping[str, Any]) -> list[int]:
        ids = self._apply(body, template, variables, tokenize=True)
        assert isinstance(ids, list)
        return ids

    def _apply(
        self, body: Mapping[str, Any], template: str, variables: Mapping[str, Any], *, tokenize: bool
    ) -> str | list[int]:
        return self._tokenizer.apply_chat_template(
            vllm_messages(body),
            tools=vllm_tools(body),
            chat_template=template,
            add_generation_prompt=True,
            tokenize=tokenize,
            return_dict=False,
            **variables,
        )
