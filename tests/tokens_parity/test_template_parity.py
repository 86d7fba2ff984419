"""cachegate renders and counts every request exactly as transformers' ``apply_chat_template`` does.

For each published template and each conversation, the reference is transformers over messages
prepared as vLLM prepares them (``reference.py``); cachegate gets the client's request as is.
Two claims are checked apart, so that a failure says which part differs:

- the rendering: cachegate's preparation (``prepare_chat``) and jinja environment
  (``ChatTemplate``) give the reference's text, or refuse where it refuses;
- the counter: ``ChatTokenCounter.render`` gives that same text (its boundary marks leave no
  trace) and ``count`` the reference's number of token ids, or both refuse.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import tiktoken
import transformers.utils.chat_template_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stopped_clock import stopped_clock

import cachegate.tokens.template
from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.conversation import prepare_chat
from cachegate.tokens.counter import ChatTokenCounter, CountOptions
from cachegate.tokens.registry import hf_counter, tiktoken_counter
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.template import ChatTemplate
from cachegate.tokens.tiktoken_pieces import encoding_spec, named_encoding

from .conversations import CONVERSATIONS
from .models import TEMPLATES, TemplateUnderTest
from .reference import VLLM_CONTENT_JOIN, TransformersReference

_EMPTY_CONVERSATION = (
    "transformers refuses an empty conversation before rendering (ValueError: Cannot apply chat template to an "
    "empty conversation); cachegate renders the DeepSeek-V3.1 template, which accepts it, as the BOS token alone"
)
_QWEN3_LSTRIP_AFTER_MARK = (
    "the texts are equal, but cachegate refuses to count (TokenCountError: the chat template renders differently "
    "when block ends are marked): Qwen3 keeps what follows '</think>' and strips its leading newlines; the mark "
    "of the part '<think>Try 7.</think>' now stands before the joining '\\n', so the marked rendering keeps "
    "'\\nNo: 91 = 7 × 13.' where the clean one has 'No: 91 = 7 × 13.'"
)

# (template, conversation) -> how cachegate differs from transformers. Each is a real difference,
# kept visible: the strict xfail fails the day the two agree.
RENDERING_DIFFERENCES: dict[tuple[str, str], str] = {
    ("deepseek-v3.1", "no messages"): _EMPTY_CONVERSATION,
}
COUNTER_DIFFERENCES: dict[tuple[str, str], str] = {
    **RENDERING_DIFFERENCES,
    ("qwen3", "raw reasoning in the parts of an assistant turn"): _QWEN3_LSTRIP_AFTER_MARK,
}


@pytest.fixture(scope="module", autouse=True)
def stopped() -> Iterator[None]:
    with stopped_clock(cachegate.tokens.template, transformers.utils.chat_template_utils):
        yield


@pytest.fixture(scope="module")
def reference() -> TransformersReference:
    return TransformersReference(qwen3_files().tokenizer_json)


@pytest.fixture(scope="module")
def counters() -> dict[str, ChatTokenCounter]:
    tokenizer_json = qwen3_files().tokenizer_json
    return {
        name: hf_counter(
            tokenizer_json,
            template.source,
            template.special_tokens,
            CountOptions(template_kwargs=template.template_kwargs),
        )
        for name, template in TEMPLATES.items()
    }


def _cases(differences: Mapping[tuple[str, str], str]) -> list[Any]:
    return [
        pytest.param(
            template,
            conversation,
            marks=[pytest.mark.xfail(strict=True, reason=differences[template, conversation])]
            if (template, conversation) in differences
            else [],
            id=f"{template}: {conversation}",
        )
        for template in TEMPLATES
        for conversation in CONVERSATIONS
    ]


def _reference_text(
    reference: TransformersReference, template: TemplateUnderTest, body: Mapping[str, Any]
) -> str | None:
    """The reference's rendering, or None where transformers or the template refuses the request."""
    try:
        return reference.text(body, template.source, template.variables)
    except Exception:
        return None


def assert_same_rendering(
    reference: TransformersReference, template: TemplateUnderTest, body: Mapping[str, Any]
) -> None:
    """cachegate's preparation and jinja environment give the reference's text, or both refuse."""
    expected = _reference_text(reference, template, body)
    chat = prepare_chat(body, VLLM_CONTENT_JOIN)
    renderer = ChatTemplate(template.source, template.variables)
    if expected is None:
        with pytest.raises(Exception):  # noqa: B017 - templates refuse with whatever error they hit
            renderer.render(chat.messages, chat.tools)
    else:
        assert renderer.render(chat.messages, chat.tools) == expected


def _reference_or_refusal(
    counter: ChatTokenCounter, reference: TransformersReference, template: TemplateUnderTest, body: Mapping[str, Any]
) -> str | None:
    """The reference's text; where the reference refuses the request, the counter must refuse it too (None)."""
    expected = _reference_text(reference, template, body)
    if expected is None:
        with pytest.raises(TokenCountError):
            counter.count_blocking(body, parse_prompt(body, TtlPolicy.default_policy()), ())
    return expected


def assert_same_count(
    counter: ChatTokenCounter, reference: TransformersReference, template: TemplateUnderTest, body: Mapping[str, Any]
) -> None:
    """The counter renders the reference's text and counts its ids, or both refuse."""
    prompt = parse_prompt(body, TtlPolicy.default_policy())
    expected = _reference_or_refusal(counter, reference, template, body)
    if expected is None:
        return
    assert counter.render(body, prompt, ()).text == expected
    expected_ids = reference.ids(body, template.source, template.variables)
    assert counter.count_blocking(body, prompt, ()).total == len(expected_ids)


@pytest.mark.parametrize(("template", "conversation"), _cases(RENDERING_DIFFERENCES))
def test_rendering_equals_transformers(template: str, conversation: str, reference: TransformersReference) -> None:
    assert_same_rendering(reference, TEMPLATES[template], CONVERSATIONS[conversation])


@pytest.mark.parametrize(("template", "conversation"), _cases(COUNTER_DIFFERENCES))
def test_counter_equals_transformers(
    template: str, conversation: str, counters: dict[str, ChatTokenCounter], reference: TransformersReference
) -> None:
    assert_same_count(counters[template], reference, TEMPLATES[template], CONVERSATIONS[conversation])


# Text of any script, and now and then a string some template treats as structure.
_LOOK_ALIKES = st.sampled_from(["<|im_end|>", "<|eot_id|>", "</s>", "[INST]", "<think>", "</think>", "\n", "  "])
_TEXT = st.lists(
    st.one_of(st.text(st.characters(exclude_categories=("Cs", "Co")), max_size=12), _LOOK_ALIKES), max_size=4
).map("".join)
_CONTENT = st.one_of(
    _TEXT, st.lists(st.builds(lambda text: {"type": "text", "text": text}, _TEXT), min_size=1, max_size=3)
)


@st.composite
def _conversations(draw: st.DrawFn) -> dict[str, Any]:
    """An optional system message, then user and assistant turns in turn, ending with the user's."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_CONTENT)})
    for turn in range(2 * draw(st.integers(0, 2)) + 1):
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": draw(_CONTENT)})
    return {"messages": messages}


@pytest.mark.parametrize("template", TEMPLATES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_conversations())
def test_any_plain_conversation_renders_and_counts_as_transformers(
    template: str, body: dict[str, Any], counters: dict[str, ChatTokenCounter], reference: TransformersReference
) -> None:
    """The rendering always equals the reference's. The counter counts the reference's ids or, where
    a template's string handling moves text around a boundary mark (the fixed cases above show
    which), refuses because it cannot trust its marks: never a different number."""
    assert_same_rendering(reference, TEMPLATES[template], body)
    try:
        assert_same_count(counters[template], reference, TEMPLATES[template], body)
    except TokenCountError as refusal:
        assert "when block ends are marked" in str(refusal)


@pytest.fixture(scope="module")
def gpt_oss_tiktoken() -> tuple[ChatTokenCounter, tiktoken.Encoding]:
    """gpt-oss as vLLM serves it: its template over o200k_harmony; and tiktoken's own encoder of that encoding."""
    template = TEMPLATES["gpt-oss"]
    counter = tiktoken_counter(named_encoding("o200k_harmony"), template.source, CountOptions())
    spec = encoding_spec("o200k_harmony")
    theirs = tiktoken.Encoding(
        "o200k_harmony",
        pat_str=spec.pat_str,
        mergeable_ranks=dict(spec.ranks.ranks),
        special_tokens=dict(spec.special_tokens),
    )
    return counter, theirs


@pytest.mark.parametrize(
    "conversation",
    [
        pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=COUNTER_DIFFERENCES["gpt-oss", name])])
        if ("gpt-oss", name) in COUNTER_DIFFERENCES
        else name
        for name in CONVERSATIONS
    ],
)
def test_gpt_oss_counts_as_tiktoken_encodes_the_reference_text(
    conversation: str,
    gpt_oss_tiktoken: tuple[ChatTokenCounter, tiktoken.Encoding],
    reference: TransformersReference,
) -> None:
    """With its own tokenizer, o200k_harmony: the total is tiktoken's count of transformers' text."""
    counter, theirs = gpt_oss_tiktoken
    body = CONVERSATIONS[conversation]
    prompt = parse_prompt(body, TtlPolicy.default_policy())
    expected = _reference_or_refusal(counter, reference, TEMPLATES["gpt-oss"], body)
    if expected is None:
        return
    blocks = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
    counts = counter.count_blocking(body, prompt, blocks)

    assert counts.total == len(theirs.encode(expected, allowed_special="all"))
    rendering = counter.render(body, prompt, blocks)
    for block, boundary in rendering.boundaries.items():
        # A boundary lies between characters: the tokens before it are those of the text before it,
        # less a token that straddles it.
        before = theirs.encode(expected, allowed_special="all")
        ends = list(itertools.accumulate(len(theirs.decode_single_token_bytes(t)) for t in before))
        assert counts.cumulative[block] == bisect.bisect_right(ends, len(expected[:boundary].encode()))
