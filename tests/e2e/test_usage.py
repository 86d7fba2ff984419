"""GET /v1/usage over real HTTP: two tenants, each sees its own usage only, as JSON or CSV (SPEC §13)."""

from __future__ import annotations

import csv
import http.client
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from openai import OpenAI

from cachegate.store.base import LedgerRow

from harness import GatewayHarness
from prompts import MARK_1H, MARK_5M, marked_system, system_text

pytestmark = pytest.mark.over_http(postgres=True)  # and so against `serve --workers 2` too (conftest.py)


def get(gateway: GatewayHarness, target: str, key: str | None) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", target, headers={} if key is None else {"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def chat(gateway: GatewayHarness, key: str, messages: list[dict[str, Any]]) -> None:
    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)
    client.chat.completions.create(model="cached", messages=messages)


@pytest.fixture(scope="module")
def traffic(gateway: GatewayHarness) -> Iterator[dict[str, list[LedgerRow]]]:
    """Tenant A writes a 1h prefix, reads it twice and writes a 5m one; tenant B writes once. The
    ledger rows of each, once stored."""
    system_a = system_text()
    for question in ("What is rule 3?", "And rule 4?", "And rule 5?"):
        chat(gateway, gateway.keys.a, [marked_system(system_a, MARK_1H), {"role": "user", "content": question}])
    chat(gateway, gateway.keys.a, [marked_system(system_text(), MARK_5M), {"role": "user", "content": "Hi"}])
    chat(gateway, gateway.keys.b, [marked_system(system_text(), MARK_1H), {"role": "user", "content": "Hello"}])
    rows = gateway.ledger_rows("chat")
    yield {
        principal: [row for row in rows if row.principal_id == principal]
        for principal in (gateway.keys.principal_a, gateway.keys.principal_b)
    }


def totals(rows: list[LedgerRow]) -> dict[str, Any]:
    return {
        "requests": len(rows),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "cache_read_tokens": sum(r.cache_read_tokens for r in rows),
        "cache_write_5m_tokens": sum(r.cache_creation_5m_tokens for r in rows),
        "cache_write_1h_tokens": sum(r.cache_creation_1h_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "cost": sum((r.cost or Decimal(0) for r in rows), Decimal(0)),
        "list_cost": sum((r.list_cost or Decimal(0) for r in rows), Decimal(0)),
    }


def shown_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    shown = {name: sum(int(r[name]) for r in records) for name in totals([]) if name not in ("cost", "list_cost")}
    shown["cost"] = sum((Decimal(r["cost"]) for r in records), Decimal(0))
    shown["list_cost"] = sum((Decimal(r["list_cost"]) for r in records), Decimal(0))
    return shown


def test_each_tenant_sees_its_own_usage_as_json(gateway: GatewayHarness, traffic: dict[str, list[LedgerRow]]) -> None:
    keys = gateway.keys
    for key, principal in ((keys.a, keys.principal_a), (keys.b, keys.principal_b)):
        status, headers, body = get(gateway, "/v1/usage", key)

        assert status == 200 and headers["content-type"] == "application/json"
        records = json.loads(body)["data"]
        assert {r["principal_id"] for r in records} == {principal}
        assert shown_totals(records) == totals(traffic[principal])
    a_rows = traffic[keys.principal_a]
    assert totals(a_rows)["cache_read_tokens"] > 0 and totals(a_rows)["cache_write_5m_tokens"] > 0
    today = datetime.now(UTC).date().isoformat()
    assert {r["day"] for r in json.loads(get(gateway, "/v1/usage", keys.a)[2])["data"]} == {today}


def test_usage_as_csv(gateway: GatewayHarness, traffic: dict[str, list[LedgerRow]]) -> None:
    status, headers, body = get(gateway, "/v1/usage?format=csv", gateway.keys.a)

    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
    records = list(csv.DictReader(io.StringIO(body.decode())))
    assert {r["principal"] for r in records} == {"tenant-a"}
    assert shown_totals(records) == totals(traffic[gateway.keys.principal_a])
    assert all(r["hit_rate"] and r["saving"] and "miss_first_write" in r for r in records)


def test_a_tenant_cannot_ask_for_another_principal(
    gateway: GatewayHarness, traffic: dict[str, list[LedgerRow]]
) -> None:
    keys = gateway.keys
    for principal in (keys.principal_b, "tenant-b", "prn_ghost"):
        status, _, body = get(gateway, f"/v1/usage?principal={principal}", keys.a)
        assert status == 403 and json.loads(body)["error"]["param"] == "principal"
        assert keys.principal_b.encode() not in body and b"tenant-b" not in body  # nothing about B is said
    own = get(gateway, f"/v1/usage?principal={keys.principal_a}", keys.a)
    by_name = get(gateway, "/v1/usage?principal=tenant-a", keys.a)
    assert own[0] == by_name[0] == 200 and shown_totals(json.loads(own[2])["data"]) == totals(traffic[keys.principal_a])
    admin = json.loads(get(gateway, "/v1/usage", keys.admin)[2])["data"]
    assert all(r["principal"] == "operator" for r in admin)  # an admin key on /v1 is its own tenant too


def test_a_window_leaves_the_rest_out(gateway: GatewayHarness, traffic: dict[str, list[LedgerRow]]) -> None:
    before = get(gateway, "/v1/usage?until=2020-01-01", gateway.keys.a)
    after = get(gateway, "/v1/usage?since=2999-01-01T00:00:00%2B00:00", gateway.keys.a)
    backwards = get(gateway, "/v1/usage?since=2999-01-02&until=2000-01-01", gateway.keys.a)
    today = datetime.now(UTC).date().isoformat()
    lower_case = get(gateway, f"/v1/usage?since={today}t00:00:00z&until=9999-12-31", gateway.keys.a)

    assert before[0] == after[0] == backwards[0] == 200
    assert json.loads(before[2])["data"] == json.loads(after[2])["data"] == json.loads(backwards[2])["data"] == []
    assert lower_case[0] == 200 and shown_totals(json.loads(lower_case[2])["data"]) == totals(
        traffic[gateway.keys.principal_a]
    )


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=yesterday", "since"),
        ("until=2025-02-30", "until"),
        ("since=2025-03-01T00:00:00", "since"),  # no offset
        ("format=xml", "format"),
        ("format=table", "format"),
        ("limit=10", "limit"),
        ("since=2025-03-01&since=2025-03-02", "since"),
    ],
)
def test_bad_parameters_are_400(gateway: GatewayHarness, query: str, param: str) -> None:
    status, _, body = get(gateway, f"/v1/usage?{query}", gateway.keys.a)

    assert status == 400
    assert json.loads(body)["error"]["param"] == param


def test_usage_needs_a_key(gateway: GatewayHarness) -> None:
    assert get(gateway, "/v1/usage", None)[0] == 401
    assert get(gateway, "/v1/usage", "sk-not-a-key")[0] == 401


# the admin API's usage: any principal, for an admin key only


def test_the_admin_api_sees_every_principal_or_the_one_asked_for(
    gateway: GatewayHarness, traffic: dict[str, list[LedgerRow]]
) -> None:
    keys = gateway.keys
    status, headers, body = get(gateway, "/admin/v1/usage", keys.admin)
    by_name = get(gateway, "/admin/v1/usage?principal=tenant-b", keys.admin)
    by_id_csv = get(gateway, f"/admin/v1/usage?principal={keys.principal_a}&format=csv", keys.admin)

    assert status == 200 and headers["content-type"] == "application/json"
    records = json.loads(body)["data"]
    assert {keys.principal_a, keys.principal_b} <= {r["principal_id"] for r in records}
    for principal in (keys.principal_a, keys.principal_b):
        assert shown_totals([r for r in records if r["principal_id"] == principal]) == totals(traffic[principal])
    assert by_name[0] == 200 and shown_totals(json.loads(by_name[2])["data"]) == totals(traffic[keys.principal_b])
    assert by_id_csv[0] == 200 and by_id_csv[1]["content-type"] == "text/csv; charset=utf-8"
    csv_records = list(csv.DictReader(io.StringIO(by_id_csv[2].decode())))
    assert shown_totals(csv_records) == totals(traffic[keys.principal_a])


def test_the_admin_api_usage_refuses_tenants_and_bad_parameters(gateway: GatewayHarness) -> None:
    keys = gateway.keys
    assert get(gateway, "/admin/v1/usage", None)[0] == 401
    tenant = get(gateway, f"/admin/v1/usage?principal={keys.principal_a}", keys.a)
    assert tenant[0] == 403 and json.loads(tenant[2])["error"]["code"] == "admin_key_required"
    ghost = get(gateway, "/admin/v1/usage?principal=prn_ghost", keys.admin)
    assert ghost[0] == 404 and json.loads(ghost[2])["error"]["code"] == "not_found"
    for query, param in (("since=yesterday", "since"), ("format=xml", "format"), ("limit=1", "limit")):
        status, _, body = get(gateway, f"/admin/v1/usage?{query}", keys.admin)
        assert status == 400 and json.loads(body)["error"]["param"] == param, body


def test_the_dashboards_cookie_does_not_open_the_admin_api(gateway: GatewayHarness) -> None:
    """The login cookie is the dashboard pages' only: sent alone to the API, it is no key (401)."""
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/admin/v1/usage", headers={"Cookie": f"cachegate_admin={gateway.keys.admin}"})
        response = connection.getresponse()
        assert response.status == 401 and json.loads(response.read())["error"]["code"] == "invalid_api_key"
    finally:
        connection.close()
