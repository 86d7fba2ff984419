"""Counting a rendering piece by piece gives the counts of one whole encode, memo or no memo."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from cachegate.tokens.hf import HfPieces
from cachegate.tokens.pieces import PieceCounter, PieceTable, special_token_pattern

FRAGMENTS = st.sampled_from(
    [
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
        "<|endoftext|>",
        "<|im_start",  # a near miss: plain text
        "system\n",
        "user\n",
        " ",
        "\n\n",
        "  \n",
        "Hello, world.",
        "déjà vu",
        "🍕ん",
        "数字 12345",
        "don't",
        '{"a": [1, 2]}',
    ]
)
TEXTS = st.lists(FRAGMENTS | st.text(max_size=12), max_size=40).map("".join)


class CountingPieces:
    """HfPieces that records which pieces it was asked to encode."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._inner = HfPieces(tokenizer, b"qwen3")
        self.encoded: list[str] = []

    @property
    def cut_pattern(self) -> re.Pattern[str] | None:
        return self._inner.cut_pattern

    @property
    def cut_reach(self) -> int:
        return self._inner.cut_reach

    @property
    def identity(self) -> bytes:
        return self._inner.identity

    def tables(self, pieces: list[str], inner: Sequence[bool]) -> list[PieceTable]:
        self.encoded.extend(pieces)
        return list(self._inner.tables(pieces, inner))

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        return self._inner.count_texts(texts)


def count_by_definition(offsets: Sequence[tuple[int, int]], boundary: int) -> int:
    """The straddling rule read literally: the largest clean cut whose tokens all end by ``boundary``.

    A cut after token k is clean when no later token starts before the furthest end so far
    (tokens that share a character share its offsets, and must not be parted).
    """
    best, furthest = 0, 0
    for k, (_, end) in enumerate(offsets):
        furthest = max(furthest, end)
        next_start = offsets[k + 1][0] if k + 1 < len(offsets) else furthest
        if next_start >= furthest and furthest <= boundary:
            best = k + 1
    return best


def whole_counts(tokenizer: Tokenizer, text: str) -> tuple[dict[int, int], int]:
    """The reference: one encode of the whole text, cut by the straddling rule at every offset."""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    return {offset: count_by_definition(offsets, offset) for offset in range(len(text) + 1)}, len(offsets)


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_piece_counts_equal_one_whole_encode_at_every_offset(qwen3_tokenizer: Tokenizer, text: str) -> None:
    expected, total = whole_counts(qwen3_tokenizer, text)

    counts, counted_total = PieceCounter(HfPieces(qwen3_tokenizer, b"qwen3")).count(text, range(len(text) + 1))

    assert counted_total == total
    assert counts == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXTS, min_size=2, max_size=4))
def test_remembered_pieces_give_the_same_counts(qwen3_tokenizer: Tokenizer, texts: list[str]) -> None:
    # Texts that share pieces, counted one after the other through one memory.
    counter = PieceCounter(HfPieces(qwen3_tokenizer, b"qwen3"), memo_bytes=2_000)
    for text in texts + texts[::-1]:
        assert counter.count(text, range(len(text) + 1)) == whole_counts(qwen3_tokenizer, text)


def test_a_grown_conversation_tokenizes_only_its_new_pieces(qwen3_tokenizer: Tokenizer) -> None:
    turns = [
        f"<|im_start|>user\nquestion {i}<|im_end|>\n<|im_start|>assistant\nanswer {i}<|im_end|>\n" for i in range(50)
    ]
    pieces = CountingPieces(qwen3_tokenizer)
    counter = PieceCounter(pieces)
    counter.count("".join(turns[:49]), [])
    pieces.encoded.clear()

    _, total = counter.count("".join(turns), [])

    assert pieces.encoded == ["<|im_start|>user\nquestion 49", "<|im_start|>assistant\nanswer 49"]
    assert total == len(qwen3_tokenizer.encode("".join(turns), add_special_tokens=False).ids)


def test_a_piece_repeated_in_one_text_is_encoded_once(qwen3_tokenizer: Tokenizer) -> None:
    pieces = CountingPieces(qwen3_tokenizer)
    text = "<|im_start|>same<|im_end|>\n" * 3

    PieceCounter(pieces).count(text, [])

    assert sorted(pieces.encoded) == sorted(["<|im_start|>same", "<|im_end|>\n"])


def test_the_memory_stays_within_its_budget_and_forgets_the_oldest(qwen3_tokenizer: Tokenizer) -> None:
    pieces = CountingPieces(qwen3_tokenizer)
    counter = PieceCounter(pieces, memo_bytes=400)
    for i in range(20):
        counter.count(f"<|im_start|>{'x' * 40}{i}", [])
    pieces.encoded.clear()

    counter.count(f"<|im_start|>{'x' * 40}19", [])
    assert "<|im_start|>" + "x" * 40 + "19" not in pieces.encoded  # recent: remembered
    counter.count(f"<|im_start|>{'x' * 40}0", [])
    assert "<|im_start|>" + "x" * 40 + "0" in pieces.encoded  # oldest: forgotten


def test_with_no_memory_every_piece_is_encoded_each_time(qwen3_tokenizer: Tokenizer) -> None:
    pieces = CountingPieces(qwen3_tokenizer)
    counter = PieceCounter(pieces, memo_bytes=0)
    counter.count("<|im_start|>hi", [])
    counter.count("<|im_start|>hi", [])

    assert pieces.encoded == ["<|im_start|>hi", "<|im_start|>hi"]


def test_a_negative_budget_is_refused(qwen3_tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="memo_bytes"):
        PieceCounter(HfPieces(qwen3_tokenizer, b"qwen3"), memo_bytes=-1)


def test_a_tokenizer_with_special_tokens_that_strip_is_never_cut() -> None:
    # lstrip/rstrip special tokens swallow neighbouring whitespace: cutting before them is not exact.
    vocab = {"[UNK]": 0, "a": 1, " ": 2, "<sep>": 3}
    from tokenizers import AddedToken, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken("<sep>", lstrip=True)])

    assert HfPieces(tokenizer, hashlib.sha256(b"x").digest()).cut_pattern is None


@settings(max_examples=100, deadline=None)
@given(TEXTS)
def test_a_piece_first_counted_whole_answers_inner_offsets_later(qwen3_tokenizer: Tokenizer, text: str) -> None:
    counter = PieceCounter(HfPieces(qwen3_tokenizer, b"qwen3"))
    counter.count(text, [])  # remembered without the token offsets

    assert counter.count(text, range(len(text) + 1)) == whole_counts(qwen3_tokenizer, text)


_TOKEN_PIECES = st.sampled_from(["<", "|", ">", "a", "b", "_1", "end"])
_TOKENS = st.sets(st.lists(_TOKEN_PIECES, min_size=1, max_size=5).map("".join), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_TOKENS, st.lists(_TOKEN_PIECES | st.text(max_size=3), max_size=30).map("".join))
def test_the_trie_pattern_finds_what_a_longest_first_alternation_finds(tokens: set[str], text: str) -> None:
    alternation = re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))))

    found = [(match.start(), match.group()) for match in special_token_pattern(tokens).finditer(text)]

    assert found == [(match.start(), match.group()) for match in alternation.finditer(text)]


def test_an_empty_special_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        special_token_pattern(["<|a|>", ""])
