"""The admin HTTP API (SPEC §13) over real HTTP against a running gateway: authentication, every
operation, and the error shapes (400 naming the field, 404, 409; never FastAPI's own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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


def test_unknown_routes_and_methods_answer_in_cachegate_s_shape(admin: httpx.Client) -> None:
    missing = admin.get("/admin/v1/nothing-here")
    wrong_method = admin.delete("/admin/v1/principals")

    assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")
    assert (wrong_method.status_code, error_of(wrong_method)["code"]) == (405, "method_not_allowed")


# the schema


def test_the_openapi_document_lists_every_route(admin: httpx.Client) -> None:
    schema = admin.get("/admin/openapi.json").json()

    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert {("GET", "/admin/v1/principals"), ("POST", "/admin/v1/principals")} <= routes
    assert ("GET", "/admin/v1/principals/{principal}") in routes
    responses = [op["responses"] for item in schema["paths"].values() for op in item.values()]
    assert all("422" not in answers and "400" in answers for answers in responses)
