"""The cache fields of a response's ``usage`` (SPEC §6.6, §8).

The gateway is the only writer of cache fields a client sees: an upstream's own prefix-cache
counts are shared across tenants, so forwarding them would tell one tenant what another sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cachegate.core.types import CacheStats, TtlTier

UPSTREAM_CACHE_FIELDS: Final = (
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
    "cache_discount",
    "cache_degraded",  # an upstream that is itself a cachegate
)
"""Cache fields an upstream may write at the top of ``usage``; removed before anything is sent."""

UPSTREAM_DETAIL_FIELDS: Final = ("cached_tokens", "cache_write_tokens")
"""The same, inside ``usage.prompt_tokens_details``."""

_DETAILS: Final = "prompt_tokens_details"
_RESPONSES_DETAILS: Final = "input_tokens_details"  # the Responses API's name for the same object

_TRIM_ORDER: Final = (TtlTier.FIVE_MINUTES, TtlTier.ONE_HOUR, TtlTier.ONE_DAY)
"""Creation is trimmed from the end of the prompt backwards: by the TTL order rule (§3.3) the
5m segments lie deepest, then the 1h ones, then the 24h ones; the read, at the front, goes last."""


def cap_stats(stats: CacheStats, prompt_tokens: int | None) -> CacheStats:
    """§6.6: reduce creation first, then read, until ``read + creation ≤ prompt_tokens``.

    Counting drift shows at the tail of the prompt, which is what was written; only writes are
    charged above the base price, so trimming them first never favours the house. Returns a new
    ``CacheStats``; ``None`` (no count from the upstream) caps nothing.
    """
    capped = CacheStats(stats.read, stats.creation_5m, stats.creation_1h, stats.creation_24h)
    if prompt_tokens is None:
        return capped
    excess = capped.read + capped.creation - max(prompt_tokens, 0)
    for tier in _TRIM_ORDER:
        cut = min(excess, capped.creation_of(tier))
        if cut > 0:
            capped.add_creation(tier, -cut)
            excess -= cut
    if excess > 0:
        capped.read -= min(excess, capped.read)
    return capped


def scrub_usage(usage: dict[str, Any]) -> None:
    """Remove the upstream's cache fields (for models that are not cache-enabled, and on routes
    where cachegate keeps no cache, §8), in the chat shape and in the Responses shape alike."""
    for name in UPSTREAM_CACHE_FIELDS:
        usage.pop(name, None)
    for details_name in (_DETAILS, _RESPONSES_DETAILS):
        details = usage.get(details_name)
        if isinstance(details, dict):
            for name in UPSTREAM_DETAIL_FIELDS:
                details.pop(name, None)


def upstream_cached_tokens(usage: Mapping[str, Any]) -> int | None:
    """The cached-token count the upstream reported itself; the ledger keeps it to reconcile."""
    for details_name in (_DETAILS, _RESPONSES_DETAILS):
        details = usage.get(details_name)
        if isinstance(details, Mapping):
            cached = details.get("cached_tokens")
            if isinstance(cached, int) and not isinstance(cached, bool):
                return cached
    return None


def splice_usage(usage: dict[str, Any], stats: CacheStats, *, degraded: bool) -> CacheStats:
    """Write the cache split into ``usage`` in place (§8); returns the split as capped.

    ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` are left as they are; other
    ``prompt_tokens_details`` keys (``audio_tokens``, …) are kept.
    """
    scrub_usage(usage)
    prompt_tokens = usage.get("prompt_tokens")
    has_count = isinstance(prompt_tokens, int) and not isinstance(prompt_tokens, bool)
    capped = cap_stats(stats, prompt_tokens if has_count else None)
    details = usage.get(_DETAILS)
    if not isinstance(details, dict):
        details = usage[_DETAILS] = {}
    details["cached_tokens"] = capped.read
    details["cache_write_tokens"] = capped.creation
    usage["cache_read_input_tokens"] = capped.read
    usage["cache_creation_input_tokens"] = capped.creation
    usage["cache_creation"] = {
        "ephemeral_5m_input_tokens": capped.creation_5m,
        "ephemeral_1h_input_tokens": capped.creation_1h,
        "ephemeral_24h_input_tokens": capped.creation_24h,
    }
    if degraded:
        usage["cache_degraded"] = True
    return capped
