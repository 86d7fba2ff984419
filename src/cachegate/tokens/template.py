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
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
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


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes HTML characters; transformers replaces it with plain json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per distinct source: compiling a large template costs tens of milliseconds."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
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


class ChatTemplate:
    """A compiled chat template bound to its fixed variables (special tokens, operator kwargs)."""

    def __init__(self, source: str, variables: Mapping[str, Any]) -> None:
        clash = RESERVED_VARIABLES & variables.keys()
        if clash:
            raise ValueError(f"template variables may not set {sorted(clash)}")
        self._variables = dict(variables)
        self._template = compile_template(source)  # a syntax error surfaces at configuration time

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
        variables = dict(self._variables)
        if request_variables:
            variables.update((k, v) for k, v in request_variables.items() if k not in RESERVED_VARIABLES)
        return self._template.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=True,
            **variables,
        )
