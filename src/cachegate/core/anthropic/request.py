"""An Anthropic Messages request as a chat-completions request (SPEC §9).

Every ``cache_control`` marker is carried, unchanged, onto the chat block that holds its content
(a system block's part, a tool, a text/image/document part, a tool call, a tool message), so
``core.markers`` validates it with every rule of SPEC §3 and ``core.blocks`` hashes the same
conversation the same way whichever dialect it came in. The grammar of a marker is not judged
here; ``TranslatedRequest.marker_params`` maps each chat marker path back to the client's own.

Each Anthropic message translates on its own (its chat messages depend on it and on nothing
after it), so a conversation and the same conversation grown by more turns share their chat
messages: turn 2 finds turn 1's cache entries. Decisions where the SPEC is silent are listed in
docs/decisions.md (“Anthropic Messages”); the main ones:
- A ``tool_result`` is a chat ``tool`` message in place; the other blocks of a user turn around
  it stay user messages, in their order. ``is_error: true`` prefixes the result with ``Error:``.
- ``thinking`` blocks of earlier turns become the assistant message's ``reasoning`` (joined
  with ``"\\n"``); ``redacted_thinking`` is dropped (the model cannot read it). An assistant
  message with no text has no ``content`` key.
- Fields with no upstream meaning (``context_management``, ``container``, ``mcp_servers``,
  ``service_tier``, betas, ``defer_loading``, unknown future fields) are dropped, never refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import orjson

from cachegate.core.errors import CachegateError
from cachegate.core.sites import MARKER_KEY

# Each chat object built from a client block, with the client's JSON path of that block.
_Sourced: TypeAlias = tuple[dict[str, Any], str]

_ROLES: Final = frozenset({"user", "assistant", "system"})
_BLOCKS_BY_ROLE: Final = {
    "user": frozenset({"text", "image", "document", "tool_result"}),
    "assistant": frozenset({"text", "tool_use", "thinking", "redacted_thinking"}),
    "system": frozenset({"text"}),
}
_KNOWN_BLOCKS: Final = frozenset().union(*_BLOCKS_BY_ROLE.values())
_TOOL_RESULT_BLOCKS: Final = frozenset({"text", "image", "document"})
_DOCUMENT_BLOCKS: Final = frozenset({"text", "image"})
_UNMARKABLE: Final = frozenset({"thinking", "redacted_thinking"})
_TOOL_CHOICES: Final = {"auto": "auto", "any": "required", "none": "none"}
_EFFORTS: Final = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
_LOW_BUDGET: Final = 4096
_HIGH_BUDGET: Final = 16384
_ERROR_PREFIX: Final = "Error:"


class AnthropicRequestError(CachegateError, ValueError):
    """A request Anthropic's API would refuse, or this gateway cannot serve: a 400 naming ``param``.

    ``param`` is the JSON path in the client's request (``messages[1].content[0].source``).
    """

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ReasoningSwitch:
    """How a model's template turns reasoning on or off, for Anthropic's ``thinking``.

    Either a chat-template kwarg (``chat_template_kwargs[kwarg] = bool``: Qwen3's
    ``enable_thinking``, DeepSeek-V3.1's ``thinking``) or, when ``kwarg`` is None, an effort
    (``reasoning_effort``: gpt-oss, which always reasons).
    """

    kwarg: str | None

    @classmethod
    def template_kwarg(cls, name: str) -> ReasoningSwitch:
        return cls(name)

    @classmethod
    def effort(cls) -> ReasoningSwitch:
        return cls(None)

    @classmethod
    def for_template(cls, variables: AbstractSet[str]) -> ReasoningSwitch | None:
        """The switch of a template that reads ``variables`` (``TokenCounter.template_variables``).

        gpt-oss reads ``reasoning_effort``; Qwen3 reads ``enable_thinking``, and so does
        DeepSeek-V3.1, which takes it for its own ``thinking``; a template reading ``thinking``
        alone is switched by that. Qwen2.5, Llama 3.1, Mistral and Qwen3-Coder have no switch.
        """
        if "reasoning_effort" in variables:
            return cls.effort()
        for kwarg in ("enable_thinking", "thinking"):
            if kwarg in variables:
                return cls.template_kwarg(kwarg)
        return None


@dataclass(frozen=True, slots=True)
class TranslatedRequest:
    """The chat body to send, and what the answer's translation needs to know about the request."""

    body: dict[str, Any]
    stream: bool
    stop_sequences: tuple[str, ...]
    marker_params: dict[str, str] = field(default_factory=dict)
    """Chat marker path (as ``core.sites`` spells it) → the client's path of that marker."""
    client_messages: tuple[int | None, ...] = ()
    """Per chat message, the index of the client's message it came from; None for the system prompt."""
    diagnostics: bool = False
    """The client asked for the cache-miss diagnosis (the ``diagnostics`` object, SPEC §14)."""


def client_param(translated: TranslatedRequest, param: str) -> str:
    """The client's path for a chat marker path a ``MarkerError`` names (itself when unknown)."""
    return translated.marker_params.get(param, param)


def translate_request(
    body: Mapping[str, Any], *, reasoning: ReasoningSwitch | None = None, for_counting: bool = False
) -> TranslatedRequest:
    """The chat-completions request for an Anthropic Messages request (SPEC §9).

    ``for_counting``: a ``count_tokens`` request, which carries no ``max_tokens``.

    Raises ``AnthropicRequestError`` for any shape Anthropic would refuse or this gateway cannot
    serve (PDFs, server tools); never anything else, whatever the types sent.
    """
    if not isinstance(body, Mapping):
        raise AnthropicRequestError("the request body must be a JSON object", "body")
    model = _string(body.get("model"), "model")
    conversation = _Conversation()
    conversation.add_system(body.get("system"))
    for i, message in enumerate(_list(body.get("messages"), "messages")):
        conversation.add_message(message, f"messages[{i}]", i)
    chat: dict[str, Any] = {"model": model, "messages": conversation.messages}
    tools = body.get("tools")
    if tools is not None:
        chat["tools"] = [
            _tool(tool, f"tools[{i}]", conversation.marker_params) for i, tool in enumerate(_list(tools, "tools"))
        ]
    _add_tool_choice(chat, body.get("tool_choice"))
    if not for_counting or body.get("max_tokens") is not None:
        chat["max_tokens"] = _max_tokens(body.get("max_tokens"))
    stop_sequences = _stop_sequences(body.get("stop_sequences"))
    if stop_sequences:
        chat["stop"] = list(stop_sequences)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = _number(body[name], name)
    if body.get("top_k") is not None:
        chat["top_k"] = _integer(body["top_k"], "top_k")
    user = _user_id(body.get("metadata"))
    if user is not None:
        chat["user"] = user
    stream = _stream(body.get("stream"))
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    _apply_reasoning(chat, body, reasoning)
    if body.get(MARKER_KEY) is not None:
        chat[MARKER_KEY] = body[MARKER_KEY]
        conversation.marker_params[MARKER_KEY] = MARKER_KEY
    return TranslatedRequest(
        chat,
        stream,
        stop_sequences,
        conversation.marker_params,
        tuple(conversation.sources),
        _diagnostics(body.get("diagnostics")),
    )


def _diagnostics(value: Any) -> bool:
    """Whether the request opts in to diagnostics: a ``diagnostics`` object (Anthropic's shape,
    ``previous_message_id`` a string or null). cachegate diagnoses from the caller's own cache
    scope, so the id itself is accepted and not needed (SPEC §14)."""
    if value is None:
        return False
    diagnostics = _object(value, "diagnostics")
    previous = diagnostics.get("previous_message_id")
    if previous is not None and not isinstance(previous, str):
        raise AnthropicRequestError(
            f"diagnostics.previous_message_id must be a string or null; got {_show(previous)}",
            "diagnostics.previous_message_id",
        )
    return True


class _Conversation:
    """The chat messages being built, and where each client marker landed."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.marker_params: dict[str, str] = {}
        self.sources: list[int | None] = []  # per chat message, the client's message index (None: system)
        self._source: int | None = None

    def add_system(self, system: Any) -> None:
        """``system``: a string or text blocks; absent or empty means no system message."""
        if system is None or system == "" or system == []:
            return
        if isinstance(system, str):
            self._emit({"role": "system", "content": system}, [], [])
            return
        blocks = _list(system, "system")
        parts = [_part(block, f"system[{j}]", _BLOCKS_BY_ROLE["system"], "system") for j, block in enumerate(blocks)]
        self._emit({"role": "system"}, [part for sourced in parts for part in sourced], [])

    def add_message(self, message: Any, path: str, index: int) -> None:
        self._source = index
        message = _object(message, path)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise AnthropicRequestError(
                f"{path}.role must be one of user, assistant, system; got {_show(role)}", f"{path}.role"
            )
        content = message.get("content")
        if isinstance(content, str):
            self._emit({"role": role, "content": content}, [], [])
            return
        blocks = _list(content, f"{path}.content")
        if not blocks and role != "assistant":
            raise AnthropicRequestError(f"{path}.content must not be empty", f"{path}.content")
        if role == "assistant":
            self._add_assistant(blocks, path)
        else:
            self._add_turn(role, blocks, path)

    def _add_turn(self, role: str, blocks: list[Any], path: str) -> None:
        """A user (or system) turn: runs of ordinary blocks as one message, each tool_result as a tool message."""
        allowed = _BLOCKS_BY_ROLE[role]
        pending: list[_Sourced] = []
        for j, block in enumerate(blocks):
            block_path = f"{path}.content[{j}]"
            if _block_type(block, block_path, allowed, role) == "tool_result":
                if pending:
                    self._emit({"role": role}, pending, [])
                    pending = []
                self._add_tool_result(block, block_path)
            else:
                pending.extend(_part(block, block_path, allowed, role))
        if pending:
            self._emit({"role": role}, pending, [])

    def _add_assistant(self, blocks: list[Any], path: str) -> None:
        allowed = _BLOCKS_BY_ROLE["assistant"]
        parts: list[_Sourced] = []
        calls: list[_Sourced] = []
        reasoning: list[str] = []
        for j, block in enumerate(blocks):
            block_path = f"{path}.content[{j}]"
            kind = _block_type(block, block_path, allowed, "assistant")
            if kind == "tool_use":
                calls.append((_tool_call(block, block_path), block_path))
            elif kind == "thinking":
                reasoning.append(_string(block.get("thinking"), f"{block_path}.thinking"))
            elif kind == "text":
                parts.extend(_part(block, block_path, allowed, "assistant"))
            # redacted_thinking: encrypted for Anthropic's models only, nothing ours can read
        message: dict[str, Any] = {"role": "assistant"}
        if reasoning:
            message["reasoning"] = "\n".join(reasoning)
        self._emit(message, parts, calls)

    def _add_tool_result(self, block: Mapping[str, Any], path: str) -> None:
        """A tool message; the block's marker on its last part, or on the message when there is none of its own."""
        call_id = _string(block.get("tool_use_id"), f"{path}.tool_use_id")
        message: dict[str, Any] = {"role": "tool", "tool_call_id": call_id}
        error = _boolean(block.get("is_error", False), f"{path}.is_error")
        content = block.get("content")
        parts: list[_Sourced] = []
        if content is None or isinstance(content, str) or content == []:
            text = content if isinstance(content, str) else ""
            message["content"] = f"{_ERROR_PREFIX} {text}" if error else text
        else:
            if error:
                parts.append(({"type": "text", "text": _ERROR_PREFIX}, path))
            for n, inner in enumerate(_list(content, f"{path}.content")):
                parts.extend(_part(inner, f"{path}.content[{n}]", _TOOL_RESULT_BLOCKS, "tool_result"))
        marker = block.get(MARKER_KEY)
        if marker is not None:
            if parts and MARKER_KEY not in parts[-1][0]:
                parts[-1] = ({**parts[-1][0], MARKER_KEY: marker}, path)
            else:
                message[MARKER_KEY] = marker
        self._emit(message, parts, [], marker_source=path if MARKER_KEY in message else None)

    def _emit(
        self, message: dict[str, Any], parts: list[_Sourced], calls: list[_Sourced], marker_source: str | None = None
    ) -> None:
        """Append a chat message and record where its markers came from."""
        m = len(self.messages)
        if parts:
            message["content"] = [part for part, _ in parts]
        if calls:
            message["tool_calls"] = [call for call, _ in calls]
        for group, sourced in (("content", parts), ("tool_calls", calls)):
            for j, (item, source) in enumerate(sourced):
                if MARKER_KEY in item:
                    self.marker_params[f"messages[{m}].{group}[{j}].{MARKER_KEY}"] = f"{source}.{MARKER_KEY}"
        if marker_source is not None:
            self.marker_params[f"messages[{m}].{MARKER_KEY}"] = f"{marker_source}.{MARKER_KEY}"
        self.messages.append(message)
        self.sources.append(self._source)


def _block_type(block: Any, path: str, allowed: frozenset[str], where: str) -> str:
    """The block's ``type``, checked against what ``where`` (a role, a tool result) may hold."""
    kind = _object(block, path).get("type")
    if not isinstance(kind, str) or kind not in _KNOWN_BLOCKS:
        raise AnthropicRequestError(f"{path}.type: unknown content block type {_show(kind)}", f"{path}.type")
    if kind not in allowed:
        raise AnthropicRequestError(f"{path}.type: a {kind} block is not allowed in {where} content", f"{path}.type")
    if kind in _UNMARKABLE and block.get(MARKER_KEY) is not None:
        raise AnthropicRequestError(f"{path}: {kind} blocks cannot be marked with {MARKER_KEY}", f"{path}.{MARKER_KEY}")
    return kind


def _part(block: Any, path: str, allowed: frozenset[str], where: str) -> list[_Sourced]:
    """The chat content parts of a text, image or document block; its marker on the last one."""
    kind = _block_type(block, path, allowed, where)
    marker = block.get(MARKER_KEY)
    if kind == "text":
        text = _string(block.get("text"), f"{path}.text")
        if marker is not None and text == "":
            raise AnthropicRequestError(f"{path}: an empty text block cannot be marked with {MARKER_KEY}", path)
        parts = [{"type": "text", "text": text}]  # citations: no upstream meaning
    elif kind == "image":
        parts = [{"type": "image_url", "image_url": {"url": _image_url(block.get("source"), f"{path}.source")}}]
    else:
        parts = _document_parts(block.get("source"), f"{path}.source")
    if marker is not None:
        parts[-1][MARKER_KEY] = marker
    return [(part, path) for part in parts]


def _image_url(source: Any, path: str) -> str:
    source = _object(source, path)
    kind = source.get("type")
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{path}.media_type")
        return f"data:{media_type};base64,{_string(source.get('data'), f'{path}.data')}"
    if kind == "url":
        return _string(source.get("url"), f"{path}.url")
    raise AnthropicRequestError(f"{path}.type: image source {_show(kind)} is not supported by this gateway", path)


def _document_parts(source: Any, path: str) -> list[dict[str, Any]]:
    """A plain-text document as text parts; PDFs (base64, url, file) cannot reach a chat upstream."""
    source = _object(source, path)
    kind = source.get("type")
    if kind == "text":
        return [{"type": "text", "text": _string(source.get("data"), f"{path}.data")}]
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        blocks = _list(content, f"{path}.content")
        if not blocks:
            raise AnthropicRequestError(f"{path}.content must not be empty", f"{path}.content")
        parts: list[dict[str, Any]] = []
        for n, block in enumerate(blocks):
            block_path = f"{path}.content[{n}]"
            if isinstance(block, Mapping) and block.get(MARKER_KEY) is not None:
                raise AnthropicRequestError(
                    f"{block_path}: blocks inside a document cannot be marked; mark the document block",
                    f"{block_path}.{MARKER_KEY}",
                )
            parts.extend(part for part, _ in _part(block, block_path, _DOCUMENT_BLOCKS, "document"))
        return parts
    raise AnthropicRequestError(
        f"{path}.type: {_show(kind)} documents (PDFs) are not supported by this gateway; send the text instead", path
    )


def _tool_call(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A tool_use block as a chat tool call; ``input`` becomes compact JSON arguments."""
    tool_input = _object(block.get("input", {}), f"{path}.input")
    call: dict[str, Any] = {
        "id": _string(block.get("id"), f"{path}.id"),
        "type": "function",
        "function": {"name": _string(block.get("name"), f"{path}.name"), "arguments": _json(tool_input, path)},
    }
    if block.get(MARKER_KEY) is not None:
        call[MARKER_KEY] = block[MARKER_KEY]
    return call


def _tool(tool: Any, path: str, marker_params: dict[str, str]) -> dict[str, Any]:
    """A custom tool as a chat function; Anthropic's server tools have no chat equivalent."""
    tool = _object(tool, path)
    kind = tool.get("type", "custom")
    if kind not in (None, "custom"):
        raise AnthropicRequestError(
            f"{path}.type: server tool {_show(kind)} is not supported by this gateway; only custom tools are",
            f"{path}.type",
        )
    function: dict[str, Any] = {"name": _string(tool.get("name"), f"{path}.name")}
    if tool.get("description") is not None:
        function["description"] = _string(tool["description"], f"{path}.description")
    function["parameters"] = dict(_object(tool.get("input_schema"), f"{path}.input_schema"))
    chat_tool: dict[str, Any] = {"type": "function", "function": function}
    if tool.get(MARKER_KEY) is not None:
        chat_tool[MARKER_KEY] = tool[MARKER_KEY]
        marker_params[f"{path}.{MARKER_KEY}"] = f"{path}.{MARKER_KEY}"  # tools keep their index
    return chat_tool


def _add_tool_choice(chat: dict[str, Any], choice: Any) -> None:
    if choice is None:
        return
    choice = _object(choice, "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        name = _string(choice.get("name"), "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise AnthropicRequestError(
            f"tool_choice.type must be one of auto, any, tool, none; got {_show(kind)}", "tool_choice.type"
        )
    if _boolean(choice.get("disable_parallel_tool_use", False), "tool_choice.disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _apply_reasoning(chat: dict[str, Any], body: Mapping[str, Any], switch: ReasoningSwitch | None) -> None:
    """Anthropic's ``thinking`` and ``output_config.effort`` through the model's reasoning switch.

    Both are validated for every model; without a switch they have nothing to turn and are dropped.
    """
    thinking, budget = _thinking(body.get("thinking"))
    effort = _effort(body.get("output_config"))
    if switch is None:
        return
    if switch.kwarg is not None:
        if thinking is not None:
            chat["chat_template_kwargs"] = {switch.kwarg: thinking}
    elif thinking is False:
        chat["reasoning_effort"] = "low"  # an effort model always reasons: the least it can
    elif thinking or effort is not None:
        chat["reasoning_effort"] = effort or _budget_effort(budget)


def _thinking(thinking: Any) -> tuple[bool | None, int | None]:
    """Whether thinking is asked on or off (None: not said, or a type unknown to us), and its budget."""
    if thinking is None:
        return None, None
    thinking = _object(thinking, "thinking")
    kind = _string(thinking.get("type"), "thinking.type")
    budget = thinking.get("budget_tokens")
    if budget is not None:
        budget = _integer(budget, "thinking.budget_tokens")
    if kind in ("enabled", "adaptive"):
        return True, budget
    return (False if kind == "disabled" else None), None


def _effort(output_config: Any) -> str | None:
    if output_config is None:
        return None
    effort = _object(output_config, "output_config").get("effort")
    return None if effort is None else _EFFORTS.get(_string(effort, "output_config.effort"))


def _budget_effort(budget: int | None) -> str:
    """A thinking budget as an effort: under 4096 tokens low, under 16384 medium, else high."""
    if budget is None:
        return "medium"
    if budget < _LOW_BUDGET:
        return "low"
    return "medium" if budget < _HIGH_BUDGET else "high"


def _max_tokens(value: Any) -> int:
    if value is None:
        raise AnthropicRequestError("max_tokens is required", "max_tokens")
    tokens = _integer(value, "max_tokens")
    if tokens < 1:
        raise AnthropicRequestError("max_tokens must be a positive integer", "max_tokens")
    return tokens


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(_string(item, f"stop_sequences[{i}]") for i, item in enumerate(_list(value, "stop_sequences")))


def _user_id(metadata: Any) -> str | None:
    if metadata is None:
        return None
    user_id = _object(metadata, "metadata").get("user_id")
    return None if user_id is None else _string(user_id, "metadata.user_id")


def _stream(value: Any) -> bool:
    return False if value is None else _boolean(value, "stream")


def _json(value: Any, path: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as error:  # integers beyond 64 bits, as orjson.loads never gives but a caller might
        raise AnthropicRequestError(f"{path}.input cannot be sent upstream: {error}", f"{path}.input") from None


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise AnthropicRequestError(f"{path} must be an object, got {_type_name(value)}", path)
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise AnthropicRequestError(f"{path} must be an array, got {_type_name(value)}", path)
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise AnthropicRequestError(f"{path} must be a string, got {_type_name(value)}", path)
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise AnthropicRequestError(f"{path} must be a boolean, got {_type_name(value)}", path)
    return value


def _integer(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise AnthropicRequestError(f"{path} must be an integer, got {_type_name(value)}", path)
    return value


def _number(value: Any, path: str) -> float | int:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AnthropicRequestError(f"{path} must be a number, got {_type_name(value)}", path)
    return value


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _show(value: Any) -> str:
    """A client value, shortened: it goes back in a 400."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
