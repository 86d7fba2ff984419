"""GET /v1/usage: a tenant's own usage (SPEC §13), as JSON or CSV (``?format=csv``).

Any valid key may ask, and it is always answered with its own principal's usage: a ``principal``
parameter naming anyone else (by id or name) is refused (403) without looking it up, so the answer
says nothing about whether another principal exists. Parameters and renderings are ``reporting.py``'s, shared
with ``cachegate usage`` and the admin API.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl

from cachegate import reporting
from cachegate.asgi import JSON_HEADERS, Refusal, send_bytes
from cachegate.gateway.routing import Request
from cachegate.reporting import UsageFormat, UsageParameterError
from cachegate.store.base import ControlStore, StoreUnavailable

CSV_HEADERS: Final = [(b"content-type", b"text/csv; charset=utf-8")]
_FORMATS: Final = (UsageFormat.JSON, UsageFormat.CSV)


class TenantUsage:
    def __init__(self, store: ControlStore) -> None:
        self._store = store

    async def __call__(self, request: Request) -> int:
        principal_id = request.key.principal_id
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        try:
            parameters = reporting.parse_parameters(parse_qsl(query_string, keep_blank_values=True), _FORMATS)
        except UsageParameterError as exc:
            raise Refusal(400, str(exc), "invalid_parameter", exc.parameter) from None
        try:
            principal = await self._store.get_principal(principal_id)
            if parameters.principal not in (None, principal.id, principal.name):
                raise Refusal(
                    403,
                    "a key sees its own principal's usage only",
                    "permission_denied",
                    "principal",
                    "permission_error",
                )
            groups = await self._store.usage(parameters.query(principal_id))
        except StoreUnavailable as exc:
            raise Refusal(
                503, f"the usage ledger is unavailable: {exc}", "control_store_unavailable", type_="service_unavailable"
            ) from None
        names = {principal.id: principal.name}
        if parameters.format is UsageFormat.CSV:
            await send_bytes(request.send, 200, CSV_HEADERS, reporting.usage_csv(groups, names).encode())
        else:
            await send_bytes(request.send, 200, JSON_HEADERS, reporting.usage_json(parameters, groups, names))
        return 200
