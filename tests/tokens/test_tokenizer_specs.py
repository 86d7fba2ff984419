"""Counters from configuration, and the shipped files' integrity check."""

from __future__ import annotations

import base64
import json
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy
from cachegate.tokens import shipped
from cachegate.tokens.base import TokenCounter, TokenizerLoadError
from cachegate.tokens.memo import MemoizedCounter
from cachegate.tokens.registry import (
    BuiltinTokenizerSpec,
    HfTokenizerSpec,
    TiktokenTokenizerSpec,
    TokenizerSpec,
    build_counter,
    load_counter,
    load_qwen3,
)
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.tiktoken_pieces import ENCODING_NAMES


def test_the_builtin_spec_builds_the_shipped_counter_memoized() -> None:
    counter = build_counter(TokenizerSpec.model_validate({"kind": "builtin", "name": "qwen3"}))

    assert isinstance(counter, MemoizedCounter)
    assert isinstance(counter, TokenCounter)
    assert counter.tokenizer_version == load_qwen3().tokenizer_version


def test_builtin_options_give_another_version() -> None:
    spec = TokenizerSpec.model_validate(
        {"kind": "builtin", "name": "qwen3", "template_kwargs": {"enable_thinking": False}}
    )

    assert build_counter(spec).tokenizer_version != load_qwen3().tokenizer_version


@pytest.mark.parametrize("memory", ["piece_memo_mb", "checkpoint_mb"])
def test_memory_changes_no_count_and_no_version(memory: str) -> None:
    small = TokenizerSpec.model_validate({"kind": "builtin", "name": "qwen3", memory: 0})
    body = {"messages": [{"role": "user", "content": "Count me twice."}]}
    prompt = parse_prompt(body, TtlPolicy.default_policy())

    counter = load_counter(small)

    assert counter is not load_qwen3()  # its own memory, not the shared default counter's
    assert counter.tokenizer_version == load_qwen3().tokenizer_version
    for _ in range(2):
        assert counter.count_blocking(body, prompt, []) == load_qwen3().count_blocking(body, prompt, [])


def test_an_hf_spec_loads_the_folder(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes(qwen3_files().tokenizer_json)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0].content }}", encoding="utf-8")
    spec = TokenizerSpec.model_validate({"kind": "hf", "path": str(tmp_path), "content_join": " ", "image_tokens": 256})

    counter = build_counter(spec)

    assert isinstance(spec.root, HfTokenizerSpec)
    assert counter.tokenizer_version.startswith("sha256:")


def test_a_tiktoken_spec_counts_with_the_shipped_encoding_and_the_given_template(tmp_path: Path) -> None:
    template = tmp_path / "chat_template.jinja"
    template.write_text("{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}")
    spec = TokenizerSpec.model_validate(
        {"kind": "tiktoken", "encoding": "o200k_harmony", "template_file": str(template)}
    )
    body = {"messages": [{"role": "user", "content": "Hello, world"}]}

    counts = load_counter(spec).count_blocking(body, parse_prompt(body, TtlPolicy.default_policy()), [])

    assert counts.total == 3 + 3 + 1  # <|start|>user<|message|> · Hello , world · <|end|>


def test_a_tiktoken_spec_takes_an_operators_rank_file_checked_by_its_digest(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0].content }}")
    ranks = tmp_path / "tiny.tiktoken"
    ranks.write_bytes(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256)))
    raw = {"kind": "tiktoken", "template_file": str(template), "rank_file": str(ranks), "pattern": r"\S+|\s+"}
    body = {"messages": [{"role": "user", "content": "abc de"}]}

    counts = load_counter(TokenizerSpec.model_validate(raw)).count_blocking(
        body, parse_prompt(body, TtlPolicy.default_policy()), []
    )
    assert counts.total == len("abc de")  # single bytes only: one token a byte

    with pytest.raises(TokenizerLoadError, match="sha256 of the ranks is"):
        load_counter(TokenizerSpec.model_validate({**raw, "rank_file_sha256": "0" * 64}))


def test_a_tiktoken_spec_names_exactly_the_shipped_encodings() -> None:
    field = TiktokenTokenizerSpec.model_fields["encoding"]
    assert set(typing.get_args(typing.get_args(field.annotation)[0])) == set(ENCODING_NAMES)


def test_an_hf_spec_naming_a_missing_folder_fails_to_build(tmp_path: Path) -> None:
    spec = TokenizerSpec.model_validate({"kind": "hf", "path": str(tmp_path / "absent")})

    with pytest.raises(TokenizerLoadError, match=r"absent/tokenizer\.json"):
        build_counter(spec)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"kind": "gguf"}, "does not match any of the expected tags: 'builtin', 'hf', 'tiktoken', 'remote'"),
        ({"kind": "tiktoken", "template_file": "/t.jinja"}, "give either encoding (a shipped one) or rank_file"),
        (
            {"kind": "tiktoken", "template_file": "/t.jinja", "encoding": "o200k_base", "rank_file": "/r"},
            "give either encoding (a shipped one) or rank_file",
        ),
        ({"kind": "tiktoken", "template_file": "/t.jinja", "rank_file": "/r"}, "a rank_file needs its pre-tokeniz"),
        (
            {"kind": "tiktoken", "template_file": "/t.jinja", "encoding": "o200k_base", "pattern": "."},
            "go with a rank_file, not a named encoding",
        ),
        ({"kind": "tiktoken", "encoding": "cl100k_base", "template_file": "/t"}, "Input should be 'o200k_base' or"),
        ({"name": "qwen3"}, "Unable to extract tag using discriminator 'kind'"),
        ({"kind": "builtin", "name": "llama3"}, "builtin.name\n  Input should be 'qwen3'"),
        ({"kind": "hf"}, "hf.path\n  Field required"),
        (
            {"kind": "hf", "path": "/m", "image_tokens": -1},
            "hf.image_tokens\n  Input should be greater than or equal to 0",
        ),
        ({"kind": "hf", "path": "/m", "tokenizer_dir": "/m"}, "hf.tokenizer_dir\n  Extra inputs are not permitted"),
        (
            {"kind": "hf", "path": "/m", "piece_memo_mb": -1},
            "hf.piece_memo_mb\n  Input should be greater than or equal to 0",
        ),
    ],
)
def test_invalid_specs_say_what_is_wrong(raw: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TokenizerSpec.model_validate(raw)

    assert complaint in str(raised.value)


def test_specs_read_from_yaml_like_data_keep_their_options() -> None:
    spec = TokenizerSpec.model_validate(json.loads('{"kind": "builtin", "name": "qwen3", "content_join": ""}'))

    assert spec.root == BuiltinTokenizerSpec(kind="builtin", name="qwen3", content_join="")


def test_the_shipped_files_are_verified_and_a_damaged_copy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipped, "QWEN3_TOKENIZER_SHA256", "0" * 64)

    with pytest.raises(TokenizerLoadError, match="shipped tokenizer file is damaged"):
        qwen3_files.__wrapped__()


def test_the_shipped_counter_is_loaded_once() -> None:
    assert load_qwen3() is load_qwen3()
