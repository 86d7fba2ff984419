"""The shipped tokenizer against llama.cpp's Qwen2 reference vectors (generated with transformers)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

DATA = Path(__file__).parent / "data"
SEPARATOR = "\n__ggml_vocab_test__\n"


def test_shipped_tokenizer_gives_the_reference_ids_for_every_vector(qwen3_tokenizer: Tokenizer) -> None:
    # Each string is followed by the separator; each .out line holds one string's ids.
    texts = (DATA / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)[:-1]
    expected = [
        [int(i) for i in line.split()] for line in (DATA / "ggml-vocab-qwen2.gguf.out").read_text().splitlines()
    ]
    assert len(texts) == len(expected) == 46

    mismatches = [
        n
        for n, (text, ids) in enumerate(zip(texts, expected, strict=True))
        if qwen3_tokenizer.encode(text, add_special_tokens=False).ids != ids
    ]

    assert mismatches == []
