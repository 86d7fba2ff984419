"""The tokenizer that ships with cachegate: Qwen3's, so a fresh install counts with no download.

The files are copies of the public Qwen3 release (Apache-2.0; see NOTICE). Their bytes are
checked against pinned SHA-256 digests at load: a damaged or altered copy would silently
change every count, so it is refused instead.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cachegate.tokens.base import TokenizerLoadError
from cachegate.tokens.template import chat_template_from_config, special_tokens_from_config

# SHA-256 of the uncompressed bytes (the same digests as the data manifest and NOTICE).
QWEN3_TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
QWEN3_CONFIG_SHA256 = "16ac5853d77c5ca561fc3f7e7cb9baca69b3d3c009d34edb76770699532b712e"


@dataclass(frozen=True, slots=True)
class ShippedTokenizer:
    """A verified tokenizer.json, its chat template and special tokens."""

    tokenizer_json: bytes
    chat_template: str
    special_tokens: dict[str, Any]


@functools.cache
def qwen3_files() -> ShippedTokenizer:
    """Read and verify the shipped Qwen3 files (once per process)."""
    folder = resources.files("cachegate.tokens").joinpath("data", "qwen3")
    tokenizer_json = _verified(
        gzip.decompress(folder.joinpath("tokenizer.json.gz").read_bytes()), QWEN3_TOKENIZER_SHA256
    )
    config = json.loads(_verified(folder.joinpath("tokenizer_config.json").read_bytes(), QWEN3_CONFIG_SHA256))
    template = chat_template_from_config(config)
    if template is None:
        raise TokenizerLoadError("the shipped Qwen3 tokenizer_config.json has no chat template")
    return ShippedTokenizer(tokenizer_json, template, special_tokens_from_config(config))


def _verified(data: bytes, expected_sha256: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise TokenizerLoadError(f"shipped tokenizer file is damaged: sha256 {actual}, expected {expected_sha256}")
    return data
