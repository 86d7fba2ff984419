"""The admin API's authentication: an admin key, resolved as the gateway resolves every key.

``key_of`` is the one place a request's key is found and looked up (a bearer token or
``x-api-key``, through the gateway's ``KeyResolver``: its caches, its failure limit per address,
its revocations); ``require_admin`` is the dependency every admin route is behind. No key, or a
key that is unknown or revoked: 401. A tenant's key: 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cachegate.admin_api.context import admin_context
from cachegate.asgi import Refusal, header
from cachegate.gateway.auth import AuthError, AuthUnavailable, TooManyFailures, bearer_secret
from cachegate.store.base import ApiKey

# Declared so the OpenAPI schema names both ways to send a key; the key is read by key_of.
_BEARER = HTTPBearer(auto_error=False, description="An admin API key: `Authorization: Bearer <key>`")
_API_KEY = APIKeyHeader(name="x-api-key", auto_error=False, description="An admin API key, Anthropic's way")


async def key_of(request: Request) -> ApiKey:
    """The valid key ``request`` carries; a ``Refusal`` (401, 429 or 503) otherwise."""
    client = request.scope.get("client")
    address = str(client[0]) if client else ""
    try:
        secret = bearer_secret(header(request.scope, b"authorization"), header(request.scope, b"x-api-key"))
        return await admin_context(request).keys.resolve(secret, address)
    except AuthError as exc:
        raise Refusal(401, str(exc), "invalid_api_key", type_="authentication_error") from None
    except TooManyFailures as exc:
        raise Refusal(429, str(exc), "too_many_failed_attempts", type_="rate_limit_error") from None
    except AuthUnavailable as exc:
        raise Refusal(503, str(exc), "control_store_unavailable", type_="service_unavailable") from None


async def require_admin(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    _api_key: Annotated[str | None, Security(_API_KEY)] = None,
) -> ApiKey:
    """The request's key, if it is an admin key: 401 without a valid key, 403 for a tenant's."""
    key = await key_of(request)
    if not key.is_admin:
        raise Refusal(403, "this API key is not an admin key", "admin_key_required", type_="permission_error")
    return key
