"""The sentinel method: block ends found by marks in a rendering, for any jinja chat template (SPEC §5).

The last method of the counting chain (``counter.py``), for what no native layout covers: the
end of every block that has text is marked with a unique string of characters the prompt does
not hold, the marked prompt is rendered, the marks are found and removed (their character
offsets are the block ends), and the rendering without marks must give exactly the text that is
left. Whenever the marks cannot be trusted — the template renders differently because of a mark,
or fails — the count fails with ``TokenCountError`` rather than bill a number that may be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2

from cachegate.core.blocks import parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.conversation import ChatPreparation, PreparedChat, describe_blocks, prepare_chat
from cachegate.tokens.marks import Delimiters, mark, mark_delimiters, without_marks
from cachegate.tokens.native import LaidOutPrompt
from cachegate.tokens.tally import CountRequest
from cachegate.tokens.template import ChatTemplate

# Where marks go (before trailing whitespace, tools at their prose only), in the order tried
# unless the template's probe puts another first (``_placement_order``).
_PLACEMENTS = ((False, False), (True, False), (False, True), (True, True))
Placement = tuple[bool, bool]

# A conversation with what templates treat specially: a system prompt, text with trailing
# whitespace, a tool whose schema has a required parameter, a tool call and its result.
_PROBE: dict[str, Any] = {
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather of a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "The city."}},
                    "required": ["city"],
                },
            },
        }
    ],
    "messages": [
        {"role": "system", "content": "You answer briefly.  "},
        {"role": "user", "content": "Weather in Paris?  "},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "abcdefghi",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "Sunny.  "},
        {"role": "user", "content": "Thanks.  "},
    ],
}

# Template complaints go into logs: short, and they are the template's words, not the prompt's.
_REASON_LIMIT = 200


class SentinelMethod:
    """Lays out any request a jinja template renders, by marks; never declines (it fails instead)."""

    def __init__(self, template: ChatTemplate, content_join: str) -> None:
        self._template = template
        self._content_join = content_join
        self._placements = self._placement_order()

    def lay_out(self, request: CountRequest) -> LaidOutPrompt:
        """Render with and without marks at the ends of the blocks' texts; the marks give the ends."""
        body, prompt, asked, request_variables = request.body, request.prompt, request.asked, request.variables
        traits = describe_blocks(body, prompt.blocks)
        images = [block for block, trait in enumerate(traits) if trait.is_image]
        marked = [block for block, trait in enumerate(traits) if trait.has_text]
        preparation = ChatPreparation(body, self._content_join)
        clean = self._render(preparation.chat(), request_variables)
        if not marked:
            return LaidOutPrompt(text=clean, ends=[], dropped=frozenset(), images=images, marked=True)
        delimiters = mark_delimiters(clean)
        if delimiters is None:
            raise TokenCountError("the prompt contains every character boundary marks can be made of")
        marks = {prompt.blocks[block]: mark(delimiters, n) for n, block in enumerate(marked)}
        needed = {n for n, block in enumerate(marked) if block in asked}
        found: list[tuple[int, int]] | str = "no placement of the marks was tried"
        trusted: tuple[PreparedChat, list[tuple[int, int]]] | None = None
        tried: list[PreparedChat] = []
        # In the order the template's probe chose: the ends of the blocks' texts, or for
        # templates that trim text or compare schema strings, placements those cannot see. The
        # first that keeps every asked-for mark, else the first that renders unchanged (the
        # template leaves those blocks out, whatever the placement).
        for before_trailing_space, prose_only in self._placements:
            chat = preparation.chat(marks, before_trailing_space, prose_only)
            if chat in tried:
                continue
            tried.append(chat)
            found = self._find_marks(chat, request_variables, clean, delimiters)
            if isinstance(found, str):
                continue
            if trusted is None or needed <= {n for n, _ in found}:
                trusted = chat, found
            if needed <= {n for n, _ in found}:
                break
        if trusted is None:
            raise TokenCountError(str(found))
        chat, found = trusted
        blocks = prompt.blocks
        ends = [(marked[n], chat.block_end(blocks[marked[n]], clean, offset)) for n, offset in found]
        written = {block for block, _ in ends}
        dropped = frozenset(block for block in marked if block not in written)
        return LaidOutPrompt(text=clean, ends=ends, dropped=dropped, images=images, marked=True)

    def _placement_order(self) -> tuple[Placement, ...]:
        """The placements in the order to try them, the first that works for this template on the probe first.

        A template that trims text or compares schema strings does so on every request: trying
        the placement it needs first saves a rendering or two a request. The order depends on
        the template and options alone (both in ``tokenizer_version``), so counts never depend
        on which requests came before.
        """
        try:
            prompt = parse_prompt(_PROBE, TtlPolicy.default_policy())
            traits = describe_blocks(_PROBE, prompt.blocks)
            clean = self._render(prepare_chat(_PROBE, self._content_join), None)
        except (TokenCountError, MarkerError):
            return _PLACEMENTS  # the template refuses the probe: keep the plain order
        marked = [block for block, trait in enumerate(traits) if trait.has_text]
        delimiters = mark_delimiters(clean)
        if delimiters is None:  # a template that writes every mark character itself
            return _PLACEMENTS
        marks = {prompt.blocks[block]: mark(delimiters, n) for n, block in enumerate(marked)}
        for placement in _PLACEMENTS:
            chat = prepare_chat(_PROBE, self._content_join, marks, *placement)
            if not isinstance(self._find_marks(chat, None, clean, delimiters), str):  # rendering unchanged
                return (placement, *(other for other in _PLACEMENTS if other != placement))
        return _PLACEMENTS

    def _render(self, chat: PreparedChat, request_variables: Mapping[str, Any] | None) -> str:
        try:
            return self._template.render(chat.messages, chat.tools, request_variables)
        except jinja2.TemplateError as exc:
            # raise_exception() and jinja say what the template objects to.
            reason = (exc.message or type(exc).__name__)[:_REASON_LIMIT]
            raise TokenCountError(f"chat template refused the request: {reason}") from exc
        except Exception as exc:
            raise TokenCountError(f"chat template failed: {type(exc).__name__}") from exc

    def _find_marks(
        self,
        chat: PreparedChat,
        request_variables: Mapping[str, Any] | None,
        clean: str,
        delimiters: Delimiters,
    ) -> list[tuple[int, int]] | str:
        """The marks as (mark number, offset in the unmarked text) in text order, or why they cannot be trusted.

        A template may leave out blocks (tools it does not support, roles it ignores): their
        marks are missing, and they bound nothing.
        """
        try:
            rendered = self._render(chat, request_variables)
        except TokenCountError:
            return "the chat template fails when block ends are marked"
        text, found = without_marks(rendered, delimiters)
        if text != clean:
            return "the chat template renders differently when block ends are marked"
        return found
