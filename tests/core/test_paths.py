"""Request paths as the route table matches them (SPEC §2, other routes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.paths import DotSegment, normalised_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/completions", "/v1/completions"),
        ("/v1/completions/", "/v1/completions"),
        ("/", "/"),
        ("/v1/models/Qwen/Qwen3-8B", "/v1/models/Qwen/Qwen3-8B"),
        ("/v1/models/v1.5..final", "/v1/models/v1.5..final"),  # dots inside a segment are a name
    ],
)
def test_one_trailing_slash_is_the_same_path(path: str, expected: str) -> None:
    assert normalised_path(path, path.encode()) == expected


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/../x", b"/v1/../x"),
        ("/v1/./completions", b"/v1/./completions"),
        ("/v1/..", b"/v1/.."),
        ("/v1/../x", b"/v1/%2e%2e/x"),  # the server decoded it: the path shows it
        ("/v1/x", b"/v1/%2E%2e/x"),  # a server that resolved what it decoded: the raw path shows it
        ("/v1/chat/completions/.", b"/v1/chat/completions/%2e"),
    ],
)
def test_dot_segments_are_refused_plain_or_encoded(path: str, raw: bytes) -> None:
    with pytest.raises(DotSegment):
        normalised_path(path, raw)


@given(st.lists(st.sampled_from(["v1", "models", ".", "..", "a.b", "%2e", "x"]), min_size=1, max_size=6))
def test_a_path_passes_exactly_when_no_segment_is_a_dot_segment(segments: list[str]) -> None:
    path = "/" + "/".join(segment.replace("%2e", ".") for segment in segments)
    raw = ("/" + "/".join(segments)).encode()
    dotted = any(segment.replace("%2e", ".") in (".", "..") for segment in segments)
    if dotted:
        with pytest.raises(DotSegment):
            normalised_path(path, raw)
    else:
        assert normalised_path(path, raw) == path
