"""Principals and their API keys (SPEC §12): created, listed, looked up, revoked.

A key's secret exists only in what ``create_key`` returns: the store keeps its hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.operations.checks import NAME_PATTERN, check_name
from cachegate.store.base import ApiKey, ControlStore, NotFound, Principal


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key with the name of its principal, as listings show it; never its secret."""

    key: ApiKey
    principal_name: str


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    principal: Principal
    secret: str  # shown once, to whoever created the key


async def create_principal(store: ControlStore, name: str) -> Principal:
    return await store.create_principal(check_name(name, "name", NAME_PATTERN))


async def list_principals(store: ControlStore) -> list[Principal]:
    return await store.list_principals()


async def get_principal(store: ControlStore, name_or_id: str) -> Principal:
    return await store.get_principal(name_or_id)


async def create_key(store: ControlStore, principal: str, *, admin: bool = False) -> CreatedKey:
    """A new key of ``principal`` (its name or id); ``admin`` keys may use the admin operations."""
    owner = await store.get_principal(principal)
    key, secret = await store.create_api_key(owner.id, admin=admin)
    return CreatedKey(key, owner, secret)


async def revoke_key(store: ControlStore, key_id: str) -> KeyView:
    """Revoke the key (again: no change) and return it as it now is. Every replica stops accepting
    it within ``catalog_refresh_seconds``; the caller's own process should forget it at once."""
    await store.revoke_api_key(key_id)
    return await get_key(store, key_id)


async def list_keys(store: ControlStore, principal: str | None = None) -> list[KeyView]:
    """Every key, or those of ``principal`` (its name or id)."""
    principal_id = None if principal is None else (await store.get_principal(principal)).id
    keys = await store.list_api_keys(principal_id)
    names = {p.id: p.name for p in await store.list_principals()}
    return [KeyView(k, names.get(k.principal_id, k.principal_id)) for k in keys]


async def get_key(store: ControlStore, key_id: str) -> KeyView:
    # The store has no lookup by id: keys are few next to requests, and this is not a request's path.
    for view in await list_keys(store):
        if view.key.id == key_id:
            return view
    raise NotFound(f"API key {key_id!r} does not exist")
