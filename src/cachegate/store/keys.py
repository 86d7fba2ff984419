"""Identifiers and API-key secrets (SPEC §12).

A secret is 256 random bits, shown once and stored only as its SHA-256. A fast, unsalted hash
is the right tool here, unlike for passwords: the input is machine-generated and
high-entropy, so there is nothing to brute-force or look up in a table, and the gateway
hashes every request's key, so a deliberately slow KDF would only cost latency. Being
unsalted also makes the hash a lookup key (``find_api_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

from cachegate.store.base import ApiKey
from cachegate.store.values import utcnow

SECRET_PREFIX = "cg-"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 10  # ~51 bits: ample for uniqueness, and the columns are unique anyway


def generate_secret() -> str:
    """A new API-key secret: the prefix makes leaked keys easy to grep for and to recognise."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    """The SHA-256 digest under which a secret is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def secrets_match(a: bytes, b: bytes) -> bool:
    """Compare two secret hashes in constant time."""
    return hmac.compare_digest(a, b)


def new_key_id() -> str:
    """A short public id for an API key, shown in listings and the ledger; it grants nothing."""
    return "key_" + _random_id()


def new_principal_id() -> str:
    """A principal's id: the ledger and the cache scope key on it, not on the chosen name."""
    return "prn_" + _random_id()


def _random_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def new_api_key(principal_id: str, admin: bool) -> tuple[ApiKey, str]:
    """A new key of ``principal_id`` and its secret, which is stored only as its hash."""
    secret = generate_secret()
    key = ApiKey(
        id=new_key_id(),
        principal_id=principal_id,
        secret_hash=hash_secret(secret),
        is_admin=admin,
        created_at=utcnow(),
        revoked_at=None,
    )
    return key, secret
