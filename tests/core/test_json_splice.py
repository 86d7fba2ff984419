"""The forwarded body is the client's text with only markers cut and ``model`` (or usage) set (SPEC §3.4)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachegate.core.json_splice import splice
from cachegate.core.markers import strip_markers

from forwarded import Obj, exact, exact_bodies, expected_forward, write


def forward(raw: bytes, model: str | None = "upstream", include_usage: bool = False) -> bytes:
    """What the chat flow sends: the markers counted on the parsed body, as the gateway counts them."""
    return splice(raw, strip_markers(orjson.loads(raw)), model, include_usage)


def test_an_unchanged_body_is_the_same_bytes() -> None:
    raw = b'{ "messages" : [ ] ,"model":"m"}'
    assert forward(raw, None) is raw


def test_big_integers_key_order_and_spelling_survive_a_rename() -> None:
    raw = (
        b'{"seed": 123456789012345678901234567890, "model": "alias", "z": 1.50, "a": "\\u00e9",'
        b' "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",'
        b' "cache_control": {"type": "ephemeral"}}]}]}'
    )
    assert forward(raw) == (
        b'{"seed": 123456789012345678901234567890, "model": "upstream", "z": 1.50, "a": "\\u00e9",'
        b' "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'
    )


def test_telemetry_flags_are_cut_and_a_salt_set_with_big_integers_kept() -> None:
    raw = b'{"timings_per_token": true, "model": "a", "seed": 123456789012345678901234567890, "return_progress": 1}'
    spliced = splice(
        raw, 0, None, False, removed=["timings_per_token", "return_progress"], set_strings={"cache_salt": "s"}
    )
    assert spliced == b'{"cache_salt":"s","model": "a", "seed": 123456789012345678901234567890}'


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "a", "prompt": "p", "timings_per_token": true, "return_progress": true}',
        b'{"timings_per_token": true, "return_progress": true, "model": "a", "prompt": "p"}',
        b'{"model": "a", "timings_per_token": true, "prompt": "p", "return_progress": true}',
    ],
)
def test_neighbouring_flags_are_cut_together(raw: bytes) -> None:
    spliced = splice(raw, 0, None, False, removed=["timings_per_token", "return_progress"])
    assert orjson.loads(spliced) == {"model": "a", "prompt": "p"}


def test_a_salt_the_client_sent_is_replaced_where_it_stands() -> None:
    raw = b'{"model": "a", "cache_salt": "mine", "messages": []}'
    assert splice(raw, 0, None, False, set_strings={"cache_salt": "ours"}) == (
        b'{"model": "a", "cache_salt": "ours", "messages": []}'
    )


def test_a_schema_property_named_cache_control_survives_beside_a_marker() -> None:
    raw = (
        b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
        b'"properties":{"cache_control":{"type":"string"}}}},"cache_control":{"type":"ephemeral"}}],"messages":[]}'
    )
    assert forward(raw, None) == (
        b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
        b'"properties":{"cache_control":{"type":"string"}}}}}],"messages":[]}'
    )


def test_escaped_and_duplicate_marker_keys_are_all_cut() -> None:
    raw = (
        b'{"model":"m","messages":[{"role":"user","content":"x","cache\\u005Fcontrol":null,'
        b'"cache_control":{"type":"ephemeral"}}],"cache_control":{"type":"ephemeral","ttl":"1h"}}'
    )
    assert forward(raw, None) == b'{"model":"m","messages":[{"role":"user","content":"x"}]}'


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        (b'{"model":"m","messages":[]}', b'{"stream_options":{"include_usage":true},"model":"m","messages":[]}'),
        (
            b'{"model":"m","stream_options":{"include_usage":false},"messages":[]}',
            b'{"model":"m","stream_options":{"include_usage":true},"messages":[]}',
        ),
        (
            b'{"model":"m","stream_options":{ },"messages":[]}',
            b'{"model":"m","stream_options":{"include_usage":true },"messages":[]}',
        ),
        (
            b'{"model":"m","stream_options":null,"messages":[]}',
            b'{"model":"m","stream_options":{"include_usage":true},"messages":[]}',
        ),
    ],
)
def test_usage_is_forced_on_in_place(raw: bytes, forwarded: bytes) -> None:
    assert forward(raw, None, include_usage=True) == forwarded


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(exact_bodies(), st.sampled_from(["", " ", "\n  "]), st.booleans(), st.booleans(), st.booleans())
def test_the_forwarded_body_is_the_clients_but_for_markers_model_and_usage(
    value: Obj, space: str, escape: bool, rename: bool, include_usage: bool
) -> None:
    raw = write(value, space, escape).encode()
    parsed = orjson.loads(raw)
    if not isinstance(parsed.get("messages"), list) or not isinstance(parsed.get("model"), str):
        return
    model = "upstream" if rename else None
    assert exact(splice(raw, strip_markers(parsed), model, include_usage)) == expected_forward(
        raw, model, include_usage
    )
