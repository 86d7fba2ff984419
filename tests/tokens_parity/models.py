"""The chat templates under test and the variables both renderers give each of them.

Every template is rendered with the shipped Qwen3 tokenizer: for the Qwen templates the ids are
the model's own; for the others the text is what is checked, and the ids of that text follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cachegate.tokens.shipped import qwen3_files

TEMPLATE_FOLDER = Path(__file__).parent / "templates"

# Templates that read the date get the same one from both renderers: Llama 3.1 as a variable,
# gpt-oss from ``strftime_now``, whose clock the tests stop at this instant.
PINNED_DATE_STRING = "26 Nov 2026"


@dataclass(frozen=True)
class TemplateUnderTest:
    """A template file, the special-token strings it reads and the extra variables it is rendered with."""

    file: str
    special_tokens: dict[str, Any] = field(default_factory=dict)
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def source(self) -> str:
        return (TEMPLATE_FOLDER / self.file).read_text(encoding="utf-8")

    @property
    def variables(self) -> dict[str, Any]:
        """Everything the template sees besides the conversation, as the reference passes it."""
        return {**self.special_tokens, **self.template_kwargs}


def _qwen_template(file: str) -> TemplateUnderTest:
    return TemplateUnderTest(file, qwen3_files().special_tokens)


TEMPLATES: dict[str, TemplateUnderTest] = {
    "qwen3": _qwen_template("Qwen-Qwen3-0.6B.jinja"),
    "qwen3-coder": _qwen_template("Qwen3-Coder.jinja"),
    "qwen2.5": _qwen_template("Qwen-Qwen2.5-7B-Instruct.jinja"),
    "llama-3.1": TemplateUnderTest(
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        {"date_string": PINNED_DATE_STRING},
    ),
    "deepseek-v3.1": TemplateUnderTest(
        "deepseek-ai-DeepSeek-V3.1.jinja",
        {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    ),
    "mistral-nemo": TemplateUnderTest(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        {"bos_token": "<s>", "eos_token": "</s>"},
    ),
    "gpt-oss": TemplateUnderTest(
        "openai-gpt-oss-120b.jinja",
        {"eos_token": "<|return|>"},
    ),
}
