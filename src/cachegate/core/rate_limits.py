"""Per-key rate limits as token buckets (SPEC §13): the arithmetic, and the headers each dialect reads.

Why a token bucket and not a sliding window: it is what Anthropic documents for its own limits
(capacity refilled continuously, up to the per-minute maximum, rather than reset at fixed
instants), so a client tuned against Anthropic sees the same behaviour here; and its whole state
is two numbers per limit (a level and when it was measured), which one Redis hash holds and one
Lua script updates atomically, where an exact sliding window keeps one entry per request.

A limit of N per minute is a bucket of capacity N refilled at N/60 per second; a key starts full.

- Requests: a request is admitted while at least one request is left, and takes it.
- Input tokens, counted as Anthropic counts them: uncached input plus cache creation; cache reads
  do not count. The count of a request is known only once the cache has classified it and the
  upstream has answered, so a request is admitted while the bucket is not exhausted (at least one
  token left) and the real count is debited when the request is billed. The bucket may go into
  debt, at most one minute's capacity: a single request larger than the limit is served, and the
  key then waits for the debt to refill, at most two minutes. (Anthropic estimates the count at
  the start instead; an estimate here would need the prompt counted before it is forwarded,
  which the cache flow never waits for, SPEC §2.3.)

Nothing here does I/O or reads a clock: ``now`` is always given, in seconds (``time.time()``).
The Redis limiter runs the same rules in Lua (``limiter/redis.py``); its tests are this module's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

WINDOW_SECONDS = 60.0  # the limits are per minute


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; None leaves one off."""

    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None

    @property
    def any(self) -> bool:
        return self.requests_per_minute is not None or self.input_tokens_per_minute is not None


@dataclass(frozen=True, slots=True)
class Bucket:
    """How much a bucket held (``level``, negative for a debt) at ``at`` (seconds)."""

    level: float
    at: float


def full(capacity: int, now: float) -> Bucket:
    return Bucket(float(capacity), now)


def refilled(bucket: Bucket | None, capacity: int, now: float) -> Bucket:
    """The bucket at ``now``: refilled at capacity/60 per second since it was measured, never past
    its capacity (a lowered limit clamps it). A clock that went back refills nothing."""
    if bucket is None:
        return full(capacity, now)
    level, at = bucket.level, bucket.at
    if now > at:
        level += (now - at) * capacity / WINDOW_SECONDS
        at = now
    return Bucket(min(level, float(capacity)), at)


def debited(bucket: Bucket | None, capacity: int, amount: int, now: float) -> Bucket:
    """The bucket at ``now`` with ``amount`` taken; the debt stops at one minute's capacity."""
    current = refilled(bucket, capacity, now)
    return Bucket(max(current.level - amount, -float(capacity)), current.at)


def seconds_until(bucket: Bucket, capacity: int, level: float) -> float:
    """How long until the (refilled) ``bucket`` holds ``level``; 0 if it does already."""
    return max(0.0, (min(level, capacity) - bucket.level) * WINDOW_SECONDS / capacity)


@dataclass(frozen=True, slots=True)
class Reading:
    """One limit as its headers report it: the limit, what is left (whole units), and the seconds
    until the bucket is full again (both dialects' "reset": back to the initial state)."""

    limit: int
    remaining: int
    reset_seconds: float


def reading(bucket: Bucket, capacity: int) -> Reading:
    return Reading(capacity, max(0, math.floor(bucket.level)), seconds_until(bucket, capacity, capacity))


@dataclass(frozen=True, slots=True)
class Decision:
    """What a rate check decided, with the readings its headers carry (None: that limit is off)."""

    admitted: bool
    requests: Reading | None
    input_tokens: Reading | None
    retry_after: float  # seconds until a request would be admitted; 0 when admitted

    @property
    def retry_after_header(self) -> int:
        """``retry-after`` in whole seconds, rounded up, at least 1."""
        return max(1, math.ceil(self.retry_after))


@dataclass(frozen=True, slots=True)
class Admission:
    decision: Decision
    requests: Bucket | None
    input_tokens: Bucket | None


def admit(
    limits: Limits, requests: Bucket | None, input_tokens: Bucket | None, now: float, *, take: bool = True
) -> Admission:
    """Admit one request, or not, given the buckets' last states; returns their states after it.

    Admitted when every limit that is on has a whole unit left: the request then takes one
    request (if ``take``; a route that is not billed only reads the limits). Refused, nothing is
    taken and ``retry_after`` says when every bucket will have a unit again.
    """
    rpm, itpm = limits.requests_per_minute, limits.input_tokens_per_minute
    request_bucket = refilled(requests, rpm, now) if rpm is not None else None
    token_bucket = refilled(input_tokens, itpm, now) if itpm is not None else None
    admitted = not take or _wait(limits, request_bucket, token_bucket) == 0.0
    if admitted and take and request_bucket is not None:
        request_bucket = Bucket(request_bucket.level - 1.0, request_bucket.at)
    return Admission(decided(limits, request_bucket, token_bucket, admitted), request_bucket, token_bucket)


def decided(limits: Limits, requests: Bucket | None, input_tokens: Bucket | None, admitted: bool) -> Decision:
    """The decision a check reports, from the buckets as the check left them (refilled to its instant)."""
    rpm, itpm = limits.requests_per_minute, limits.input_tokens_per_minute
    return Decision(
        admitted,
        reading(requests, rpm) if requests is not None and rpm is not None else None,
        reading(input_tokens, itpm) if input_tokens is not None and itpm is not None else None,
        0.0 if admitted else _wait(limits, requests, input_tokens),
    )


def _wait(limits: Limits, requests: Bucket | None, input_tokens: Bucket | None) -> float:
    """Seconds until every bucket that is on holds a whole unit; 0 if each does now."""
    waits = [
        seconds_until(bucket, capacity, 1.0)
        for bucket, capacity in (
            (requests, limits.requests_per_minute),
            (input_tokens, limits.input_tokens_per_minute),
        )
        if bucket is not None and capacity is not None and bucket.level < 1.0
    ]
    return max(waits, default=0.0)


def input_tokens_of(prompt_tokens: int, cache_read_tokens: int) -> int:
    """The tokens a request debits from its input-token limit: uncached input plus cache creation,
    that is the prompt less what was read from the cache (Anthropic's rule)."""
    return max(0, prompt_tokens - cache_read_tokens)


# Headers. Both dialects report, per limit, the limit, what is left, and when it is whole again.


def openai_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; the reset is a duration
    (``"1s"``, ``"6m0s"``, ``"20ms"``), as OpenAI writes it."""
    headers: list[tuple[bytes, bytes]] = []
    for suffix, limit in ((b"requests", decision.requests), (b"tokens", decision.input_tokens)):
        if limit is not None:
            headers += [
                (b"x-ratelimit-limit-" + suffix, str(limit.limit).encode()),
                (b"x-ratelimit-remaining-" + suffix, str(limit.remaining).encode()),
                (b"x-ratelimit-reset-" + suffix, duration_text(limit.reset_seconds).encode()),
            ]
    if not decision.admitted:
        headers.append((b"retry-after", str(decision.retry_after_header).encode()))
    return headers


def anthropic_headers(decision: Decision, now: float) -> list[tuple[bytes, bytes]]:
    """Anthropic's ``anthropic-ratelimit-{requests,input-tokens,tokens}-{limit,remaining,reset}``;
    the reset is an RFC 3339 instant (UTC, whole seconds, rounded up). ``tokens`` is Anthropic's
    most restrictive token limit in effect: here the input-token limit, the only one."""
    headers: list[tuple[bytes, bytes]] = []
    for prefix, limit in (
        (b"anthropic-ratelimit-requests-", decision.requests),
        (b"anthropic-ratelimit-input-tokens-", decision.input_tokens),
        (b"anthropic-ratelimit-tokens-", decision.input_tokens),
    ):
        if limit is not None:
            headers += [
                (prefix + b"limit", str(limit.limit).encode()),
                (prefix + b"remaining", str(limit.remaining).encode()),
                (prefix + b"reset", rfc3339(now + limit.reset_seconds).encode()),
            ]
    if not decision.admitted:
        headers.append((b"retry-after", str(decision.retry_after_header).encode()))
    return headers


def duration_text(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    milliseconds = math.ceil(seconds * 1000)
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    minutes, rest = divmod(milliseconds, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


def rfc3339(at: float) -> str:
    """``at`` as ``2026-12-02T18:30:05Z``, rounded up to the second: never earlier than the truth."""
    return datetime.fromtimestamp(math.ceil(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
