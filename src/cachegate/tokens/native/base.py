"""What every native template shares: the public ``lay_out`` and the reading of the request.

A template writes only its own rendering (``NativeTemplate.write_layout``); the base reads the
request (``plain_request``), starts the writer at the start or at the resumption, and turns
what was written into a ``LaidOutPrompt``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachegate.core.types import BlockRef
from cachegate.tokens.native.plain import LaidOutPrompt, PlainRequest, Resumption, TextWriter, plain_request
from cachegate.tokens.template import Unsupported


@dataclass(frozen=True, slots=True)
class Layout:
    """One ``lay_out`` call: the request as sent and as read, and where to start and to offer resuming."""

    body: Mapping[str, Any]
    blocks: Sequence[BlockRef]
    content_join: str
    variables: Mapping[str, Any]
    request: PlainRequest
    """The messages from ``request.first`` on, and the tools when that is 0."""
    since: Resumption | None
    keep: int | None

    @property
    def raw(self) -> list[Any]:
        """The request's messages as sent: a list of dicts with string roles (``plain_request`` checked),
        the ones before ``request.first`` read by an earlier layout."""
        messages: list[Any] = self.body["messages"]
        return messages

    def expect_context(self, context: tuple[Any, ...]) -> None:
        """Raise ``Unsupported`` unless what the rendering before the resumption looked ahead at is unchanged."""
        if self.since is not None and context != self.since.context:
            raise Unsupported("what the rendering before the resumption looked at has changed")


def expect_plain_chat(messages: Sequence[Mapping[str, Any]], empty: bool = False) -> None:
    """Raise ``Unsupported`` unless the prepared ``messages`` are dicts with string roles and
    contents (and there is one, unless ``empty``): the shapes the renderers reproduce."""
    if (not messages and not empty) or not all(
        type(message) is dict and type(message.get("role")) is str and type(message.get("content")) is str
        for message in messages
    ):
        raise Unsupported("messages must be dicts with string roles and contents")


class NativeTemplate(ABC):
    """A chat template reproduced in Python: a renderer (called) and a direct layout (``lay_out``)."""

    @abstractmethod
    def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        variables: Mapping[str, Any],
    ) -> str:
        """The rendering of a prepared conversation, with the generation prompt."""

    def lay_out(
        self,
        body: Mapping[str, Any],
        blocks: Sequence[BlockRef],
        content_join: str,
        variables: Mapping[str, Any],
        since: Resumption | None = None,
        keep: int | None = None,
    ) -> LaidOutPrompt:
        """The rendering of a request and where each of its ``blocks`` ends in it.

        With ``since``, from there on: the caller vouches that the request's tools, variables
        and messages up to ``since.message`` are those of the layout that offered it; the
        template checks what it looked ahead at (``Unsupported`` if that changed). With
        ``keep``, the layout offers to resume after that message (``LaidOutPrompt.kept``).
        """
        request = plain_request(body, blocks, content_join, since)
        out = TextWriter() if since is None else TextWriter(since.offset)
        dropped = self.write_layout(out, Layout(body, blocks, content_join, variables, request, since, keep))
        return out.laid_out(frozenset(dropped), request.images)

    @abstractmethod
    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        """Write the rendering from ``layout.since`` on (or from the start) and note the blocks'
        ends in ``out``; the blocks with text of their own that the template leaves out.

        Offer to resume after message ``layout.keep`` (``out.keep_here``) where the template can.
        Raise ``Unsupported`` for what it does not reproduce.
        """
