"""Prompts for the end-to-end tests: long enough to pass the test floor, unique per call."""

from __future__ import annotations

import uuid
from typing import Any

MARK_1H = {"type": "ephemeral", "ttl": "1h"}
MARK_5M = {"type": "ephemeral", "ttl": "5m"}

# Qwen3's template closes every message with "<|im_end|>\n" and the generation prompt adds
# "<|im_start|>assistant\n": 5 tokens after the last message's text.
QWEN3_TAIL_TOKENS = 5


def system_text(words: int = 300) -> str:
    """A stable-looking system prompt that no other test sends (a fresh id leads it)."""
    body = " ".join(f"rule{i}: answer precisely and cite section {i % 17}." for i in range(words // 6))
    return f"[session {uuid.uuid4()}] You are a careful assistant. {body}"


def marked_system(text: str, mark: dict[str, str] | None = None) -> dict[str, Any]:
    return {"role": "system", "content": [{"type": "text", "text": text, "cache_control": mark or MARK_1H}]}
