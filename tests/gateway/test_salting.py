"""Per-principal cache salts (SPEC §12): stable, distinct per principal, naming nobody."""

from __future__ import annotations

import pytest

from cachegate.config import Config
from cachegate.gateway.salting import CacheSalts


def salts(secret: str = "a secret of sixteen or more") -> CacheSalts:
    return CacheSalts(secret, frozenset({"vllm"}))


def test_a_salt_is_stable_per_principal_and_differs_between_principals() -> None:
    assert salts().salt("vllm", "prn_a") == salts().salt("vllm", "prn_a")
    assert salts().salt("vllm", "prn_a") != salts().salt("vllm", "prn_b")
    assert "prn_a" not in (salts().salt("vllm", "prn_a") or "")


def test_a_salt_depends_on_the_secret_and_only_salted_endpoints_get_one() -> None:
    assert salts("one secret of sixteen+").salt("vllm", "p") != salts("another secret, sixteen+").salt("vllm", "p")
    assert salts().salt("other", "p") is None


def test_a_salted_endpoint_needs_the_secret() -> None:
    endpoint = {"name": "vllm", "base_url": "http://127.0.0.1:8000/v1", "cache_salt": True}
    with pytest.raises(ValueError, match="cache_salt_secret is required"):
        Config.model_validate({"endpoints": [endpoint]})
    config = Config.model_validate({"endpoints": [endpoint], "cache_salt_secret": "x" * 16})
    assert CacheSalts.from_config(config).salt("vllm", "p") is not None
