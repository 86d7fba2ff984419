"""The o200k piece tokenizer counts exactly what tiktoken's own encode of the whole text gives."""

from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import itertools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.tokens import tiktoken_pieces
from cachegate.tokens.tiktoken_pieces import (
    O200K_BASE_SHA256,
    O200K_BASE_SPECIAL_TOKENS,
    O200K_HARMONY_SPECIAL_TOKENS,
    O200K_PAT_STR,
    PARALLEL_MIN_CHARS,
    TiktokenLoadError,
    TiktokenPieces,
    TiktokenSpec,
    TiktokenTable,
    custom_encoding,
    encoding_spec,
    load_ranks,
    named_encoding,
    parse_ranks,
    shipped_o200k_ranks,
)

SIMPLE_PATTERN = r"""'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def base() -> TiktokenPieces:
    return named_encoding("o200k_base")


@pytest.fixture(scope="module")
def harmony() -> TiktokenPieces:
    return named_encoding("o200k_harmony")


# ---------------------------------------------------------------------------------------------
# Reference: tiktoken's encode of the whole text, token byte ends from decode_single_token_bytes


def reference(tokenizer: TiktokenPieces, text: str) -> tuple[list[int], list[int]]:
    """The ids of tiktoken's encode of the whole text, and their cumulative UTF-8 byte ends.

    A token's bytes come from ``decode_single_token_bytes``, except for an id that several
    special tokens share (o200k_harmony's 200018): the text says which one it was.
    """
    encoding = tokenizer.encoding
    ids = encoding.encode(text, allowed_special="all")
    data = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
    by_id: dict[int, list[bytes]] = {}
    for token, token_id in tokenizer.spec.special_tokens.items():
        by_id.setdefault(token_id, []).append(token.encode())
    ends: list[int] = []
    position = 0
    for token_id in ids:
        candidates = by_id.get(token_id, [])
        if len(candidates) > 1:
            position += next(len(c) for c in candidates if data.startswith(c, position))
        else:
            position += len(encoding.decode_single_token_bytes(token_id))
        ends.append(position)
    assert position == len(data)
    return ids, ends


def tables_of(tokenizer: TiktokenPieces, pieces: list[str]) -> list[TiktokenTable]:
    return tokenizer.tables(pieces, [False] * len(pieces))


def cut(tokenizer: TiktokenPieces, text: str) -> tuple[list[int], list[str]]:
    """Cut as the pieces layer does: before every match of the cut pattern."""
    pattern = tokenizer.cut_pattern
    starts = sorted({0, *(match.start() for match in pattern.finditer(text))}) if pattern else [0]
    ends = [*starts[1:], len(text)]
    return starts, [text[start:end] for start, end in zip(starts, ends, strict=True)]


def assert_exact(tokenizer: TiktokenPieces, text: str) -> None:
    ids, ends = reference(tokenizer, text)
    starts, pieces = cut(tokenizer, text)
    tables = tables_of(tokenizer, pieces)

    assert sum(table.tokens for table in tables) == len(ids)
    assert [token for table in tables for token in table.ids] == ids
    before = [0, *itertools.accumulate(table.tokens for table in tables)]
    for offset in range(len(text) + 1):
        expected = bisect.bisect_right(ends, len(text[:offset].encode()))
        i = bisect.bisect_right(starts, offset) - 1
        assert before[i] + tables[i].count_before(pieces[i], offset - starts[i]) == expected, offset
        if offset == starts[i] and i > 0:  # the same boundary seen as the end of the piece before
            assert before[i - 1] + tables[i - 1].count_before(pieces[i - 1], len(pieces[i - 1])) == expected


SPECIAL_STRINGS = [
    "<|endoftext|>",
    "<|endofprompt|>",
    "<|start|>",
    "<|message|>",
    "<|end|>",
    "<|channel|>",
    "<|return|>",
    "<|call|>",
    "<|constrain|>",
    "<|startoftext|>",
    "<|reserved_200018|>",  # shares its id with <|endofprompt|> in o200k_harmony
    "<|reserved_201087|>",
    "<|reserved_201088|>",  # not a token
    "<|start",  # near misses: plain text
    "<|end|",
    "|>",
]
FRAGMENTS = st.sampled_from(
    [
        *SPECIAL_STRINGS,
        "user",
        "assistant",
        "analysis",
        " to=functions.get_weather",
        "Hello, world.",
        "don't STOP'S",
        "déjà vu",
        "e\u0301\u0301",  # combining marks
        "🍕ん👍🏽🇫🇷👩‍👩‍👧",
        "数字 12345 中文",
        "Ωμέγα Кирилица العربية",
        '{"a": [1, 2]}\r\n',
        "\u00a0\u3000\u2028",
    ]
)
WHITESPACE = st.text(alphabet=" \t\n\r\u00a0\u3000", min_size=1, max_size=8)
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=9)
TEXTS = st.lists(FRAGMENTS | WHITESPACE | DIGITS | st.text(max_size=12), max_size=30).map("".join)


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_harmony_pieces_count_as_the_whole_text(harmony: TiktokenPieces, text: str) -> None:
    assert_exact(harmony, text)


@settings(max_examples=100, deadline=None)
@given(TEXTS)
def test_base_pieces_count_as_the_whole_text(base: TiktokenPieces, text: str) -> None:
    assert_exact(base, text)


@settings(max_examples=50, deadline=None)
@given(TEXTS)
def test_an_uncut_text_with_several_special_tokens_is_one_exact_piece(harmony: TiktokenPieces, text: str) -> None:
    ids, ends = reference(harmony, text)
    [table] = tables_of(harmony, [text])

    assert list(table.ids) == ids
    for offset in range(len(text) + 1):
        assert table.count_before(text, offset) == bisect.bisect_right(ends, len(text[:offset].encode()))


def test_a_chat_rendering_is_exact(harmony: TiktokenPieces) -> None:
    text = (
        "<|start|>system<|message|>You are ChatGPT.\nReasoning: medium<|end|>"
        "<|start|>user<|message|>Wie spät ist es in 東京? 🕐<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the time.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Es ist 12:00.<|return|><|endofprompt|>x<|reserved_200018|>"
    )
    assert_exact(harmony, text)
    assert len(cut(harmony, text)[1]) == text.count("<|")


def test_lone_surrogates_are_repaired_as_tiktoken_does(harmony: TiktokenPieces) -> None:
    text = "a\ud83d\ude00b\ud800c<|end|>\udfff "
    ids = harmony.encoding.encode(text, allowed_special="all")
    repaired = "a😀b\ufffdc<|end|>\ufffd "
    ends = list(itertools.accumulate(len(harmony.encoding.decode_single_token_bytes(token)) for token in ids))
    # Character offsets of ``text`` and the UTF-8 offsets they stand for in the repaired text;
    # offset 2 lies inside the surrogate pair, which is one character to tiktoken: before it.
    byte_offsets = [0, 1, 1, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21]
    assert ids == harmony.encoding.encode(repaired, allowed_special="all")

    starts, pieces = cut(harmony, text)
    tables = tables_of(harmony, pieces)
    before = [0, *itertools.accumulate(table.tokens for table in tables)]
    assert before[-1] == len(ids)
    assert len(byte_offsets) == len(text) + 1
    for offset, byte_offset in enumerate(byte_offsets):
        i = bisect.bisect_right(starts, offset) - 1
        assert before[i] + tables[i].count_before(pieces[i], offset - starts[i]) == bisect.bisect_right(
            ends, byte_offset
        )


def test_a_large_batch_runs_on_the_pool_in_order(harmony: TiktokenPieces) -> None:
    body = "Lorem ipsum dolor sit amet, 数字 42 — 🍕. " * 40
    text = "".join(f"<|start|>user<|message|>{i} {body[: 100 + 37 * i]}<|end|>" for i in range(120))
    assert len(text) > 4 * PARALLEL_MIN_CHARS and harmony.threads >= 1

    _starts, pieces = cut(harmony, text)
    tables = tables_of(harmony, pieces)

    assert [token for table in tables for token in table.ids] == harmony.encoding.encode(text, allowed_special="all")
    assert harmony.count_texts(pieces) == [len(ids) for ids in harmony.encoding.encode_ordinary_batch(pieces)]


def test_one_thread_gives_the_same_tables(harmony: TiktokenPieces) -> None:
    single = TiktokenPieces(harmony.spec, threads=1)
    text = "<|start|>user<|message|>" + "abc déf 123 " * 3000 + "<|end|>"
    pieces = cut(harmony, text)[1]

    assert [list(t.ids) for t in tables_of(single, pieces)] == [list(t.ids) for t in tables_of(harmony, pieces)]
    single.close()


@pytest.mark.parametrize(
    ("sizes", "count"),
    [
        ([5, 5, 5, 5], 2),
        ([100, 1, 1, 1, 1], 4),
        ([1] * 50, 8),
        ([7], 3),
        ([0, 0, 9], 2),
        ([3, 3], 8),
        ([9, 0, 0, 0], 2),
        ([0, 0, 0], 2),
        ([4, 4, 4, 4, 4, 4, 4, 4], 4),
    ],
)
def test_balanced_runs_cover_every_item_once(sizes: list[int], count: int) -> None:
    runs = tiktoken_pieces._balanced_runs(sizes, count)

    assert runs[0][0] == 0 and runs[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))
    assert all(start < end for start, end in runs)
    assert len(runs) <= count
    if len(sizes) >= count and min(sizes) > 0 and len(set(sizes)) == 1:
        assert len(runs) == count


def test_the_list_and_buffer_encoders_agree(harmony: TiktokenPieces) -> None:
    core = harmony.encoding._core_bpe
    via_list = tiktoken_pieces._id_encoder(SimpleNamespace(_core_bpe=SimpleNamespace(encode=core.encode)))  # type: ignore[arg-type]
    via_buffer = tiktoken_pieces._id_encoder(harmony.encoding)
    text = "<|start|>user<|message|>Hello 👍🏽 數字 1234567<|end|>"
    allowed = frozenset({"<|start|>", "<|message|>", "<|end|>"})

    assert via_list is not via_buffer
    assert via_list(text, allowed) == via_buffer(text, allowed)
    assert list(via_buffer(text, allowed)) == harmony.encoding.encode(text, allowed_special="all")


def test_count_before_refuses_offsets_outside_the_piece(base: TiktokenPieces) -> None:
    [table] = tables_of(base, ["hello"])

    with pytest.raises(ValueError):
        table.count_before("hello", 6)
    with pytest.raises(ValueError):
        table.count_before("hello", -1)
    assert table.weight > 0


# ---------------------------------------------------------------------------------------------
# Named encodings


def test_the_shipped_ranks_are_verified() -> None:
    ranks = shipped_o200k_ranks()
    shipped = resources.files("cachegate.tokens").joinpath("data", "o200k_base", "o200k_base.tiktoken.gz")

    assert ranks.sha256 == O200K_BASE_SHA256
    assert len(ranks.ranks) == 199_998
    assert sorted(ranks.ranks.values()) == list(range(199_998))
    with pytest.raises(TiktokenLoadError, match=f"sha256 of the ranks is {O200K_BASE_SHA256}"):
        load_ranks(shipped, expected_sha256="0" * 64)


def test_the_definitions_are_tiktoken_own(monkeypatch: pytest.MonkeyPatch, harmony: TiktokenPieces) -> None:
    from tiktoken_ext import openai_public

    def no_download(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        assert expected_hash == O200K_BASE_SHA256
        return dict(shipped_o200k_ranks().ranks)

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", no_download)
    theirs_base = openai_public.o200k_base()
    theirs_harmony = openai_public.o200k_harmony()

    assert theirs_base["pat_str"] == O200K_PAT_STR
    assert theirs_base["special_tokens"] == O200K_BASE_SPECIAL_TOKENS
    assert theirs_harmony["pat_str"] == O200K_PAT_STR
    assert theirs_harmony["special_tokens"] == O200K_HARMONY_SPECIAL_TOKENS
    text = "<|start|>user<|message|>It's 2024! Ça va? 東京 👍🏽\n\n  x<|end|><|endofprompt|>"
    theirs = tiktoken.Encoding(**theirs_harmony)
    assert [t for table in tables_of(harmony, cut(harmony, text)[1]) for t in table.ids] == theirs.encode(
        text, allowed_special="all"
    )


def test_every_harmony_special_token_is_one_token(harmony: TiktokenPieces) -> None:
    tokens = list(O200K_HARMONY_SPECIAL_TOKENS)
    tables = tables_of(harmony, tokens)

    assert [list(table.ids) for table in tables] == [[O200K_HARMONY_SPECIAL_TOKENS[t]] for t in tokens]
    assert O200K_HARMONY_SPECIAL_TOKENS["<|start|>"] == 200006
    assert O200K_HARMONY_SPECIAL_TOKENS["<|reserved_201087|>"] == 201087
    assert all(match.group() == token for token in tokens for match in [harmony.cut_pattern.fullmatch(token)])


def test_count_texts_reads_special_tokens_as_text(base: TiktokenPieces, harmony: TiktokenPieces) -> None:
    texts = ["<|endoftext|>", "<|start|>user<|message|>hi<|end|>", "", "plain words"]

    assert base.count_texts(texts)[0] > 1
    assert harmony.count_texts(texts) == [len(base.encoding.encode_ordinary(text)) for text in texts]
    assert tables_of(base, ["<|endoftext|>"])[0].tokens == 1


def test_identities_name_the_vocabulary_pattern_and_special_tokens(
    base: TiktokenPieces, harmony: TiktokenPieces
) -> None:
    assert base.identity != harmony.identity
    assert len(base.identity) == 32
    assert tiktoken_pieces._identity(encoding_spec("o200k_base")) == base.identity
    renamed = TiktokenSpec("other-name", shipped_o200k_ranks(), O200K_PAT_STR, O200K_BASE_SPECIAL_TOKENS)
    assert tiktoken_pieces._identity(renamed) == base.identity
    other_pattern = TiktokenSpec("o200k_base", shipped_o200k_ranks(), SIMPLE_PATTERN, O200K_BASE_SPECIAL_TOKENS)
    assert tiktoken_pieces._identity(other_pattern) != base.identity


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(TiktokenLoadError, match="cl100k_base"):
        named_encoding("cl100k_base")


# ---------------------------------------------------------------------------------------------
# Rank files and custom encodings


def small_ranks() -> dict[bytes, int]:
    ranks = {bytes((byte,)): byte for byte in range(256)}
    for token in (b"ab", b"abc", b" the", b"th", b"he", b"\xf0\x9f"):
        ranks[token] = len(ranks)
    return ranks


def rank_lines(ranks: Mapping[bytes, int]) -> bytes:
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for token, rank in ranks.items())


def test_plain_and_gzip_rank_files_load_the_same(tmp_path: Path) -> None:
    data = rank_lines(small_ranks())
    (tmp_path / "plain.tiktoken").write_bytes(data)
    (tmp_path / "packed.tiktoken.gz").write_bytes(gzip.compress(data))
    digest = hashlib.sha256(data).hexdigest()

    plain = load_ranks(tmp_path / "plain.tiktoken", expected_sha256=digest)
    packed = load_ranks(str(tmp_path / "packed.tiktoken.gz"), expected_sha256=digest.upper())

    assert plain == packed
    assert plain.ranks == small_ranks()
    assert plain.sha256 == digest


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"!!!! 300", "line 258"),  # not base64
        (b"YW*i 300", "line 258"),  # a character outside the alphabet (tiktoken would skip it)
        (b"YWJj", "line 258"),  # no rank
        (b"YWJj 300 7", "line 258"),
        (b"YWJj x", "line 258"),
        (b"YWJjZA== -1", "outside"),
        (b" 300", "line 258"),
        (b"YWI= 300", "already has rank"),  # the token "ab" twice
        (b"YWJjZA== 256", "two tokens"),  # rank 256 twice
    ],
)
def test_a_malformed_rank_line_is_named(line: bytes, message: str) -> None:
    ranks = {bytes((byte,)): byte for byte in range(256)}
    ranks[b"ab"] = 256
    data = rank_lines(ranks) + line + b"\n"

    with pytest.raises(TiktokenLoadError, match=message):
        parse_ranks(data, source="x.tiktoken")


def test_empty_and_incomplete_rank_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TiktokenLoadError, match="empty"):
        parse_ranks(b"")
    with pytest.raises(TiktokenLoadError, match="empty"):
        parse_ranks(b"\n\n")
    with pytest.raises(TiktokenLoadError, match="empty"):
        parse_ranks(gzip.compress(b""))
    with pytest.raises(TiktokenLoadError, match="single bytes"):
        parse_ranks(rank_lines({bytes((byte,)): byte for byte in range(200)}))
    with pytest.raises(TiktokenLoadError, match="gzip"):
        parse_ranks(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(TiktokenLoadError, match="cannot read"):
        load_ranks(tmp_path / "missing.tiktoken")


def test_a_wrong_sha256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.tiktoken"
    path.write_bytes(rank_lines(small_ranks()))

    with pytest.raises(TiktokenLoadError, match="expected " + "f" * 64):
        load_ranks(path, expected_sha256="f" * 64)


def test_a_custom_encoding_counts_exactly(tmp_path: Path) -> None:
    path = tmp_path / "r.tiktoken.gz"
    path.write_bytes(gzip.compress(rank_lines(small_ranks())))
    tokenizer = custom_encoding(path, SIMPLE_PATTERN, {"<|eot|>": 300, "<s>": 301}, name="tiny")

    assert tokenizer.cut_pattern is not None
    assert [match.group() for match in tokenizer.cut_pattern.finditer("<s>x<|eot|>y<s")] == ["<s>", "<|eot|>"]
    assert_exact(tokenizer, "<s>abc the 👍 ab<|eot|><s>the<|eot|>")
    tokenizer.close()


def test_special_tokens_that_prefix_each_other_are_never_cut(tmp_path: Path) -> None:
    path = tmp_path / "r.tiktoken"
    path.write_bytes(rank_lines(small_ranks()))
    tokenizer = custom_encoding(path, SIMPLE_PATTERN, {"<x>": 300, "<x>y": 301})
    text = "a<x>b<x>yc"

    assert tokenizer.cut_pattern is None
    assert_exact(tokenizer, text)


@pytest.mark.parametrize(
    ("pattern", "specials", "message"),
    [
        (r"(", {}, "parenthesis"),  # does not compile
        (r"a*", {}, "breaks tiktoken"),  # matches the empty string: a Rust panic, caught
        (r"[a-z]+", {}, "does not cover"),  # drops everything else
        (SIMPLE_PATTERN, {"<|eot|>": 97}, "id of a ranked token"),
        (SIMPLE_PATTERN, {"": 300}, "non-empty"),
        (SIMPLE_PATTERN, {"<|eot|>": -3}, "has id"),
    ],
)
def test_a_broken_custom_encoding_is_refused(
    tmp_path: Path, pattern: str, specials: dict[str, int], message: str
) -> None:
    path = tmp_path / "r.tiktoken"
    path.write_bytes(rank_lines(small_ranks()))

    with pytest.raises(TiktokenLoadError, match=message):
        custom_encoding(path, pattern, specials)
