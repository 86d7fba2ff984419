"""The admin HTTP API (SPEC §13) over real HTTP against a running gateway: authentication, every
operation, and the error shapes (400 naming the field, 404, 409; never FastAPI's own)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import schemathesis
from openai import OpenAI
from prometheus_client import REGISTRY
from schemathesis.core.result import Ok

from harness import GatewayHarness


@pytest.fixture(scope="module")
def admin(gateway: GatewayHarness) -> Iterator[httpx.Client]:
    """An HTTP client of the gateway that sends the admin key."""
    headers = {"Authorization": f"Bearer {gateway.keys.admin}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error of a response in cachegate's shape, which every admin error has."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


# authentication


@pytest.mark.parametrize("path", ["/admin/v1/principals", "/admin/openapi.json"])
def test_no_key_is_401_and_a_tenant_key_403(gateway: GatewayHarness, path: str) -> None:
    with httpx.Client(base_url=gateway.base_url) as client:
        missing = client.get(path)
        unknown = client.get(path, headers={"Authorization": "Bearer sk-cg-not-a-key-of-anyone"})
        tenant = client.get(path, headers={"Authorization": f"Bearer {gateway.keys.a}"})
        tenant_x = client.get(path, headers={"x-api-key": gateway.keys.b})

    assert (missing.status_code, error_of(missing)["code"]) == (401, "invalid_api_key")
    assert (unknown.status_code, error_of(unknown)["code"]) == (401, "invalid_api_key")
    for refused in (tenant, tenant_x):
        assert (refused.status_code, error_of(refused)["code"]) == (403, "admin_key_required")


def test_an_admin_key_is_taken_as_x_api_key_too(gateway: GatewayHarness) -> None:
    with httpx.Client(base_url=gateway.base_url) as client:
        response = client.get("/admin/v1/principals", headers={"x-api-key": gateway.keys.admin})

    assert response.status_code == 200


def test_admin_requests_are_counted_by_status_class(gateway: GatewayHarness, admin: httpx.Client) -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("cachegate_requests_total", {"route": "admin", "status": "4xx"}) or 0.0

    before = count()
    admin.get("/admin/v1/principals/nobody-at-all")

    deadline = time.monotonic() + 10  # counted once the answer is sent: a moment after the client has it
    while count() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count() == before + 1


# principals


def test_principals_are_created_listed_and_fetched(admin: httpx.Client) -> None:
    name = unique("acme")

    created = admin.post("/admin/v1/principals", json={"name": name})
    listing = admin.get("/admin/v1/principals")
    by_name = admin.get(f"/admin/v1/principals/{name}")
    by_id = admin.get(f"/admin/v1/principals/{created.json()['id']}")

    assert created.status_code == 201
    principal = created.json()
    assert principal["name"] == name and principal["id"].startswith("prn_")
    assert principal in listing.json()["data"]
    assert by_name.json() == by_id.json() == principal


def test_a_duplicate_principal_is_409(admin: httpx.Client) -> None:
    name = unique("dup")
    admin.post("/admin/v1/principals", json={"name": name})

    again = admin.post("/admin/v1/principals", json={"name": name})

    assert again.status_code == 409
    assert error_of(again) == {
        "message": f"principal {name!r} already exists",
        "type": "conflict_error",
        "param": None,
        "code": "conflict",
    }


def test_an_unknown_principal_is_404(admin: httpx.Client) -> None:
    response = admin.get("/admin/v1/principals/nobody-at-all")

    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 7}, "name"),
        ({"name": "ok", "admin": True}, "admin"),
        ([], "body"),
    ],
)
def test_an_invalid_body_is_400_naming_the_field(admin: httpx.Client, body: object, param: str) -> None:
    response = admin.post("/admin/v1/principals", json=body)

    assert response.status_code == 400
    assert error_of(response)["param"] == param


def test_a_body_that_is_not_json_is_400(admin: httpx.Client) -> None:
    response = admin.post("/admin/v1/principals", content=b"{name", headers={"content-type": "application/json"})

    assert response.status_code == 400 and error_of(response)["code"] == "invalid_json"


def test_a_form_body_is_400_asking_for_json(admin: httpx.Client) -> None:
    response = admin.post("/admin/v1/principals", data={"name": "acme"})

    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "the body must be JSON sent as content-type: application/json, not application/x-www-form-urlencoded"
    )


@pytest.mark.parametrize(
    "body", [{"principal": "tenant-a", "admin": "yes"}, {"principal": "tenant-a", "admin": 1}, {"principal": 7}]
)
def test_a_key_body_of_the_wrong_types_is_400(admin: httpx.Client, body: dict[str, Any]) -> None:
    response = admin.post("/admin/v1/keys", json=body)

    assert response.status_code == 400
    assert error_of(response)["param"] in ("admin", "principal")


def test_a_body_over_the_bound_is_413_whether_declared_or_streamed(admin: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        yield from (b"x" * 65536 for _ in range(20))
        yield b'"}'

    declared = admin.post("/admin/v1/principals", content=b'{"name": "' + b"x" * (1 << 20) + b'"}')
    streamed = admin.post("/admin/v1/principals", content=chunks(), headers={"content-type": "application/json"})

    for refused in (declared, streamed):
        assert (refused.status_code, error_of(refused)["code"]) == (413, "body_too_large")


def test_the_control_store_down_is_503(gateway: GatewayHarness, admin: httpx.Client) -> None:
    gateway.store.down = True  # the admin key stays known to the gateway; the catalog cannot be read

    response = admin.get("/admin/v1/endpoints")

    assert (response.status_code, error_of(response)["code"]) == (503, "control_store_unavailable")


def test_unknown_routes_and_methods_answer_in_cachegate_s_shape(admin: httpx.Client) -> None:
    missing = admin.get("/admin/v1/nothing-here")
    wrong_method = admin.delete("/admin/v1/principals")

    assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")
    assert (wrong_method.status_code, error_of(wrong_method)["code"]) == (405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "GET, POST"


# keys


def test_a_key_secret_is_in_its_creation_response_only_and_works_at_once(
    gateway: GatewayHarness, admin: httpx.Client
) -> None:
    name = unique("keyed")
    principal = admin.post("/admin/v1/principals", json={"name": name}).json()

    created = admin.post("/admin/v1/keys", json={"principal": name})
    admin_key = admin.post("/admin/v1/keys", json={"principal": principal["id"], "admin": True})
    key = created.json()
    listing = admin.get("/admin/v1/keys", params={"principal": name})
    fetched = admin.get(f"/admin/v1/keys/{key['id']}")
    with httpx.Client(base_url=gateway.base_url) as client:
        as_tenant = client.get("/v1/models", headers={"Authorization": f"Bearer {key['secret']}"})
        as_new_admin = client.get("/admin/v1/keys", headers={"x-api-key": admin_key.json()["secret"]})

    assert created.status_code == 201 and key["secret"].startswith("cg-")
    assert {k: v for k, v in key.items() if k != "secret"} == fetched.json()
    assert fetched.json() == {
        "id": key["id"],
        "principal_id": principal["id"],
        "principal": name,
        "admin": False,
        "created_at": key["created_at"],
        "revoked_at": None,
    }
    assert [k["id"] for k in listing.json()["data"]] == [key["id"], admin_key.json()["id"]]
    every_answer = listing.text + fetched.text + admin.get("/admin/v1/keys").text
    assert key["secret"] not in every_answer and "secret" not in every_answer
    assert as_tenant.status_code == 200 and as_new_admin.status_code == 200


def test_a_revoked_key_stops_working_at_once(gateway: GatewayHarness, admin: httpx.Client) -> None:
    name = unique("revoked")
    admin.post("/admin/v1/principals", json={"name": name})
    key = admin.post("/admin/v1/keys", json={"principal": name}).json()
    headers = {"Authorization": f"Bearer {key['secret']}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers) as client:
        before = client.get("/v1/models")  # the key is now cached by this process

        revoked = admin.post(f"/admin/v1/keys/{key['id']}/revoke")
        after = client.get("/v1/models")
        again = admin.post(f"/admin/v1/keys/{key['id']}/revoke")

    assert before.status_code == 200
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert after.status_code == 401
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_the_key_of_the_request_cannot_revoke_itself(gateway: GatewayHarness, admin: httpx.Client) -> None:
    own = next(k for k in admin.get("/admin/v1/keys").json()["data"] if k["admin"] and k["principal"] == "operator")

    refused = admin.post(f"/admin/v1/keys/{own['id']}/revoke")

    assert (refused.status_code, error_of(refused)["code"]) == (409, "own_key")
    assert admin.get(f"/admin/v1/keys/{own['id']}").json()["revoked_at"] is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/admin/v1/keys", {"principal": "nobody-at-all"}),
        ("GET", "/admin/v1/keys/key_nothing", None),
        ("POST", "/admin/v1/keys/key_nothing/revoke", None),
        ("GET", "/admin/v1/keys?principal=nobody-at-all", None),
        ("GET", "/admin/v1/endpoints/nothing", None),
        ("GET", "/admin/v1/models/nothing", None),
        ("PUT", "/admin/v1/models/m-x", {"endpoints": ["fake", "no-such-endpoint"], "upstream_model": "x"}),
        ("GET", "/admin/v1/tariffs/nothing", None),
        ("POST", "/admin/v1/tariffs/nothing", {}),
        ("DELETE", "/admin/v1/tariffs/plain", None),  # no tariff in force
        ("PUT", "/admin/v1/budgets/principal/nobody-at-all/day", {"limit": "1"}),
        ("PUT", "/admin/v1/budgets/key/key_nothing/day", {"limit": "1"}),
        ("DELETE", "/admin/v1/budgets/key/key_nothing/month", None),
        ("PUT", "/admin/v1/rate-limits/key_nothing", {"requests_per_minute": 5}),
        ("GET", "/admin/v1/rate-limits/key_nothing", None),
        ("DELETE", "/admin/v1/rate-limits/key_nothing", None),
    ],
)
def test_what_does_not_exist_is_404(admin: httpx.Client, method: str, path: str, body: object) -> None:
    response = admin.request(method, path, json=body)

    assert response.status_code == 404, response.text
    assert error_of(response)["code"] == "not_found"


# endpoints and models


def test_an_endpoint_upstream_key_is_never_returned(admin: httpx.Client) -> None:
    name = unique("vllm")

    put = admin.put(f"/admin/v1/endpoints/{name}", json={"base_url": "http://10.0.0.5:8000/v1", "api_key": "sk-up"})
    replaced = admin.put(f"/admin/v1/endpoints/{name}", json={"base_url": "https://llm.example/v1", "api_key": "sk-up"})
    fetched = admin.get(f"/admin/v1/endpoints/{name}")
    listing = admin.get("/admin/v1/endpoints")

    assert put.json() == {"name": name, "base_url": "http://10.0.0.5:8000/v1", "api_key": "set"}
    assert replaced.json() == fetched.json() == {"name": name, "base_url": "https://llm.example/v1", "api_key": "set"}
    assert fetched.json() in listing.json()["data"]
    assert "sk-up" not in put.text + replaced.text + fetched.text + listing.text


def test_a_model_added_through_the_api_serves_at_once(gateway: GatewayHarness, admin: httpx.Client) -> None:
    alias = f"team/{unique('qwen')}"  # an alias may hold slashes
    body = {
        "endpoints": ["fake"],
        "upstream_model": "qwen3-fake",
        "input_price": "0.000001",
        "output_price": "0.000002",
        "automatic_caching": "1h",
    }

    put = admin.put(f"/admin/v1/models/{alias}", json=body)
    tariff = admin.post(f"/admin/v1/tariffs/{alias}", json={"read": "0.05", "min_prefix_tokens": 64})
    fetched = admin.get(f"/admin/v1/models/{alias}")
    openai = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.keys.a, max_retries=0)
    answer = openai.chat.completions.create(model=alias, messages=[{"role": "user", "content": "Hello"}])

    assert put.status_code == 200
    assert put.json() == {
        "alias": alias,
        **body,
        "tokenizer": "qwen3",
        "caching": False,
    }
    assert tariff.status_code == 201 and fetched.json()["caching"] is True
    assert fetched.json() in admin.get("/admin/v1/models").json()["data"]
    assert answer.model and answer.choices


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"endpoints": ["fake"], "upstream_model": "x", "tokenizer": "llama3"}, "tokenizer"),
        ({"endpoints": ["fake"], "upstream_model": "x", "automatic_caching": "24h"}, "automatic_caching"),
        ({"endpoints": ["fake"], "upstream_model": "x", "automatic_caching": "2h"}, "automatic_caching"),
        ({"endpoints": ["fake"], "upstream_model": "x", "input_price": "-1"}, "input_price"),
        ({"endpoints": ["fake"], "upstream_model": "x", "input_price": 0.1}, "input_price"),
        ({"endpoints": ["fake"], "upstream_model": "x", "output_price": "1e-3"}, "output_price"),
        ({"endpoints": ["fake"]}, "upstream_model"),
        ({"endpoints": ["a/b"], "upstream_model": "x"}, "endpoints.0"),
        ({"endpoints": ["fake", "fake"], "upstream_model": "x"}, "endpoints"),
        ({"endpoints": [], "upstream_model": "x"}, "endpoints"),
        ({"endpoint": "fake", "upstream_model": "x"}, "endpoints"),
    ],
)
def test_a_model_the_gateway_could_not_serve_is_400(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = admin.put(f"/admin/v1/models/{unique('refused')}", json=body)

    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/v1/endpoints/e", {"base_url": "localhost:8000"}, "base_url"),
        ("/admin/v1/endpoints/e", {"base_url": "http://x:99999/v1"}, "base_url"),
        ("/admin/v1/endpoints/e", {"base_url": "http://[4D76F.C4fb446.42]/v1"}, "base_url"),  # not IPv6
        ("/admin/v1/endpoints/e", {"base_url": "http://a..b/v1"}, "base_url"),  # an empty label
        ("/admin/v1/endpoints/e", {"base_url": "http://x/v1", "api_key": "two words"}, "api_key"),
        ("/admin/v1/budgets/key/k/day", {"limit": "-5"}, "limit"),
        ("/admin/v1/budgets/key/k/day", {"limit": "1" * 21}, "limit"),
        ("/admin/v1/budgets/key/k/week", {"limit": "5"}, "period"),
        ("/admin/v1/budgets/team/k/day", {"limit": "5"}, "subject"),
        ("/admin/v1/rate-limits/k", {}, "requests_per_minute"),
        ("/admin/v1/rate-limits/k", {"requests_per_minute": 0}, "requests_per_minute"),
        ("/admin/v1/rate-limits/k", {"requests_per_minute": None}, "requests_per_minute"),
        ("/admin/v1/rate-limits/k", {"input_tokens_per_minute": 2**31}, "input_tokens_per_minute"),
        ("/admin/v1/rate-limits/k", {"requests_per_minute": True}, "requests_per_minute"),
    ],
)
def test_invalid_values_are_400_naming_the_field(
    admin: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    response = admin.put(path, json=body)

    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


# tariffs


def test_tariff_versions_are_opened_listed_and_closed(gateway: GatewayHarness, admin: httpx.Client) -> None:
    alias = unique("tariffed")
    admin.put(f"/admin/v1/models/{alias}", json={"endpoints": ["fake"], "upstream_model": "qwen3-fake"})

    first = admin.post(f"/admin/v1/tariffs/{alias}", json={})
    second = admin.post(f"/admin/v1/tariffs/{alias}", json={"write_1h": "1.8", "min_prefix_tokens": 2048})
    versions = admin.get(f"/admin/v1/tariffs/{alias}").json()["data"]
    closed = admin.delete(f"/admin/v1/tariffs/{alias}")
    again = admin.delete(f"/admin/v1/tariffs/{alias}")
    after = admin.get(f"/admin/v1/tariffs/{alias}").json()["data"]

    assert first.status_code == second.status_code == 201
    assert {k: first.json()[k] for k in ("write_5m", "write_1h", "write_24h", "read", "min_prefix_tokens")} == {
        "write_5m": "1.25",
        "write_1h": "2.0",
        "write_24h": "2.5",
        "read": "0.1",
        "min_prefix_tokens": 1024,
    }
    assert [v["state"] for v in versions] == ["ended", "in force"]
    assert versions[0]["valid_until"] == versions[1]["valid_from"]
    assert (versions[1]["write_1h"], versions[1]["min_prefix_tokens"]) == ("1.8", 2048)
    assert closed.status_code == 204 and again.status_code == 404
    assert [v["state"] for v in after] == ["ended", "ended"]
    assert all(v in admin.get("/admin/v1/tariffs").json()["data"] for v in after)
    assert gateway.gateway.catalog.current.tariff_at(alias, datetime.now(UTC)) is None


# budgets and rate limits


def test_budgets_are_set_replaced_listed_and_deleted(gateway: GatewayHarness, admin: httpx.Client) -> None:
    name = unique("budgeted")
    principal = admin.post("/admin/v1/principals", json={"name": name}).json()
    key = admin.post("/admin/v1/keys", json={"principal": name}).json()

    by_name = admin.put(f"/admin/v1/budgets/principal/{name}/month", json={"limit": "25.00"})
    of_key = admin.put(f"/admin/v1/budgets/key/{key['id']}/day", json={"limit": "1.5"})
    replaced = admin.put(f"/admin/v1/budgets/principal/{principal['id']}/month", json={"limit": "30"})
    mine = admin.get("/admin/v1/budgets", params={"principal": name, "key": key["id"]}).json()["data"]
    in_catalog = [b for b in gateway.gateway.catalog.current.budgets if b.subject_id in (principal["id"], key["id"])]
    deleted = admin.delete(f"/admin/v1/budgets/key/{key['id']}/day")
    again = admin.delete(f"/admin/v1/budgets/key/{key['id']}/day")

    assert by_name.json() == {
        "subject": "principal",
        "subject_id": principal["id"],
        "principal": name,
        "period": "month",
        "limit": "25.00",
    }
    assert of_key.json() == {
        "subject": "key",
        "subject_id": key["id"],
        "principal": None,
        "period": "day",
        "limit": "1.5",
    }
    assert replaced.json()["limit"] == "30"
    assert mine == [of_key.json(), replaced.json()]
    assert len(in_catalog) == 2  # this process reloaded its catalog after each change
    assert deleted.status_code == 204 and again.status_code == 404
    assert admin.get("/admin/v1/budgets", params={"key": key["id"]}).json()["data"] == []
    assert replaced.json() in admin.get("/admin/v1/budgets").json()["data"]


def test_rate_limits_are_set_replaced_listed_and_lifted(gateway: GatewayHarness, admin: httpx.Client) -> None:
    name = unique("limited")
    admin.post("/admin/v1/principals", json={"name": name})
    key = admin.post("/admin/v1/keys", json={"principal": name}).json()["id"]

    set_ = admin.put(f"/admin/v1/rate-limits/{key}", json={"requests_per_minute": 60})
    replaced = admin.put(f"/admin/v1/rate-limits/{key}", json={"input_tokens_per_minute": 2000})
    fetched = admin.get(f"/admin/v1/rate-limits/{key}")
    in_catalog = gateway.gateway.catalog.current.rate_limits.get(key)
    lifted = admin.delete(f"/admin/v1/rate-limits/{key}")
    again = admin.delete(f"/admin/v1/rate-limits/{key}")

    assert set_.json() == {"key_id": key, "requests_per_minute": 60, "input_tokens_per_minute": None}
    assert (
        replaced.json()
        == fetched.json()
        == {"key_id": key, "requests_per_minute": None, "input_tokens_per_minute": 2000}
    )
    assert in_catalog is not None and in_catalog.input_tokens_per_minute == 2000
    assert lifted.status_code == 204 and again.status_code == 404
    assert key not in [r["key_id"] for r in admin.get("/admin/v1/rate-limits").json()["data"]]


# the schema

ROUTES = {
    ("GET", "/admin/v1/principals"),
    ("POST", "/admin/v1/principals"),
    ("GET", "/admin/v1/principals/{principal}"),
    ("GET", "/admin/v1/keys"),
    ("POST", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys/{key_id}"),
    ("POST", "/admin/v1/keys/{key_id}/revoke"),
    ("GET", "/admin/v1/endpoints"),
    ("GET", "/admin/v1/endpoints/{name}"),
    ("PUT", "/admin/v1/endpoints/{name}"),
    ("GET", "/admin/v1/models"),
    ("GET", "/admin/v1/models/{alias}"),
    ("PUT", "/admin/v1/models/{alias}"),
    ("GET", "/admin/v1/tariffs"),
    ("GET", "/admin/v1/tariffs/{alias}"),
    ("POST", "/admin/v1/tariffs/{alias}"),
    ("DELETE", "/admin/v1/tariffs/{alias}"),
    ("GET", "/admin/v1/budgets"),
    ("PUT", "/admin/v1/budgets/{subject}/{who}/{period}"),
    ("DELETE", "/admin/v1/budgets/{subject}/{who}/{period}"),
    ("GET", "/admin/v1/rate-limits"),
    ("GET", "/admin/v1/rate-limits/{key_id}"),
    ("PUT", "/admin/v1/rate-limits/{key_id}"),
    ("DELETE", "/admin/v1/rate-limits/{key_id}"),
    ("GET", "/admin/v1/usage"),
}


def test_the_openapi_document_is_valid_and_lists_every_route(admin: httpx.Client) -> None:
    document = admin.get("/admin/openapi.json").json()

    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema: raises for a document that is not valid
    routes = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert routes == ROUTES
    operations = list(schema.get_all_operations())
    assert len(operations) == len(ROUTES)
    assert all(isinstance(result, Ok) for result in operations), operations  # an Err: one it could not read
    responses = [op["responses"] for item in document["paths"].values() for op in item.values()]
    assert all("422" not in answers and {"400", "401", "403"} <= set(answers) for answers in responses)
    model_put = document["components"]["schemas"]["ModelPut"]["properties"]
    assert model_put["tokenizer"]["enum"] == ["qwen3"]  # what this configuration has
    assert document["components"]["securitySchemes"].keys() == {"HTTPBearer", "APIKeyHeader"}
