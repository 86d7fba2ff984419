"""Resolve a client's bearer key to its principal (SPEC §2.1, §11, §12).

Keys are looked up by the SHA-256 of the secret and compared in constant time. Answers are
cached for a short while, so a control-store outage does not stop keys already seen; a key
never seen while the store is down gets 503, never an unauthenticated pass.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from cachegate.core.errors import CachegateError
from cachegate.store.base import ApiKey, ControlStore, StoreError
from cachegate.store.keys import hash_secret


class AuthError(CachegateError):
    """The request carries no usable key (401)."""


class AuthUnavailable(CachegateError):
    """The key is unknown here and the control store cannot be asked (503)."""


@dataclass(frozen=True, slots=True)
class _Cached:
    key: ApiKey | None
    fetched_at: float


def bearer_secret(authorization: bytes | None, x_api_key: bytes | None = None) -> str:
    """The secret from ``Authorization: Bearer …`` (or Anthropic's ``x-api-key``)."""
    if authorization:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.decode("latin-1").strip()
    raise AuthError("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")


class KeyResolver:
    def __init__(self, store: ControlStore, ttl_seconds: float = 30.0, capacity: int = 100_000) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._capacity = capacity
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()

    async def resolve(self, secret: str) -> ApiKey:
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or now - cached.fetched_at > self._ttl:
            try:
                key = await self._store.find_api_key(digest)
            except StoreError as exc:
                if cached is None:
                    raise AuthUnavailable("the control store is unavailable and this key is not known yet") from exc
                key = cached.key  # keep serving what we knew; retry on the next request
            else:
                cached = _Cached(key, now)
                self._cache[digest] = cached
                self._cache.move_to_end(digest)
                if len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
        else:
            key = cached.key
        if key is None or key.revoked_at is not None or not hmac.compare_digest(key.secret_hash, digest):
            raise AuthError("invalid API key")
        return key

    def forget(self) -> None:
        """Drop every cached answer (after a revocation, for instance)."""
        self._cache.clear()
