"""The argument checks every operation shares, and the error they raise.

The bounds are the stores' own (an INTEGER column holds at most 2**31 - 1) and a sane length for
names, so an argument either fits every store or is refused here, naming itself, before any SQL
runs: no store ever sees a value it would fail on in its own way.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final
from urllib.parse import urlsplit

from cachegate.core.errors import CachegateError

MAX_NAME_LENGTH: Final = 200
MAX_COUNT: Final = 2**31 - 1  # the largest value of the stores' INTEGER columns
MAX_URL_LENGTH: Final = 2048
MAX_SECRET_LENGTH: Final = 4096

NAME_PATTERN: Final = r"^[^\x00-\x1f\x7f]{1,200}$"
"""A name (of a principal, endpoint, model, upstream model or tokenizer): 1 to 200 characters,
no control characters. The same pattern is the API schema's."""

DECIMAL_PATTERN: Final = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
"""A non-negative decimal written positionally (``0.25``, ``2``, ``0.0000025``): as the CLI reads
prices, with bounded digits so every store's NUMERIC holds it."""

_NAME: Final = re.compile(NAME_PATTERN)
_DECIMAL: Final = re.compile(DECIMAL_PATTERN)


class InvalidArgument(CachegateError, ValueError):
    """An argument an operation refuses before touching the store; ``argument`` names it
    (``tokenizer``, ``limit``, …), as an API field or a CLI option."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument
        self.message = message


def check_name(value: str, argument: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            argument, f"{argument} must be 1 to {MAX_NAME_LENGTH} characters with no control characters"
        )
    return value


def check_decimal(value: Decimal, argument: str) -> Decimal:
    """A finite, non-negative decimal of bounded size (as ``DECIMAL_PATTERN`` writes it)."""
    if not value.is_finite() or value < 0 or not _DECIMAL.fullmatch(format(value, "f")):
        raise InvalidArgument(
            argument, f"{argument} must be a non-negative decimal of at most 20 digits before and after the point"
        )
    return value


def check_count(value: int, argument: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not minimum <= value <= MAX_COUNT:
        raise InvalidArgument(argument, f"{argument} must be a whole number from {minimum} to {MAX_COUNT}")
    return value


def check_http_url(value: str, argument: str) -> str:
    refused = InvalidArgument(argument, f"{argument} must be an http:// or https:// URL")
    if len(value) > MAX_URL_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise refused
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises for a port that is no number or out of range
    except ValueError:  # also a bracket left open
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused
    return value


def check_secret(value: str, argument: str) -> str:
    """An upstream key: sent in a header, so printable ASCII only."""
    if not 0 < len(value) <= MAX_SECRET_LENGTH or not all(0x21 <= ord(c) < 0x7F for c in value):
        raise InvalidArgument(argument, f"{argument} must be 1 to {MAX_SECRET_LENGTH} printable ASCII characters")
    return value
