"""POST /v1/messages/count_tokens (SPEC §9): the exact input count of an Anthropic request.

Counted by the model's own template and tokenizer — the ``prompt_tokens`` its upstream will
report — without calling the upstream. With markers, the answer also says what the request
would read and write now: the classification runs as for a real request (one index lookup,
the counts at the breakpoints) but nothing is committed or refreshed, so asking changes nothing.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from cachegate.asgi import JSON_HEADERS, Refusal, send_bytes
from cachegate.core.anthropic.request import client_param
from cachegate.core.anthropic.response import anthropic_usage
from cachegate.core.blocks import hashed_prompt
from cachegate.core.markers import TtlPolicy, strip_markers
from cachegate.core.types import Classification, TtlTier
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.classifier import CacheClassifier, cache_scope
from cachegate.gateway.completions import checked_breakpoints
from cachegate.gateway.messages import AnthropicRequests
from cachegate.gateway.routing import Request
from cachegate.tokens.base import TokenCountError


class CountTokens:
    def __init__(
        self,
        requests: AnthropicRequests,
        catalog: CatalogCache,
        ttl_policy: TtlPolicy,
        classifier: CacheClassifier,
    ) -> None:
        self._requests = requests
        self._catalog = catalog
        self._ttl_policy = ttl_policy
        self._classifier = classifier
        self._with_24h = TtlTier.ONE_DAY in ttl_policy.accepted

    async def __call__(self, request: Request) -> int:
        now = time.time()
        translated, counter = await self._requests.read(request, for_counting=True)
        body = translated.body
        breakpoints = checked_breakpoints(body, self._ttl_policy, functools.partial(client_param, translated))
        strip_markers(body)
        prompt = hashed_prompt(body, breakpoints)
        alias: str = body["model"]
        tariff = self._catalog.current.tariff_at(alias, datetime.fromtimestamp(now, UTC))
        classification = Classification()
        if breakpoints and tariff is not None:
            # A dry run: classify() only looks and counts; commits and refreshes happen elsewhere.
            scope = cache_scope(request.key.principal_id, alias, counter)
            if scope is None:
                classification = Classification.degraded_zeros()
            else:
                classification = await self._classifier.classify(scope, prompt, body, tariff, counter, now)
        total = classification.counted_total  # the classification's rendering counted the whole prompt
        if total is None:
            try:
                total = (await counter.count(body, prompt, ())).total
            except TokenCountError as exc:
                raise Refusal(503, "the token counter for this model is unavailable", "counter_unavailable") from exc
        if total is None:  # cannot be: no block was asked for, so the whole prompt was counted
            raise Refusal(503, "the token counter gave no total", "counter_unavailable")
        answer: dict[str, Any] = {"input_tokens": total}
        if breakpoints:
            usage = anthropic_usage(
                total, 0, classification.stats, degraded=classification.degraded, with_24h=self._with_24h
            )
            answer.update({name: value for name, value in usage.items() if name.startswith("cache_")})
        await send_bytes(request.send, 200, JSON_HEADERS, orjson.dumps(answer))
        return 200
