"""Loading a local Hugging Face model folder, and what tokenizer_version identifies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import TokenizerLoadError
from cachegate.tokens.counter import CountOptions
from cachegate.tokens.registry import hf_counter, hf_counter_from_folder, load_qwen3
from cachegate.tokens.shipped import qwen3_files

PromptOf = Callable[[dict[str, Any]], ParsedPrompt]

BODY = {"messages": [{"role": "user", "content": "Hi"}]}
PLAIN_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"


@pytest.fixture(scope="module")
def shipped_config() -> dict[str, Any]:
    return dict(json.loads((_data_folder() / "tokenizer_config.json").read_text(encoding="utf-8")))


@pytest.fixture
def folder(tmp_path: Path, shipped_config: dict[str, Any]) -> Path:
    """A model folder made of the shipped Qwen3 files, as an operator would have it."""
    (tmp_path / "tokenizer.json").write_bytes(qwen3_files().tokenizer_json)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(shipped_config), encoding="utf-8")
    return tmp_path


def _data_folder() -> Path:
    return Path(__file__).parents[2] / "src" / "cachegate" / "tokens" / "data" / "qwen3"


def test_a_folder_with_the_shipped_files_is_the_shipped_tokenizer(folder: Path, prompt_of: PromptOf) -> None:
    counter = hf_counter_from_folder(folder)

    assert counter.tokenizer_version == load_qwen3().tokenizer_version
    assert counter.count_blocking(BODY, prompt_of(BODY), [0]) == load_qwen3().count_blocking(BODY, prompt_of(BODY), [0])


def test_chat_template_jinja_wins_over_the_config_and_changes_the_version(folder: Path, prompt_of: PromptOf) -> None:
    (folder / "chat_template.jinja").write_text(PLAIN_TEMPLATE, encoding="utf-8")

    counter = hf_counter_from_folder(folder)

    assert counter.render(BODY, prompt_of(BODY), [0]).text == "[user] Hi\n"
    assert counter.tokenizer_version != load_qwen3().tokenizer_version


def test_a_template_file_overrides_the_folder(
    folder: Path, tmp_path_factory: pytest.TempPathFactory, prompt_of: PromptOf
) -> None:
    (folder / "chat_template.jinja").write_text(PLAIN_TEMPLATE, encoding="utf-8")
    override = tmp_path_factory.mktemp("override") / "template.jinja"
    override.write_text("{{ messages[0].content }}!", encoding="utf-8")

    counter = hf_counter_from_folder(folder, template_file=override)

    assert counter.render(BODY, prompt_of(BODY), [0]).text == "Hi!"


def test_a_list_of_named_templates_uses_the_default(
    folder: Path, shipped_config: dict[str, Any], prompt_of: PromptOf
) -> None:
    config = {
        **shipped_config,
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": PLAIN_TEMPLATE}],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    counter = hf_counter_from_folder(folder)

    assert counter.render(BODY, prompt_of(BODY), [0]).text == "[user] Hi\n"


def test_chat_template_json_is_the_last_resort(
    folder: Path, shipped_config: dict[str, Any], prompt_of: PromptOf
) -> None:
    config = {k: v for k, v in shipped_config.items() if k != "chat_template"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": PLAIN_TEMPLATE}), encoding="utf-8")

    counter = hf_counter_from_folder(folder)

    assert counter.render(BODY, prompt_of(BODY), [0]).text == "[user] Hi\n"


def test_special_tokens_come_from_the_config(folder: Path, shipped_config: dict[str, Any], prompt_of: PromptOf) -> None:
    config = {**shipped_config, "bos_token": {"__type": "AddedToken", "content": "<|endoftext|>"}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "chat_template.jinja").write_text(
        "{{ bos_token }}{{ eos_token }}{{ messages[0].content }}", encoding="utf-8"
    )

    counter = hf_counter_from_folder(folder)

    assert counter.render(BODY, prompt_of(BODY), [0]).text == "<|endoftext|><|im_end|>Hi"
    assert counter.count_blocking(BODY, prompt_of(BODY), [0]).total == 3  # two special tokens and "Hi"


@pytest.mark.parametrize(
    "options",
    [
        CountOptions(content_join=""),
        CountOptions(image_tokens=64),
        CountOptions(template_kwargs={"enable_thinking": False}),
    ],
)
def test_every_option_that_changes_counts_changes_the_version(options: CountOptions) -> None:
    files = qwen3_files()

    counter = hf_counter(files.tokenizer_json, files.chat_template, files.special_tokens, options)

    assert counter.tokenizer_version != load_qwen3().tokenizer_version
    assert counter.tokenizer_version.startswith("sha256:")


def test_a_folder_without_tokenizer_json_is_refused(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()

    with pytest.raises(TokenizerLoadError, match=r"tokenizer\.json"):
        hf_counter_from_folder(folder)


def test_a_folder_without_a_chat_template_is_refused(folder: Path, shipped_config: dict[str, Any]) -> None:
    config = {k: v for k, v in shipped_config.items() if k != "chat_template"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    with pytest.raises(TokenizerLoadError, match="no chat template"):
        hf_counter_from_folder(folder)


def test_a_template_with_a_syntax_error_is_refused_at_load(folder: Path) -> None:
    (folder / "chat_template.jinja").write_text("{% for m in messages %}", encoding="utf-8")

    with pytest.raises(TokenizerLoadError, match="chat template could not be compiled"):
        hf_counter_from_folder(folder)


def test_template_kwargs_may_not_replace_the_conversation() -> None:
    files = qwen3_files()

    with pytest.raises(TokenizerLoadError, match="messages"):
        hf_counter(files.tokenizer_json, files.chat_template, {}, CountOptions(template_kwargs={"messages": []}))
