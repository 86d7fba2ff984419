"""Resolve a client's bearer key to its principal (SPEC §2.1, §11, §12).

Keys are looked up by the SHA-256 of the secret and compared in constant time. Known keys are
cached for a short while, so a control-store outage does not stop keys already seen; a key never
seen while the store is down gets 503, never an unauthenticated pass.

Unknown keys have a cache of their own (cachetools' ``TTLCache``): a flood of random keys costs
one store query per new key and none per repeat, and cannot evict a real key from the key cache.
Failed attempts are counted per client address; past the limit an address gets 429 without a
lookup, so a flood of ever-new keys cannot turn into as many store queries either.

Revocation: the process that revokes (``revoke``, or the admin API's revocation through
``forget_key``) forgets the key at once; every other replica
forgets all its cached keys when the catalog refresh sees the store's revocation count change
(``Catalog.revocations``), within ``catalog_refresh_seconds``.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

from cachegate.config import AuthConfig
from cachegate.core.errors import CachegateError
from cachegate.store.base import ApiKey, ControlStore
from cachegate.store.keys import hash_secret

log = logging.getLogger(__name__)

_FAILURE_WINDOW_SECONDS = 60.0


def _now() -> float:
    return time.monotonic()


class AuthError(CachegateError):
    """The request carries no usable key (401)."""


class AuthUnavailable(CachegateError):
    """The key is unknown here and the control store cannot be asked (503)."""


class TooManyFailures(Exception):
    """This client address has failed to authenticate too often lately (429)."""


@dataclass(frozen=True, slots=True)
class _Known:
    key: ApiKey
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


class FailureLimiter:
    """Counts failed authentications per client address.

    An address's count lives until a minute passes without a failure (each failure renews it:
    ``TTLCache`` restarts an item's time on assignment), so a client that keeps guessing stays
    limited; the refusals themselves are not failures, and cost nothing.
    """

    def __init__(self, per_minute: int, capacity: int = 100_000) -> None:
        self._limit = per_minute
        self._failures: TTLCache[str, int] = TTLCache(maxsize=capacity, ttl=_FAILURE_WINDOW_SECONDS, timer=_now)

    def check(self, address: str) -> None:
        if self._failures.get(address, 0) >= self._limit:
            raise TooManyFailures("too many requests with an invalid API key from this address; retry in a minute")

    def failed(self, address: str) -> None:
        self._failures[address] = self._failures.get(address, 0) + 1


class KeyResolver:
    def __init__(self, store: ControlStore, config: AuthConfig | None = None) -> None:
        config = config or AuthConfig()
        self._store = store
        self._ttl = config.key_cache_seconds
        self._known: LRUCache[bytes, _Known] = LRUCache(maxsize=config.key_cache_size)
        self._unknown: TTLCache[bytes, bool] = TTLCache(
            maxsize=config.unknown_key_cache_size, ttl=config.unknown_key_cache_seconds, timer=_now
        )
        self.failures = FailureLimiter(config.failures_per_minute)
        self._revocations: int | None = None

    async def resolve(self, secret: str, address: str = "") -> ApiKey:
        """The key of ``secret``; ``AuthError`` (and a failure counted for ``address``) if it is not valid.

        An address past its failure limit may still use a key known here (a tenant behind the same
        NAT as a guesser keeps working); what it can no longer do is make the store look up keys.
        """
        digest = hash_secret(secret)
        if digest not in self._known:
            self.failures.check(address)
        try:
            return await self._lookup(digest)
        except AuthError:
            self.failures.failed(address)
            raise

    async def _lookup(self, digest: bytes) -> ApiKey:
        known = self._known.get(digest)
        # A known key is never in the unknown cache: asked only on a miss (its expiry check is the dearer).
        if known is None and digest in self._unknown:
            raise AuthError("invalid API key")
        now = _now()
        if known is None or now - known.fetched_at > self._ttl:
            try:
                found = await self._store.find_api_key(digest)
            except Exception as exc:
                # Any failure of the store, mapped to StoreError or not: never a 500 (SPEC §11).
                log.warning("API key lookup failed: %s", exc)
                if known is None:
                    raise AuthUnavailable("the control store is unavailable and this key is not known yet") from exc
                found = known.key  # keep serving what we knew; retry on the next request
            else:
                if found is None:
                    self._known.pop(digest, None)
                    self._unknown[digest] = True
                    raise AuthError("invalid API key")
                self._known[digest] = _Known(found, now)
        else:
            found = known.key
        if found.revoked_at is not None or not hmac.compare_digest(found.secret_hash, digest):
            raise AuthError("invalid API key")
        return found

    async def revoke(self, key_id: str) -> None:
        """Revoke ``key_id`` in the store and stop accepting it here at once."""
        await self._store.revoke_api_key(key_id)
        self.forget_key(key_id)

    def forget_key(self, key_id: str) -> None:
        """Drop the cached answers for ``key_id``: its next use is looked up in the store again."""
        for digest in [d for d, known in self._known.items() if known.key.id == key_id]:
            del self._known[digest]

    def revocations_seen(self, count: int) -> None:
        """The store's revocation count, from each catalog refresh: a change forgets every cached key."""
        if self._revocations is not None and count != self._revocations:
            log.info("a key was revoked elsewhere; cached keys are looked up again")
            self.forget()
        self._revocations = count

    def forget(self) -> None:
        """Drop every cached answer."""
        self._known.clear()
        self._unknown.clear()
