"""The dashboard's login: an admin key, given once in a form and kept in a cookie.

The cookie holds the key itself, so nothing is stored server-side and every replica accepts it;
it is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it, so a
forged form cannot act with it) and ``Secure`` when the page was served over https, and its path
is ``/admin``. Only the dashboard's pages read it: the admin API asks for the key in a header, so a
cookie alone never authorises an API call. The key is checked at every page like any other key
(``KeyResolver``: cached, revocation seen within the catalog refresh, failures limited per
address); a tenant key cannot log in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from cachegate.gateway.auth import AuthError, AuthUnavailable, KeyResolver, TooManyFailures
from cachegate.store.base import ApiKey

COOKIE: Final = "cachegate_admin"
COOKIE_PATH: Final = "/admin"


class Refused(enum.Enum):
    """Why a key does not open the dashboard; ``status`` is what the page answers."""

    NO_KEY = "no_key"
    INVALID = "invalid"
    NOT_ADMIN = "not_admin"
    TOO_MANY_FAILURES = "too_many_failures"
    STORE_UNAVAILABLE = "store_unavailable"

    @property
    def status(self) -> int:
        return _STATUSES[self]


@dataclass(frozen=True, slots=True)
class Checked:
    key: ApiKey | None
    refused: Refused | None

    @property
    def message(self) -> str:
        return _MESSAGES[self.refused] if self.refused else ""


_STATUSES: Final = {
    Refused.NO_KEY: 401,
    Refused.INVALID: 401,
    Refused.NOT_ADMIN: 403,
    Refused.TOO_MANY_FAILURES: 429,
    Refused.STORE_UNAVAILABLE: 503,
}
_MESSAGES: Final = {
    Refused.NO_KEY: "Log in with an admin key.",
    Refused.INVALID: "That is not a valid API key.",
    Refused.NOT_ADMIN: "That key is not an admin key: the dashboard needs one.",
    Refused.TOO_MANY_FAILURES: "Too many invalid keys from this address; try again in a minute.",
    Refused.STORE_UNAVAILABLE: "The control store is unavailable; the key cannot be checked now.",
}


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def check_key(keys: KeyResolver, secret: str | None, address: str) -> Checked:
    """Whether ``secret`` is a valid admin key."""
    if not secret:
        return Checked(None, Refused.NO_KEY)
    try:
        key = await keys.resolve(secret, address)
    except AuthError:
        return Checked(None, Refused.INVALID)
    except TooManyFailures:
        return Checked(None, Refused.TOO_MANY_FAILURES)
    except AuthUnavailable:
        return Checked(None, Refused.STORE_UNAVAILABLE)
    if not key.is_admin:
        return Checked(None, Refused.NOT_ADMIN)
    return Checked(key, None)


async def logged_in(keys: KeyResolver, request: Request) -> Checked:
    """The admin key of the request's cookie."""
    return await check_key(keys, request.cookies.get(COOKIE), client_address(request))


def keep_key(response: Response, secret: str, request: Request) -> None:
    response.set_cookie(
        COOKIE,
        secret,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def forget_key(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
