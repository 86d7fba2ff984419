"""Cutting a rendering at added tokens and encoding the pieces in a batch gives the tokens of the whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from cachegate.tokens.encoding import PieceEncoder

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


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS | st.text(max_size=12), max_size=40))
def test_pieces_encode_to_the_offsets_of_the_whole(qwen3_tokenizer: Tokenizer, fragments: list[str]) -> None:
    text = "".join(fragments)
    whole = qwen3_tokenizer.encode(text, add_special_tokens=False).offsets

    assert PieceEncoder(qwen3_tokenizer, min_chars=0).offsets(text) == whole


def test_a_long_chat_rendering_is_cut_at_every_message(qwen3_tokenizer: Tokenizer) -> None:
    turns = "".join(f"<|im_start|>user\nquestion {i} " * 3 + "<|im_end|>\n" for i in range(2000))
    encoder = PieceEncoder(qwen3_tokenizer)

    assert len(turns) > 16_384
    assert encoder.offsets(turns) == qwen3_tokenizer.encode(turns, add_special_tokens=False).offsets


def test_short_texts_are_encoded_whole(qwen3_tokenizer: Tokenizer) -> None:
    text = "<|im_start|>user\nhi<|im_end|>\n"

    assert PieceEncoder(qwen3_tokenizer).offsets(text) == qwen3_tokenizer.encode(text, add_special_tokens=False).offsets
