"""Authentication (SPEC §2.1, §11, §12): the bearer secret, and keys resolved through a short-lived cache
that keeps known keys working through a control-store outage and never lets an unknown one pass."""

from __future__ import annotations

from typing import cast

import pytest

from cachegate.config import AuthConfig
from cachegate.gateway import auth
from cachegate.gateway.auth import AuthError, AuthUnavailable, KeyResolver, TooManyFailures, bearer_secret
from cachegate.store.base import ControlStore

from .doubles import KeyStore

SECRET = "cg-a-secret-that-was-issued"
TTL = 30.0
FAILURES = 1000


class Clock:
    """Stands in for the ``time`` module inside ``auth``: only ``monotonic`` is used there."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(auth, "time", fake)
    return fake


@pytest.fixture
def store() -> KeyStore:
    return KeyStore()


def resolver_for(store: KeyStore, capacity: int = 100) -> KeyResolver:
    config = AuthConfig(
        key_cache_seconds=TTL, key_cache_size=capacity, unknown_key_cache_seconds=TTL, failures_per_minute=FAILURES
    )
    return KeyResolver(cast(ControlStore, store), config)


# --- bearer_secret -----------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [b"Bearer s3cret", b"bearer s3cret", b"BEARER s3cret", b"Bearer   s3cret  "])
def test_the_bearer_scheme_is_case_insensitive_and_the_token_trimmed(authorization: bytes) -> None:
    assert bearer_secret(authorization) == "s3cret"


def test_x_api_key_is_the_fallback_for_anthropic_clients() -> None:
    assert bearer_secret(None, b"s3cret") == "s3cret"


@pytest.mark.parametrize("authorization", [b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer   "])
def test_x_api_key_is_used_when_the_authorization_header_has_no_bearer_token(authorization: bytes) -> None:
    assert bearer_secret(authorization, b"s3cret") == "s3cret"


def test_a_bearer_token_wins_over_x_api_key() -> None:
    assert bearer_secret(b"Bearer from-bearer", b"from-x-api-key") == "from-bearer"


@pytest.mark.parametrize(
    ("authorization", "x_api_key"),
    [(None, None), (b"", None), (None, b""), (b"Basic dXNlcjpwYXNz", None), (b"Bearer", None), (b"Bearer  ", None)],
)
def test_no_usable_key_is_an_auth_error(authorization: bytes | None, x_api_key: bytes | None) -> None:
    with pytest.raises(AuthError, match="missing API key"):
        bearer_secret(authorization, x_api_key)


def test_a_blank_x_api_key_is_no_key() -> None:
    with pytest.raises(AuthError, match="missing API key"):
        bearer_secret(None, b"   ")


# --- KeyResolver -------------------------------------------------------------------------------


async def test_a_known_key_resolves_to_its_record(store: KeyStore, clock: Clock) -> None:
    issued = store.issue(SECRET)

    assert await resolver_for(store).resolve(SECRET) == issued


async def test_an_unknown_key_is_refused(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)

    with pytest.raises(AuthError, match="invalid API key"):
        await resolver_for(store).resolve("cg-never-issued")


async def test_a_revoked_key_is_refused(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)
    store.revoke(SECRET)

    with pytest.raises(AuthError, match="invalid API key"):
        await resolver_for(store).resolve(SECRET)


async def test_answers_are_cached_within_the_ttl_negative_ones_included(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)
    resolver = resolver_for(store)

    for _ in range(3):
        await resolver.resolve(SECRET)
        with pytest.raises(AuthError):
            await resolver.resolve("cg-never-issued")
        clock.advance(TTL / 4)

    assert store.calls == 2  # one per secret


async def test_an_answer_is_asked_again_once_the_ttl_has_passed(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)
    resolver = resolver_for(store)
    await resolver.resolve(SECRET)
    store.revoke(SECRET)

    clock.advance(TTL - 1)
    await resolver.resolve(SECRET)  # still the cached answer
    clock.advance(2)
    with pytest.raises(AuthError):
        await resolver.resolve(SECRET)

    assert store.calls == 2


async def test_a_key_seen_before_keeps_working_while_the_store_is_down(store: KeyStore, clock: Clock) -> None:
    issued = store.issue(SECRET)
    resolver = resolver_for(store)
    await resolver.resolve(SECRET)

    store.down = True
    clock.advance(TTL * 10)

    assert await resolver.resolve(SECRET) == issued
    assert await resolver.resolve(SECRET) == issued
    assert store.calls == 3  # every request past the TTL tries the store again


async def test_a_key_never_seen_while_the_store_is_down_is_unavailable_not_accepted(
    store: KeyStore, clock: Clock
) -> None:
    store.issue(SECRET)
    store.down = True

    with pytest.raises(AuthUnavailable):
        await resolver_for(store).resolve(SECRET)


async def test_a_key_known_to_be_bad_stays_refused_while_the_store_is_down(store: KeyStore, clock: Clock) -> None:
    resolver = resolver_for(store)
    with pytest.raises(AuthError):
        await resolver.resolve(SECRET)

    store.down = True
    clock.advance(TTL / 2)

    with pytest.raises(AuthError):
        await resolver.resolve(SECRET)
    clock.advance(TTL)  # no longer known to be bad: it may have been issued since
    with pytest.raises(AuthUnavailable):
        await resolver.resolve(SECRET)


async def test_the_cache_is_bounded_and_forgets_the_oldest_answer(store: KeyStore, clock: Clock) -> None:
    secrets = ["cg-first", "cg-second", "cg-third"]
    for number, secret in enumerate(secrets):
        store.issue(secret, key_id=f"key_{number}")
    resolver = resolver_for(store, capacity=2)
    for secret in secrets:
        await resolver.resolve(secret)

    store.down = True

    with pytest.raises(AuthUnavailable):
        await resolver.resolve("cg-first")
    assert (await resolver.resolve("cg-third")).id == "key_2"


async def test_forget_drops_every_cached_answer(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)
    resolver = resolver_for(store)
    await resolver.resolve(SECRET)
    store.revoke(SECRET)

    resolver.forget()

    with pytest.raises(AuthError):
        await resolver.resolve(SECRET)
    assert store.calls == 2


async def test_a_flood_of_unknown_keys_evicts_no_known_key_and_repeats_cost_no_query(
    store: KeyStore, clock: Clock
) -> None:
    store.issue(SECRET)
    resolver = resolver_for(store, capacity=2)
    await resolver.resolve(SECRET)
    flood = [f"cg-guess-{number}" for number in range(50)]
    for secret in flood:
        with pytest.raises(AuthError):
            await resolver.resolve(secret, "198.51.100.7")
    calls = store.calls
    for secret in flood:
        with pytest.raises(AuthError):
            await resolver.resolve(secret, "198.51.100.7")

    store.down = True

    assert store.calls == calls
    assert (await resolver.resolve(SECRET)).id == "key_a"  # still cached, though the cache holds 2


async def test_an_address_that_keeps_failing_is_refused_without_a_lookup(store: KeyStore) -> None:
    resolver = KeyResolver(cast(ControlStore, store), AuthConfig(failures_per_minute=3))
    for number in range(3):
        with pytest.raises(AuthError):
            await resolver.resolve(f"cg-guess-{number}", "198.51.100.7")
    calls = store.calls

    with pytest.raises(TooManyFailures):
        await resolver.resolve("cg-guess-next", "198.51.100.7")
    assert store.calls == calls
    store.issue(SECRET)
    assert (await resolver.resolve(SECRET, "203.0.113.9")).id == "key_a"  # another address is not limited


async def test_a_revocation_here_refuses_the_key_at_once(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)
    resolver = resolver_for(store)
    await resolver.resolve(SECRET)

    await resolver.revoke("key_a")

    with pytest.raises(AuthError):
        await resolver.resolve(SECRET)


async def test_a_revocation_elsewhere_refuses_the_key_once_the_count_changes(store: KeyStore, clock: Clock) -> None:
    store.issue(SECRET)
    resolver = resolver_for(store)
    resolver.revocations_seen(0)
    await resolver.resolve(SECRET)
    store.revoke(SECRET)
    resolver.revocations_seen(0)
    await resolver.resolve(SECRET)  # nothing changed yet as far as this replica knows

    resolver.revocations_seen(1)

    with pytest.raises(AuthError):
        await resolver.resolve(SECRET)


async def test_an_unexpected_store_error_on_a_cached_key_keeps_serving_it(store: KeyStore, clock: Clock) -> None:
    issued = store.issue(SECRET)
    resolver = resolver_for(store)
    await resolver.resolve(SECRET)

    async def broken(secret_hash: bytes) -> None:
        raise RuntimeError("a driver error no adapter maps")

    store.find_api_key = broken  # type: ignore[method-assign]
    clock.advance(TTL * 2)

    assert await resolver.resolve(SECRET) == issued
    with pytest.raises(AuthUnavailable):
        await resolver.resolve("cg-never-seen")
