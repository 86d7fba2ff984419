"""cachegate renders and counts every request exactly as transformers' ``apply_chat_template`` does.

For each published template and each conversation, the reference is transformers over messages
prepared as vLLM prepares them (``reference.py``); cachegate gets the client's request as is.
Both must give the same text and the same number of tokens, or both must refuse the request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import pytest
import transformers.utils.chat_template_utils

import cachegate.tokens.template
from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.hf import CountOptions, HfTokenCounter
from cachegate.tokens.shipped import qwen3_files

from .conversations import CONVERSATIONS
from .models import TEMPLATES, TemplateUnderTest
from .reference import TransformersReference

# (template, conversation) -> how the renderings differ. Each is a real difference, kept visible:
# the test fails (strict xfail) the day the renderings agree.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}


class _StoppedClock(datetime):
    """``datetime`` whose ``now`` is fixed, so templates calling ``strftime_now`` render one date."""

    @classmethod
    def now(cls, tz: Any = None) -> _StoppedClock:
        return cls(2026, 11, 26, 12, 0, 0, tzinfo=tz)


@pytest.fixture(scope="module", autouse=True)
def stopped_clock() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cachegate.tokens.template, "datetime", _StoppedClock)
        patch.setattr(transformers.utils.chat_template_utils, "datetime", _StoppedClock)
        yield


@pytest.fixture(scope="module")
def reference() -> TransformersReference:
    return TransformersReference(qwen3_files().tokenizer_json)


@pytest.fixture(scope="module")
def counters() -> dict[str, HfTokenCounter]:
    tokenizer_json = qwen3_files().tokenizer_json
    return {
        name: HfTokenCounter(
            tokenizer_json,
            template.source,
            template.special_tokens,
            CountOptions(template_kwargs=template.template_kwargs),
        )
        for name, template in TEMPLATES.items()
    }


def _cases() -> list[Any]:
    return [
        pytest.param(
            template,
            conversation,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[template, conversation])]
            if (template, conversation) in KNOWN_DIFFERENCES
            else [],
            id=f"{template}: {conversation}",
        )
        for template in TEMPLATES
        for conversation in CONVERSATIONS
    ]


def assert_same_rendering(
    counter: HfTokenCounter, reference: TransformersReference, template: TemplateUnderTest, body: Mapping[str, Any]
) -> None:
    """Same text and token count from both renderers, or a refusal from both."""
    prompt = parse_prompt(body, TtlPolicy.default_policy())
    try:
        expected_text = reference.text(body, template.source, template.variables)
    except Exception:
        with pytest.raises(TokenCountError):
            counter.render(body, prompt, ())
        with pytest.raises(TokenCountError):
            counter.count_blocking(body, prompt, ())
        return
    assert counter.render(body, prompt, ()).text == expected_text
    assert counter.count_blocking(body, prompt, ()).total == len(
        reference.ids(body, template.source, template.variables)
    )


@pytest.mark.parametrize(("template", "conversation"), _cases())
def test_rendering_and_count_equal_transformers(
    template: str, conversation: str, counters: dict[str, HfTokenCounter], reference: TransformersReference
) -> None:
    assert_same_rendering(counters[template], reference, TEMPLATES[template], CONVERSATIONS[conversation])
