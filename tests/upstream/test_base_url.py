"""The one rule for an endpoint's base URL (``upstream.base.check_base_url``): what the upstream
client can connect to is accepted as written, anything else is refused before it is stored."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachegate.operations.checks import MAX_URL_LENGTH, URL_PATTERN, check_http_url
from cachegate.upstream._request import target
from cachegate.upstream.base import check_base_url

REACHABLE = [
    "http://127.0.0.1:8000/v1",
    "https://llm.example/v1",
    "http://[::1]:8000/v1",
    "http://[fe80::1%25eth0]/v1",
    "https://user:secret@[2001:db8::7]/v1",
    "http://vllm-0.vllm.svc.cluster.local/v1",
]
UNREACHABLE = [
    "10.0.0.5:8000/v1",  # no scheme
    "ftp://llm.example/v1",
    "http:///v1",  # no host
    "http://llm.example:80000/v1",  # port out of range
    "http://llm.example:port/v1",
    "http://[4D76F.C4fb446.42]/v1",  # brackets around no IPv6 address (found by the admin API's fuzz)
    "http://[10.0.0.5]/v1",
    "http://a..b/v1",  # an empty label
    f"http://{'a' * 64}.example/v1",  # a label over 63 characters
]


@pytest.mark.parametrize("url", REACHABLE)
def test_a_reachable_url_is_accepted_as_written_and_the_upstream_client_parses_it(url: str) -> None:
    assert check_base_url(url) == url
    assert target("POST", f"{url}/chat/completions").port > 0


@pytest.mark.parametrize("url", UNREACHABLE)
def test_an_unreachable_url_is_refused_saying_why(url: str) -> None:
    with pytest.raises(ValueError, match=r"must start with http|must name a host and port"):
        check_base_url(url)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(url=st.from_regex(URL_PATTERN, fullmatch=True).filter(lambda url: len(url) <= MAX_URL_LENGTH))
def test_every_url_the_admin_api_schema_admits_is_accepted(url: str) -> None:
    # The admin API publishes URL_PATTERN in its schema: a URL it admits and the API then refuses
    # is a broken promise (the schema fuzz found two: brackets around no IPv6 address).
    assert check_http_url(url, "base_url") == url
    assert target("POST", f"{url.rstrip('/')}/chat/completions").port >= 0
