"""Benchmark: prefix affinity against round robin over four replicas (SPEC §15).

Four fake upstreams, each simulating one engine replica's prefix KV cache (16-token blocks,
least recently used evicted: ``cachegate fake-upstream --kv-cache-blocks N``), stand behind the
gateway as one model, in two set-ups run one after the other on fresh replicas:

- affinity: the model lists the four replicas as its endpoints; the gateway picks by rendezvous
  hashing of the request's routing prefix (its opening, or up to its first breakpoint if that is earlier: here
  the tenant's marked system prompt);
- round robin: the model has one endpoint, a round-robin balancer in front of the four (as a
  plain load balancer or Kubernetes Service spreads requests), run inside this script.

The workload is a multi-tenant agent's: several tenants (principals), each with its own tools
and system prompt (marked 1h) and several conversations, sent turn by turn — all conversations'
turn t at once, then turn t+1 — each turn adding the model's answer and a tool result, its last
user message marked (5m). The gateway bills reads from its index; the replicas report what their
KV caches really held (``cached_tokens``), which the gateway keeps in the ledger
(``upstream_cached_tokens``). The table gives, per set-up, both sums from the ledger and their
ratio: the share of billed reads the engines did not have to recompute (target ≥ 0.9 with
affinity). It also gives what the choice costs per request (hashing the routing prefix, ranking the
endpoints), and how often a key made of each turn's deepest read entry would have moved the
conversation to another replica.

    .venv/bin/python bench/affinity.py            # about 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import free_port, stop, wait_ready
from cachegate.core.affinity import affinity_key, rendezvous_order, tenant_key
from cachegate.core.blocks import hashed_prompt
from cachegate.core.markers import TtlPolicy, validate_markers
from cachegate.store.factory import open_store

REPLICAS = 4
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{description} " + "Use it whenever the task calls for it; report what it returns. " * 6,
            "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
        },
    }
    for name, description in (
        ("read_file", "Read a file of the repository."),
        ("run_tests", "Run the test suite, or one test."),
        ("edit_file", "Replace a span of a file."),
    )
]


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    billed_reads: int = 0  # cachegate's cache_read_tokens, from the ledger
    physical_hits: int = 0  # the replicas' cached_tokens, from the ledger's upstream_cached_tokens
    # Per request, the engine's hits up to what cachegate billed as read: the billed reads the engine
    # did not recompute (its other hits are prefixes cachegate billed as writes, such as a tenant's
    # system prompt that another conversation had just sent to the same replica).
    reads_held: int = 0
    per_replica: tuple[int, ...] = ()

    def share(self, tokens: int) -> float:
        return tokens / self.billed_reads if self.billed_reads else 0.0


def system_prompt(tenant: int) -> str:
    rules = " ".join(f"Rule {i} of tenant {tenant}: keep changes small, test them, explain them." for i in range(90))
    return f"You are the coding agent of tenant {tenant}. {rules}"


def opening(tenant: int, conversation: int) -> str:
    return f"Tenant {tenant}, task {conversation}: the nightly build fails in module {conversation * 7 + tenant}. " * 6


def tool_result(tenant: int, conversation: int, turn: int) -> str:
    lines = (f"line {n}: result {tenant}.{conversation}.{turn}.{n} ok" for n in range(40))
    return "Tool output:\n" + "\n".join(lines)


def marked(text: str, ttl: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}]


class Conversation:
    def __init__(self, tenant: int, conversation: int) -> None:
        self.tenant = tenant
        self.conversation = conversation
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": marked(system_prompt(tenant), "1h")},
            {"role": "user", "content": opening(tenant, conversation)},
        ]

    def body(self) -> dict[str, Any]:
        """The next request: the conversation so far, its last user message marked (5m)."""
        messages = [dict(message) for message in self.messages]
        messages[-1]["content"] = marked(str(messages[-1]["content"]), "5m")
        return {"model": "agent", "tools": TOOLS, "messages": messages, "max_tokens": 24}

    def answered(self, answer: str, turn: int) -> None:
        self.messages.append({"role": "assistant", "content": answer})
        self.messages.append({"role": "user", "content": tool_result(self.tenant, self.conversation, turn)})


async def round_robin_balancer(replica_ports: list[int], port: int) -> web.AppRunner:
    """A plain HTTP balancer: each request to the next replica in turn."""
    turn = itertools.count()
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        replica = replica_ports[next(turn) % len(replica_ports)]
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with session.request(
            request.method, f"http://127.0.0.1:{replica}{request.path_qs}", data=await request.read(), headers=headers
        ) as answer:
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: session.close())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def write_config(work: Path, endpoint_ports: list[int]) -> Path:
    endpoints = "\n".join(
        f"  - {{name: r{i}, base_url: 'http://127.0.0.1:{p}/v1'}}" for i, p in enumerate(endpoint_ports)
    )
    names = ", ".join(f"r{i}" for i in range(len(endpoint_ports)))
    config = work / "config.yaml"
    config.write_text(
        f"""
data_dir: {work}
ledger: {{flush_interval_seconds: 0.2}}
endpoints:
{endpoints}
models:
  - alias: agent
    endpoints: [{names}]
    upstream_model: qwen3-fake
    cache: {{min_prefix_tokens: 1024}}
"""
    )
    return config


async def run_workload(gateway: str, keys: list[str], conversations: int, turns: int) -> None:
    chats = [[Conversation(tenant, c) for c in range(conversations)] for tenant in range(len(keys))]
    async with aiohttp.ClientSession() as session:

        async def send(key: str, chat: Conversation, turn: int) -> None:
            headers = {"authorization": f"Bearer {key}"}
            async with session.post(f"{gateway}/v1/chat/completions", json=chat.body(), headers=headers) as response:
                answer = await response.json()
                if response.status != 200:
                    raise SystemExit(f"bench: the gateway answered {response.status}: {answer}")
            chat.answered(answer["choices"][0]["message"]["content"], turn)

        for turn in range(turns):
            await asyncio.gather(
                *(send(keys[t], chat, turn) for t, tenant_chats in enumerate(chats) for chat in tenant_chats)
            )


async def create_keys(store_url: str, tenants: int) -> list[str]:
    """One principal and key per tenant."""
    store = await open_store(store_url)
    try:
        await store.migrate()
        keys = []
        for tenant in range(tenants):
            principal = await store.create_principal(f"tenant-{tenant}")
            keys.append((await store.create_api_key(principal.id))[1])
        return keys
    finally:
        await store.aclose()


def ledger_totals(work: Path) -> Totals:
    with sqlite3.connect(work / "control.db") as connection:
        row = connection.execute(
            "SELECT count(*), sum(prompt_tokens), sum(cache_read_tokens), sum(upstream_cached_tokens),"
            " sum(min(upstream_cached_tokens, cache_read_tokens)) FROM ledger WHERE route = 'chat' AND status = 200"
        ).fetchone()
    return Totals(*(value or 0 for value in row))


async def replica_requests(ports: list[int]) -> tuple[int, ...]:
    async with aiohttp.ClientSession() as session:
        counts = []
        for port in ports:
            async with session.get(f"http://127.0.0.1:{port}/_fake/stats") as response:
                counts.append((await response.json())["chat_requests"])
    return tuple(counts)


def run_setup(name: str, args: argparse.Namespace, cachegate: str) -> Totals:
    """One set-up on fresh replicas and a fresh gateway: the workload, then the ledger's sums."""
    work = Path(tempfile.mkdtemp(prefix=f"cachegate-affinity-{name}-"))
    replica_ports = [free_port() for _ in range(REPLICAS)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    blocks = str(args.kv_cache_blocks)
    replicas = [
        subprocess.Popen([cachegate, "fake-upstream", "--port", str(port), "--kv-cache-blocks", blocks], **quiet)
        for port in replica_ports
    ]
    balancer_port = free_port()
    config = write_config(work, replica_ports if name == "affinity" else [balancer_port])
    gateway_port = free_port()
    keys = asyncio.run(create_keys(f"sqlite:///{work / 'control.db'}", args.tenants))
    gateway = subprocess.Popen([cachegate, "-c", str(config), "serve", "--port", str(gateway_port)], **quiet)
    try:
        for port, process in zip(replica_ports, replicas, strict=True):
            wait_ready(f"http://127.0.0.1:{port}/v1/models", process)
        wait_ready(f"http://127.0.0.1:{gateway_port}/healthz", gateway)

        async def drive() -> tuple[int, ...]:
            balancer = await round_robin_balancer(replica_ports, balancer_port) if name != "affinity" else None
            try:
                gateway_url = f"http://127.0.0.1:{gateway_port}"
                await run_workload(gateway_url, keys, args.conversations, args.turns)
                return await replica_requests(replica_ports)
            finally:
                if balancer is not None:
                    await balancer.cleanup()

        per_replica = asyncio.run(drive())
    finally:
        stop(gateway, *replicas)  # the gateway flushes its ledger as it stops
    totals = ledger_totals(work)
    totals.per_replica = per_replica
    return totals


def choice_cost(args: argparse.Namespace) -> tuple[float, float, float]:
    """Microseconds per request, on the workload's last turns: the routing key, the ranking, and
    (for scale) the whole prompt's hashing that the classification does anyway."""
    bodies = []
    for tenant, conversation in itertools.product(range(args.tenants), range(args.conversations)):
        chat = Conversation(tenant, conversation)
        for turn in range(args.turns - 1):
            chat.answered("The quick brown fox jumps over the lazy dog. " * 3, turn)
        bodies.append(chat.body())
    endpoints = [f"r{i}" for i in range(REPLICAS)]
    rounds = 200

    def per_request(work: Any) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            for body in bodies:
                work(body)
        return (time.perf_counter() - started) / (rounds * len(bodies)) * 1e6

    policy = TtlPolicy.default_policy()
    firsts = {id(body): validate_markers(body, policy)[0].block for body in bodies}  # the gateway has them
    keys = [affinity_key("principal", "agent", body, firsts[id(body)]) for body in bodies]
    key_cost = per_request(lambda body: affinity_key("principal", "agent", body, firsts[id(body)]))
    started = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            rendezvous_order(key, endpoints)
    rank_cost = (time.perf_counter() - started) / (rounds * len(keys)) * 1e6
    hash_cost = per_request(lambda body: hashed_prompt(body, ()))
    return key_cost, rank_cost, hash_cost


def read_entry_moves(args: argparse.Namespace) -> float:
    """How often, from the third turn on, the replica of (scope, the entry the turn reads) differs
    from the one the turn before was sent to by the same rule: the key the contract's first
    reading names would move a conversation off the replica holding what it reads."""
    endpoints = [f"r{i}" for i in range(REPLICAS)]
    moved = compared = 0
    for tenant, conversation in itertools.product(range(args.tenants), range(args.conversations)):
        chat = Conversation(tenant, conversation)
        deepest: list[bytes] = []  # each turn's deepest breakpoint: the entry the next turn reads
        for turn in range(args.turns):
            body = chat.body()
            prompt = hashed_prompt(body, ())
            last_user = max(i for i, block in enumerate(prompt.blocks) if block.message == len(body["messages"]) - 1)
            deepest.append(prompt.prefix_hashes[last_user])
            chat.answered("The quick brown fox jumps over the lazy dog. " * 3, turn)
        scope = tenant_key(f"tenant-{tenant}", "agent")
        homes = [rendezvous_order(scope + entry, endpoints)[0] for entry in deepest]
        for turn in range(2, args.turns):  # turn t reads deepest[t-1]; turn t-1 read deepest[t-2]
            compared += 1
            moved += homes[turn - 1] != homes[turn - 2]
    return moved / compared if compared else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=3)
    # 9 conversations in all: with a multiple of 4, a strict round robin sending them in the same
    # order every turn would pin each conversation to one replica by accident.
    parser.add_argument("--conversations", type=int, default=3, help="per tenant (default 3)")
    parser.add_argument("--turns", type=int, default=10, help="per conversation (default 10)")
    parser.add_argument(
        "--kv-cache-blocks", type=int, default=4096, help="16-token blocks per replica's KV cache (default 4096)"
    )
    args = parser.parse_args()
    cachegate = str(Path(sys.executable).with_name("cachegate"))

    results = {name: run_setup(name, args, cachegate) for name in ("affinity", "round-robin")}
    workload = (
        f"{args.tenants} tenants x {args.conversations} conversations x {args.turns} turns, "
        f"{REPLICAS} replicas of {args.kv_cache_blocks} KV blocks (16 tokens) each"
    )
    print(f"workload: {workload}")
    print(f"{'set-up':<12} {'requests':>8} {'prompt tok':>11} {'billed reads':>12} {'engine hits':>11} "
          f"{'hits/reads':>10} {'reads held':>10}  requests per replica")  # fmt: skip
    for name, totals in results.items():
        print(
            f"{name:<12} {totals.requests:>8} {totals.prompt_tokens:>11} {totals.billed_reads:>12} "
            f"{totals.physical_hits:>11} {totals.share(totals.physical_hits):>10.3f} "
            f"{totals.share(totals.reads_held):>10.3f}  {' '.join(str(n) for n in totals.per_replica)}"
        )
    print("reads held: the billed reads the engines found in their KV cache (each request's hits, up to its read)")
    key_cost, rank_cost, hash_cost = choice_cost(args)
    print(
        f"the choice, per request: routing key {key_cost:.1f} us + ranking {rank_cost:.1f} us "
        f"(the classification's whole-prompt hashing, for scale: {hash_cost:.1f} us; no index lookup)"
    )
    print(f"keyed by each turn's read entry instead, turns 3+ that would move replica: {read_entry_moves(args):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
