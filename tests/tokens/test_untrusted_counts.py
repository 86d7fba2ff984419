"""When a count may be wrong it is refused (TokenCountError), never billed; a block the template
leaves out has no count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cachegate.core.types import BlockKind, BlockRef, ParsedPrompt
from cachegate.tokens import counter as counter_module
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.registry import hf_counter
from cachegate.tokens.shipped import qwen3_files

PromptOf = Callable[[dict[str, Any]], ParsedPrompt]

BODY = {"messages": [{"role": "system", "content": "Rules."}, {"role": "user", "content": "Hello  "}]}


def counter_with(template: str) -> ChatTokenCounter:
    files = qwen3_files()
    return hf_counter(files.tokenizer_json, template, files.special_tokens)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        pytest.param(
            "{{ raise_exception('System messages are not supported.') }}",
            "chat template refused the request: System messages are not supported.",
            id="template raises",
        ),
        pytest.param(
            "{% for m in messages %}{{ m.content }}{% if m.content == 'Rules.' %}!{% endif %}{% endfor %}",
            "the chat template renders differently when block ends are marked",
            id="mark changes the rendering",
        ),
        pytest.param(
            "{% for m in messages %}{% if m.content | length > 7 %}{{ raise_exception('too long') }}{% endif %}"
            "{{ m.content }}{% endfor %}",
            "the chat template fails when block ends are marked",
            id="mark makes the template fail",
        ),
        pytest.param(
            "{{ messages[0].content + 1 }}",
            "chat template failed: TypeError",
            id="template error",
        ),
    ],
)
async def test_untrustworthy_renderings_are_refused(template: str, reason: str, prompt_of: PromptOf) -> None:
    counter = counter_with(template)

    with pytest.raises(TokenCountError) as raised:
        await counter.count(BODY, prompt_of(BODY), [0, 1])

    assert str(raised.value) == reason
    await counter.aclose()


def test_an_asked_for_block_the_template_leaves_out_has_no_count(prompt_of: PromptOf) -> None:
    """Its text is not in the prompt, so nothing may be billed or cached for it; the rest is counted."""
    counter = counter_with("{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}")

    counts = counter.count_blocking(BODY, prompt_of(BODY), [0, 1])

    assert counts.dropped == {0}
    assert counts.cumulative == {1: counts.total}


def test_blocks_not_asked_for_may_be_left_out_by_the_template(prompt_of: PromptOf) -> None:
    counter = counter_with("{% for m in messages %}{{ m.content }}|{% endfor %}")  # renders no tools
    body = {**BODY, "tools": [{"type": "function", "function": {"name": "f", "description": "Does f."}}]}

    rendering = counter.render(body, prompt_of(body), [2])

    assert rendering.boundaries == {2: len("Rules.|Hello  ")}


def test_a_block_rendered_twice_ends_its_prefix_where_the_next_block_begins(prompt_of: PromptOf) -> None:
    counter = counter_with("{% for m in messages %}{{ m.content }}|{% endfor %}Remember: {{ messages[0].content }}")

    rendering = counter.render(BODY, prompt_of(BODY), [0, 1])

    assert rendering.text == "Rules.|Hello  |Remember: Rules."
    assert rendering.boundaries == {0: len("Rules."), 1: len(rendering.text)}


def test_a_template_that_trims_text_is_counted_with_marks_before_the_trailing_space(prompt_of: PromptOf) -> None:
    counter = counter_with("{% for m in messages %}<{{ m.content | trim }}>{% endfor %}")

    rendering = counter.render(BODY, prompt_of(BODY), [0, 1])

    assert rendering.text == "<Rules.><Hello>"
    assert rendering.boundaries == {0: len("<Rules."), 1: len("<Rules.><Hello")}


SCHEMA_TEMPLATE = (
    "{% for tool in tools %}{% set f = tool.function %}// {{ f.description }}\n"
    "{{ f.name }}({% for name, spec in f.parameters.properties.items() %}{{ name }}"
    "{% if name not in f.parameters.required %}?{% endif %}: "
    "{% if spec.type == 'string' %}str{% else %}any{% endif %}{% endfor %})\n{% endfor %}"
    "{% for m in messages %}{{ m.content }}|{% endfor %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Get the weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_a_template_that_compares_schema_strings_is_counted_with_the_tool_marked_at_its_description(
    prompt_of: PromptOf,
) -> None:
    # As gpt-oss does: a mark on required[-1] or on a type would change what the template renders.
    counter = counter_with(SCHEMA_TEMPLATE)
    body = {**BODY, "tools": [WEATHER]}

    rendering = counter.render(body, prompt_of(body), [0, 1, 2])

    assert rendering.text == "// Get the weather.\nweather(city: str)\nRules.|Hello  |"
    # Block 0 is the tool: the schema after its description counts with what follows.
    assert rendering.boundaries[0] == len("// Get the weather.")
    assert rendering.boundaries[1] == len("// Get the weather.\nweather(city: str)\nRules.")


def test_a_tool_without_description_is_marked_at_its_name_when_schema_strings_are_compared(
    prompt_of: PromptOf,
) -> None:
    counter = counter_with(SCHEMA_TEMPLATE.replace("// {{ f.description }}\n", ""))
    tool = {"type": "function", "function": {k: v for k, v in WEATHER["function"].items() if k != "description"}}
    body = {**BODY, "tools": [tool]}

    rendering = counter.render(body, prompt_of(body), [0])

    assert rendering.boundaries[0] == len("weather")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": ""}}]}]},
            "content parts of type 'input_audio' cannot be counted",
            id="audio",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function"}]}]},
            "a tool call is not an object with a function",
            id="tool call without function",
        ),
    ],
)
def test_requests_that_cannot_be_counted_are_refused(
    body: dict[str, Any], reason: str, qwen3: ChatTokenCounter, prompt_of: PromptOf
) -> None:
    with pytest.raises(TokenCountError) as raised:
        qwen3.count_blocking(body, prompt_of(body), [0])

    assert str(raised.value) == reason


EVERY_MARK_CHARACTER = {"messages": [{"role": "user", "content": "x ¤¦¶§¬°±×÷¸¨´¯ \U0010fc00"}]}


def test_a_prompt_of_every_mark_character_is_refused_by_the_sentinel_method(prompt_of: PromptOf) -> None:
    counter = counter_with(qwen3_files().chat_template + "{#- the same template, rendered by jinja #}")

    with pytest.raises(TokenCountError) as raised:
        counter.count_blocking(EVERY_MARK_CHARACTER, prompt_of(EVERY_MARK_CHARACTER), [0])

    assert str(raised.value) == "the prompt contains every character boundary marks can be made of"


def test_a_native_layout_needs_no_marks(qwen3: ChatTokenCounter, prompt_of: PromptOf) -> None:
    rendering = qwen3.render(EVERY_MARK_CHARACTER, prompt_of(EVERY_MARK_CHARACTER), [0])

    assert rendering.text == "<|im_start|>user\nx ¤¦¶§¬°±×÷¸¨´¯ \U0010fc00<|im_end|>\n<|im_start|>assistant\n"
    assert rendering.text[: rendering.boundaries[0]].endswith("\U0010fc00")


def test_blocks_that_do_not_match_the_request_are_refused(qwen3: ChatTokenCounter) -> None:
    prompt = ParsedPrompt(blocks=(BlockRef(BlockKind.PART, 5, 0),), prefix_hashes=(b"h",), breakpoints=())

    with pytest.raises(TokenCountError, match="does not match the request"):
        qwen3.count_blocking(BODY, prompt, [0])


def test_an_asked_for_block_outside_the_prompt_is_refused(qwen3: ChatTokenCounter, prompt_of: PromptOf) -> None:
    with pytest.raises(TokenCountError, match="not in the prompt"):
        qwen3.count_blocking(BODY, prompt_of(BODY), [7])


def test_an_unexpected_failure_is_still_a_token_count_error(
    qwen3: ChatTokenCounter, prompt_of: PromptOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(found: object, asked: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(counter_module, "prefix_boundaries", broken)

    with pytest.raises(TokenCountError) as raised:
        qwen3.count_blocking(BODY, prompt_of(BODY), [0])

    assert str(raised.value) == "unexpected KeyError while counting"


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{% for m in messages %}{{ m.content }}|{% endfor %}", id="plain"),
        pytest.param("{% for m in messages %}<{{ m.content | trim }}>{% endfor %}", id="trims text"),
        pytest.param(SCHEMA_TEMPLATE, id="compares schema strings"),
    ],
)
def test_the_placement_a_template_needs_is_tried_first(
    template: str, prompt_of: PromptOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found once, on a probe conversation: a request then takes one clean and one marked rendering.
    counter = counter_with(template)
    body = {
        "tools": [WEATHER],
        "messages": [{"role": "system", "content": "Rules.  "}, {"role": "user", "content": "Hi "}],
    }
    renders = 0
    render = counter._template.render

    def counted(*args: Any, **kwargs: Any) -> str:
        nonlocal renders
        renders += 1
        return render(*args, **kwargs)

    monkeypatch.setattr(counter._template, "render", counted)

    counter.count_blocking(body, prompt_of(body), [1, 2])  # the messages: not every template renders tools

    assert renders == 2


def test_marks_are_made_of_characters_the_prompt_does_not_hold(prompt_of: PromptOf) -> None:
    counter = counter_with("{% for m in messages %}{{ m.content }}|{% endfor %}")
    body = {"messages": [{"role": "system", "content": "¤ ¦ ¶ § 5 ¤1¦"}, {"role": "user", "content": "¬0° x"}]}

    rendering = counter.render(body, prompt_of(body), [0, 1])

    assert rendering.text == "¤ ¦ ¶ § 5 ¤1¦|¬0° x|"
    assert rendering.boundaries == {0: len("¤ ¦ ¶ § 5 ¤1¦"), 1: len("¤ ¦ ¶ § 5 ¤1¦|¬0° x")}
