"""The log scan: no prompt text and no secret in any log line of the whole suite (SPEC §12).

Every in-process log record (``LogCollector`` on the root logger) and every line a ``cachegate``
process printed (``keep``) is scanned when the session ends. A secret is anything shaped like a
cachegate key; prompt text is the canary phrases the suites' prompts are built from. The demo's
start-up banner prints its own key on purpose (it is the user's only way to learn it): those
lines, and only those, are not log lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

SECRET = re.compile(r"cg-[A-Za-z0-9_-]{43}")
PROMPT_CANARIES = (
    "answer precisely and cite section",  # tests/e2e/prompts.py
    "keep answers short, kind and exact",  # tests/cli/test_serve_demo.py
)
_BANNER = re.compile(r'^\s*(API key\s*:|-H "Authorization: Bearer|python: OpenAI\()')

_outputs: list[tuple[str, list[str]]] = []


class LogCollector(logging.Handler):
    """Keeps every record's message and traceback text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format is still scanned by its template
            text = str(record.msg)
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


def keep(source: str, lines: list[str]) -> None:
    """Scan ``lines`` (a process's output, still growing) at the end of the session."""
    _outputs.append((source, lines))


def leaks(collector: LogCollector, outputs: list[tuple[str, list[str]]] = _outputs) -> list[str]:
    """Each log line that holds a secret or prompt text, with where it came from."""
    found = [f"in process: {line[:300]}" for line in collector.lines if _leaks(line)]
    for source, lines in outputs:
        found.extend(f"{source}: {line[:300]}" for line in _log_lines(lines) if _leaks(line))
    return found


def _log_lines(lines: Iterable[str]) -> Iterable[str]:
    return (line for line in lines if not _BANNER.match(line))


def _leaks(text: str) -> bool:
    return bool(SECRET.search(text)) or any(canary in text for canary in PROMPT_CANARIES)
