"""The e2e suite's gateway as ``cachegate serve --workers 2``: two real gateway processes on one socket.

The surface is the part of ``GatewayHarness`` that tests reaching the gateway only over HTTP use:
``base_url``, ``fake_url``, ``keys``, ``config``, ``call``, ``store`` (to make principals and keys, as
an operator's tools do) and ``ledger_rows``. There are no faults to switch and no gateway object to
look into: the workers are other processes. The fake upstream is the in-process one of
``GatewayHarness``, so both harnesses put the same upstream behind the gateway.

The configuration is the e2e suite's own, written as the YAML file an operator would pass with ``-c``.
With ``store_url=None`` the store and the index are the embedded default: SQLite files under the
data folder, opened by both workers.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Coroutine
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import uvloop
import yaml
from cli.demo_server import free_port
from cli.gateway_process import Running

from cachegate.bootstrap import seed_store
from cachegate.config import load_config
from cachegate.fake_upstream import start_fake_upstream
from cachegate.gateway.journal import MAGIC, SUFFIX
from cachegate.store.base import ControlStore, LedgerRow
from cachegate.store.factory import open_store
from cachegate.tokens.base import TokenCounter

from harness import Keys

T = TypeVar("T")
WORKERS = 2
_LEDGER_FIELDS = {field.name for field in fields(LedgerRow)}


class WorkersHarness:
    def __init__(
        self,
        counter: TokenCounter,
        folder: Path,
        config: dict[str, Any],
        store_url: str | None = None,
        index_url: str | None = None,
    ) -> None:
        """``folder``: the data folder and the configuration file's; ``store_url`` and ``index_url``:
        PostgreSQL databases, or None for the embedded default (SQLite files under the data folder)."""
        self._counter = counter
        self._folder = folder
        self._raw_config = config
        self._store_url = store_url
        self._index_url = index_url
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="workers-harness", daemon=True)
        self.base_url = ""
        self.fake_url = ""
        self.process: Running | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the harness's own loop (where ``store`` was opened) and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> WorkersHarness:
        """Ready once both workers have started serving; whatever was started is stopped if they do not."""
        self._thread.start()
        try:
            self.call(self._prepare())
            port = free_port()
            self.base_url = f"http://127.0.0.1:{port}"
            self.process = Running("-c", str(self.config_path), "serve", "--port", str(port), "--workers", str(WORKERS))
            for slot in range(WORKERS):
                self.process.wait_for(rf"worker {slot} started \(pid \d+\)")
            deadline = time.monotonic() + 60
            while self.process.output.count("Application startup complete") < WORKERS:
                if self.process.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the workers did not start:\n{self.process.output}")
                time.sleep(0.05)
        except BaseException:
            if self.process is not None:
                self.process.stop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        return self

    async def _prepare(self) -> None:
        """The fake upstream, the configuration file, and the store migrated, seeded and given the
        test principals before any worker starts (the workers find the keys in the store)."""
        self._fake_runner, fake_port = await start_fake_upstream(self._counter, "127.0.0.1", 0)
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        raw = {
            "data_dir": str(self._folder / "data"),
            "control_store_url": self._store_url,
            "cache_index_url": self._index_url,
            "endpoints": [
                {"name": "fake", "base_url": f"{self.fake_url}/v1"},
                {"name": "fake-with-key", "base_url": f"http://localhost:{fake_port}/v1", "api_key": "upstream-secret"},
                {"name": "dead", "base_url": "http://127.0.0.1:9/v1"},
                {"name": "fake-salted", "base_url": f"{self.fake_url}/v1", "cache_salt": True},
            ],
            "cache_salt_secret": "the test suite's cache salt secret",
            **self._raw_config,
        }
        self.config_path = self._folder / "cachegate.yaml"
        self.config_path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
        self.config = load_config(self.config_path, environ={})  # the file alone, as the workers read it
        self.store: ControlStore = await open_store(self.config.store_url)
        await self.store.migrate()
        await seed_store(self.store, self.config)
        a = await self.store.create_principal("tenant-a")
        b = await self.store.create_principal("tenant-b")
        _, secret_a = await self.store.create_api_key(a.id)
        _, secret_b = await self.store.create_api_key(b.id)
        operator = await self.store.create_principal("operator")
        _, secret_admin = await self.store.create_api_key(operator.id, admin=True)
        self.keys = Keys(secret_a, secret_b, a.id, b.id, secret_admin)

    def stop(self) -> None:
        try:
            if self.process is not None:
                status = self.process.stop()
                output = self.process.output
                (self._folder / "serve.log").write_text(output)  # for a failure's post-mortem
                assert status == 0, f"serve --workers {WORKERS} stopped with {status}:\n{output}"
                # The suite's traffic makes no process log an error: a worker that crashed and was
                # started again, or a ledger journal that failed, shows here if nowhere else.
                problems = [line for line in output.splitlines() if re.search(r" (ERROR|CRITICAL) |Traceback", line)]
                assert not problems, "\n".join(problems)
        finally:
            self.call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _close(self) -> None:
        await self.store.aclose()
        await self._fake_runner.cleanup()

    def worker_pids(self) -> list[int]:
        """The pid of each worker, from the supervisor's log."""
        assert self.process is not None
        pids = dict(re.findall(r"worker (\d+) started \(pid (\d+)\)", self.process.output))
        return [int(pid) for _, pid in sorted(pids.items())]

    def ledger_rows(self, route: str) -> list[LedgerRow]:
        """Every ledger row of ``route`` in the store, by request time, once the workers have drained
        their journals: a row is journaled before its response's last byte (docs/ledger.md), and a
        segment is deleted only once the store holds all its rows, so an empty journal folder means
        every answered request is in the store."""
        journal = self.config.journal_dir
        assert journal is not None
        deadline = time.monotonic() + 30
        while True:
            if not _holds_rows(journal):
                counts = self.metrics("cachegate_ledger_")
                # A row whose journal write failed went to a worker's memory instead, where the
                # folder does not show it: none may have, for the folder to tell the whole story.
                assert counts.get("cachegate_ledger_journal_failures_total", 0) == 0, counts
                if counts.get("cachegate_ledger_rows_stored_total", 0) >= counts.get(
                    "cachegate_ledger_rows_journaled_total", 0
                ):
                    break
            assert time.monotonic() < deadline, f"the workers never drained their journals: {list(journal.iterdir())}"
            time.sleep(0.02)
        return [_ledger_row(values) for values in self.call(self._ledger(route))]

    def metrics(self, prefix: str) -> dict[str, float]:
        """The samples of ``/metrics`` (both workers' added up) whose names start with ``prefix``."""
        scrape = urllib.request.Request(
            f"{self.base_url}/metrics", headers={"authorization": f"Bearer {self.keys.admin}"}
        )
        with urllib.request.urlopen(scrape, timeout=10) as response:
            lines = response.read().decode().splitlines()
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line.startswith(prefix)}

    async def _ledger(self, route: str) -> list[dict[str, Any]]:
        statement = "SELECT * FROM ledger WHERE route = {} ORDER BY at, id"
        url = self.config.store_url
        if url.startswith("sqlite:///"):

            def read() -> list[dict[str, Any]]:
                with sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True) as db:
                    db.row_factory = sqlite3.Row
                    return [dict(row) for row in db.execute(statement.format("?"), (route,))]

            return await asyncio.to_thread(read)
        connection = await asyncpg.connect(url)
        try:
            return [dict(row) for row in await connection.fetch(statement.format("$1"), route)]
        finally:
            await connection.close()

    def served_by(self, connections: int = 8, rounds: int = 25) -> Counter[int]:
        """Which worker accepted each of ``connections`` kept-alive connections, each of which a request
        was answered on; opened again, up to ``rounds`` times, until every worker served some.

        The gateway does not say which process answered (no header, and ``/metrics`` adds the workers
        up), so the connections' sockets are looked up among the workers' open files (Linux's /proc)."""
        served: Counter[int] = Counter()
        pids = self.worker_pids()
        port = int(self.base_url.rsplit(":", 1)[1])
        for _ in range(rounds):
            sockets = []
            try:
                for _ in range(connections):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sockets.append(sock)
                    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ")
                    sock.sendall(self.keys.a.encode() + b"\r\n\r\n")
                    head = sock.recv(65536)
                    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
                owners = _socket_owners(pids)
                for sock in sockets:
                    remote = sock.getsockname()[1]  # the gateway's side of it is (port, this port)
                    inode = _established_inode(port, remote)
                    assert inode in owners, f"no worker holds the connection from port {remote}"
                    served[owners[inode]] += 1
            finally:
                for sock in sockets:
                    sock.close()
            if len(served) == len(pids):
                break
        return served


def _holds_rows(journal: Path) -> bool:
    """Whether a segment of the journal folder holds a row (more than its header)."""
    for path in journal.glob(f"*{SUFFIX}"):
        try:
            if path.stat().st_size > len(MAGIC):
                return True
        except FileNotFoundError:  # drained and deleted meanwhile
            continue
    return False


def _ledger_row(values: dict[str, Any]) -> LedgerRow:
    """A stored row as the store was given it (SQLite keeps times, amounts and flags as text and integers)."""
    kept = {name: value for name, value in values.items() if name in _LEDGER_FIELDS}
    if isinstance(kept["at"], str):
        kept["at"] = datetime.fromisoformat(kept["at"])
    for name in ("cost", "list_cost"):
        if kept[name] is not None:
            kept[name] = Decimal(str(kept[name]))
    for name in ("streaming", "degraded"):
        kept[name] = bool(kept[name])
    return LedgerRow(**kept)


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """The socket inodes each of ``pids`` holds open, as inode -> pid."""
    owners: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink()
            except FileNotFoundError:  # closed meanwhile
                continue
            if match := re.fullmatch(r"socket:\[(\d+)\]", str(target)):
                owners[int(match[1])] = pid
    return owners


def _established_inode(local_port: int, remote_port: int) -> int:
    """The inode of the established loopback connection ``local_port`` <- ``remote_port`` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        columns = line.split()
        local, remote, state, inode = columns[1], columns[2], columns[3], columns[9]
        ports = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if state == "01" and ports == (local_port, remote_port):  # 01: ESTABLISHED
            return int(inode)
    raise AssertionError(f"no established connection {remote_port} -> {local_port}")
