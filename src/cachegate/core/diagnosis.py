"""Why the deepest breakpoint did not read (SPEC §14): plain inputs, plain outputs.

``below_floor`` and ``degraded`` are decided where they happen (``classify.decide``, the
shell's degrade paths). The other three need what the index remembers of the caller's own
scope, asked only when the deepest breakpoint missed (``needs_recall``), in one round trip
(``CacheIndex.recall``): the entries of this prompt's prefix that have expired (kept for a
retention window past their expiry), and the *trails* of earlier requests (``Trail``), the
compact outline every commit leaves: one short digest of the prefix hash at the end of each
section — the tools, the system prompt, then each other message — up to the deepest
breakpoint's section.

``diagnose`` then says, in this order:

1. ``prefix_changed`` at the first block whose match the count refused (a template that now
   renders an earlier turn differently);
2. ``expired`` if an entry of this prompt's prefix, deeper than what was read, has expired;
3. ``prefix_changed`` at the first section where this prompt leaves the trail of its own
   conversation that shares the longest prefix with it — a trail stored under this prompt's
   anchor (the first message after the system prompt), or the scope's latest if it has the same
   anchor. A request whose anchor differs is another conversation;
4. otherwise ``first_write``: no trail of this conversation, or this prompt only extends its
   trail (a conversation that grew: the new part has never been written), or stops inside it.

Prefix hashes are chained, so a section digest that matches means everything before it matches
too, and the first section that differs is the first changed one. Digests are 8 bytes (a false
match, 2^-64 per pair, could only move the reported section later); a trail holds at most
``MAX_SECTIONS`` sections, and a change past them reads as ``first_write``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cachegate.core.classify import Hit
from cachegate.core.sites import MARKER_KEY
from cachegate.core.types import BlockKind, CacheMiss, CacheScope, MissReason, ParsedPrompt, Section, Trail

DIGEST_BYTES: Final = 8
MAX_SECTIONS: Final = 1024
LATEST_KEY: Final = b"latest"
"""The trail key of a scope's most recent commit, whatever its conversation."""

_ANCHOR_KEY_PREFIX: Final = b"anchor:"
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})
TOOLS: Final = "tools"
SYSTEM: Final = "system"


@dataclass(frozen=True, slots=True)
class Outline:
    """A prompt cut into sections: ``labels[i]`` is section i's name, ``ends[i]`` its last block."""

    labels: tuple[Section, ...]
    ends: tuple[int, ...]
    anchor: bytes  # digest of the first message after the system prompt; b"" when there is none

    def section_of(self, block: int) -> int:
        """The index of the section holding ``block`` (never an empty one: its end is its predecessor's)."""
        for i, end in enumerate(self.ends):
            if block <= end:
                return i
        return len(self.ends) - 1

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Where this prompt's trail is stored and looked for: its anchor's key, then the scope's latest."""
        return (_ANCHOR_KEY_PREFIX + self.anchor, LATEST_KEY)


def outline(
    prompt: ParsedPrompt, messages: Sequence[Any], client_messages: Sequence[int | None] | None = None
) -> Outline:
    """The sections of ``prompt``, whose chat ``messages`` it was parsed from.

    The first two sections are always the tools and the system prompt (the leading run of system
    and developer messages), empty or not, so that adding or removing either is named as such;
    then every other message is a section, named by its index. ``client_messages`` maps each chat
    message to the index of the client's message it came from (None: its system prompt), for a
    request that was translated (Anthropic's, SPEC §9): the sections are then the client's messages.
    """
    labels: list[Section] = [TOOLS, SYSTEM]
    ends: list[int] = [-1, -1]
    leading_system = True
    anchor_message: int | None = None
    for block, ref in enumerate(prompt.blocks):
        label: Section
        if ref.kind is BlockKind.TOOL or ref.message is None:
            label = TOOLS
        else:
            label, leading_system = _message_label(ref.message, messages, client_messages, leading_system)
            if label != SYSTEM and anchor_message is None:
                anchor_message = ref.message
        if label == TOOLS:
            ends[0] = ends[1] = block
        elif label == SYSTEM:
            ends[1] = block
        elif labels[-1] == label:
            ends[-1] = block
        else:
            labels.append(label)
            ends.append(block)
    anchor = b""
    if anchor_message is not None and anchor_message < len(messages):
        canonical = orjson.dumps(_unmarked(messages[anchor_message]), option=orjson.OPT_SORT_KEYS)
        anchor = hashlib.sha256(canonical).digest()[:DIGEST_BYTES]
    return Outline(tuple(labels), tuple(ends), anchor)


def _unmarked(message: Any) -> Any:
    """The message without its markers (SPEC §3.1), which never change what a prompt is (§4)."""
    if not isinstance(message, Mapping):
        return message
    unmarked = {key: value for key, value in message.items() if key != MARKER_KEY}
    for field in ("content", "tool_calls"):
        items = unmarked.get(field)
        if isinstance(items, list):
            unmarked[field] = [
                {k: v for k, v in item.items() if k != MARKER_KEY} if isinstance(item, Mapping) else item
                for item in items
            ]
    return unmarked


def _message_label(
    message: int, messages: Sequence[Any], client_messages: Sequence[int | None] | None, leading_system: bool
) -> tuple[Section, bool]:
    if client_messages is not None:
        source = client_messages[message] if message < len(client_messages) else None
        return (SYSTEM, leading_system) if source is None else (source, False)
    body = messages[message] if message < len(messages) else None
    role = body.get("role") if isinstance(body, Mapping) else None
    if leading_system and role in _SYSTEM_ROLES:
        return SYSTEM, True
    return message, False


_EMPTY: Final = bytes(DIGEST_BYTES)
"""The digest of an empty prefix: no tools (and no system prompt either)."""


def section_digests(prompt: ParsedPrompt, sections: Outline) -> list[bytes]:
    """The short digest of the prefix hash at each section's end, up to the deepest breakpoint's section."""
    if not prompt.breakpoints:
        return []
    last = min(sections.section_of(prompt.breakpoints[-1].block) + 1, MAX_SECTIONS)
    return [prompt.prefix_hashes[end][:DIGEST_BYTES] if end >= 0 else _EMPTY for end in sections.ends[:last]]


def trails_to_write(scope: CacheScope, prompt: ParsedPrompt, sections: Outline, expires_at: float) -> list[Trail]:
    """The trail a commit of ``prompt`` leaves, under its anchor's key and the scope's latest."""
    packed = b"".join(section_digests(prompt, sections))
    return [Trail(scope, key, sections.anchor, packed, expires_at) for key in sections.keys]


def needs_recall(prompt: ParsedPrompt, hit: Hit | None) -> bool:
    """Whether the deepest breakpoint misses, so that ``diagnose`` will want the index's recall."""
    return bool(prompt.breakpoints) and (hit is None or hit.block < prompt.breakpoints[-1].block)


def diagnose(
    prompt: ParsedPrompt,
    sections: Outline,
    read_block: int | None,
    refused: Iterable[int] = (),
    expired: Iterable[int] = (),
    trails: Iterable[Trail] = (),
) -> CacheMiss:
    """Why the deepest breakpoint of ``prompt`` did not read (the module docstring gives the rules).

    ``read_block`` is the block of the entry that was read (None: nothing), ``refused`` the blocks
    whose live matches the count refused, ``expired`` the blocks whose entry has expired, and
    ``trails`` those the index recalled for ``sections.keys``.
    """
    depth = -1 if read_block is None else read_block
    refused_deeper = [block for block in refused if block > depth]
    if refused_deeper:
        return _changed_at(sections, sections.section_of(min(refused_deeper)))
    if any(block > depth for block in expired):
        return CacheMiss(MissReason.EXPIRED)
    ours = section_digests(prompt, sections)
    best: tuple[int, int] | None = None  # (common sections, the trail's sections)
    for trail in trails:
        if trail.anchor != sections.anchor:
            continue  # another conversation
        theirs = [trail.sections[i : i + DIGEST_BYTES] for i in range(0, len(trail.sections), DIGEST_BYTES)]
        common = _common_prefix(ours, theirs)
        if best is None or common > best[0]:
            best = (common, len(theirs))
    if best is None:
        return CacheMiss(MissReason.FIRST_WRITE)
    common, length = best
    if common >= length or common >= len(ours):
        return CacheMiss(MissReason.FIRST_WRITE)  # this prompt extends the trail, or stops inside it
    return _changed_at(sections, common)


def _changed_at(sections: Outline, section: int) -> CacheMiss:
    return CacheMiss(MissReason.PREFIX_CHANGED, sections.labels[section])


def _common_prefix(ours: Sequence[bytes], theirs: Sequence[bytes]) -> int:
    common = 0
    for mine, other in zip(ours, theirs, strict=False):
        if mine != other:
            break
        common += 1
    return common


def diagnostics_body(miss: CacheMiss | None) -> dict[str, Any] | None:
    """The response's ``diagnostics`` for a client that asked, in the shape of Anthropic's: None when
    the deepest breakpoint read (or nothing was cached), else ``{"cache_miss_reason": {"type", "block"?}}``."""
    return None if miss is None else {"cache_miss_reason": miss.as_json()}


PENDING_DIAGNOSTICS: Final = {"cache_miss_reason": None}
"""A reason not known: a stream's ``message_start`` before the diagnosis (Anthropic's "still pending"),
or a miss the index could not explain."""
