"""Chat-template rendering the way Hugging Face renders it, so counts match the upstream engine.

vLLM (and every engine built on ``transformers``) renders a chat with
``tokenizer.apply_chat_template``: a jinja2 sandbox with ``trim_blocks``/``lstrip_blocks``,
``loopcontrols``, the ``{% generation %}`` tag, a ``tojson`` filter that keeps non-ASCII text
as is, and the ``raise_exception`` / ``strftime_now`` globals; the tokenizer's special tokens
are template variables. Any difference here (an HTML-escaping ``tojson``, a missing
``trim_blocks``) changes the rendered text and therefore every count, so this module
reproduces that environment and nothing more.
"""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The special-token attributes transformers exposes to templates (``special_tokens_map``).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
)

NativeRenderer = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]] | None, Mapping[str, Any]], str]
"""A template reproduced in Python (``native/``): (messages, tools, variables) -> the rendering."""


class Unsupported(Exception):
    """The conversation is outside what a native renderer reproduces: jinja renders it."""


# Variables the renderer itself supplies; template kwargs cannot replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` marks assistant text for training masks; it renders its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2 declares it a plain attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes HTML characters; transformers replaces it with plain json.dumps.
    if type(value) is str and not ensure_ascii:
        # A string (a tool result, a long one) comes out of orjson as json.dumps writes it, three
        # times faster; orjson refuses lone surrogates, which json.dumps then writes.
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            pass
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt: str) -> str:
    """The ``strftime_now`` templates call: local time now, as transformers gives it."""
    return datetime.now().strftime(fmt)


_DICT_ATTRIBUTES = frozenset(dir(dict))
_FORMAT_METHODS = frozenset({"format", "format_map"})
# Builtin methods and method wrappers carry no instance attributes, so none of them can be
# marked ``unsafe_callable`` or ``alters_data``.
_PLAIN_CALLABLES = (types.BuiltinMethodType, types.MethodWrapperType)


def as_output(value: Any) -> str:
    """What ``{{ value }}`` writes: ``str(value)`` (None as "None"), as jinja does without a finalize.

    For templates reproduced in Python (``native/``); other values give way (``Unsupported``).
    """
    if type(value) not in (str, int, float, bool) and value is not None:
        raise Unsupported("only plain values are written as jinja writes them")
    return str(value)


class _Sandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox, with the same decisions taken faster.

    Rendering a long conversation is mostly attribute access (``message.content``,
    ``content.startswith``), and jinja's sandbox re-derives the safety of each access from
    scratch: a failed ``getattr`` on the message dict, then a run of ``isinstance`` checks
    against abstract base classes. Both answers depend only on the object's type and the
    attribute's name, so this environment takes the shortcut jinja would take anyway for a
    plain dict's keys and remembers each (type, name) safety verdict; a render becomes 3-4 times
    faster while every access resolves to exactly what the stock sandbox gives (tested).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._safe_attributes: dict[tuple[type, str], bool] = {}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            # jinja tries the attribute, which a plain dict lacks, then the item.
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        try:
            value = getattr(obj, attribute)
        except AttributeError:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        if attribute in _FORMAT_METHODS:  # only these names reach a bound str.format to wrap
            formatter = self.wrap_str_format(value)
            if formatter is not None:
                return formatter
        verdict_key = (type(obj), attribute)
        safe = self._safe_attributes.get(verdict_key)
        if safe is None:
            safe = self._safe_attributes[verdict_key] = self.is_safe_attribute(obj, attribute, value)
        return value if safe else self.unsafe_undefined(obj, attribute)

    def is_safe_callable(self, obj: Any) -> bool:
        return type(obj) in _PLAIN_CALLABLES or super().is_safe_callable(obj)


def read_variables(source: str) -> frozenset[str]:
    """The variables a template reads that the conversation does not supply (jinja's undeclared
    variables less the conversation's own and the globals every rendering gets)."""
    environment = compile_template(source).environment
    names = jinja2.meta.find_undeclared_variables(environment.parse(source))
    return frozenset(names) - RESERVED_VARIABLES - environment.globals.keys()


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per distinct source: compiling a large template costs tens of milliseconds."""
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def special_tokens_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The special-token variables of a ``tokenizer_config.json``, as transformers passes them.

    Tokens may be stored as ``{"__type": "AddedToken", "content": …}``; the template sees the
    content. Unset (null) tokens are left out, so the template sees them as undefined.
    """
    specials: dict[str, Any] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if value is None:
            continue
        if name == "additional_special_tokens":
            specials[name] = [_token_content(item) for item in value]
        else:
            specials[name] = _token_content(value)
    return specials


def _token_content(token: Any) -> str:
    if isinstance(token, Mapping):
        return str(token["content"])
    return str(token)


def chat_template_from_config(config: Mapping[str, Any]) -> str | None:
    """The ``chat_template`` of a ``tokenizer_config.json``: a string, or a list of named templates."""
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, Mapping)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    return None


def rendering_key(body: Mapping[str, Any]) -> bytes | None:
    """What a request's rendering depends on that no prefix hash covers, in canonical form: its
    template variables (``chat_template_kwargs``), and whether it sends an empty tools list —
    no block to hash, but Llama 3.1's template tells ``[]`` from no tools. Empty for neither;
    None when the variables are not JSON values. For memories of counts, which these change."""
    variables = body.get("chat_template_kwargs")
    key = b""
    if variables:
        try:
            key = orjson.dumps(variables, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError: not JSON values
            return None
    if body.get("tools") == []:
        key += b"\x00tools: []"
    return key


class ChatTemplate:
    """A compiled chat template bound to its fixed variables (special tokens, operator kwargs)."""

    def __init__(self, source: str, variables: Mapping[str, Any], native: NativeRenderer | None = None) -> None:
        clash = RESERVED_VARIABLES & variables.keys()
        if clash:
            raise ValueError(f"template variables may not set {sorted(clash)}")
        self._variables = dict(variables)
        self._template = compile_template(source)  # a syntax error surfaces at configuration time
        self._native = native

    def variables(self, request_variables: Mapping[str, Any] | None) -> dict[str, Any]:
        """The variables a rendering sees: the fixed ones, overridden by the request's own."""
        variables = dict(self._variables)
        if request_variables:
            variables.update((k, v) for k, v in request_variables.items() if k not in RESERVED_VARIABLES)
        return variables

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        request_variables: Mapping[str, Any] | None = None,
    ) -> str:
        """Render a prepared conversation with the generation prompt, as the upstream does.

        ``request_variables`` are the request's own ``chat_template_kwargs`` (a vLLM extension);
        they override the fixed variables, but never the conversation itself.
        """
        variables = self.variables(request_variables)
        if self._native is not None:
            try:
                return self._native(messages, tools, variables)
            except Unsupported:
                pass  # jinja renders what the native renderer does not reproduce
        return self._template.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=True,
            **variables,
        )
