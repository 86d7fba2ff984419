"""Boundary marks: strings of two characters a text does not hold around a number.

A mark placed at the end of a block's text before rendering shows where that text ends in the
rendering (the sentinel method of ``counter.py``). Its characters must be absent from the
rendering without marks: then the marked rendering holds them only in marks, unless the marks
changed what the template renders, which comparing the two catches.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

# Latin-1 symbols first: a mark of one keeps a one-byte-a-character string one byte a
# character, where a character above U+00FF would widen every marked string (and the whole
# marked rendering) to two or four bytes a character, which made marking cost more than
# rendering. They are symbols no str method changes (no case, not whitespace) and that JSON
# leaves as they are.
_MARK_CHARACTERS = "¤¦¶§¬°±×÷¸¨´¯"
_PRIVATE_USE_MARKS = ("\U0010fc00", "\U0010fc01")  # when a text holds every one of those

Delimiters = tuple[str, str]


def mark_delimiters(clean: str) -> Delimiters | None:
    """Two characters ``clean`` (the rendering without marks) does not contain, or None."""
    absent: list[str] = []
    for character in _MARK_CHARACTERS:
        if character not in clean:
            absent.append(character)
            if len(absent) == 2:
                return absent[0], absent[1]
    if not any(character in clean for character in _PRIVATE_USE_MARKS):
        return _PRIVATE_USE_MARKS
    return None


def mark(delimiters: Delimiters, number: int) -> str:
    return f"{delimiters[0]}{number}{delimiters[1]}"


@functools.lru_cache(maxsize=64)
def mark_pattern(delimiters: Delimiters) -> re.Pattern[str]:
    """Matches any mark made of ``delimiters``; group 1 is its number."""
    opening, closing = map(re.escape, delimiters)
    return re.compile(f"{opening}([0-9]+){closing}")


def without_marks(marked: str, delimiters: Delimiters) -> tuple[str, list[tuple[int, int]]]:
    """``marked`` with its marks removed, and each mark as (its number, its offset there), in text order."""
    found: list[tuple[int, int]] = []
    pieces: list[str] = []
    stripped_length = position = 0
    for match in mark_pattern(delimiters).finditer(marked):
        piece = marked[position : match.start()]
        pieces.append(piece)
        stripped_length += len(piece)
        position = match.end()
        found.append((int(match.group(1)), stripped_length))
    pieces.append(marked[position:])
    return "".join(pieces), found


def marked_end(render: Callable[[str | None], str]) -> tuple[str, int] | None:
    """The text ``render(None)`` and where one block's mark sits in it, the sentinel method on a
    small text: ``render(mark)`` must be that text with the mark at one place. None if it is not."""
    clean = render(None)
    delimiters = mark_delimiters(clean)
    if delimiters is None:
        return None
    text, found = without_marks(render(mark(delimiters, 0)), delimiters)
    return (clean, found[0][1]) if text == clean and len(found) == 1 else None
