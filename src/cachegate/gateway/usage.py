"""GET /v1/usage: a tenant's own usage (SPEC §13), as JSON or CSV (``?format=csv``).

Any valid key may ask, and it is always answered with its own principal's usage: a ``principal``
parameter naming anyone else (by id or name) is refused (403) without looking it up, so the answer
says nothing about whether another principal exists. Parameters, report and renderings are the
usage operation's (``operations/usage.py``), shared with ``cachegate usage`` and the admin API.
"""

from __future__ import annotations

import dataclasses
from typing import Final
from urllib.parse import parse_qsl

from cachegate.asgi import JSON_HEADERS, Refusal, send_bytes
from cachegate.gateway.routing import Request
from cachegate.operations import InvalidArgument
from cachegate.operations.usage import UsageFormat, parse_parameters, usage, usage_csv, usage_json
from cachegate.store.base import ControlStore, StoreUnavailable

CSV_HEADERS: Final = [(b"content-type", b"text/csv; charset=utf-8")]
_FORMATS: Final = (UsageFormat.JSON, UsageFormat.CSV)
_NOT_YOURS: Final = "a key sees its own principal's usage only"


class TenantUsage:
    def __init__(self, store: ControlStore) -> None:
        self._store = store

    async def __call__(self, request: Request) -> int:
        own = request.key.principal_id
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        try:
            parameters = parse_parameters(parse_qsl(query_string, keep_blank_values=True), _FORMATS)
            principal = await self._store.get_principal(own)
            if parameters.principal not in (None, principal.id, principal.name):
                raise Refusal(
                    403,
                    "a key sees its own principal's usage only",
                    "permission_denied",
                    "principal",
                    "permission_error",
                )
            report = await usage(self._store, dataclasses.replace(parameters, principal=own))
        except InvalidArgument as exc:
            raise Refusal(400, exc.message, "invalid_parameter", exc.argument) from None
        except StoreUnavailable as exc:
            raise Refusal(
                503, f"the usage ledger is unavailable: {exc}", "control_store_unavailable", type_="service_unavailable"
            ) from None
        if parameters.format is UsageFormat.CSV:
            await send_bytes(request.send, 200, CSV_HEADERS, usage_csv(report).encode())
        else:
            await send_bytes(request.send, 200, JSON_HEADERS, usage_json(report))
        return 200
