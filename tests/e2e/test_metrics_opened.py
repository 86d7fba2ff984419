"""``metrics.require_admin_key: false``: the operator opens /metrics on a port no tenant reaches (SPEC §12)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import TEST_CONFIG

from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness


@pytest.fixture(scope="module")
def open_metrics(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    folder: Path = tmp_path_factory.mktemp("open-metrics")
    config = {**TEST_CONFIG, "metrics": {"require_admin_key": False}}
    harness = GatewayHarness(qwen3, f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db", config).start()
    yield harness
    harness.stop()


def test_opened_metrics_answer_without_a_key(open_metrics: GatewayHarness) -> None:
    url = urlsplit(open_metrics.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200 and b"cachegate_requests_total" in response.read()
    finally:
        connection.close()
