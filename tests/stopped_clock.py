"""A clock stopped at one instant, for templates that write today's date (``strftime_now``).

Two renderings compared with each other must see the same day, whatever the hour they run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import ModuleType
from typing import Any

import pytest


class StoppedClock(datetime):
    """``datetime`` whose ``now`` is fixed."""

    @classmethod
    def now(cls, tz: Any = None) -> StoppedClock:
        return cls(2026, 11, 26, 12, 0, 0, tzinfo=tz)


@contextmanager
def stopped_clock(*modules: ModuleType) -> Iterator[None]:
    """Stop the clock of each module's ``datetime`` for the duration."""
    with pytest.MonkeyPatch.context() as patch:
        for module in modules:
            patch.setattr(module, "datetime", StoppedClock)
        yield
