"""The value types the admin API's bodies and paths share, constrained as the operations check
them (``operations/checks.py``), so the OpenAPI schema says exactly what is accepted."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from cachegate.operations.checks import (
    ALIAS_PATTERN,
    DECIMAL_PATTERN,
    MAX_COUNT,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    TEXT_PATTERN,
)
from cachegate.store.values import decimal_text

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
"""A principal's or an endpoint's name: one URL path segment."""
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=TEXT_PATTERN)]
"""Free text: an upstream model, a tokenizer, a principal named by name or id."""
DecimalText = Annotated[str, StringConstraints(min_length=1, max_length=41, pattern=DECIMAL_PATTERN)]
"""A non-negative decimal as a string (``"0.25"``): money and multipliers are never floats (SPEC §10)."""


def _whole(value: object) -> object:
    """JSON Schema's integers include ``5.0``; a count takes it, as 5, and nothing but numbers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def count(minimum: int) -> Any:
    """A whole number from ``minimum`` to ``MAX_COUNT`` as JSON writes it (``5`` or ``5.0``);
    ``true`` or ``"5"`` is refused. (The bounds must precede the validator, or the schema loses them.)"""
    return Annotated[int, Field(ge=minimum, le=MAX_COUNT, strict=True), BeforeValidator(_whole)]


def path_name(description: str) -> Any:
    """A name in the path, constrained as ``Name``."""
    return Path(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN, description=description)


def path_alias(description: str) -> Any:
    """A model's alias in the path: the rest of the path, slashes and all."""
    return Path(min_length=1, max_length=MAX_NAME_LENGTH, pattern=ALIAS_PATTERN, description=description)


def query_text(description: str) -> Any:
    return Query(min_length=1, max_length=MAX_NAME_LENGTH, pattern=TEXT_PATTERN, description=description)


def as_text(value: Decimal) -> str:
    return decimal_text(value)


class Body(BaseModel):
    """A request body: an unknown field is refused (400), so a misspelt option is never ignored.
    Counts (``Count``) and flags are strict: ``true`` is no count, ``"1"`` no flag."""

    model_config = ConfigDict(extra="forbid")
