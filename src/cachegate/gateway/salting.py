"""Per-principal ``cache_salt`` for endpoints that isolate their prefix cache (vLLM; SPEC §12).

vLLM reuses a KV prefix only between requests with the same ``cache_salt``. Salting each
principal's requests with its own value keeps a tenant's prefix hits (cachegate's contract) while
no tenant can time another's: a prompt someone else sent is not faster for it. The value is an
HMAC of the principal id under a configured secret, so it is stable across replicas and restarts
and names nobody; a salt a client sent itself is replaced.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from cachegate.config import Config


class CacheSalts:
    def __init__(self, secret: str | None, salted_endpoints: frozenset[str]) -> None:
        if salted_endpoints and secret is None:
            raise ValueError("salted endpoints need a secret")
        self._key = (secret or "").encode()
        self._endpoints = salted_endpoints

    @classmethod
    def from_config(cls, config: Config) -> CacheSalts:
        return cls(config.cache_salt_secret, frozenset(e.name for e in config.endpoints if e.cache_salt))

    def salt(self, endpoint: str, principal_id: str) -> str | None:
        """The salt a request of ``principal_id`` to ``endpoint`` carries; None if the endpoint is not salted."""
        if endpoint not in self._endpoints:
            return None
        return self._salt_of(principal_id)

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one instance per gateway, alive as long as it
    def _salt_of(self, principal_id: str) -> str:
        return hmac.new(self._key, principal_id.encode(), hashlib.sha256).hexdigest()
