"""Request paths as the route table matches them (SPEC §2, other routes).

The server hands over the path percent-decoded (``%2e%2e`` is already ``..``). A trailing slash
names the same route as none; a dot segment is refused rather than resolved, because a gateway
that resolved ``/v1/../x`` differently from what sits behind it would be a way around its routes.
"""

from __future__ import annotations

from typing import Final

from cachegate.core.errors import CachegateError

_DOT_SEGMENTS: Final = frozenset({".", ".."})


class DotSegment(CachegateError, ValueError):
    """The path has a ``.`` or ``..`` segment (plain or percent-encoded)."""


def normalised_path(path: str, raw_path: bytes | None = None) -> str:
    """``path`` without one trailing slash; raises ``DotSegment`` for ``.`` or ``..`` segments.

    ``raw_path`` (the path as sent, still encoded) is checked too: a server that decoded ``%2e``
    but resolved nothing, and one that did neither, are refused alike.
    """
    encoded_dot = raw_path is not None and (b"%2e" in raw_path or b"%2E" in raw_path)
    if "." in path or encoded_dot:  # most paths have no dot at all: nothing to split
        candidates = [path]
        if raw_path is not None:
            candidates.append(raw_path.decode("latin-1").replace("%2e", ".").replace("%2E", "."))
        for candidate in candidates:
            if any(segment in _DOT_SEGMENTS for segment in candidate.split("/")):
                raise DotSegment(f"the path {path!r} has a dot segment")
    if len(path) > 1 and path.endswith("/"):
        return path[:-1]
    return path
