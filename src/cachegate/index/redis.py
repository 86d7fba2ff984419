"""The cache index in Redis (or a Redis Cluster): one key per entry, removed by Redis itself when it expires.

Key layout (docs/decisions.md, "The Redis cache index")::

    <key_prefix>:{<principal>|<model>|<tokenizer_version>}:<prefix hash, hex>  →  "<tokens> <ttl> <expires_at>"

- The braces are a Redis Cluster *hash tag*: every key of one scope hashes to one slot, so a lookup of
  all its candidates is one ``MGET`` and a batch's writes are one script call, on one node. Each part of
  the scope is percent-encoded (``|``, ``{``, ``}``, ``%``, ``:`` included), so two different scopes can
  never share a key or break out of the tag.
- ``expires_at`` is the caller's float, written with ``repr`` (it round-trips bit for bit) and compared
  with the caller's ``now`` on every read, exactly as the SQL backends do: liveness never depends on
  the Redis server's clock.
- The key's Redis lifetime is ``expires_at - now + keep`` of the call that set it (``PX``, a relative
  lifetime, so a replica's or the test suite's clock need not agree with the server's), and is never
  shortened; ``keep`` is the longer of ``expiry_grace`` and ``retention``. Redis deletes expired entries
  on its own; the grace keeps an entry a replica whose clock lags still sees as live, the retention
  keeps an expired one for the diagnosis of misses (SPEC §14), and ``sweep`` only removes entries that
  are inside their grace.
- A trail (SPEC §14) is one key beside its scope's entries, ``...{<scope>}:trail:<key, hex>`` →
  ``"<anchor, hex>:<sections, hex> <expires_at>"``, kept ``expires_at - now + keep`` as well.

Writes and refreshes are Lua scripts (one per scope in a batch): the read-compare-write of "never
shorten" is atomic in Redis, and several replicas writing one key cannot interleave.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Recall, Refresh, Trail, TtlTier
from cachegate.index.base import IndexUnavailable

_T = TypeVar("_T")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES = ("redis", "rediss", *CLUSTER_SCHEMES)

DEFAULT_KEY_PREFIX = "cachegate:index"

# Keys = the entries' keys in batch order, then the trails'; ARGV = now, keep, the number of entries,
# then tokens, ttl, expires_at per entry, then value, expires_at per trail.
# A stored entry that outlives the new one keeps its ttl, expiry and Redis lifetime (KEEPTTL) and
# only takes the new token count; otherwise (a tie included) the new entry replaces it, and its
# lifetime is the longer of the computed one and what the key had left. A trail takes the new value
# and the later of the two expiries.
_WRITE = """
local now, grace, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, count do
  local key = KEYS[i]
  local at = 1 + 3 * i
  local tokens, ttl, expires = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local stored = redis.call('GET', key)
  local stored_ttl, stored_expires
  if stored then
    stored_ttl, stored_expires = string.match(stored, '^%d+ (%S+) (%S+)$')
  end
  if stored_expires and tonumber(stored_expires) > tonumber(expires) then
    redis.call('SET', key, tokens .. ' ' .. stored_ttl .. ' ' .. stored_expires, 'KEEPTTL')
  else
    local lifetime = math.max(math.ceil((tonumber(expires) - now + grace) * 1000), redis.call('PTTL', key))
    if lifetime > 0 then
      redis.call('SET', key, tokens .. ' ' .. ttl .. ' ' .. expires, 'PX', lifetime)
    else
      redis.call('DEL', key)
    end
  end
end
for i = count + 1, #KEYS do
  local key = KEYS[i]
  local at = 4 + 3 * count + 2 * (i - count - 1)
  local value, expires = ARGV[at], ARGV[at + 1]
  local stored = redis.call('GET', key)
  local stored_expires = stored and string.match(stored, ' (%S+)$')
  if stored_expires and tonumber(stored_expires) > tonumber(expires) then
    expires = stored_expires
  end
  local lifetime = math.max(math.ceil((tonumber(expires) - now + grace) * 1000), redis.call('PTTL', key))
  if lifetime > 0 then
    redis.call('SET', key, value .. ' ' .. expires, 'PX', lifetime)
  else
    redis.call('DEL', key)
  end
end
return 0
"""

# Keys = distinct entry keys; ARGV = now, grace, then the new expires_at per key. Only a live entry
# (expires_at > now) moves, and only forward; a missing or expired one stays as it is.
_REFRESH = """
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local expires = ARGV[i + 2]
  local stored = redis.call('GET', key)
  if stored then
    local tokens, ttl, stored_expires = string.match(stored, '^(%d+) (%S+) (%S+)$')
    local current = tonumber(stored_expires)
    if current and current > now and current < tonumber(expires) then
      local lifetime = math.max(math.ceil((tonumber(expires) - now + grace) * 1000), redis.call('PTTL', key))
      redis.call('SET', key, tokens .. ' ' .. ttl .. ' ' .. expires, 'PX', lifetime)
    end
  end
end
return 0
"""

# Keys = entries of one slot; ARGV = now. Deletes those expired at ``now``; returns how many.
_SWEEP = """
local now, removed = tonumber(ARGV[1]), 0
for _, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  if stored then
    local expires = tonumber(string.match(stored, '(%S+)$'))
    if expires and expires <= now then
      removed = removed + redis.call('DEL', key)
    end
  end
end
return removed
"""

_HASH_TAG = re.compile(rb"\{[^}]*\}")
_NOT_IN_PREFIX = "{}*?[]\\"
_SCAN_PAGE = 1000


class RedisIndex:
    """A ``CacheIndex`` in Redis, shared by every replica that points at the same server or cluster."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        expiry_grace: float,
        retention: float = 0.0,
    ) -> None:
        """Use ``RedisIndex.open``, which also checks that the server answers."""
        self._client = client
        self._key_prefix = key_prefix
        self._grace = max(expiry_grace, retention)  # how long a key outlives its entry
        self._write_script = client.register_script(_WRITE)
        self._refresh_script = client.register_script(_REFRESH)
        self._sweep_script = client.register_script(_SWEEP)
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        key_prefix: str | None = None,
        socket_timeout: float = 0.5,
        connect_timeout: float = 1.0,
        expiry_grace: float = 60.0,
        retention: float = 0.0,
        max_connections: int = 64,
    ) -> RedisIndex:
        """Connect to the Redis (``redis://``, ``rediss://``) or Redis Cluster (``redis+cluster://``,
        ``rediss+cluster://``) at ``url`` and check that it answers.

        The URL's query may set ``key_prefix`` and any redis-py URL option (``socket_timeout``, ...);
        the keyword arguments are the defaults. ``retention`` keeps expired entries and trails that long
        for the diagnosis of misses (SPEC §14). Timeouts are short on purpose: a slow index costs every
        request its latency, where a missing one only costs its discount (SPEC §11).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"not a Redis URL (scheme {scheme!r})")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("key_prefix", key_prefix or DEFAULT_KEY_PREFIX)
        if not prefix or any(character in prefix for character in _NOT_IN_PREFIX):
            # Braces would move the hash tag; glob characters would widen the sweep's SCAN MATCH.
            raise ValueError(f"the Redis key_prefix must be non-empty and hold none of {_NOT_IN_PREFIX!r}")
        client_url = parts._replace(scheme=CLUSTER_SCHEMES.get(scheme, scheme), query=urlencode(query)).geturl()
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # One more try on a fresh connection (a restarted server, an idle connection a proxy
            # closed); every operation here is safe to repeat. Timeouts are not retried.
            "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 1, supported_errors=(RedisConnectionError,)),
        }
        if scheme in CLUSTER_SCHEMES:
            # redis-py's cluster keeps a pool per node that fails, rather than waits, when full; so
            # its pools are left unbounded (a connection per call in flight, per node).
            client: aioredis.Redis | RedisCluster = RedisCluster.from_url(client_url, **options)
        else:
            # A bounded pool whose callers wait (up to the socket timeout) for a free connection: the
            # default pool raises "Too many connections" at once, which under a burst of requests
            # would degrade them all instead of queueing them for a few microseconds.
            pool = aioredis.BlockingConnectionPool.from_url(
                client_url, max_connections=max_connections, timeout=socket_timeout, **options
            )
            client = aioredis.Redis.from_pool(pool)
        index = cls(client, key_prefix=prefix, expiry_grace=expiry_grace, retention=retention)
        try:
            # Loaded now (on every primary of a cluster), so no request pays for a NOSCRIPT round trip.
            await index._call("connect", index._load_scripts)
        except BaseException:
            await index.aclose()
            raise
        return index

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        if not hashes:
            return []
        unique = list(dict.fromkeys(hashes))
        # One MGET: every key carries the scope's hash tag, so they share a slot even on a cluster.
        scoped = self._scope_prefix(scope)
        keys = [scoped + prefix_hash.hex() for prefix_hash in unique]
        values = await self._call("lookup", lambda: self._client.mget(keys))
        matches = []
        for prefix_hash, value in zip(unique, values, strict=True):
            if value is None:
                continue
            try:
                tokens, ttl, stored_expiry = value.split(b" ")
                match = IndexMatch(prefix_hash, int(tokens), TtlTier(ttl.decode()), float(stored_expiry))
            except ValueError:  # not an entry of ours (written by hand, or by another program): a miss
                continue
            if match.expires_at > now:
                matches.append(match)
        return matches

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        if not entries and not trails:
            return
        by_scope: dict[CacheScope, tuple[list[IndexEntry], list[Trail]]] = defaultdict(lambda: ([], []))
        for entry in entries:
            by_scope[entry.scope][0].append(entry)
        for trail in trails:
            by_scope[trail.scope][1].append(trail)
        calls = []
        for scope, (scoped, scoped_trails) in by_scope.items():
            arguments: list[Any] = [repr(now), repr(self._grace), len(scoped)]
            for entry in scoped:
                arguments += [entry.cumulative_tokens, entry.ttl.value, repr(entry.expires_at)]
            for trail in scoped_trails:
                arguments += [f"{trail.anchor.hex()}:{trail.sections.hex()}", repr(trail.expires_at)]
            keys = [self._key(scope, entry.prefix_hash) for entry in scoped]
            keys += [self._trail_key(scope, trail.key) for trail in scoped_trails]
            calls.append((self._write_script, keys, arguments))
        await self._call("write", lambda: _run_scripts(calls))

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        unique_hashes, unique_keys = list(dict.fromkeys(hashes)), list(dict.fromkeys(keys))
        if not unique_hashes and not unique_keys:
            return Recall()
        # One MGET of entries and trails alike: they share the scope's hash tag, so its slot.
        names = [self._key(scope, prefix_hash) for prefix_hash in unique_hashes]
        names += [self._trail_key(scope, key) for key in unique_keys]
        values = await self._call("recall", lambda: self._client.mget(names))
        expired = set()
        for prefix_hash, value in zip(unique_hashes, values[: len(unique_hashes)], strict=True):
            stored_expiry = _stored_expiry(value)
            if stored_expiry is not None and stored_expiry <= now:
                expired.add(prefix_hash)
        trails = []
        for key, value in zip(unique_keys, values[len(unique_hashes) :], strict=True):
            try:
                body, stored_expiry = value.split(b" ")
                anchor, sections = body.split(b":")
                anchor_bytes, section_bytes = bytes.fromhex(anchor.decode()), bytes.fromhex(sections.decode())
                trails.append(Trail(scope, key, anchor_bytes, section_bytes, float(stored_expiry)))
            except (AttributeError, ValueError):  # no trail (None), or not one of ours
                continue
        return Recall(frozenset(expired), tuple(trails))

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        if not refreshes:
            return
        # Coalesced: refreshes of one key in a batch become one, to the latest expiry. Each refresh
        # only moves a live entry forward, so applying them in order ends where the latest one does.
        latest: dict[CacheScope, dict[bytes, float]] = defaultdict(dict)
        for refresh in refreshes:
            scoped = latest[refresh.scope]
            scoped[refresh.prefix_hash] = max(refresh.expires_at, scoped.get(refresh.prefix_hash, refresh.expires_at))
        calls = [
            (
                self._refresh_script,
                [self._key(scope, prefix_hash) for prefix_hash in expiries],
                [repr(now), repr(self._grace), *(repr(expires_at) for expires_at in expiries.values())],
            )
            for scope, expiries in latest.items()
        ]
        await self._call("refresh", lambda: _run_scripts(calls))

    async def sweep(self, now: float) -> int:
        """Delete the entries expired at ``now`` that Redis has not removed yet (those in their grace).

        A scan of this index's keys (on every primary of a cluster): a background chore, never on a
        request's path, and seldom needed at all since Redis expires keys itself.
        """
        return await self._call("sweep", lambda: self._sweep(now))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()

    async def _load_scripts(self) -> None:
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()
        for script in (self._write_script, self._refresh_script, self._sweep_script):
            await self._client.script_load(script.script)

    async def _sweep(self, now: float) -> int:
        removed = 0
        page: list[bytes] = []
        async for key in self._client.scan_iter(match=f"{self._key_prefix}:{{*", count=_SCAN_PAGE):
            page.append(key)
            if len(page) >= _SCAN_PAGE:
                removed += await self._sweep_page(page, now)
                page = []
        return removed + await self._sweep_page(page, now)

    async def _sweep_page(self, keys: list[bytes], now: float) -> int:
        by_slot: dict[bytes, list[bytes]] = defaultdict(list)
        for key in keys:
            tag = _HASH_TAG.search(key)
            by_slot[tag.group() if tag else key].append(key)
        counts = await _run_scripts([(self._sweep_script, slot, [repr(now)]) for slot in by_slot.values()])
        return sum(int(count) for count in counts)

    def _key(self, scope: CacheScope, prefix_hash: bytes) -> str:
        return self._scope_prefix(scope) + prefix_hash.hex()

    def _trail_key(self, scope: CacheScope, key: bytes) -> str:
        return self._scope_prefix(scope) + "trail:" + key.hex()

    def _scope_prefix(self, scope: CacheScope) -> str:
        """What every key of ``scope`` begins with: ``<key_prefix>:{<scope>}:``."""
        return f"{self._key_prefix}:{_hash_tag(scope)}:"

    async def _call(self, operation: str, run: Callable[[], Awaitable[_T]]) -> _T:
        """Run a Redis operation, its errors as ``IndexUnavailable``."""
        if self._closed:
            raise IndexUnavailable("the Redis cache index is closed")
        try:
            return await run()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise IndexUnavailable(f"cache index {operation} failed: {exc}") from exc


def _stored_expiry(value: bytes | None) -> float | None:
    """The ``expires_at`` an entry's value ends with; None for no value, or one not of ours."""
    if value is None:
        return None
    try:
        return float(value.rsplit(b" ", 1)[-1])
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _hash_tag(scope: CacheScope) -> str:
    """``{principal|model|tokenizer_version}``, each part percent-encoded (cached: on every key of every call)."""
    return (
        "{" + "|".join(quote(part, safe="") for part in (scope.principal, scope.model, scope.tokenizer_version)) + "}"
    )


ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


async def _run_scripts(calls: Sequence[ScriptCall]) -> list[Any]:
    """Run script calls (one per slot) concurrently; the first error is raised once all have ended.

    A batch nearly always holds one scope, which is then one call on the caller's task.
    """
    if len(calls) == 1:
        script, keys, arguments = calls[0]
        return [await script(keys=keys, args=arguments)]
    results = await asyncio.gather(
        *(script(keys=keys, args=arguments) for script, keys, arguments in calls), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
