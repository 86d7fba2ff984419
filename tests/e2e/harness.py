"""A real gateway and a real fake upstream on loopback ports, in a background event loop.

Tests talk to it over real HTTP with the official SDKs, exactly as users do. The index, the
token counter, the control store and the upstream client are wrapped in switchable faults so that
the degraded and failing paths can be driven.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import uvloop

from cachegate import serving
from cachegate.bootstrap import seed_store
from cachegate.config import Config
from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, ParsedPrompt, Recall, Refresh, Trail
from cachegate.fake_upstream import start_fake_upstream
from cachegate.gateway.app import Gateway
from cachegate.index.base import CacheIndex, IndexUnavailable
from cachegate.index.factory import open_index
from cachegate.store.base import ApiKey, Catalog, ControlStore, LedgerRow, StoreUnavailable
from cachegate.store.factory import open_store
from cachegate.tokens.base import PromptCounts, TextCounter, TokenCounter, TokenCountError
from cachegate.upstream.base import Upstream, UpstreamRequest, UpstreamResponse
from cachegate.upstream.httptools_client import HttptoolsUpstream

T = TypeVar("T")


class FaultyIndex:
    """Delegates to a real index unless told to fail or to be slow (``delay`` seconds before each call).

    ``ahead`` moves the requests' clock forward for lookups and recalls (seconds): entries age
    without the test waiting for them to expire.
    """

    def __init__(self, inner: CacheIndex) -> None:
        self.inner = inner
        self.down = False
        self.delay = 0.0
        self.ahead = 0.0
        self.recall_down = False  # only the recall of a miss fails (SPEC §14)

    async def _check(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise IndexUnavailable("index switched off by the test")

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        await self._check()
        return await self.inner.lookup(scope, hashes, now + self.ahead)

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        await self._check()
        await self.inner.write(entries, now, trails)

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        await self._check()
        if self.recall_down:
            raise IndexUnavailable("recall switched off by the test")
        return await self.inner.recall(scope, hashes, keys, now + self.ahead)

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        await self._check()
        await self.inner.refresh(refreshes, now)

    async def sweep(self, now: float) -> int:
        await self._check()
        return await self.inner.sweep(now)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultyCounter:
    """Delegates to a real counter unless told to fail or to be slow."""

    def __init__(self, inner: TokenCounter) -> None:
        self.inner = inner
        self.failing = False
        self.delay = 0.0

    @property
    def tokenizer_version(self) -> str:
        return self.inner.tokenizer_version

    @property
    def template_variables(self) -> frozenset[str]:
        return self.inner.template_variables

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise TokenCountError("counter switched off by the test")
        return await self.inner.count(body, prompt, blocks)

    async def count_texts(self, texts: Sequence[str]) -> list[int]:
        if self.failing:
            raise TokenCountError("counter switched off by the test")
        assert isinstance(self.inner, TextCounter)
        return await self.inner.count_texts(texts)

    async def aclose(self) -> None:
        """The inner counter is shared by the whole test session; it is not closed here."""


class FaultyStore:
    """Delegates to a real control store; while ``down``, what the gateway asks of it at run time fails."""

    def __init__(self, inner: ControlStore) -> None:
        self.inner = inner
        self.down = False
        self.key_lookups = 0
        self.stored: list[LedgerRow] = []  # every ledger row the store took, in order

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("control store switched off by the test")

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        self.key_lookups += 1
        self._check()
        return await self.inner.find_api_key(secret_hash)

    async def load_catalog(self) -> Catalog:
        self._check()
        return await self.inner.load_catalog()

    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        self._check()
        await self.inner.append_ledger(rows)
        self.stored.extend(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class BuggyUpstream:
    """Delegates to a real upstream client unless told to fail as a bug would (not a mapped outage)."""

    def __init__(self, inner: Upstream) -> None:
        self.inner = inner
        self.buggy = False

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.buggy:
            raise RuntimeError("a bug in the upstream client, switched on by the test")
        return await self.inner.send(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Keys:
    a: str
    b: str
    principal_a: str
    principal_b: str
    admin: str  # an admin key (of the operator's own principal)


class GatewayHarness:
    def __init__(
        self,
        counter: TokenCounter,
        store_url: str,
        index_url: str,
        config: dict[str, Any],
        *,
        keys: Keys | None = None,
        replicas: int = 0,
    ) -> None:
        """``keys``: those of another harness on the same store (a second replica); else new ones are made.
        ``replicas`` more fake upstreams, each with its own prefix KV cache, are the endpoints
        ``replica-0``, ``replica-1``, … (their URLs in ``replica_urls``)."""
        self._replicas = replicas
        self._replica_runners: list[Any] = []
        self.replica_urls: list[str] = []
        self._counter = counter
        self._shared_keys = keys
        self._store_url = store_url
        self._index_url = index_url
        self._config = config
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-harness", daemon=True)
        self.base_url = ""
        self.fake_url = ""

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> GatewayHarness:
        self._thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        self.call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._fake_runner, fake_port = await start_fake_upstream(self._counter, "127.0.0.1", 0)
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        for _ in range(self._replicas):
            runner, port = await start_fake_upstream(self._counter, "127.0.0.1", 0, kv_cache_blocks=4096)
            self._replica_runners.append(runner)
            self.replica_urls.append(f"http://127.0.0.1:{port}")
        replicas = [{"name": f"replica-{i}", "base_url": f"{url}/v1"} for i, url in enumerate(self.replica_urls)]
        raw = {
            "control_store_url": self._store_url,
            "cache_index_url": self._index_url,
            "data_dir": tempfile.mkdtemp(prefix="cachegate-harness-"),  # the ledger journal's folder
            "endpoints": [
                {"name": "fake", "base_url": f"{self.fake_url}/v1"},
                # By name, not address: HTTP clients keep cookies of named hosts only.
                {"name": "fake-with-key", "base_url": f"http://localhost:{fake_port}/v1", "api_key": "upstream-secret"},
                {"name": "dead", "base_url": "http://127.0.0.1:9/v1"},
                {"name": "fake-salted", "base_url": f"{self.fake_url}/v1", "cache_salt": True},
                *replicas,
            ],
            "cache_salt_secret": "the test suite's cache salt secret",
            **self._config,
        }
        self.config = Config.model_validate(raw)
        store = await open_store(self.config.store_url)
        await store.migrate()
        await seed_store(store, self.config)
        self.store = FaultyStore(store)
        self.index = FaultyIndex(await open_index(self.config.index_url, retention=self.config.miss_retention_seconds))
        self.counter = FaultyCounter(self._counter)
        upstream = HttptoolsUpstream(  # as bootstrap.py builds it: the deadlines are the configuration's
            connect_timeout=self.config.deadlines.upstream_connect_seconds,
            read_timeout=self.config.deadlines.upstream_read_seconds,
        )
        self.upstream = BuggyUpstream(upstream)
        self.gateway = Gateway(self.config, self.store, self.index, {"qwen3": self.counter}, self.upstream)
        if self._shared_keys is not None:
            self.keys = self._shared_keys
        else:
            a = await store.create_principal("tenant-a")
            b = await store.create_principal("tenant-b")
            _, secret_a = await store.create_api_key(a.id)
            _, secret_b = await store.create_api_key(b.id)
            operator = await store.create_principal("operator")
            _, secret_admin = await store.create_api_key(operator.id, admin=True)
            self.keys = Keys(secret_a, secret_b, a.id, b.id, secret_admin)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = serving.server(self.gateway, log_level="warning", limits=self.config.server)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
            await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        self._server.should_exit = True
        await self._serve_task
        await self._fake_runner.cleanup()
        for runner in self._replica_runners:
            if runner is not None:
                await runner.cleanup()

    def stop_replica(self, position: int) -> None:
        """Stop the fake upstream ``replica-<position>``: its port then refuses connections."""
        runner, self._replica_runners[position] = self._replica_runners[position], None
        if runner is not None:
            self.call(runner.cleanup())

    def ledger_rows(self, route: str) -> list[LedgerRow]:
        """Every ledger row of ``route`` stored so far, once the writer's rounds have drained what it holds.

        Waits for the background rounds rather than calling ``flush``: two drains of one journal
        segment at once are not something the writer allows for.
        """
        deadline = time.monotonic() + 30
        while self.gateway.ledger.buffered:
            assert time.monotonic() < deadline, "the ledger writer never drained its rows"
            time.sleep(0.02)
        return [row for row in self.store.stored if row.route == route]

    def reset_faults(self) -> None:
        self.store.down = False
        self.index.down = False
        self.index.delay = 0.0
        self.index.ahead = 0.0
        self.index.recall_down = False
        self.counter.failing = False
        self.counter.delay = 0.0
        self.upstream.buggy = False
