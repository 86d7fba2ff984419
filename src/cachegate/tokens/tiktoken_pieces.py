"""tiktoken encodings (o200k: GPT-4o, gpt-oss) as a piece tokenizer, loaded from shipped rank files.

tiktoken's own loader fetches rank files over the network and caches them in a temporary
directory; cachegate's machines reach no hub, so the ranks ship with the package (MIT, see
NOTICE) and are parsed here, with their SHA-256 checked: a damaged copy would silently change
every count.

tiktoken splits its input at special tokens before anything else (the regex split runs on the
text between them), so a rendering cut before each special token gives pieces that encode to
exactly the tokens of the whole. Encoding runs in Rust with the GIL released, so a batch of
pieces is spread over a thread pool. A piece's table keeps its token ids as 4-byte array items
copied from Rust's buffer (no Python ints); token byte ends, needed only when a block boundary
falls inside the piece, are accumulated on first use — most pieces are only asked for their total.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import hashlib
import json
import os
import re
import threading
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from itertools import accumulate, pairwise
from pathlib import Path
from typing import TypeVar

import tiktoken

from cachegate.tokens.base import TokenizerLoadError
from cachegate.tokens.pieces import special_token_pattern

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
"""SHA-256 of the uncompressed o200k_base.tiktoken (the digest tiktoken itself pins)."""

# Copied verbatim from tiktoken_ext/openai_public.py (tiktoken 0.14.0), o200k_base().
O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

O200K_BASE_SPECIAL_TOKENS: Mapping[str, int] = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

# As tiktoken_ext/openai_public.py (tiktoken 0.14.0) o200k_harmony(): gpt-oss's tokens.
O200K_HARMONY_SPECIAL_TOKENS: Mapping[str, int] = {
    **O200K_BASE_SPECIAL_TOKENS,
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|reserved_200000|>": 200000,
    "<|reserved_200001|>": 200001,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|reserved_200004|>": 200004,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|reserved_200009|>": 200009,
    "<|reserved_200010|>": 200010,
    "<|reserved_200011|>": 200011,
    "<|call|>": 200012,
    **{f"<|reserved_{i}|>": i for i in range(200013, 201088)},
}

ENCODING_NAMES = ("o200k_base", "o200k_harmony")

MAX_TOKEN_ID = (1 << 24) - 1
"""Ids above this are refused: each encoding keeps a byte-length array indexed by id."""

PARALLEL_MIN_CHARS = 16_384
"""Batches shorter than this are encoded on the calling thread: a pool hand-off costs more."""

CHUNKS_PER_THREAD = 4
"""A batch goes to the pool as this many runs of pieces per thread: fewer hand-offs, still balanced."""

# Text that every sane pre-tokenization pattern covers whole: letters of several scripts,
# combining marks, digits, emoji, punctuation and whitespace runs.
_PROBE = "Hello, World! It's 2024-06-01\t\tx=1_000;\r\n\n  déjà vu 数字テスト 👍🏽🇫🇷 e\u0301 Ωμέγα \u00a0end.  \n"

_R = TypeVar("_R")

SharedIds = tuple[frozenset[int], list[int]]
"""Ids that several special tokens share, and the byte lengths of those a piece holds, in order."""


class TiktokenLoadError(TokenizerLoadError):
    """A tiktoken rank file or encoding definition could not be loaded; the message says which and why."""


@dataclass(frozen=True, slots=True)
class RankFile:
    """The mergeable ranks of a ``.tiktoken`` file and the SHA-256 of its uncompressed bytes."""

    ranks: Mapping[bytes, int] = field(repr=False)
    sha256: str


@dataclass(frozen=True, slots=True)
class TiktokenSpec:
    """Everything that decides a tiktoken encoding's tokens: ranks, split pattern, special tokens."""

    name: str
    ranks: RankFile
    pat_str: str
    special_tokens: Mapping[str, int]


# ---------------------------------------------------------------------------------------------
# Rank files


def parse_ranks(data: bytes, *, source: str = "rank data", expected_sha256: str | None = None) -> RankFile:
    """Parse ``.tiktoken`` bytes (plain or gzip): one ``base64-token SP rank`` a line.

    Stricter than tiktoken's loader, whose mistakes surface later as Rust panics (duplicate
    ranks, a byte with no token) or silently (non-alphabet base64 characters are skipped).
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise TiktokenLoadError(f"{source}: not a valid gzip file: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise TiktokenLoadError(f"{source}: sha256 of the ranks is {digest}, expected {expected_sha256}")
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    decode = binascii.a2b_base64
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected 'base64-token rank'")
            token = decode(fields[0], strict_mode=True)
            rank = int(fields[1])
        except (ValueError, binascii.Error) as exc:
            raise TiktokenLoadError(f"{source}, line {number}: {exc}: {_excerpt(line)}") from None
        if not token:
            raise TiktokenLoadError(f"{source}, line {number}: empty token: {_excerpt(line)}")
        if not 0 <= rank <= MAX_TOKEN_ID:
            raise TiktokenLoadError(f"{source}, line {number}: rank {rank} is outside 0..{MAX_TOKEN_ID}")
        if token in ranks:
            raise TiktokenLoadError(f"{source}, line {number}: token {token!r} already has rank {ranks[token]}")
        if rank in seen_ranks:
            raise TiktokenLoadError(f"{source}, line {number}: rank {rank} is given to two tokens")
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise TiktokenLoadError(f"{source}: no ranks (empty file)")
    missing = [byte for byte in range(256) if bytes((byte,)) not in ranks]
    if missing:
        # tiktoken panics on any text holding a byte it has no token for.
        raise TiktokenLoadError(f"{source}: {len(missing)} single bytes have no token (first: {missing[0]:#04x})")
    return RankFile(ranks, digest)


def load_ranks(path: str | os.PathLike[str] | Traversable, *, expected_sha256: str | None = None) -> RankFile:
    """Read and parse a ``.tiktoken`` file, gzip or plain (told apart by content, not name)."""
    try:
        data = Path(path).read_bytes() if isinstance(path, str | os.PathLike) else path.read_bytes()
    except OSError as exc:
        raise TiktokenLoadError(f"cannot read the rank file {path}: {exc.strerror or exc}") from exc
    return parse_ranks(data, source=str(path), expected_sha256=expected_sha256)


@functools.cache
def shipped_o200k_ranks() -> RankFile:
    """The packaged o200k_base ranks, read and verified once per process."""
    folder = resources.files("cachegate.tokens").joinpath("data", "o200k_base")
    return load_ranks(folder.joinpath("o200k_base.tiktoken.gz"), expected_sha256=O200K_BASE_SHA256)


def encoding_spec(name: str) -> TiktokenSpec:
    """The spec of a named encoding (``ENCODING_NAMES``), on the shipped ranks."""
    if name == "o200k_base":
        return TiktokenSpec(name, shipped_o200k_ranks(), O200K_PAT_STR, O200K_BASE_SPECIAL_TOKENS)
    if name == "o200k_harmony":
        return TiktokenSpec(name, shipped_o200k_ranks(), O200K_PAT_STR, O200K_HARMONY_SPECIAL_TOKENS)
    raise TiktokenLoadError(f"unknown tiktoken encoding {name!r}; known: {', '.join(ENCODING_NAMES)}")


@functools.cache
def named_encoding(name: str) -> TiktokenPieces:
    """A named encoding's piece tokenizer, built once per process (~0.5 s for o200k)."""
    return TiktokenPieces(encoding_spec(name))


def custom_encoding(
    rank_file: str | os.PathLike[str],
    pat_str: str,
    special_tokens: Mapping[str, int],
    *,
    name: str = "custom",
    expected_sha256: str | None = None,
) -> TiktokenPieces:
    """A piece tokenizer over an operator's own rank file, split pattern and special tokens."""
    return TiktokenPieces(
        TiktokenSpec(name, load_ranks(rank_file, expected_sha256=expected_sha256), pat_str, special_tokens)
    )


# ---------------------------------------------------------------------------------------------
# Piece tokenizer


class TiktokenTable:
    """The tokens of one piece: their ids, and their cumulative UTF-8 byte ends once asked for.

    Byte ends rather than character offsets: byte-level BPE may split one character over
    several tokens, and those tokens' ends all fall inside it, so a boundary (always between
    characters) counts them all or none — a straddling token belongs to what follows.
    """

    __slots__ = ("_ends", "_ids", "_lengths", "_shared")

    def __init__(self, ids: Sequence[int], lengths: Sequence[int], shared: SharedIds | None = None) -> None:
        self._ids = ids  # array('I')
        self._lengths = lengths
        self._shared = shared
        self._ends: array[int] | None = None

    @property
    def tokens(self) -> int:
        return len(self._ids)

    @property
    def weight(self) -> int:
        # Ids (4 bytes) and byte ends (4 bytes, reserved though built only on demand), plus the objects.
        return 200 + 8 * len(self._ids)

    @property
    def ids(self) -> Sequence[int]:
        """The piece's token ids (read-only; for tests and diagnostics)."""
        return self._ids

    def count_before(self, piece: str, offset: int) -> int:
        if not 0 <= offset <= len(piece):
            raise ValueError(f"offset {offset} is outside the piece (0..{len(piece)})")
        if offset == len(piece):
            return len(self._ids)
        if offset == 0:
            return 0
        ends = self._ends
        if ends is None:
            # Two threads may both build it: the results are equal and the assignment is atomic.
            ends = self._ends = self._byte_ends(len(piece))
        return bisect_right(ends, offset if piece.isascii() else _utf8_offset(piece, offset))

    def _byte_ends(self, chars: int) -> array[int]:
        typecode = "I" if 4 * chars < 1 << 32 else "Q"  # UTF-8 takes at most 4 bytes a character
        if self._shared is None:
            return array(typecode, accumulate(map(self._lengths.__getitem__, self._ids)))
        # Some special tokens of this piece share their id with another: their lengths come
        # from the text, in order (the k-th such id is the k-th such token found).
        shared_ids, lengths = self._shared
        queue = iter(lengths)
        return array(
            typecode,
            accumulate(next(queue) if token in shared_ids else self._lengths[token] for token in self._ids),
        )


class TiktokenPieces:
    """A tiktoken encoding as a piece tokenizer: exact token counts, pieces encoded in parallel."""

    def __init__(self, spec: TiktokenSpec, *, threads: int | None = None) -> None:
        shared_ids = _check_special_tokens(spec)
        ranks = spec.ranks.ranks
        try:
            encoding = tiktoken.Encoding(
                spec.name,
                pat_str=spec.pat_str,
                mergeable_ranks=ranks if isinstance(ranks, dict) else dict(ranks),
                special_tokens=dict(spec.special_tokens),
            )
        except ValueError as exc:  # the pattern does not compile
            raise TiktokenLoadError(f"encoding {spec.name!r}: {exc}") from exc
        _check_pattern(encoding, spec.name)
        self._spec = spec
        self._encoding = encoding
        self._threads = max(1, threads if threads is not None else min(8, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._lengths = _token_lengths(spec)
        self._identity = _identity(spec)
        specials = sorted(spec.special_tokens, key=lambda token: (-len(token), token))
        self._all_special = frozenset(specials)
        # Cutting is exact only when the cut scan and tiktoken's own special-token scan agree on
        # every match: they do when no special token is a prefix of another (they then find the
        # same leftmost matches, whatever the order of the alternatives).
        cuttable = bool(specials) and not _has_prefix_pair(specials)
        self._cut_pattern = special_token_pattern(specials) if cuttable else None
        self._cut_reach = max(map(len, specials), default=0)
        self._single = {token: frozenset((token,)) for token in specials}
        # Special tokens whose id another one also has (gpt-oss: <|endofprompt|> and
        # <|reserved_200018|>): their byte length is not known from the id alone.
        self._shared_ids = frozenset(shared_ids)
        self._shared_tokens = {
            token: len(token.encode()) for token, token_id in spec.special_tokens.items() if token_id in shared_ids
        }
        self._encode_ids = _id_encoder(encoding)

    @property
    def encoding(self) -> tiktoken.Encoding:
        return self._encoding

    @property
    def spec(self) -> TiktokenSpec:
        return self._spec

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def cut_pattern(self) -> re.Pattern[str] | None:
        return self._cut_pattern

    @property
    def cut_reach(self) -> int:
        return self._cut_reach

    @property
    def identity(self) -> bytes:
        return self._identity

    def tables(self, pieces: list[str], inner: Sequence[bool]) -> list[TiktokenTable]:
        """Encode ``pieces`` with every special token recognized, in parallel; one table each.

        ``inner`` needs no preparing: byte ends come from the ids on first use, without encoding again.
        """
        return self._map(self._table, pieces)

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        """Plain token counts: special-token text is encoded as ordinary text."""
        encode = self._encoding.encode_ordinary
        return self._map(lambda text: len(encode(text)), list(texts))

    def close(self) -> None:
        """Stop the worker threads (they are otherwise stopped at interpreter exit)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def _table(self, piece: str) -> TiktokenTable:
        """Encode one piece, telling tiktoken which special tokens to recognize.

        Passing all of them would be as exact, but Rust copies the set on every call: for
        gpt-oss's 1,100 special tokens that costs more than encoding a short piece. With no
        special token a prefix of another, the tokens the cut pattern finds are exactly those
        tiktoken's own scan stops at, wherever they are in the piece.
        """
        shared: SharedIds | None = None
        if self._cut_pattern is None:
            allowed = self._all_special
        else:
            found: list[str] = self._cut_pattern.findall(piece)
            allowed = self._single[found[0]] if len(found) == 1 else frozenset(found)
            if self._shared_tokens and any(token in self._shared_tokens for token in found):
                shared = (self._shared_ids, [self._shared_tokens[t] for t in found if t in self._shared_tokens])
        try:
            ids = self._encode_ids(piece, allowed)
        except UnicodeEncodeError:  # lone surrogates: repaired as tiktoken's own encode does
            ids = self._encode_ids(_repaired(piece), allowed)
        return TiktokenTable(ids, self._lengths, shared)

    def _map(self, function: Callable[[str], _R], items: list[str]) -> list[_R]:
        """``function`` over ``items`` in order: inline when small, else as balanced runs on the pool."""
        sizes = [len(item) for item in items]
        if self._threads == 1 or len(items) < 2 or sum(sizes) < PARALLEL_MIN_CHARS:
            return [function(item) for item in items]
        runs = _balanced_runs(sizes, self._threads * CHUNKS_PER_THREAD)
        results = self._executor().map(lambda run: [function(item) for item in items[run[0] : run[1]]], runs)
        return [result for run in results for result in run]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"tiktoken-{self._spec.name}")
            return self._pool


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_special_tokens(spec: TiktokenSpec) -> set[int]:
    """Refuse malformed special tokens; return the ids that several special tokens share.

    Shared ids are allowed because tiktoken's own ``o200k_harmony`` has one (200018).
    """
    ids: dict[int, str] = {}
    shared: set[int] = set()
    for token, token_id in spec.special_tokens.items():
        if not isinstance(token, str) or not token:
            raise TiktokenLoadError(f"encoding {spec.name!r}: special token {token!r} is not a non-empty string")
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id <= MAX_TOKEN_ID:
            raise TiktokenLoadError(f"encoding {spec.name!r}: special token {token!r} has id {token_id!r}")
        if token_id in ids:
            shared.add(token_id)
        ids[token_id] = token
    ranks = set(spec.ranks.ranks.values())
    clashes = sorted(token for token, token_id in spec.special_tokens.items() if token_id in ranks)
    if clashes:
        raise TiktokenLoadError(f"encoding {spec.name!r}: special token {clashes[0]!r} has the id of a ranked token")
    return shared


def _check_pattern(encoding: tiktoken.Encoding, name: str) -> None:
    """Refuse a split pattern that drops text or matches the empty string (tiktoken then panics)."""
    try:
        ids = encoding.encode_ordinary(_PROBE)
        decoded = encoding.decode_bytes(ids)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic is a BaseException
        raise TiktokenLoadError(f"encoding {name!r}: its split pattern breaks tiktoken: {exc}") from exc
    if decoded != _PROBE.encode():
        raise TiktokenLoadError(f"encoding {name!r}: its split pattern does not cover all text (tokens drop some)")


def _id_encoder(encoding: tiktoken.Encoding) -> Callable[[str, frozenset[str]], array[int]]:
    """Encode to an ``array('I')`` of ids, through Rust's uint32 buffer when it works (no Python ints).

    The buffer is read by its byte length (``cast("B")``): tiktoken 0.14.0's buffer reports its
    shape in bytes rather than items, so a plain memoryview of it reads past its end. The fast
    path is checked against ``encode`` once, and dropped if a tiktoken release changes it.
    """
    core = encoding._core_bpe

    def via_list(text: str, allowed: frozenset[str]) -> array[int]:
        return array("I", core.encode(text, allowed))

    to_buffer = getattr(core, "encode_to_tiktoken_buffer", None)
    if to_buffer is None or array("I").itemsize != 4:
        return via_list

    def via_buffer(text: str, allowed: frozenset[str]) -> array[int]:
        ids = array("I")
        ids.frombytes(memoryview(to_buffer(text, allowed)).cast("B"))
        return ids

    try:
        works = via_buffer(_PROBE, frozenset()) == via_list(_PROBE, frozenset())
    except (TypeError, ValueError):
        works = False
    return via_buffer if works else via_list


def _token_lengths(spec: TiktokenSpec) -> list[int]:
    """Byte length of every token id (0 for unused ids), built once per encoding.

    A list rather than an array: indexing it returns a cached small int, allocating nothing —
    the byte ends of a piece are accumulated from it about twice as fast.
    """
    lengths = {rank: len(token) for token, rank in spec.ranks.ranks.items()}
    lengths.update((token_id, len(token.encode())) for token, token_id in spec.special_tokens.items())
    table = [0] * (max(lengths) + 1)
    for token_id, length in lengths.items():
        table[token_id] = length
    return table


def _identity(spec: TiktokenSpec) -> bytes:
    """SHA-256 of what decides the tokens: the ranks' digest, the pattern, the special tokens."""
    digest = hashlib.sha256(b"cachegate-tiktoken/1")
    parts: Iterable[bytes] = (
        spec.ranks.sha256.encode(),
        spec.pat_str.encode(),
        json.dumps(sorted(spec.special_tokens.items()), ensure_ascii=False).encode(),
    )
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _has_prefix_pair(tokens: Iterable[str]) -> bool:
    # In sorted order, a string that is a prefix of any later one is a prefix of its successor.
    ordered = sorted(tokens)
    return any(later.startswith(earlier) for earlier, later in pairwise(ordered))


def _balanced_runs(sizes: Sequence[int], count: int) -> list[tuple[int, int]]:
    """Cut ``range(len(sizes))`` into at most ``count`` consecutive runs of about equal total size."""
    total = sum(sizes)
    runs: list[tuple[int, int]] = []
    start = 0
    running = 0
    for index, size in enumerate(sizes[:-1]):
        running += size
        if len(runs) + 1 < count and running * count >= total * (len(runs) + 1):
            runs.append((start, index + 1))
            start = index + 1
    runs.append((start, len(sizes)))
    return runs


def _repaired(text: str) -> str:
    """tiktoken's repair of text Rust cannot take: surrogate pairs joined, lone surrogates U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _utf8_offset(piece: str, offset: int) -> int:
    """The UTF-8 byte offset in the text tiktoken encoded of character ``offset`` of ``piece``."""
    head = piece[:offset]
    try:
        return len(head.encode())
    except UnicodeEncodeError:
        if "\ud800" <= head[-1] <= "\udbff" and "\udc00" <= piece[offset] <= "\udfff":
            head = head[:-1]  # inside a surrogate pair, which tiktoken encodes as one character
        return len(_repaired(head).encode())


def _excerpt(line: bytes) -> str:
    return repr(line[:60]) + ("…" if len(line) > 60 else "")
