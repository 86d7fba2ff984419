"""Anthropic Messages requests for the translation's tests: hypothesis strategies and small builders.

Every block a strategy draws carries a text unique in its request (``b<n> …``), so a test can
tell which chat block holds which client block's content.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

MARK: dict[str, str] = {"type": "ephemeral"}

_words = st.text(alphabet="abc xyz\n\"'é", max_size=8)


def text_block(text: str, marked: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if marked:
        block["cache_control"] = dict(MARK)
    return block


def anthropic(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": list(messages), **fields}


class _Draw:
    """One example's blocks: unique texts, and markers while the budget lasts."""

    def __init__(self, draw: st.DrawFn, marker_budget: int) -> None:
        self.draw = draw
        self.ids = itertools.count()
        self.budget = marker_budget

    def text(self) -> str:
        return f"b{next(self.ids)} {self.draw(_words)}"

    def maybe_mark(self, block: dict[str, Any]) -> dict[str, Any]:
        if self.budget > 0 and self.draw(st.booleans()):
            self.budget -= 1
            block["cache_control"] = dict(MARK)
        return block

    def user_block(self) -> dict[str, Any]:
        kind = self.draw(st.sampled_from(["text", "text", "image_base64", "image_url", "document", "tool_result"]))
        if kind == "text":
            return self.maybe_mark(text_block(self.text()))
        if kind == "image_base64":
            source = {"type": "base64", "media_type": "image/png", "data": self.text().replace(" ", "")}
            return self.maybe_mark({"type": "image", "source": source})
        if kind == "image_url":
            return self.maybe_mark({"type": "image", "source": {"type": "url", "url": f"https://x/{next(self.ids)}"}})
        if kind == "document":
            source = {"type": "text", "media_type": "text/plain", "data": self.text()}
            return self.maybe_mark({"type": "document", "source": source, "title": "t"})
        return self.tool_result()

    def tool_result(self) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": f"toolu_{next(self.ids)}"}
        shape = self.draw(st.sampled_from(["string", "blocks", "absent"]))
        if shape == "string":
            block["content"] = self.text()
        elif shape == "blocks":
            block["content"] = [self.maybe_mark(text_block(self.text())) for _ in range(self.draw(st.integers(1, 2)))]
        if self.draw(st.booleans()):
            block["is_error"] = True
        if shape == "blocks" and "cache_control" in block["content"][-1]:
            return block  # the same block marked twice is one breakpoint, not two
        return self.maybe_mark(block)

    def assistant_block(self) -> dict[str, Any]:
        kind = self.draw(st.sampled_from(["text", "tool_use", "thinking", "redacted_thinking"]))
        if kind == "text":
            return self.maybe_mark(text_block(self.text()))
        if kind == "thinking":
            return {"type": "thinking", "thinking": self.text(), "signature": "sig"}
        if kind == "redacted_thinking":
            return {"type": "redacted_thinking", "data": "opaque"}
        tool_input = {"q": self.text(), "n": self.draw(st.integers(-5, 5))}
        call = {"type": "tool_use", "id": f"toolu_{next(self.ids)}", "name": "lookup", "input": tool_input}
        return self.maybe_mark(call)

    def message(self, role: str) -> dict[str, Any]:
        if self.draw(st.integers(0, 4)) == 0:
            return {"role": role, "content": self.text()}
        make = {"user": self.user_block, "assistant": self.assistant_block}.get(role, self.system_block)
        return {"role": role, "content": [make() for _ in range(self.draw(st.integers(1, 4)))]}

    def system_block(self) -> dict[str, Any]:
        return self.maybe_mark(text_block(self.text()))

    def tool(self) -> dict[str, Any]:
        schema = {"type": "object", "properties": {"cache_control": {"type": "string"}}}  # user data, not a marker
        tool: dict[str, Any] = {"name": f"tool{next(self.ids)}", "input_schema": schema}
        if self.draw(st.booleans()):
            tool["description"] = self.text()
        if self.draw(st.booleans()):
            tool["defer_loading"] = True
        return self.maybe_mark(tool)


@st.composite
def requests(draw: st.DrawFn, marker_budget: int = 4) -> dict[str, Any]:
    """A random Messages request: system, tools, user/assistant turns and mid-conversation system messages."""
    blocks = _Draw(draw, marker_budget)
    body = anthropic()
    system_shape = draw(st.sampled_from(["absent", "string", "blocks"]))
    if system_shape == "string":
        body["system"] = blocks.text()
    elif system_shape == "blocks":
        body["system"] = [blocks.system_block() for _ in range(draw(st.integers(1, 3)))]
    tools = [blocks.tool() for _ in range(draw(st.integers(0, 3)))]
    if tools:
        body["tools"] = tools
    roles = draw(st.lists(st.sampled_from(["user", "assistant", "user", "assistant", "system"]), max_size=7))
    body["messages"] = [blocks.message(role) for role in roles]
    return body
