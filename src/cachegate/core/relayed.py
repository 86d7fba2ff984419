"""How many completion tokens a stream relayed, for a client that left before the usage frame.

Used only when the upstream's own count never came (SPEC §11, client disconnect): vLLM, SGLang and
llama.cpp stream one token per chunk, so the chunks that carried text are the count. The frames
are counted on the bytes, without parsing, because the relay's hot path passes content frames
through unparsed, in two scans of the bytes: the engines serialise compactly (``"delta":{"…``),
and a frame whose delta is empty (``{}``) or whose content is ``""`` (the opening role frame,
keep-alives) carries no token.
An engine that batches several tokens per chunk is undercounted, never overcounted.
"""

from __future__ import annotations

from typing import Final

_DELTA_WITH_FIELDS: Final = b'"delta":{"'  # an empty delta ({}) does not match
_EMPTY_CONTENT: Final = b'"content":""'


def delta_frames(data: bytes) -> int:
    """The streamed chunks in ``data`` whose delta carries text (content, reasoning or tool arguments)."""
    frames = data.count(_DELTA_WITH_FIELDS)
    if not frames:
        return 0
    return max(0, frames - data.count(_EMPTY_CONTENT))
