"""The argument checks every operation shares, and the error they raise.

The bounds are the stores' own (an INTEGER column holds at most 2**31 - 1) and a sane length for
names, so an argument either fits every store or is refused here, naming itself, before any SQL
runs: no store ever sees a value it would fail on in its own way.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from cachegate.core.errors import CachegateError
from cachegate.upstream.base import check_base_url

MAX_NAME_LENGTH: Final = 200
MAX_COUNT: Final = 2**31 - 1  # the largest value of the stores' INTEGER columns
MAX_URL_LENGTH: Final = 2048
MAX_SECRET_LENGTH: Final = 4096

_CHARACTER: Final = r"[^\x00-\x1f\x7f/]"  # not a control character, not a slash
_SEGMENT: Final = rf"{_CHARACTER}*[^\x00-\x1f\x7f/.]{_CHARACTER}*"  # one at least is not a dot

TEXT_PATTERN: Final = r"^[^\x00-\x1f\x7f]+$"
"""Free text of 1 to 200 characters, none a control character: an upstream model's name, a
tokenizer's, a reference to a principal by name or id."""

NAME_PATTERN: Final = rf"^{_SEGMENT}$"
"""The name of a principal or an endpoint: 1 to 200 characters, no control character and no
slash, not only dots — so that it can stand in a URL path as one segment (the gateway refuses
``.`` and ``..`` segments)."""

ALIAS_PATTERN: Final = rf"^{_SEGMENT}(/{_SEGMENT})*$"
"""A model's alias: names joined by slashes (``qwen/qwen3-32b``), each as ``NAME_PATTERN``."""

DECIMAL_PATTERN: Final = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
"""A non-negative decimal written positionally (``0.25``, ``2``, ``0.0000025``): as the CLI reads
prices, with bounded digits so every store's NUMERIC holds it."""

_PORT: Final = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_LABEL: Final = r"[A-Za-z0-9_~%!$&'()*+,;=-]{1,63}"  # RFC 3986 reg-name characters, as IDNA bounds a label
_H16: Final = r"[0-9A-Fa-f]{1,4}"
_OCTET: Final = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32: Final = rf"({_H16}:{_H16}|{_OCTET}(\.{_OCTET}){{3}})"
# RFC 3986's IPv6address, one alternative per place of the "::".
_IPV6: Final = "|".join(
    [
        rf"({_H16}:){{6}}{_LS32}",
        rf"::({_H16}:){{5}}{_LS32}",
        rf"({_H16})?::({_H16}:){{4}}{_LS32}",
        rf"(({_H16}:){{0,1}}{_H16})?::({_H16}:){{3}}{_LS32}",
        rf"(({_H16}:){{0,2}}{_H16})?::({_H16}:){{2}}{_LS32}",
        rf"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(({_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(({_H16}:){{0,6}}{_H16})?::",
    ]
)
URL_PATTERN: Final = rf"^https?://({_LABEL}(\.{_LABEL})*\.?|\[({_IPV6})\])(:{_PORT})?(/[\x21-\x7e]*)?$"
"""An endpoint's base URL: http or https, a host name (labels of 1 to 63 characters) or an IPv6
address in brackets, a port from 0 to 65535, a path of printable ASCII. As strict as
``upstream.base.check_base_url`` where a pattern can be, so that every URL the admin API's schema
admits is one the API accepts."""

SECRET_PATTERN: Final = r"^[\x21-\x7e]+$"
"""An upstream key: sent in a header, so printable ASCII only."""

_PATTERNS: Final = {
    pattern: re.compile(pattern) for pattern in (TEXT_PATTERN, NAME_PATTERN, ALIAS_PATTERN, DECIMAL_PATTERN)
}
_URL: Final = re.compile(URL_PATTERN)
_SECRET: Final = re.compile(SECRET_PATTERN)


class InvalidArgument(CachegateError, ValueError):
    """An argument an operation refuses before touching the store; ``argument`` names it
    (``tokenizer``, ``limit``, …), as an API field or a CLI option."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument
        self.message = message


def check_name(value: str, argument: str, pattern: str = TEXT_PATTERN) -> str:
    """``value`` if it matches ``pattern`` (``TEXT_PATTERN``, ``NAME_PATTERN`` or ``ALIAS_PATTERN``)
    within ``MAX_NAME_LENGTH`` characters."""
    if len(value) > MAX_NAME_LENGTH or not _PATTERNS[pattern].fullmatch(value):
        rule = {
            TEXT_PATTERN: "no control characters",
            NAME_PATTERN: "no control characters or slashes, and not only dots",
            ALIAS_PATTERN: "no control characters, and no empty or dot-only part between slashes",
        }[pattern]
        raise InvalidArgument(argument, f"{argument} must be 1 to {MAX_NAME_LENGTH} characters with {rule}")
    return value


def check_decimal(value: Decimal, argument: str) -> Decimal:
    """A finite, non-negative decimal of bounded size (as ``DECIMAL_PATTERN`` writes it)."""
    if not value.is_finite() or value < 0 or not _PATTERNS[DECIMAL_PATTERN].fullmatch(format(value, "f")):
        raise InvalidArgument(
            argument, f"{argument} must be a non-negative decimal of at most 20 digits before and after the point"
        )
    return value


def check_count(value: int, argument: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not minimum <= value <= MAX_COUNT:
        raise InvalidArgument(argument, f"{argument} must be a whole number from {minimum} to {MAX_COUNT}")
    return value


def check_http_url(value: str, argument: str) -> str:
    """An endpoint's base URL: ``URL_PATTERN`` (the API schema's), then ``upstream.base.check_base_url``,
    the rule of every base URL, which the pattern follows but does not replace."""
    if len(value) > MAX_URL_LENGTH or not _URL.fullmatch(value):
        raise InvalidArgument(argument, f"{argument} must be an http:// or https:// URL")
    try:
        return check_base_url(value)
    except ValueError as exc:
        raise InvalidArgument(argument, f"{argument} {exc}") from exc


def check_secret(value: str, argument: str) -> str:
    if len(value) > MAX_SECRET_LENGTH or not _SECRET.fullmatch(value):
        raise InvalidArgument(argument, f"{argument} must be 1 to {MAX_SECRET_LENGTH} printable ASCII characters")
    return value
