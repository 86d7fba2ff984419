"""Counting a rendering's tokens piece by piece, so a prefix already seen is not tokenized again.

A tokenizer splits its input at its special (added) tokens before normalizing, pre-tokenizing
or merging anything, so a rendering cut just before each special token gives *pieces* that
encode to exactly the tokens of the whole — and a rendered chat has such a cut at every
message. Two things follow:

- pieces can be encoded in one batch, which the tokenizer libraries spread over every core
  with the GIL released (encoding one long text holds the GIL and uses one core);
- a piece's tokens depend on its text alone, so they can be remembered by text. The next
  request of an agent loop renders the same messages again plus a few new ones: its pieces
  are looked up, and only the new ones — the tail — are tokenized (SPEC §5).

A tokenizer whose special tokens reach into their neighbours (``lstrip``, ``rstrip``,
``single_word``) or match after normalization has no exact cut; its text is one piece.

A count may also start part way into a rendering (``count_from``), at a cut of an earlier
rendering with the same text up to there: the scan for special tokens decides each cut from the
next ``cut_reach`` characters at most, so a cut at least that far before the end of the shared
text is a cut of both, with the same pieces ahead of it (``counter.py`` resumes counts so).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_PIECE_MEMO_BYTES = 64 << 20
"""Tokenized pieces kept per counter: the texts of about 80 distinct 200k-token prompts."""


class PieceTable(Protocol):
    """The tokens of one piece: how many there are, and how many end at or before an offset."""

    @property
    def tokens(self) -> int: ...

    @property
    def weight(self) -> int:
        """Roughly the bytes this table keeps alive (read once, when it is remembered)."""

    def count_before(self, piece: str, offset: int) -> int:
        """Tokens of ``piece`` (the text this table was made from) that end at or before character ``offset``."""


class PieceTokenizer(Protocol):
    """What a tokenizer library provides to count pieces: where to cut, and the pieces' tokens."""

    @property
    def cut_pattern(self) -> re.Pattern[str] | None:
        """Matches each special token the text may hold; None when the text must not be cut."""

    @property
    def cut_reach(self) -> int:
        """The most characters one match of ``cut_pattern`` spans: its longest special token."""

    @property
    def identity(self) -> bytes:
        """Identifies the vocabulary, the pre-tokenization and the special tokens."""

    def tables(self, pieces: list[str], inner: Sequence[bool]) -> Sequence[PieceTable]:
        """Encode ``pieces`` (special tokens recognized), on every core; one table each.

        ``inner[i]``: an offset inside piece i will be asked for at once, so its table should
        keep what ``count_before`` needs rather than find it again later.
        """

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        """The plain token count of each text: no special tokens added or recognized."""


@dataclass(frozen=True, slots=True)
class LoadedTokenizer:
    """A tokenizer as its files give it: its pieces, chat template and special tokens (the template's
    variables, such as ``bos_token``). What the registry builds a counter from."""

    pieces: PieceTokenizer
    chat_template: str
    special_tokens: Mapping[str, Any]


def special_token_pattern(tokens: Iterable[str]) -> re.Pattern[str]:
    """A pattern that finds each of ``tokens``, the longest where several start at one place.

    Built as a trie: a plain alternation is tried token by token at every position, which for
    gpt-oss's 1,100 special tokens made finding them cost more than all the rest of a count.
    """
    trie: dict[str, Any] = {}
    for token in tokens:
        if not token:
            raise ValueError("a special token is empty")
        node = trie
        for character in token:
            node = node.setdefault(character, {})
        node[""] = {}  # a token ends here
    return re.compile(_trie_branches(trie))


def _trie_branches(node: dict[str, Any]) -> str:
    branches = [re.escape(character) + _trie_branches(child) for character, child in sorted(node.items()) if character]
    if not branches:
        return ""
    ends_here = "" in node
    if len(branches) == 1 and not ends_here:
        return branches[0]
    # Greedy: the longer token is tried first, the one ending here after it.
    return "(?:" + "|".join(branches) + ")" + ("?" if ends_here else "")


@dataclass(frozen=True, slots=True)
class PieceCounts:
    """What a count found: tokens at the boundaries asked for, in all, and at every cut."""

    at_offset: dict[int, int]
    """Boundary -> the tokens that end at or before it."""
    total: int
    starts: list[int]
    """Where each piece starts, in order (the first is where the count started)."""
    before: list[int]
    """``before[i]``: the tokens ahead of piece i (those before the count's start included)."""


class PieceCounter:
    """Token counts of renderings at character boundaries, with pieces remembered by text.

    The memory is an LRU bounded by ``memo_bytes`` (piece text plus tables). It is shared by
    every request for this tokenizer and guarded by a lock, so the counting threads of a
    tokenizer service may use one counter.
    """

    def __init__(self, tokenizer: PieceTokenizer, memo_bytes: int = DEFAULT_PIECE_MEMO_BYTES) -> None:
        if memo_bytes < 0:
            raise ValueError("memo_bytes must not be negative")
        self._tokenizer = tokenizer
        self._memo_bytes = memo_bytes
        self._memo: OrderedDict[str, tuple[PieceTable, int]] = OrderedDict()  # piece -> (table, weight)
        self._memo_weight = 0
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> PieceTokenizer:
        return self._tokenizer

    def count(self, text: str, boundaries: Collection[int]) -> tuple[dict[int, int], int]:
        """The tokens of ``text`` that end at or before each boundary, and all of ``text``'s tokens.

        A token that straddles a boundary belongs to what follows it.
        """
        counted = self.count_from(text, boundaries)
        return counted.at_offset, counted.total

    def count_from(self, text: str, boundaries: Collection[int], start: int = 0, tokens_before: int = 0) -> PieceCounts:
        """``count`` of a rendering that ``text`` ends, starting at offset ``start`` of it.

        ``start`` must be a cut of the whole rendering (0, or a cut ``count_from`` found that
        lies ``cut_reach`` or more before the end of the text the two renderings share), and
        ``tokens_before`` the tokens ahead of it. Offsets, in and out, are the whole rendering's;
        boundaries before ``start`` are not counted.
        """
        starts = [start + offset for offset in self._piece_starts(text)]
        end = start + len(text)
        ends = [*starts[1:], end]
        pieces = [text[first - start : last - start] for first, last in zip(starts, ends, strict=True)]
        inside: dict[int, int] = {}  # boundary -> the piece it falls inside of (not at its start)
        for boundary in boundaries:
            if start < boundary < end:
                i = bisect.bisect_right(starts, boundary) - 1
                if boundary > starts[i]:
                    inside[boundary] = i
        tables = self._tables(pieces, set(inside.values()))
        before: list[int] = []  # before[i]: tokens of the pieces ahead of piece i
        running = tokens_before
        for table in tables:
            before.append(running)
            running += table.tokens
        before.append(running)
        counts: dict[int, int] = {}
        for boundary in boundaries:
            if boundary < start:
                raise ValueError("a boundary before the start of the count")
            if boundary in inside:
                i = inside[boundary]
                counts[boundary] = before[i] + tables[i].count_before(pieces[i], boundary - starts[i])
            else:  # the start of a piece, or the end of the text
                counts[boundary] = before[bisect.bisect_left(starts, boundary)] if boundary < end else running
        return PieceCounts(at_offset=counts, total=running, starts=starts, before=before)

    def _piece_starts(self, text: str) -> list[int]:
        pattern = self._tokenizer.cut_pattern
        if pattern is None:
            return [0]
        starts = [match.start() for match in pattern.finditer(text)]
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
        return starts

    def _tables(self, pieces: list[str], inner: set[int]) -> list[PieceTable]:
        found: list[PieceTable | None] = []
        with self._lock:
            for piece in pieces:
                entry = self._memo.get(piece)
                if entry is not None:
                    self._memo.move_to_end(piece)
                found.append(None if entry is None else entry[0])
        missing: dict[str, bool] = {}  # piece -> whether an offset inside it is asked for
        for i, (piece, table) in enumerate(zip(pieces, found, strict=True)):
            if table is None:
                missing[piece] = missing.get(piece, False) or i in inner
        if not missing:
            return found  # type: ignore[return-value]  # every entry was found
        fresh = dict(zip(missing, self._tokenizer.tables(list(missing), list(missing.values())), strict=True))
        self._remember(fresh)
        return [fresh[piece] if table is None else table for piece, table in zip(pieces, found, strict=True)]

    def _remember(self, fresh: dict[str, PieceTable]) -> None:
        with self._lock:
            for piece, table in fresh.items():
                # A str holds one to four bytes a character; most prompts are one-byte text.
                weight = len(piece) + table.weight
                if weight > self._memo_bytes:
                    continue
                previous = self._memo.pop(piece, None)
                if previous is not None:
                    self._memo_weight -= previous[1]
                self._memo[piece] = (table, weight)
                self._memo_weight += weight
            while self._memo_weight > self._memo_bytes:
                _, (_, weight) = self._memo.popitem(last=False)
                self._memo_weight -= weight
