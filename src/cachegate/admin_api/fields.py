"""The value types the admin API's bodies and paths share, constrained as the operations check
them (``operations/checks.py``), so the OpenAPI schema says exactly what is accepted."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict, StringConstraints

from cachegate.operations.checks import DECIMAL_PATTERN, MAX_NAME_LENGTH, NAME_PATTERN
from cachegate.store.values import decimal_text

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
DecimalText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=41, pattern=DECIMAL_PATTERN),
]
"""A non-negative decimal as a string (``"0.25"``): money and multipliers are never floats (SPEC §10)."""


def path_name(description: str) -> object:
    """A name in the path, constrained as ``Name``."""
    return Path(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN, description=description)


def as_text(value: Decimal) -> str:
    return decimal_text(value)


class Body(BaseModel):
    """A request body: an unknown field is refused (400), so a misspelt option is never ignored."""

    model_config = ConfigDict(extra="forbid")
