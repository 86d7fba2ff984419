"""A schema fuzz of the admin API: schemathesis, driven from ``/admin/openapi.json`` with an admin
key, against a running gateway on PostgreSQL (the stricter store). Every check schemathesis has
must pass — above all, no 5xx for any input, valid or not — and the documented status codes,
content types and response schemas must hold.

The examples are bounded (``EXAMPLES`` per operation) so the run stays well under a minute. The
gateway's failed-authentication limit is raised: schemathesis sends many invalid keys on purpose,
which would otherwise turn its auth checks' 401s into the limiter's 429s.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_CONFIG

from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness
from pg import PgServer

EXAMPLES = 8


@pytest.fixture(scope="module")
def fuzzed(qwen3: TokenCounter, pg_server: PgServer) -> Iterator[GatewayHarness]:
    config = {**TEST_CONFIG, "auth": {"failures_per_minute": 1_000_000}}
    harness = GatewayHarness(qwen3, pg_server.create_database(), pg_server.create_database(), config).start()
    yield harness
    harness.stop()


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_no_generated_input_gets_a_server_error(fuzzed: GatewayHarness, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{fuzzed.base_url}/admin/openapi.json",
            "--header",
            f"Authorization: Bearer {fuzzed.keys.admin}",
            "--checks",
            "all",
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # schemathesis keeps a cache of what failed in the folder it runs in
    )

    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "25 selected / 25 total" in run.stdout  # every operation of the schema was exercised
