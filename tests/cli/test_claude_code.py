"""Claude Code itself as a client: the pinned npm package, pointed at ``cachegate serve`` (the embedded demo).

Two turns, ``claude -p`` then ``claude -p --continue``: the first writes the cache, the second reads what the
first wrote (the lookback finds turn 1's breakpoint from the marker that moved to the new last user message),
and the usage in Claude Code's JSON output is exactly what the gateway billed in its ledger. A third turn has the
fake upstream call Claude Code's Read tool (a ``[fake: tool-call=Read]`` line): Claude Code runs it and sends the
tool result back, two requests in one turn, each reading all that the one before it wrote; Claude Code reports
their sum.

Claude Code is installed by ``npm ci`` into tests/cli/claude_code/ when it is missing or not the pinned
version. Under ``CI=true`` a failed install fails the test; elsewhere (no npm, no registry) it skips.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .demo_server import running_demo

PACKAGE_DIR = Path(__file__).parent / "claude_code"
PINNED = json.loads((PACKAGE_DIR / "package.json").read_text())["dependencies"]["@anthropic-ai/claude-code"]
CLAUDE = PACKAGE_DIR / "node_modules" / ".bin" / "claude"
TURN_SECONDS = 60


def _installed_version() -> str | None:
    if not CLAUDE.exists():
        return None
    try:
        done = subprocess.run([CLAUDE, "--version"], capture_output=True, text=True, timeout=30, env=_base_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout.strip() else None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Claude Code {PINNED} is not available: {reason}")
    pytest.skip(f"Claude Code {PINNED} is not available: {reason}")


@pytest.fixture(scope="session")
def claude_code() -> Path:
    """The pinned Claude Code binary, installed from package-lock.json when missing or stale."""
    if _installed_version() != PINNED:
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is not on PATH")
        command = [npm, "ci", "--prefix", str(PACKAGE_DIR), "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            _unavailable("npm ci took more than 600 s")
        if done.returncode != 0:
            _unavailable(f"npm ci exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
        version = _installed_version()
        if version != PINNED:
            _unavailable(f"after npm ci, `claude --version` says {version!r}")
    return CLAUDE


def _base_env() -> dict[str, str]:
    """A clean environment: nothing of the caller's Anthropic or Claude settings leaks into the client."""
    return {name: os.environ[name] for name in ("PATH", "LANG", "TMPDIR") if name in os.environ}


def _run_turn(claude: Path, cwd: Path, env: dict[str, str], prompt: str, *extra: str) -> dict[str, Any]:
    command = [str(claude), "-p", prompt, *extra, "--max-turns", "3", "--output-format", "json", "--model", "demo"]
    done = subprocess.run(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TURN_SECONDS
    )
    assert done.returncode == 0, f"claude exited with {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["is_error"] is False and result["subtype"] == "success", result
    return result


def _ledger(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "control.db") as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM ledger ORDER BY id")]


@pytest.mark.timeout(TURN_SECONDS * 3 + 660)  # three turns, plus a first install of Claude Code
def test_claude_code_writes_then_reads_and_reports_what_the_gateway_billed(claude_code: Path, tmp_path: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    with running_demo(tmp_path) as (base_url, key):
        env = {
            **_base_env(),
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base_url.removesuffix("/v1"),
            "ANTHROPIC_API_KEY": key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
        }
        first = _run_turn(claude_code, project, env, "Say hello.")
        second = _run_turn(claude_code, project, env, "Say it again.", "--continue")
        third = _run_turn(claude_code, project, env, "Read the notes.\n[fake: tool-call=Read]", "--continue")

    assert second["session_id"] == first["session_id"]  # --continue went on with turn 1's conversation
    written, read = first["usage"], second["usage"]
    # Turn 1 writes the whole prompt through its last breakpoint (Claude Code's system prompt and tools are
    # ~11k tokens, far above the demo's 1024-token floor); it reads nothing on a fresh gateway.
    assert written["cache_creation_input_tokens"] > 1024 and written["cache_read_input_tokens"] == 0
    # Turn 2's marker sits on its new last user message; the lookback finds turn 1's entry and reads all of it,
    # then writes the new turn's tail.
    assert read["cache_read_input_tokens"] == written["cache_creation_input_tokens"]
    assert read["cache_creation_input_tokens"] > 0

    # Turns 1 and 2 are one billed request each (the main /v1/messages?beta=true; with non-essential traffic off
    # Claude Code sends no title or topic request and no count_tokens); turn 3 is two, the tool call and the
    # answer after the tool result. Each request reads all that the one before it wrote.
    rows = _ledger(tmp_path / "data")
    assert len(rows) == 4, rows
    for before, after in itertools.pairwise(rows):
        assert after["cache_read_tokens"] == before["cache_read_tokens"] + before["cache_creation_5m_tokens"]
    assert third["num_turns"] == 2 and third["stop_reason"] == "end_turn"
    for turn, billed in ((first, rows[:1]), (second, rows[1:2]), (third, rows[2:])):
        _assert_reports(turn["usage"], billed)


def _assert_reports(usage: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Claude Code's usage of one turn is the sum of what the gateway billed for the turn's requests."""
    for row in rows:
        assert (row["model"], row["status"], row["streaming"]) == ("demo", 200, 1)
        assert row["cache_creation_1h_tokens"] == row["cache_creation_24h_tokens"] == 0
    read = sum(row["cache_read_tokens"] for row in rows)
    created = sum(row["cache_creation_5m_tokens"] for row in rows)
    uncached = sum(row["prompt_tokens"] for row in rows) - read - created
    assert usage["cache_read_input_tokens"] == read
    assert usage["cache_creation_input_tokens"] == created
    assert usage["cache_creation"] == {"ephemeral_5m_input_tokens": created, "ephemeral_1h_input_tokens": 0}
    assert usage["input_tokens"] == uncached > 0
    assert usage["output_tokens"] == sum(row["completion_tokens"] for row in rows) > 0
