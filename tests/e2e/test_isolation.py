"""Isolation (SPEC §8, §12), randomized: principals and prompts drawn at random over every route,
on SQLite and on PostgreSQL (index and store alike).

Every request asks the fake upstream to report its own prefix cache (``cached_tokens``) and
llama.cpp's ``timings`` on every chunk, and sets the flags that ask for more. Whatever the draw:
a principal reads the cache only for prompts it wrote itself (0 cross-tenant reads, and every
own re-send reads), no byte of the upstream's cache count or telemetry reaches any client, and
every request is one ledger row of its principal and route.
"""

from __future__ import annotations

import http.client
import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness import GatewayHarness
from prompts import marked_system, system_text

pytestmark = pytest.mark.over_http  # and so against `serve --workers 2` too (conftest.py)

CACHED = 4321  # the upstream's own prefix-cache count, in every answer it gives
BEHAVIOR = f"cached={CACHED},timings=every"
TELEMETRY = ("timings", "cache_n", "prompt_progress", "timings_per_token", "return_progress")
ROUNDS = 64
ASK_TELEMETRY = {"timings_per_token": True, "return_progress": True}
KINDS = (
    "chat",
    "chat-stream",
    "messages",
    "messages-stream",
    "completions",
    "completions-stream",
    "responses",
    "responses-stream",
    "embeddings",
)


@dataclass(frozen=True)
class Principal:
    id: str
    key: str


@dataclass(frozen=True)
class Answer:
    status: int
    payloads: list[Any]  # the JSON body, or every data payload of a stream


def send(gateway: GatewayHarness, path: str, body: dict[str, Any], key: str) -> Answer:
    url = urlsplit(gateway.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}", "x-fake-behavior": BEHAVIOR}
    try:
        connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = connection.getresponse()
        raw = response.read()
        if response.getheader("content-type", "").startswith("text/event-stream"):
            payloads = [
                json.loads(line[len(b"data: ") :])
                for line in raw.splitlines()
                if line.startswith(b"data: ") and line != b"data: [DONE]"
            ]
        else:
            payloads = [json.loads(raw)]
        return Answer(response.status, payloads)
    finally:
        connection.close()


def leaks(value: Any, path: str = "$") -> list[str]:
    """Where a parsed payload carries the upstream's cache count or engine telemetry."""
    if isinstance(value, list):
        return [leak for index, child in enumerate(value) for leak in leaks(child, f"{path}[{index}]")]
    if not isinstance(value, dict):
        return []
    found = [f"{path}.{name}" for name in value if name in TELEMETRY]
    found += [f"{path}.{name}" for name, child in value.items() if name == "cached_tokens" and child == CACHED]
    return found + [leak for name, child in value.items() for leak in leaks(child, f"{path}.{name}")]


def cache_read(answer: Answer) -> int:
    """The cache read tokens the gateway reported: the JSON body's, or the last usage of a stream."""
    reads = [
        usage["cache_read_input_tokens"]
        for payload in answer.payloads
        for usage in (payload.get("usage"), (payload.get("message") or {}).get("usage"))
        if isinstance(usage, dict) and "cache_read_input_tokens" in usage
    ]
    assert reads, answer.payloads
    return reads[-1]


def test_principals_never_read_each_others_cache_nor_see_the_engines(gateway: GatewayHarness) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    principals = [new_principal(gateway, f"isolation-{seed}-{n}") for n in range(4)]
    # Few prompts for many requests: most prompts are sent by several principals.
    chat_prompts = [system_text() for _ in range(4)]
    messages_prompts = [system_text() for _ in range(3)]
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    written: set[tuple[str, str, int]] = set()  # (principal, dialect, prompt) that wrote a cache entry
    expected_rows: Counter[tuple[str, str]] = Counter()

    for round_ in range(ROUNDS):
        who = rng.choice(principals)
        kind = rng.choice(KINDS)
        text = " ".join(rng.choices(words, k=5))
        context = f"seed {seed}, round {round_}, {kind}"
        if kind.startswith("chat"):
            index = rng.randrange(len(chat_prompts))
            body: dict[str, Any] = {
                "model": "cached",
                "messages": [marked_system(chat_prompts[index]), {"role": "user", "content": text}],
                **ASK_TELEMETRY,
            }
            if kind == "chat-stream":
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            answer = send(gateway, "/v1/chat/completions", body, who.key)
            check_read(answer, (who.id, "chat", index), written, context)
            route = "chat"
        elif kind.startswith("messages"):
            index = rng.randrange(len(messages_prompts))
            body = {
                "model": "cached",
                "max_tokens": 16,
                "system": [{"type": "text", "text": messages_prompts[index], "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": text}],
                "stream": kind == "messages-stream",
            }
            answer = send(gateway, "/v1/messages", body, who.key)
            check_read(answer, (who.id, "messages", index), written, context)
            route = "messages"
        elif kind.startswith("completions"):
            body = {"model": "cached", "prompt": text, "max_tokens": 8, **ASK_TELEMETRY}
            if kind == "completions-stream":
                body |= {"stream": True, "stream_options": {"include_usage": rng.random() < 0.5}}
            answer = send(gateway, "/v1/completions", body, who.key)
            route = "completions"
        elif kind.startswith("responses"):
            body = {"model": "cached", "input": text, "stream": kind == "responses-stream", **ASK_TELEMETRY}
            answer = send(gateway, "/v1/responses", body, who.key)
            route = "responses"
        else:
            answer = send(gateway, "/v1/embeddings", {"model": "cached", "input": text}, who.key)
            route = "embeddings"
        assert answer.status == 200, (context, answer.payloads)
        assert leaks(answer.payloads) == [], context
        expected_rows[(who.id, route)] += 1

    ours = {p.id for p in principals}
    stored = Counter(
        (row.principal_id, row.route)
        for route in ("chat", "messages", "completions", "responses", "embeddings")
        for row in gateway.ledger_rows(route)  # waits until every row is stored
        if row.principal_id in ours
    )
    assert stored == expected_rows, f"seed {seed}"


def check_read(answer: Answer, entry: tuple[str, str, int], written: set[tuple[str, str, int]], context: str) -> None:
    """A principal reads exactly the prompts it wrote itself: nothing another principal wrote."""
    assert answer.status == 200, (context, answer.payloads)
    read = cache_read(answer)
    if entry in written:
        assert read > 0, f"{context}: its own prompt did not read"
    else:
        assert read == 0, f"{context}: read {read} tokens of a prompt only others wrote"
        written.add(entry)


def new_principal(gateway: GatewayHarness, name: str) -> Principal:
    principal = gateway.call(gateway.store.create_principal(name))
    _, secret = gateway.call(gateway.store.create_api_key(principal.id))
    return Principal(principal.id, secret)
