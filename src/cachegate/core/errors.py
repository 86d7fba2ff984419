"""Errors the core raises and the OpenAI error body the gateway answers with.

A marker error is the client's fault and must reach it as a 400 naming the offending JSON path
(SPEC §2.2), so it carries that path and a bounded reason that is safe to use as a metric label.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import orjson

MarkerRejection = Literal[
    "too_many_breakpoints",
    "invalid_ttl",
    "ttl_not_accepted",
    "unsupported_type",
    "malformed",
    "ttl_order",
    "ttl_conflict",
    "automatic_ttl_conflict",
    "automatic_no_slot",
]
"""Why a marker was rejected: the closed set of metric label values."""

MARKER_REJECTIONS: Final[tuple[MarkerRejection, ...]] = get_args(MarkerRejection)


class CachegateError(Exception):
    r"""The base of every error cachegate raises on purpose: ``except CachegateError`` catches them
    all and leaves genuine bugs (a ``KeyError``, a ``TypeError``) to surface as bugs.

    By layer: ``ConfigError`` and ``ListenError`` stop the process at start; ``StoreError``,
    ``CacheIndexError``, ``TokenizerLoadError``, ``TokenCountError`` and ``UpstreamError`` come from
    the ports; ``Refusal`` and ``ClientGone`` end one request; the request errors below (also
    ``ValueError``\ s) are the client's.
    """


class MarkerError(CachegateError, ValueError):
    """An invalid ``cache_control`` marker (SPEC §3): answered with 400 ``invalid_cache_control``.

    ``param`` is the JSON path of the offending marker (``messages[2].content[0].cache_control``,
    ``cache_control`` for the top-level one); ``reason`` is one of ``MARKER_REJECTIONS``.
    """

    def __init__(self, message: str, *, param: str, reason: MarkerRejection) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.reason = reason


def openai_error(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """The body OpenAI's API answers errors with, so SDKs surface them as they would OpenAI's."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
