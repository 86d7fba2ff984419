"""The rate limiter in Redis: one bucket per key shared by every replica that points at the server.

Key layout: ``<key_prefix>:<key id>`` → a hash of two buckets, ``rl``/``rt`` (requests: level and
when measured) and ``tl``/``tt`` (input tokens). A check is one ``EVALSHA`` of ``_ADMIT`` and a
debit one of ``_DEBIT``: the read, the refill and the write are one atomic step in Redis, so two
replicas checking one key at once cannot both take its last request. The scripts are
``core/rate_limits.py``'s rules in Lua (the same tests run against both).

Times are the caller's (``now``), as everywhere in cachegate: a replica whose clock runs behind
refills nothing it has not earned (a bucket's time never goes back). A key untouched for two
minutes is full again, whatever it held, so Redis expires the hash after that.

The client never connects at start: a Redis that is down costs a request nothing but a failed
call, and the gateway then lets the request through (``gateway/rate_limits.py``, fails open).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from cachegate.core.rate_limits import Bucket, Decision, Limits, decided
from cachegate.limiter.base import RateLimiterUnavailable

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "cachegate:ratelimit"
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_EXPIRE_MS = 130_000  # a bucket refills from its deepest debt (one minute's capacity) in two minutes

_REFILLED = """
local now = tonumber(ARGV[1])
local function refilled(level, at, capacity)
  if level == nil or at == nil then return capacity, now end
  if now > at then
    level = level + (now - at) * capacity / 60
    at = now
  end
  return math.min(level, capacity), at
end
local function num(x) return string.format('%.17g', x) end
"""

# KEYS[1] = the key's hash; ARGV = now, requests per minute, input tokens per minute (0: off),
# take (1: an admitted request takes one request; 0: only read). Returns admitted (1/0) and the
# levels after the check ('' for a limit that is off).
_ADMIT = (
    _REFILLED
    + """
local rpm, itpm, take = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local state = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
local rl, rt, tl, tt
local admitted = true
if rpm > 0 then
  rl, rt = refilled(tonumber(state[1]), tonumber(state[2]), rpm)
  if rl < 1 then admitted = false end
end
if itpm > 0 then
  tl, tt = refilled(tonumber(state[3]), tonumber(state[4]), itpm)
  if tl < 1 then admitted = false end
end
if not take then
  admitted = true
else
  if admitted and rpm > 0 then rl = rl - 1 end
  if rpm > 0 then redis.call('HSET', KEYS[1], 'rl', num(rl), 'rt', num(rt)) end
  if itpm > 0 then redis.call('HSET', KEYS[1], 'tl', num(tl), 'tt', num(tt)) end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return {admitted and 1 or 0, rl and num(rl) or '', tl and num(tl) or ''}
"""
)

# KEYS[1] = the key's hash; ARGV = now, input tokens per minute, tokens to take. The debt stops at
# one minute's capacity.
_DEBIT = (
    _REFILLED
    + """
local capacity, amount = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tl', 'tt')
local level, at = refilled(tonumber(state[1]), tonumber(state[2]), capacity)
level = math.max(level - amount, -capacity)
redis.call('HSET', KEYS[1], 'tl', num(level), 'tt', num(at))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 0
"""
)


class RedisRateLimiter:
    """A ``RateLimiter`` in Redis (or a Redis Cluster: each key's hash is one key, so one slot)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        """Use ``RedisRateLimiter.from_url``."""
        self._client = client
        self._prefix = key_prefix
        self._admit = client.register_script(_ADMIT)
        self._debit = client.register_script(_DEBIT)
        self._debits: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = 0.25, max_connections: int = 64, key_prefix: str | None = None
    ) -> RedisRateLimiter:
        """A limiter on the Redis at ``url`` (``redis://``, ``rediss://``, ``redis+cluster://``,
        ``rediss+cluster://``; its query may set ``key_prefix``); nothing is connected yet.

        The timeout is short: every limited request waits for its check, and past the timeout the
        request goes through unchecked rather than late. The pool is bounded and its callers wait
        (up to the timeout) for a connection, as the Redis cache index's does.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", *_CLUSTER_SCHEMES):
            raise ValueError(f"not a Redis URL (scheme {scheme!r})")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("key_prefix", key_prefix or DEFAULT_KEY_PREFIX)
        client_url = parts._replace(scheme=_CLUSTER_SCHEMES.get(scheme, scheme), query=urlencode(query)).geturl()
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        client: aioredis.Redis | RedisCluster
        if scheme in _CLUSTER_SCHEMES:
            client = RedisCluster.from_url(client_url, **options)
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                client_url, max_connections=max_connections, timeout=timeout, **options
            )
            client = aioredis.Redis.from_pool(pool)
        return cls(client, key_prefix=prefix)

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}:{quote(key_id, safe='')}"

    async def admit(self, key_id: str, limits: Limits, now: float, *, take: bool = True) -> Decision:
        arguments = [
            repr(now),
            limits.requests_per_minute or 0,
            limits.input_tokens_per_minute or 0,
            1 if take else 0,
            _EXPIRE_MS,
        ]
        try:
            admitted, requests, input_tokens = await self._admit(keys=[self._key(key_id)], args=arguments)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RateLimiterUnavailable(f"the Redis rate limiter did not answer: {exc}") from exc
        return decided(limits, _bucket(requests, now), _bucket(input_tokens, now), bool(admitted))

    def debit(self, key_id: str, limits: Limits, input_tokens: int, now: float) -> None:
        """Queue the debit (a billed request's response must not wait for it); failures are logged."""
        capacity = limits.input_tokens_per_minute
        if capacity is None or input_tokens <= 0:
            return
        task = asyncio.create_task(self._run_debit(self._key(key_id), capacity, input_tokens, now))
        self._debits.add(task)
        task.add_done_callback(self._debits.discard)

    async def _run_debit(self, key: str, capacity: int, input_tokens: int, now: float) -> None:
        try:
            await self._debit(keys=[key], args=[repr(now), capacity, input_tokens, _EXPIRE_MS])
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("a rate limit debit of %d input tokens was lost: Redis did not answer (%s)", input_tokens, exc)

    async def aclose(self) -> None:
        if self._debits:
            await asyncio.wait(set(self._debits), timeout=1.0)
        await self._client.aclose()


def _bucket(level: bytes | str, now: float) -> Bucket | None:
    text = level.decode() if isinstance(level, bytes) else level
    return Bucket(float(text), now) if text else None
