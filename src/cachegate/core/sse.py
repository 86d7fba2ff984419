"""Server-sent events (SPEC §8 streams): framing a byte stream and editing one frame's JSON.

Frames are passed on exactly as received, so the framer only finds where events end; the
usage frame is the only one ever re-serialized. Line endings follow the SSE specification:
CRLF, LF or a lone CR, mixed freely, and an event ends at an empty line.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from cachegate.core.errors import CachegateError

DONE_EVENT: Final = b"data: [DONE]\n\n"
DEFAULT_MAX_EVENT_BYTES: Final = 1 << 20

_LINE_END: Final = re.compile(rb"\r\n?|\n")
_USAGE_OR_ERROR: Final = re.compile(rb'"usage"\s*:\s*\{|"error"\s*:|"timings"\s*:|"prompt_progress"\s*:')
"""What makes a frame worth parsing: usage, an error, or engine telemetry (core/telemetry.py)."""
_DONE: Final = b"[DONE]"
_CR: Final = 0x0D
_LF: Final = 0x0A


class SseFrameTooLarge(CachegateError, ValueError):
    """An event grew past the framer's limit: the stream is not SSE, or is abusive."""


class SseFramer:
    """Splits a byte stream into complete events, each with its terminating empty line.

    ``feed`` scans only bytes it has not looked at yet. A CR at the very end of what has arrived
    is held back until the next byte says whether it is a CRLF. Concatenating everything ``feed``
    returns and then ``flush`` gives back the stream byte for byte. Stray empty lines between
    events come out as events of their own (with no fields). An event larger than
    ``max_event_bytes``, complete or not, raises ``SseFrameTooLarge``, whatever the chunking;
    the framer is spent after it.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already split into lines
        self._line_start = 0  # where the line being scanned starts

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._buffer and b"\r" not in chunk:
            return self._feed_lf(chunk)  # the common case: LF framing, whole events per chunk
        buffer = self._buffer
        buffer += chunk
        events: list[bytes] = []
        event_start = 0
        position = self._scanned
        line_start = self._line_start
        while True:
            line_end = _LINE_END.search(buffer, position)
            if line_end is None:
                position = len(buffer)
                break
            start, end = line_end.span()
            if end == len(buffer) and end - start == 1 and buffer[start] == _CR:
                position = start  # may be the first half of a CRLF: wait for the next byte
                break
            if start == line_start:  # an empty line ends the event
                self._check_size(end - event_start)
                events.append(bytes(buffer[event_start:end]))
                event_start = end
            line_start = position = end
        self._check_size(len(buffer) - event_start)
        del buffer[:event_start]
        self._scanned = position - event_start
        self._line_start = line_start - event_start
        return events

    def split(self, chunk: bytes) -> tuple[bytes, list[bytes]]:
        """``feed``, with the chunk's leading plain events (``plain_prefix``) given back whole, as
        one bytes object, instead of one by one: the relay's hot path, a stream's content frames
        passed on as they came. Then the complete events that need a look, in order."""
        plain = 0 if self.pending else plain_prefix(chunk)
        if plain == len(chunk):
            return chunk, []
        return chunk[:plain], self.feed(chunk[plain:] if plain else chunk)

    def _feed_lf(self, chunk: bytes) -> list[bytes]:
        """``feed`` for an empty buffer and a chunk without CR: events end at ``\\n\\n``.

        Byte searches instead of a line-by-line scan; an LF at an event's start is a stray empty
        line, an event of its own, exactly as the line scanner has it. What is left over (the
        start of an event) is buffered and scanned from its start by the next ``feed``.
        """
        events: list[bytes] = []
        position, size = 0, len(chunk)
        while position < size:
            if chunk[position] == _LF:
                events.append(chunk[position : position + 1])
                position += 1
                continue
            end = chunk.find(b"\n\n", position)
            if end < 0:
                break
            self._check_size(end + 2 - position)
            events.append(chunk[position : end + 2])
            position = end + 2
        if position < size:
            self._check_size(size - position)
            self._buffer += chunk[position:]
            self._scanned = self._line_start = 0
        return events

    @property
    def pending(self) -> bool:
        """Whether part of an event is buffered, waiting for the rest."""
        return bool(self._buffer)

    def flush(self) -> bytes:
        """What is left at the end of the stream (an unterminated event), and reset."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = self._line_start = 0
        return rest

    def _check_size(self, size: int) -> None:
        if size > self._max_event_bytes:
            raise SseFrameTooLarge(f"SSE event larger than {self._max_event_bytes} bytes")


def event_json(event: bytes) -> Any | None:
    """The JSON payload of an event's data; None for ``[DONE]``, comments and anything not JSON."""
    data = _event_data(event)
    if data is None or data == _DONE:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


# The spellings plain_prefix scans for, one name each: it runs on every chunk of every stream, and
# a loop or generator over a tuple of them costs more than the scans themselves.
_ERROR_KEY: Final = b'"error"'
_TIMINGS_KEY: Final = b'"timings"'
_PROGRESS_KEY: Final = b'"prompt_progress"'
_USAGE_KEY: Final = b'"usage"'
_USAGE_NULL: Final = b'"usage":null'
_USAGE_NULL_SPACED: Final = b'"usage": null'
_USAGE_OBJECT: Final = b'"usage":{'
_USAGE_OBJECT_SPACED: Final = b'"usage": {'


def plain_prefix(chunk: bytes) -> int:
    """How many leading bytes of ``chunk`` (which starts at an event boundary) are whole LF-framed
    events none of which is ``[DONE]`` or may carry usage or an error: they can be passed on as
    they are, unsplit. 0 when the chunk has a CR (its framing is the framer's business).

    Found with substring scans (C speed, where the regex alternation costs a few microseconds per
    kilobyte on every chunk of every stream): ``[DONE]``, then the first usage object, told from
    the ``"usage":null`` of each content frame. The regex runs only when a rarer key (an error,
    telemetry) is mentioned or a usage key is written in another form.
    """
    if b"\r" in chunk:
        return 0
    end = chunk.find(_DONE)
    if end < 0:
        end = len(chunk)
    usages = chunk.count(_USAGE_KEY, 0, end)
    nulls = objects = 0
    if usages:  # content frames first: each may carry "usage":null, and nothing else needs counting then
        nulls = chunk.count(_USAGE_NULL, 0, end)
        if usages > nulls:
            nulls += chunk.count(_USAGE_NULL_SPACED, 0, end)
        if usages > nulls:
            objects = chunk.count(_USAGE_OBJECT, 0, end) + chunk.count(_USAGE_OBJECT_SPACED, 0, end)
    rare = _ERROR_KEY in chunk or _TIMINGS_KEY in chunk or _PROGRESS_KEY in chunk
    if usages == objects + nulls and not rare:
        if objects:
            compact, spaced = chunk.find(_USAGE_OBJECT, 0, end), chunk.find(_USAGE_OBJECT_SPACED, 0, end)
            end = min(at for at in (compact, spaced) if at >= 0)  # the usage frame's chunk: once a stream
    else:  # a rarer key is mentioned, or a usage key is written in another form: the regex decides
        match = _USAGE_OR_ERROR.search(chunk, 0, end)
        end = end if match is None else match.start()
    boundary = chunk.rfind(b"\n\n", 0, end)
    return 0 if boundary < 0 else boundary + 2


def may_carry_usage_or_error(event: bytes) -> bool:
    """Whether the event may hold a usage object, an error or engine telemetry: the only frames ever parsed.

    Content frames, nearly all of a stream (with ``"usage": null`` on each when usage was asked
    for), are turned away by one scan. Inside a JSON string the quotes are escaped, so text
    that merely mentions ``"usage": {`` does not match.
    """
    return _USAGE_OR_ERROR.search(event) is not None


def is_done(event: bytes) -> bool:
    if _DONE not in event:
        return False  # content frames, nearly all of a stream, are turned away by one scan
    data = _event_data(event)
    return data is not None and data.strip() == _DONE


def replace_event_json(event: bytes, payload: Any) -> bytes:
    """The event with its data replaced by ``payload`` as one ``data: …`` line.

    Other fields (``event:``, ``id:``, comments) and every line ending are kept as they were.
    """
    data_line = b"data: " + orjson.dumps(payload)
    lines = event.splitlines(keepends=True)
    out: list[bytes] = []
    replaced = False
    for line in lines:
        text = line.rstrip(b"\r\n")
        if _field_name(text) != b"data":
            out.append(line)
        elif not replaced:
            out.append(data_line + line[len(text) :])
            replaced = True
    if not replaced:
        fields = len(out)
        while fields and not out[fields - 1].rstrip(b"\r\n"):
            fields -= 1
        out.insert(fields, data_line + _line_ending(lines))
    return b"".join(out)


def data_event(payload: Any, crlf: bool = False) -> bytes:
    """A new event carrying ``payload``."""
    return b"data: " + orjson.dumps(payload) + (b"\r\n\r\n" if crlf else b"\n\n")


def is_usage_frame(obj: Any) -> bool:
    """The frame ``stream_options.include_usage`` produces: no choices, a usage object."""
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


def carries_usage(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("usage"), dict)


def is_error_frame(obj: Any) -> bool:
    """An upstream error reported inside the stream (``"error": null`` is not one)."""
    return isinstance(obj, dict) and obj.get("error") is not None


def _event_data(event: bytes) -> bytes | None:
    """The event's data field: its ``data`` lines' values joined with LF; None when it has none."""
    if event.startswith(b"data:"):  # fast path: a single data line, as nearly every engine sends
        line = event.rstrip(b"\r\n")
        if b"\n" not in line and b"\r" not in line:
            return _data_value(line)
    values = [_data_value(line) for line in event.splitlines() if _field_name(line) == b"data"]
    return b"\n".join(values) if values else None


def _field_name(line: bytes) -> bytes:
    colon = line.find(b":")
    return line if colon < 0 else line[:colon]


def _data_value(line: bytes) -> bytes:
    """The value of a ``data`` line: what follows ``data:``, less one optional leading space."""
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


def _line_ending(lines: list[bytes]) -> bytes:
    first = lines[0] if lines else b"\n"
    ending = first[len(first.rstrip(b"\r\n")) :]
    return ending or b"\n"
