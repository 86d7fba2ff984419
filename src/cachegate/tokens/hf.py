"""Hugging Face tokenizers: a ``tokenizer.json`` (alone or in a model folder) for the chat counter.

``encode_batch`` encodes new pieces (``pieces.py``) on every core and releases the GIL
meanwhile. A piece's table keeps only its token count: most pieces are asked for their total
alone (a block boundary usually falls just before a special token, at a piece's end). The
first time an offset inside a piece is asked for, the piece is encoded once more for its
token offsets.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import re
from array import array
from collections.abc import Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from cachegate.tokens.base import TokenizerLoadError
from cachegate.tokens.pieces import LoadedTokenizer, special_token_pattern
from cachegate.tokens.template import chat_template_from_config, special_tokens_from_config


def hf_tokenizer(tokenizer_json: bytes, chat_template: str, special_tokens: Mapping[str, Any]) -> LoadedTokenizer:
    """A ``tokenizer.json``'s bytes with a chat template and its special tokens."""
    pieces = HfPieces(_parsed_tokenizer(tokenizer_json), hashlib.sha256(tokenizer_json).digest())
    return LoadedTokenizer(pieces, chat_template, special_tokens)


def hf_folder(path: str | Path, template_file: str | Path | None = None) -> LoadedTokenizer:
    """Load a local model folder: ``tokenizer.json``, ``tokenizer_config.json`` and the template.

    The template is, in order: ``template_file``; the folder's ``chat_template.jinja``;
    ``tokenizer_config.json``'s ``chat_template`` (a string, or the list entry named
    ``default``); ``chat_template.json``.
    """
    folder = Path(path)
    tokenizer_json = _read_bytes(folder / "tokenizer.json")
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    template = _folder_template(folder, config, None if template_file is None else Path(template_file))
    return hf_tokenizer(tokenizer_json, template, special_tokens_from_config(config))


@functools.lru_cache(maxsize=8)
def _parsed_tokenizer(tokenizer_json: bytes) -> Tokenizer:
    """Parse a tokenizer.json once per process, however many counters (options, models) share it.

    Sharing is safe: counting only calls ``encode``, which does not change the tokenizer.
    """
    try:
        tokenizer = Tokenizer.from_buffer(tokenizer_json)
    except Exception as exc:
        raise TokenizerLoadError(f"tokenizer.json could not be loaded: {exc}") from exc
    # A tokenizer.json may carry truncation or padding settings; counts need neither.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class HfPieces:
    def __init__(self, tokenizer: Tokenizer, identity: bytes) -> None:
        self._tokenizer = tokenizer
        self._identity = identity
        added = tokenizer.get_added_tokens_decoder().values()
        cuttable = bool(added) and not any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added)
        contents = sorted({token.content for token in added}, key=len, reverse=True)
        self._cut_pattern = special_token_pattern(contents) if cuttable else None
        self._cut_reach = max(map(len, contents), default=0)

    @property
    def cut_pattern(self) -> re.Pattern[str] | None:
        return self._cut_pattern

    @property
    def cut_reach(self) -> int:
        return self._cut_reach

    @property
    def identity(self) -> bytes:
        return self._identity

    def tables(self, pieces: list[str], inner: Sequence[bool]) -> list[HfPieceTable]:
        if len(pieces) == 1:
            encodings = [self._tokenizer.encode(pieces[0], add_special_tokens=False)]
        else:
            encodings = self._tokenizer.encode_batch(pieces, add_special_tokens=False)
        return [
            HfPieceTable(len(encoding), self._tokenizer, encoding.offsets if keep else None)
            for encoding, keep in zip(encodings, inner, strict=True)
        ]

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding) for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]


class HfPieceTable:
    __slots__ = ("_cuts", "_tokenizer", "tokens")

    def __init__(self, tokens: int, tokenizer: Tokenizer, offsets: Sequence[tuple[int, int]] | None = None) -> None:
        self.tokens = tokens
        self._tokenizer = tokenizer
        self._cuts = None if offsets is None else TokenCuts(offsets)

    @property
    def weight(self) -> int:
        # The object, and the cuts' two arrays of 8-byte offsets when it holds them. Cuts built
        # later, for a remembered piece a boundary first falls inside, go uncounted: that is the
        # piece of one breakpoint, not of every message.
        return 96 + (16 * self.tokens if self._cuts is not None else 0)

    def count_before(self, piece: str, offset: int) -> int:
        if offset >= len(piece):
            return self.tokens
        if self._cuts is None:
            self._cuts = TokenCuts(self._tokenizer.encode(piece, add_special_tokens=False).offsets)
        return self._cuts.count_before(offset)


class TokenCuts:
    """How many tokens lie before a character offset, by the straddling rule.

    A cut after token k is clean when no later token starts before token k's end: byte-level
    BPE can split one character over several tokens (which then share its offsets), and a cut
    between them would split the character. The count at a boundary is the largest clean cut
    whose tokens all end at or before it, so a token straddling the boundary — or sharing a
    character with one that does — belongs to what follows. Built in one pass at C speed
    (a piece holds up to a whole message); each lookup is a bisection.
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, offsets: Sequence[tuple[int, int]]) -> None:
        self._starts = array("q", map(itemgetter(0), offsets))
        self._ends = array("q", itertools.accumulate(map(itemgetter(1), offsets), max))  # the furthest end so far

    def count_before(self, boundary: int) -> int:
        count = bisect.bisect_right(self._ends, boundary)
        while 0 < count < len(self._starts) and self._starts[count] < self._ends[count - 1]:
            count -= 1  # the cut after token count-1 would split a character
        return count


def _folder_template(folder: Path, config: Mapping[str, Any], template_file: Path | None) -> str:
    if template_file is not None:
        return read_text_file(template_file)
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return read_text_file(jinja_file)
    template = chat_template_from_config(config)
    if template is None:
        json_file = folder / "chat_template.json"
        if json_file.is_file():
            template = chat_template_from_config(_read_json(json_file))
    if template is None:
        raise TokenizerLoadError(f"no chat template in {folder}")
    return template


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TokenizerLoadError(f"cannot read {path}: {exc.strerror}") from exc


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (a chat template), or ``TokenizerLoadError`` saying why not."""
    try:
        return _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerLoadError(f"{path} is not UTF-8 text") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise TokenizerLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise TokenizerLoadError(f"{path} is not a JSON object")
    return loaded
