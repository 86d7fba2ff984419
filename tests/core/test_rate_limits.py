"""Token buckets and their headers (core/rate_limits.py), on a fixed clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.core.rate_limits import (
    Bucket,
    Decision,
    Limits,
    Reading,
    admit,
    anthropic_headers,
    debited,
    duration_text,
    input_tokens_of,
    openai_headers,
    refilled,
    rfc3339,
)

NOW = 1_764_700_000.0  # 2025-12-02T18:26:40Z


def test_a_new_bucket_is_full_and_refills_at_its_limit_per_minute_up_to_it() -> None:
    assert refilled(None, 60, NOW) == Bucket(60.0, NOW)
    assert refilled(Bucket(0.0, NOW), 60, NOW + 10) == Bucket(10.0, NOW + 10)
    assert refilled(Bucket(-600.0, NOW), 600, NOW + 30) == Bucket(-300.0, NOW + 30)
    assert refilled(Bucket(50.0, NOW), 60, NOW + 3600) == Bucket(60.0, NOW + 3600)
    assert refilled(Bucket(90.0, NOW), 60, NOW) == Bucket(60.0, NOW)  # a lowered limit clamps


def test_a_clock_that_goes_back_refills_nothing() -> None:
    assert refilled(Bucket(5.0, NOW), 60, NOW - 30) == Bucket(5.0, NOW)


def test_requests_are_admitted_while_one_is_left_then_refused_with_the_wait() -> None:
    limits = Limits(requests_per_minute=3)
    state = None
    decisions = []
    for _ in range(4):
        admission = admit(limits, state, None, NOW)
        state = admission.requests
        decisions.append(admission.decision)

    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert [d.requests.remaining for d in decisions if d.requests] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.retry_after == 20.0 and refused.retry_after_header == 20  # 3 a minute: one each 20 s
    assert refused.requests == Reading(3, 0, 60.0)
    assert admit(limits, state, None, NOW + 20).decision.admitted


def test_reading_takes_nothing_and_is_never_refused() -> None:
    limits = Limits(requests_per_minute=1)
    empty = Bucket(0.0, NOW)

    read = admit(limits, empty, None, NOW, take=False)

    assert read.decision.admitted and read.requests == empty


def test_input_tokens_admit_while_not_exhausted_and_are_debited_when_billed() -> None:
    limits = Limits(input_tokens_per_minute=1000)
    first = admit(limits, None, None, NOW)
    assert first.decision.admitted and first.input_tokens == Bucket(1000.0, NOW)  # admission takes no token

    after_big_request = debited(first.input_tokens, 1000, 1500, NOW)  # the real count, past the limit
    assert after_big_request == Bucket(-500.0, NOW)
    refused = admit(limits, None, after_big_request, NOW + 3)
    assert not refused.decision.admitted
    assert refused.decision.retry_after == (1 - (-500 + 50)) * 60 / 1000  # to one whole token: 27.06 s
    assert refused.decision.input_tokens == Reading(1000, 0, (1000 + 450) * 60 / 1000)


def test_the_debt_stops_at_one_minutes_capacity() -> None:
    assert debited(Bucket(10.0, NOW), 1000, 1_000_000, NOW) == Bucket(-1000.0, NOW)


def test_both_limits_must_admit_and_the_wait_is_the_longer() -> None:
    limits = Limits(requests_per_minute=60, input_tokens_per_minute=600)
    admission = admit(limits, Bucket(0.5, NOW), Bucket(-59.0, NOW), NOW)

    assert not admission.decision.admitted
    assert admission.decision.retry_after == 6.0  # tokens: 60 to refill at 10/s; requests only 0.5 s
    assert admission.requests == Bucket(0.5, NOW)  # nothing taken


def test_cache_reads_do_not_count_as_input_tokens() -> None:
    assert input_tokens_of(prompt_tokens=5000, cache_read_tokens=4800) == 200
    assert input_tokens_of(prompt_tokens=10, cache_read_tokens=10) == 0


def test_openai_headers_name_each_limit_with_a_duration_to_reset() -> None:
    decision = Decision(False, Reading(60, 0, 59.5), Reading(40_000, 39_000, 1.5), 0.4)

    assert openai_headers(decision) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", b"59.5s"),
        (b"x-ratelimit-limit-tokens", b"40000"),
        (b"x-ratelimit-remaining-tokens", b"39000"),
        (b"x-ratelimit-reset-tokens", b"1.5s"),
        (b"retry-after", b"1"),
    ]


def test_anthropic_headers_reset_at_an_rfc_3339_instant() -> None:
    decision = Decision(True, None, Reading(40_000, 39_000, 1.5), 0.0)

    assert anthropic_headers(decision, NOW) == [
        (b"anthropic-ratelimit-input-tokens-limit", b"40000"),
        (b"anthropic-ratelimit-input-tokens-remaining", b"39000"),
        (b"anthropic-ratelimit-input-tokens-reset", b"2025-12-02T18:26:42Z"),
        (b"anthropic-ratelimit-tokens-limit", b"40000"),
        (b"anthropic-ratelimit-tokens-remaining", b"39000"),
        (b"anthropic-ratelimit-tokens-reset", b"2025-12-02T18:26:42Z"),
    ]


def test_durations_and_instants_are_written_as_the_apis_write_them() -> None:
    assert [duration_text(s) for s in (0.0, 0.012, 1.0, 1.5, 59.9999, 60.0, 360.0, 90.25)] == [
        "0ms",
        "12ms",
        "1s",
        "1.5s",
        "1m0s",
        "1m0s",
        "6m0s",
        "1m30.25s",
    ]
    assert rfc3339(NOW + 0.2) == "2025-12-02T18:26:41Z"  # rounded up: never before the truth


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 120),
    gaps=st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=1, max_size=300),
)
def test_no_stretch_of_time_admits_more_than_the_capacity_and_its_refill(capacity: int, gaps: list[float]) -> None:
    limits = Limits(requests_per_minute=capacity)
    state, now, admitted_at = None, 0.0, []
    for gap in gaps:
        now += gap
        admission = admit(limits, state, None, now)
        state = admission.requests
        if admission.decision.admitted:
            admitted_at.append(now)

    for first in range(len(admitted_at)):
        for last in range(first, len(admitted_at)):
            span = admitted_at[last] - admitted_at[first]
            assert last - first + 1 <= capacity + span * capacity / 60 + 1e-6


@settings(max_examples=100, deadline=None)
@given(capacity=st.integers(1, 600), requests=st.integers(1, 200))
def test_a_key_that_keeps_to_its_rate_is_never_refused(capacity: int, requests: int) -> None:
    limits = Limits(requests_per_minute=capacity)
    state = None
    for n in range(requests):
        admission = admit(limits, state, None, n * 60 / capacity)
        assert admission.decision.admitted
        state = admission.requests
