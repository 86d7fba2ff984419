"""Blocks and prefix hashes (SPEC §4): what makes two prompts "the same prefix".

One running SHA-256 is fed, per block, ``kind ‖ 0x00 ‖ canonical JSON``; a message's header
(``header ‖ 0x00 ‖ canonical JSON``) is fed just before its first block, or is the whole block of
a message with no parts and no tool calls. ``prefix_hashes[i]`` is the digest after block ``i``.

The stream of fed bytes can be read back in only one way — kinds are fixed words, canonical
JSON never contains a NUL byte and every JSON value is self-delimiting —, so equal digests mean
equal prefixes, with the boundaries at the same places.

Canonical JSON is the block's object without its own top-level ``cache_control``, keys sorted
at every depth, compact, UTF-8 (``orjson`` with ``OPT_SORT_KEYS``): the key order and whitespace
a client happens to send, and its markers, never change a hash. Bodies are expected as
``orjson.loads`` gives them (string keys, integers within 64 bits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from cachegate.core.markers import TtlPolicy, find_breakpoints
from cachegate.core.sites import MARKER_KEY, Site, iter_sites, message_header
from cachegate.core.types import BlockKind, BlockRef, Breakpoint, ParsedPrompt

_SEPARATOR: Final = b"\x00"
_KIND_PREFIX: Final = {kind: kind.value.encode() + _SEPARATOR for kind in BlockKind}
_HEADER_PREFIX: Final = _KIND_PREFIX[BlockKind.HEADER]


def parse_prompt(body: Mapping[str, Any], policy: TtlPolicy) -> ParsedPrompt:
    """The blocks, prefix hashes and breakpoints of a chat request.

    Raises ``MarkerError`` exactly as ``markers.validate_markers`` does.
    """
    sites = list(iter_sites(body))
    return hashed_prompt(body, find_breakpoints(body, sites, policy), sites)


def hashed_prompt(
    body: Mapping[str, Any], breakpoints: tuple[Breakpoint, ...], sites: list[Site] | None = None
) -> ParsedPrompt:
    """The blocks and prefix hashes of ``body``, with the ``breakpoints`` its markers made.

    No marker is hashed, so ``body`` may have lost its markers since ``breakpoints`` were found
    (the gateway strips them and forwards the request first: hashing a long prompt takes
    milliseconds the upstream need not wait for).
    """
    if sites is None:
        sites = list(iter_sites(body))
    hasher = hashlib.sha256()
    hashes: list[bytes] = []
    for site in sites:
        _feed(hasher, site)
        hashes.append(hasher.digest())  # digest() does not finalize: the hasher runs on
    return ParsedPrompt(
        blocks=tuple(BlockRef(kind, message, index) for kind, message, index, *_ in sites),
        prefix_hashes=tuple(hashes),
        breakpoints=breakpoints,
    )


def prefix_hash_through(body: Mapping[str, Any], message: int, block: int | None = None) -> bytes | None:
    """``prefix_hash`` at the last block of ``messages[message]`` (the tools and every earlier
    message included), or at block ``block`` if that comes first, hashing no further; None when
    the prompt has no block up to there.

    Equal to ``hashed_prompt(body, ()).prefix_hashes`` at that block, for a fraction of the work
    when the block is early in a long prompt.
    """
    hasher = hashlib.sha256()
    digest = None
    for position, site in enumerate(iter_sites(body)):
        owner_message = site[1]
        if owner_message is not None and owner_message > message:
            break
        _feed(hasher, site)
        digest = hasher.digest()
        if position == block:
            break
    return digest


def _feed(hasher: Any, site: Site) -> None:
    kind, _, _, value, owner, first, _ = site
    if first:
        hasher.update(_HEADER_PREFIX)
        hasher.update(_canonical(message_header(owner)))
    if kind is not BlockKind.HEADER:
        hasher.update(_KIND_PREFIX[kind])
        hasher.update(_canonical(_without_marker(value)))


def _canonical(value: Any) -> bytes:
    """Compact JSON with keys sorted at every depth."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _without_marker(value: Any) -> Any:
    if isinstance(value, dict) and MARKER_KEY in value:
        return {key: item for key, item in value.items() if key != MARKER_KEY}
    return value
