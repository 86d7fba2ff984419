"""A template's header rendered by the template itself, for native templates that write the rest.

Some templates write an elaborate header from the tools and the first message — gpt-oss's
TypeScript namespace, Qwen3-Coder's XML tool list — and then a simple conversation. The
header changes with the tools and the system prompt only, so it is rendered by jinja once per
(tools, first message, variables, …) and remembered, with the ends of its blocks found by the
sentinel method on the header alone; the conversation is written in Python.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import orjson
from cachetools import LRUCache

from cachegate.core.types import BlockRef
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.conversation import prepare_chat
from cachegate.tokens.marks import mark, mark_delimiters, without_marks
from cachegate.tokens.native.base import Layout
from cachegate.tokens.native.plain import PlainMessage
from cachegate.tokens.template import Unsupported

_PROBE = {"role": "user", "content": ""}
_REMEMBERED = 64


@dataclass(frozen=True, slots=True)
class HeaderLayout:
    text: str
    ends: list[tuple[int, int]]
    dropped: frozenset[int]
    holds_first: bool
    """The first message is one the header writes (a system message)."""


class JinjaHeader:
    """The header of ``template``: what it writes before the conversation.

    ``first_roles``: the roles of a first message the header writes. ``probe_rendered``: how
    the template writes an empty user message, which follows the header when the first message
    is not one of those. ``prose_only``: the placement of tool marks the template needs
    (``conversation.py``).
    """

    def __init__(
        self, template: jinja2.Template, first_roles: frozenset[str], probe_rendered: str, prose_only: bool
    ) -> None:
        self._template = template
        self._first_roles = first_roles
        self._probe_rendered = probe_rendered
        self._prose_only = prose_only
        self._remembered: LRUCache[bytes, HeaderLayout] = LRUCache(_REMEMBERED)
        self._lock = threading.Lock()

    def render(
        self, first: Mapping[str, Any], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
    ) -> str:
        """The header of a prepared conversation whose first message is ``first``."""
        if first["role"] in self._first_roles:
            return self._render([first], tools, variables)
        # The header is the same whatever the first message is; a user message then follows it.
        rendered = self._render([_PROBE], tools, variables)
        if not rendered.endswith(self._probe_rendered):
            raise Unsupported("the header could not be told apart from the conversation")
        return rendered[: -len(self._probe_rendered)]

    def layout(self, layout: Layout, first: PlainMessage, *also: Any) -> HeaderLayout:
        """The header of a request laid out from the start, whose first message is ``first``, and
        where its blocks end; remembered per tools, first message, variables and ``also`` (what
        else the template writes there, as gpt-oss the date)."""
        body, blocks, variables, tools = layout.body, layout.blocks, layout.variables, layout.request.tools
        holds_first = first.role in self._first_roles
        raw_first = body["messages"][0] if holds_first else _PROBE
        try:
            key = orjson.dumps([body.get("tools"), raw_first, variables, *also])
        except TypeError as exc:
            raise Unsupported("a header of values that are not JSON") from exc
        with self._lock:
            known = self._remembered.get(key)
            if known is not None:
                return known
        header_blocks = [block for block, _ in tools or ()]
        if holds_first:
            header_blocks.extend(block for block, _ in first.text_ends)
        header_body = {"messages": [raw_first], "tools": body.get("tools")}
        text, ends = self._marked(header_body, blocks, header_blocks, layout.content_join, variables)
        written = {block for block, _ in ends}
        header = HeaderLayout(text, ends, frozenset(set(header_blocks) - written), holds_first)
        with self._lock:
            self._remembered[key] = header
        return header

    def _marked(
        self,
        header_body: Mapping[str, Any],
        blocks: Sequence[BlockRef],
        header_blocks: list[int],
        content_join: str,
        variables: Mapping[str, Any],
    ) -> tuple[str, list[tuple[int, int]]]:
        """The sentinel method on the header alone."""
        try:
            clean_chat = prepare_chat(header_body, content_join)
            clean = self.render(clean_chat.messages[0], clean_chat.tools, variables)
        except (TokenCountError, jinja2.TemplateError) as exc:
            raise Unsupported("a header the sentinel method decides on") from exc
        delimiters = mark_delimiters(clean)
        if delimiters is None:
            raise Unsupported("no marks for this header")
        marks = {blocks[block]: mark(delimiters, n) for n, block in enumerate(header_blocks)}
        try:
            marked_chat = prepare_chat(header_body, content_join, marks, False, self._prose_only)
            marked = self.render(marked_chat.messages[0], marked_chat.tools, variables)
        except (TokenCountError, jinja2.TemplateError) as exc:
            raise Unsupported("a header the sentinel method decides on") from exc
        text, found = without_marks(marked, delimiters)
        if text != clean:
            raise Unsupported("marks change the header")
        return clean, [
            (header_blocks[n], marked_chat.block_end(blocks[header_blocks[n]], clean, offset)) for n, offset in found
        ]

    def _render(
        self, messages: list[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
    ) -> str:
        return self._template.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=False, **variables
        )
