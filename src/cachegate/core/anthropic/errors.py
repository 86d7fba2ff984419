"""Anthropic's error shape (SPEC §9): ``{"type": "error", "error": {"type", "message"}}``.

Statuses map to types as Anthropic's errors page lists them (400, 401, 403, 404, 413, 429,
500, 529). Where it is silent: 402 is ``billing_error`` (the type Anthropic's SDKs know), 503
and 529 are ``overloaded_error`` (both mean "try again soon", and the SDKs retry them), any other
4xx is ``invalid_request_error`` (as the page says) and any other 5xx ``api_error``.
"""

from __future__ import annotations

from typing import Final

import orjson

ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """The error ``type`` an Anthropic client expects with ``status``."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(type_: str, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def anthropic_error(type_: str, message: str) -> bytes:
    """The JSON body of an error response, as Anthropic's API answers it."""
    return orjson.dumps(error_body(type_, message))
