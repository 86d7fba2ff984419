"""Bad input over plain HTTP, where an SDK would refuse to send it; and connections spread over workers."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from workers_harness import WorkersHarness

from harness import GatewayHarness

pytestmark = pytest.mark.over_http


def post(
    gateway: GatewayHarness, body: bytes, key: str | None = "A", path: str = "/v1/chat/completions"
) -> tuple[int, dict]:
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {gateway.keys.a if key == 'A' else key}"
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_malformed_json_is_400(gateway: GatewayHarness) -> None:
    status, body = post(gateway, b'{"model": "cached", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def test_body_without_model_is_400(gateway: GatewayHarness) -> None:
    for payload in (b"[1, 2]", b'{"messages": []}', b'{"model": 7, "messages": []}'):
        status, body = post(gateway, payload)
        assert status == 400, payload
        assert body["error"]["param"] == "model"


def test_huge_body_is_413(gateway: GatewayHarness) -> None:
    limit = gateway.config.body_limit_bytes
    payload = b'{"model": "cached", "messages": [{"role": "user", "content": "' + b"x" * limit + b'"}]}'
    status, body = post(gateway, payload)
    assert status == 413 and body["error"]["code"] == "body_too_large"


def test_missing_key_is_401_in_openai_shape(gateway: GatewayHarness) -> None:
    status, body = post(gateway, b'{"model": "cached", "messages": []}', key=None)
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_markers_with_wrong_shape_are_400_with_their_path(gateway: GatewayHarness) -> None:
    payload = {
        "model": "cached",
        "messages": [{"role": "user", "content": "hi", "cache_control": "yes please"}],
    }
    status, body = post(gateway, json.dumps(payload).encode())
    assert status == 400
    assert body["error"]["code"] == "invalid_cache_control"
    assert body["error"]["param"] == "messages[0].cache_control"


def test_unknown_path_outside_v1_is_404(gateway: GatewayHarness) -> None:
    status, body = post(gateway, b"{}", path="/nope")
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.workers_only
def test_connections_are_spread_over_both_workers(gateway: WorkersHarness) -> None:
    """Each worker answers requests of its own: the runs of the ``workers2`` parameters test two processes."""
    pids = gateway.worker_pids()
    assert len(set(pids)) == 2
    served = gateway.served_by()
    assert set(served) == set(pids), served
