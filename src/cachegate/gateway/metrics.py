"""Prometheus metrics. Labels are bounded: model labels carry configured aliases only, never raw
client strings, and nothing here ever holds prompt text or secrets (SPEC §12)."""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from cachegate.asgi import Refusal, Send, send_bytes
from cachegate.gateway.routing import Request

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name: the folder workers share

REQUESTS = Counter(
    "cachegate_requests_total", "Requests answered, by route kind and status class.", ["route", "status"]
)
CACHE_OUTCOMES = Counter(
    "cachegate_cache_outcomes_total",
    "Chat requests of cache-enabled models by what the cache did.",
    ["outcome"],  # read | write | read_and_write | none | degraded
)
CACHE_MISSES = Counter(
    "cachegate_cache_misses_total",
    "Responses of cache-enabled models whose deepest breakpoint did not read, by why (SPEC §14).",
    ["model", "reason"],  # reason: first_write | expired | prefix_changed | below_floor | degraded
)
CACHE_TOKENS = Counter("cachegate_cache_tokens_total", "Tokens reported as cache read or creation.", ["model", "kind"])
DEGRADED = Counter("cachegate_cache_degraded_total", "Requests served uncached because of an outage.", ["reason"])
MARKERS_REJECTED = Counter("cachegate_markers_rejected_total", "Requests refused for invalid markers.", ["reason"])
COMMITS = Counter("cachegate_cache_commits_total", "Index commits after a successful response.", ["result"])
COMMITS_VETOED = Counter(
    "cachegate_cache_commits_vetoed_total", "Pending writes dropped because the response did not succeed.", ["reason"]
)
CLIENTS_LEFT = Counter(
    "cachegate_clients_left_total",
    "Requests whose client left before the end, by how they were billed: drained (the upstream's usage) or counted.",
    ["billed"],
)
STALE_HITS = Counter(
    "cachegate_cache_stale_hits_total",
    "Deepest matches refused because the template now renders their prefix differently.",
)
REFRESHES_DROPPED = Counter("cachegate_cache_refreshes_dropped_total", "Expiry refreshes lost to overload or outage.")
CAPPED = Counter("cachegate_cache_split_capped_total", "Responses whose cache split was capped to prompt_tokens.")
COUNT_DRIFT = Histogram(
    "cachegate_token_count_drift_tokens",
    "Our count of a whole prompt minus the upstream's prompt_tokens (0 when the counts agree).",
    ["model"],
    buckets=(-500, -100, -50, -20, -5, -1, 0, 1, 5, 20, 50, 100, 500),
)
TOKEN_COUNTS = Counter(
    "cachegate_token_counts_total",
    "Prompts counted, by how: memory, resumed, layout, sentinel, remote (tokens/base.py CountMethod).",
    ["method"],
)
LEDGER_DROPPED = Counter(
    "cachegate_ledger_rows_dropped_total",
    "Ledger rows lost: the memory buffer (no journal, or a failing disk) was full, or held at exit.",
)
LEDGER_REFUSED = Counter(
    "cachegate_ledger_rows_refused_total",
    "Ledger rows the store refused while it took their neighbours; set aside in the journal's folder (*.refused).",
)
LEDGER_JOURNALED = Counter(
    "cachegate_ledger_rows_journaled_total", "Ledger rows written (and synced, if fsync is on) to the local journal."
)
LEDGER_STORED = Counter(
    "cachegate_ledger_rows_stored_total", "Ledger rows the control store has acknowledged (a replayed duplicate too)."
)
LEDGER_REPLAYED = Counter(
    "cachegate_ledger_rows_replayed_total",
    "Ledger rows recovered from the journal of a process that ended without draining it (at start, or adopted later).",
)
LEDGER_JOURNAL_FAILURES = Counter(
    "cachegate_ledger_journal_failures_total", "Journal writes that failed; their rows went to the memory buffer."
)
LEDGER_JOURNAL_TORN = Counter(
    "cachegate_ledger_journal_torn_total", "Torn or unreadable journal tails skipped while draining a segment."
)
LEDGER_GROUP_ROWS = Histogram(
    "cachegate_ledger_journal_group_rows",
    "Rows per journal group commit (one write, one fsync).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INTERNAL_ERRORS = Counter(
    "cachegate_internal_errors_total",
    "Requests cachegate itself failed with an unexpected error (a 500 naming a request id; logged with it).",
    ["route"],
)
PASSED_ON = Counter(
    "cachegate_endpoint_passed_on_total",
    "Requests a model's endpoint passed to the next in rendezvous order (SPEC §15), by why.",
    ["reason"],  # down, overloaded, refused
)
ENDPOINT_REQUESTS = Counter(
    "cachegate_endpoint_requests_total",
    "Requests each endpoint took (SPEC §15): how a model's traffic spreads over its replicas.",
    ["endpoint"],  # endpoint names come from the configuration: a bounded set
)
BUDGET_REFUSALS = Counter(
    "cachegate_budget_refusals_total", "Requests refused (429) because a budget is spent, by period.", ["period"]
)
RATE_LIMITED = Counter(
    "cachegate_rate_limited_total", "Requests refused (429) by their key's rate limit, by limit.", ["limit"]
)
RATE_LIMITER_UNAVAILABLE = Counter(
    "cachegate_rate_limiter_unavailable_total",
    "Rate checks skipped, the request let through, because the shared limiter (Redis) did not answer.",
)
REQUEST_SECONDS = Histogram(
    "cachegate_request_seconds",
    "Time from request to the last byte, by route kind.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


@functools.cache
def labelled(metric: Counter | Histogram, *values: str) -> Any:
    """The child of ``metric`` for these label values, resolved once.

    ``labels()`` takes a lock and builds a key on every call (a few microseconds); label sets
    here are bounded, so their children are kept.
    """
    return metric.labels(*values)


async def send_metrics(send: Send) -> None:
    """The exposition of every metric of this process, or of every worker's under ``serve --workers N``
    (prometheus-client's multiprocess mode: each worker's series in files of the supervisor's folder)."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        page = generate_latest(registry)
    else:
        page = generate_latest()
    await send_bytes(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], page)


async def metrics_page(request: Request) -> int:
    """GET /metrics for an admin key (SPEC §12): the series are the operator's, not a tenant's to probe."""
    if not request.key.is_admin:
        raise Refusal(403, "/metrics needs an admin key", "admin_key_required", type_="permission_error")
    await send_metrics(request.send)
    return 200
