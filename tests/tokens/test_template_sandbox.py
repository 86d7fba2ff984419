"""The template sandbox: cachegate's faster environment takes every decision jinja's own takes.

Templates come from model folders, which are third-party files: the sandbox is what stops a
template from reaching Python internals. The faster environment must resolve each access to
the same value, and refuse the same accesses, as ``ImmutableSandboxedEnvironment``.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from cachegate.tokens.template import compile_template, tojson

ATTRIBUTES = (
    "content",
    "role",
    "items",
    "keys",
    "get",
    "upper",
    "startswith",
    "split",
    "format",
    "format_map",
    "append",
    "update",
    "pop",
    "clear",
    "mro",
    "real",
    "_private",
    "__class__",
    "__globals__",
    "__init__",
    "missing",
)


def _stock() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment()


def _fast() -> jinja2.Environment:
    return compile_template("").environment


def _objects() -> list[Any]:
    return [
        {"role": "user", "content": "hi", "items": "a key named like a method"},
        {"content": None},
        {},
        ["a", "b"],
        ("a",),
        "text",
        3,
        2.5,
        None,
        True,
        str,
        dict,
        "x".startswith,
        Namespace(content="in a namespace"),
        jinja2.Undefined(name="nothing"),
    ]


def _access(env: jinja2.Environment, obj: Any, attribute: str) -> Any:
    """What the access gives: its value, or the type of the exception it raises."""
    try:
        return env.getattr(obj, attribute)
    except Exception as exc:  # an undefined object raises on any attribute access
        return type(exc)


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, jinja2.Undefined) or isinstance(right, jinja2.Undefined):
        return (
            type(left) is type(right)
            and left._undefined_hint == right._undefined_hint
            and left._undefined_exception is right._undefined_exception
        )
    if callable(left) and getattr(left, "__name__", None) in ("format", "format_map"):
        # A sandboxed formatter is a fresh wrapper on each access; it must be one, and format alike.
        return getattr(right, "__wrapped__", None) == getattr(left, "__wrapped__", None)
    return bool(left == right)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_every_attribute_resolves_as_in_the_stock_sandbox(attribute: str) -> None:
    stock, fast = _stock(), _fast()
    for obj in _objects():
        for _ in range(2):  # the second access takes the remembered verdict
            assert _same(_access(stock, obj, attribute), _access(fast, obj, attribute)), (obj, attribute)


@given(
    st.dictionaries(st.sampled_from([*ATTRIBUTES, "x", "values"]), st.one_of(st.none(), st.text(), st.integers())),
    st.sampled_from(ATTRIBUTES),
)
def test_dict_access_resolves_as_in_the_stock_sandbox(obj: dict[str, Any], attribute: str) -> None:
    assert _same(_access(_stock(), obj, attribute), _access(_fast(), obj, attribute))


def test_callables_are_judged_as_in_the_stock_sandbox() -> None:
    stock, fast = _stock(), _fast()

    def altering() -> None: ...

    altering.alters_data = True  # type: ignore[attr-defined]
    for obj in ("x".upper, [].copy, (1).__add__, len, altering, lambda: None):
        assert stock.is_safe_callable(obj) == fast.is_safe_callable(obj), obj


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__base__ }}",
        "{{ messages.append(1) }}",
        "{{ tools.update({}) }}",
        "{{ messages.pop() }}",
        "{{ '{0.__class__.__mro__}'.format('') }}",
        "{{ ''.format.__globals__.keys() }}",
        "{{ helper.__globals__.keys() }}",
        "{{ ('a'.upper).__self__.__class__.__base__ }}",
    ],
)
def test_escapes_from_the_sandbox_are_refused(source: str) -> None:
    variables = {"messages": ["m"], "tools": {"t": 1}, "helper": _objects}
    with pytest.raises(SecurityError):
        _stock().from_string(source).render(**variables)
    with pytest.raises(SecurityError):
        compile_template(source).render(**variables)


def test_item_access_on_a_plain_dict_prefers_methods_as_jinja_does() -> None:
    template = compile_template(
        "{{ m.content }}|{{ m['items'] }}|{{ m.items is callable }}|{{ m.nothing is undefined }}"
    )
    assert template.render(m={"content": "c", "items": "i"}) == "c|i|True|True"


@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF)) | st.sampled_from(["\ud800", "a\udfffb"]))
def test_tojson_writes_strings_as_json_dumps_does(text: str) -> None:
    # Surrogates and control characters included: transformers' tojson is json.dumps.
    assert tojson(text) == json.dumps(text, ensure_ascii=False)
    assert tojson(text, ensure_ascii=True) == json.dumps(text)
