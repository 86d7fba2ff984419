"""API-key secrets and ids (SPEC §12)."""

from __future__ import annotations

import base64
import re

from hypothesis import given
from hypothesis import strategies as st

from cachegate.store.keys import (
    SECRET_PREFIX,
    generate_secret,
    hash_secret,
    new_key_id,
    new_principal_id,
    secrets_match,
)


def test_a_secret_carries_at_least_128_random_bits() -> None:
    secret = generate_secret()

    assert secret.startswith(SECRET_PREFIX)
    random_part = secret.removeprefix(SECRET_PREFIX)
    assert len(base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))) * 8 >= 128


def test_secrets_and_ids_do_not_repeat() -> None:
    assert len({generate_secret() for _ in range(1000)}) == 1000
    assert len({new_key_id() for _ in range(1000)}) == 1000


def test_ids_are_short_and_say_what_they_name() -> None:
    assert re.fullmatch(r"key_[a-z0-9]{10}", new_key_id())
    assert re.fullmatch(r"prn_[a-z0-9]{10}", new_principal_id())


@given(st.text(), st.text())
def test_the_hash_identifies_the_secret(first: str, second: str) -> None:
    assert len(hash_secret(first)) == 32
    assert hash_secret(first) == hash_secret(first)
    assert (hash_secret(first) == hash_secret(second)) == (first == second)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_hashes_match_only_when_equal(first: bytes, second: bytes) -> None:
    assert secrets_match(first, first)
    assert secrets_match(first, second) == (first == second)
